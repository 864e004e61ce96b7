package main

import (
	"database/sql"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/litefs-project/litefs"
	"github.com/litefs-project/litefs/internal/testutil"
)

// haltProfile, when set, is a directory where the HALT benchmark writes a
// CPU profile of each node (primary.pprof, replica.pprof) taken while
// forwarded WAL synchronous=NORMAL transactions run.
var haltProfile = flag.String("halt-profile", "", "directory for CPU profiles of both nodes during the forwarded WAL+NORMAL workload")

// haltModes are the journal modes and synchronous levels the forwarding
// benchmark runs, each against its baseline: the same writer on the
// primary's own mount.
var haltModes = []struct{ journal, sync string }{{"WAL", "NORMAL"}, {"WAL", "FULL"}, {"DELETE", "FULL"}}

// runHaltBench measures the HALT lock from a replica: acquire + release
// latency, and single-row transactions per second forwarded to the primary
// under one held lock, next to the same writer on the primary directly.
func runHaltBench(h *harness, n int, d time.Duration) {
	cfg := testutil.NodeConfig{Production: true}
	if *haltProfile != "" {
		cfg.HTTP = "  pprof: true\n"
	}
	pcfg, rcfg := cfg, cfg
	pcfg.Name, rcfg.Name = "primary", "replica"
	primary := testutil.StartNode(h, pcfg)
	replica := testutil.StartReplica(h, primary, rcfg)

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

	fmt.Printf("  single-row transactions, %s each:\n", d)
	fmt.Printf("  %-22s %14s %14s %8s %22s\n", "mode", "primary tx/s", "forwarded tx/s", "ratio", "CPU µs/tx primary+replica")
	for i, mode := range haltModes {
		direct := directRate(h, primary, mode.journal, mode.sync, d)
		profile := *haltProfile != "" && i == 0
		r := forwardedRun(h, primary, replica, mode.journal, mode.sync, d, profile)
		target := ""
		if mode.journal == "WAL" && mode.sync == "NORMAL" {
			target = fmt.Sprintf("  (target >= 1500 tx/s: %s)", verdict(r.rate >= 1500))
		}
		fmt.Printf("  %-22s %14.0f %14.0f %8.3f %13.0f+%.0f%s\n", mode.journal+" synchronous="+mode.sync,
			direct, r.rate, r.rate/direct, r.cpuPrimary, r.cpuReplica, target)
	}
	if *haltProfile != "" {
		fmt.Printf("  CPU profiles of the WAL synchronous=NORMAL run in %s\n", *haltProfile)
	}
	replica.Stop(h)
	primary.Stop(h)
}

// directRate is the baseline of forwardedRate: the same writer on the
// primary's mount, with no HALT lock.
func directRate(h *harness, primary *testutil.Node, journal, level string, d time.Duration) float64 {
	name := "direct-" + journal + "-" + level + ".db"
	conn := openDB(h, primary.Path(name), journal, level)
	defer conn.Close()
	mustExec(h, conn, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
	count, elapsed := insertFor(h, conn, d)
	return float64(count) / elapsed.Seconds()
}

// forwarded is what forwardedRate measures.
type forwarded struct {
	rate                   float64 // transactions per second
	cpuPrimary, cpuReplica float64 // CPU time per transaction, µs
}

// forwardedRate creates a database on the primary and measures the
// single-row transactions per second a writer on the replica commits under
// one held HALT lock, for d.
func forwardedRate(h *harness, primary, replica *testutil.Node, journal, level string, d time.Duration) float64 {
	return forwardedRun(h, primary, replica, journal, level, d, false).rate
}

// forwardedRun is forwardedRate with the CPU each node spends per
// transaction. With profile set it writes a CPU profile of each node
// meanwhile.
func forwardedRun(h *harness, primary, replica *testutil.Node, journal, level string, d time.Duration, profile bool) forwarded {
	name := "fwd-" + journal + "-" + level + ".db"
	pw := openDB(h, primary.Path(name), journal, level)
	mustExec(h, pw, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
	pw.Close()
	replica.WaitPos(h, name, primary.Pos(h, name), time.Minute)
	conn := openDB(h, replica.Path(name), journal, level)
	defer conn.Close()
	var count int
	var elapsed time.Duration
	var pcpu, rcpu time.Duration
	err := litefs.WithHalt(replica.Path(name), func() error {
		// Warm up: the first commits open connections and files.
		for i := 0; i < 50; i++ {
			if _, err := conn.Exec("INSERT INTO t (v) VALUES ('warm-up row')"); err != nil {
				return err
			}
		}
		var wg sync.WaitGroup
		if profile {
			for _, n := range []*testutil.Node{primary, replica} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					captureProfile(h, n, d)
				}()
			}
		}
		p0, r0 := cpuTime(primary.PID()), cpuTime(replica.PID())
		count, elapsed = insertFor(h, conn, d)
		pcpu, rcpu = cpuTime(primary.PID())-p0, cpuTime(replica.PID())-r0
		wg.Wait()
		return nil
	})
	if err != nil {
		h.Fatal(err)
	}
	primary.WaitPos(h, name, replica.Pos(h, name), time.Minute)
	per := func(c time.Duration) float64 { return float64(c.Microseconds()) / float64(count) }
	return forwarded{rate: float64(count) / elapsed.Seconds(), cpuPrimary: per(pcpu), cpuReplica: per(rcpu)}
}

// insertFor inserts one row per transaction for d and returns how many it
// committed and in how long.
func insertFor(h *harness, conn *sql.DB, d time.Duration) (int, time.Duration) {
	stmt, err := conn.Prepare("INSERT INTO t (v) VALUES (?)")
	if err != nil {
		h.Fatal(err)
	}
	defer stmt.Close()
	n := 0
	start := time.Now()
	for time.Since(start) < d {
		if _, err := stmt.Exec(fmt.Sprintf("row %d with some text to make it realistic", n)); err != nil {
			h.Fatal(err)
		}
		n++
	}
	return n, time.Since(start)
}

// captureProfile writes a CPU profile of node n, taken for d, into the
// -halt-profile directory.
func captureProfile(h *harness, n *testutil.Node, d time.Duration) {
	secs := max(int(d.Seconds()), 1)
	c := n.Client()
	c.Timeout = d + 30*time.Second
	resp, err := c.Get(fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", n.URL(), secs))
	if err != nil {
		h.Errorf("profile of %s: %v", n.Config.Name, err)
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		h.Errorf("profile of %s: %s", n.Config.Name, resp.Status)
		return
	}
	if err := os.MkdirAll(*haltProfile, 0o755); err != nil {
		h.Errorf("profile of %s: %v", n.Config.Name, err)
		return
	}
	f, err := os.Create(filepath.Join(*haltProfile, n.Config.Name+".pprof"))
	if err != nil {
		h.Errorf("profile of %s: %v", n.Config.Name, err)
		return
	}
	defer f.Close()
	if _, err := io.Copy(f, resp.Body); err != nil {
		h.Errorf("profile of %s: %v", n.Config.Name, err)
	}
}
