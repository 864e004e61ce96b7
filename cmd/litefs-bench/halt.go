package main

import (
	"fmt"
	"time"

	"github.com/litefs-project/litefs"
	"github.com/litefs-project/litefs/internal/testutil"
)

// runHaltBench measures the HALT lock from a replica: acquire + release
// latency, and single-row transactions per second forwarded to the primary
// under one held lock.
func runHaltBench(h *harness, n int, d time.Duration) {
	primary, replica := startPair(h, nil)
	w := openDB(h, primary.Path("halt.db"), "WAL", "NORMAL")
	mustExec(h, w, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
	w.Close()
	replica.WaitPos(h, "halt.db", primary.Pos(h, "halt.db"), time.Minute)
	path := replica.Path("halt.db")

	lat := make([]time.Duration, 0, n)
	for i := 0; i < n; i++ {
		start := time.Now()
		f, err := litefs.Halt(path)
		if err != nil {
			h.Fatal(err)
		}
		if err := litefs.Unhalt(f); err != nil {
			h.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	fmt.Printf("HALT lock from a replica, %d acquire + release cycles:\n", n)
	fmt.Printf("  latency p50 %s, p99 %s\n", percentile(lat, 50), percentile(lat, 99))

	for _, mode := range []struct{ journal, sync string }{{"WAL", "NORMAL"}, {"WAL", "FULL"}, {"DELETE", "FULL"}} {
		rate := forwardedRate(h, primary, replica, mode.journal, mode.sync, d)
		fmt.Printf("  forwarded single-row transactions under one HALT lock, %s synchronous=%s: %.0f tx/s\n",
			mode.journal, mode.sync, rate)
	}
}

// forwardedRate creates a database on the primary and measures the
// single-row transactions per second a writer on the replica commits under
// one held HALT lock, for d.
func forwardedRate(h *harness, primary, replica *testutil.Node, journal, sync string, d time.Duration) float64 {
	name := "fwd-" + journal + "-" + sync + ".db"
	pw := openDB(h, primary.Path(name), journal, sync)
	mustExec(h, pw, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
	pw.Close()
	replica.WaitPos(h, name, primary.Pos(h, name), time.Minute)
	conn := openDB(h, replica.Path(name), journal, sync)
	defer conn.Close()
	count := 0
	var elapsed time.Duration
	err := litefs.WithHalt(replica.Path(name), func() error {
		start := time.Now()
		for time.Since(start) < d {
			if _, err := conn.Exec("INSERT INTO t (v) VALUES ('forwarded row')"); err != nil {
				return err
			}
			count++
		}
		elapsed = time.Since(start)
		return nil
	})
	if err != nil {
		h.Fatal(err)
	}
	primary.WaitPos(h, name, replica.Pos(h, name), time.Minute)
	return float64(count) / elapsed.Seconds()
}
