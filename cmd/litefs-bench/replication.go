package main

import (
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/litefs-project/litefs/internal/testutil"
)

// runLagBench measures how long a commit on the primary takes to become
// visible to a query on a replica, one transaction at a time.
func runLagBench(h *harness, n int) {
	primary, replica := startPair(h, nil)
	lags := measureLag(h, primary, replica, "lag.db", n)
	fmt.Printf("replication lag, commit on the primary to visible to a query on a replica (%d commits):\n", n)
	fmt.Printf("  p50 %s  p90 %s  p99 %s  max %s   (target p99 < 5ms: %s)\n",
		percentile(lags, 50), percentile(lags, 90), percentile(lags, 99), percentile(lags, 100),
		verdict(percentile(lags, 99) < 5*time.Millisecond))
	replica.Stop(h)
	primary.Stop(h)
}

// startPair starts a primary and a replica with the static lease, with the
// API security sec asks for (nil for none).
func startPair(h *harness, sec *testutil.Secure) (primary, replica *testutil.Node) {
	primary = testutil.StartNode(h, testutil.NodeConfig{Name: "primary", Production: true, Secure: sec})
	replica = testutil.StartReplica(h, primary, testutil.NodeConfig{Name: "replica", Production: true, Secure: sec})
	return primary, replica
}

// measureLag commits n single-row transactions on the primary, one at a
// time, and returns how long each took to become visible on the replica.
func measureLag(h *harness, primary, replica *testutil.Node, db string, n int) []time.Duration {
	w := openDB(h, primary.Path(db), "WAL", "NORMAL")
	mustExec(h, w, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
	replica.WaitPos(h, db, primary.Pos(h, db), time.Minute)
	r := openDB(h, replica.Path(db), "WAL", "NORMAL")
	insert, err := w.Prepare("INSERT INTO t (v) VALUES ('replicated row')")
	if err != nil {
		h.Fatal(err)
	}
	latest, err := r.Prepare("SELECT coalesce(max(id), 0) FROM t")
	if err != nil {
		h.Fatal(err)
	}

	lags := make([]time.Duration, 0, n)
	for i := 1; i <= n; i++ {
		res, err := insert.Exec()
		if err != nil {
			h.Fatal(err)
		}
		id, _ := res.LastInsertId()
		start := time.Now()
		for {
			var got int64
			if err := latest.QueryRow().Scan(&got); err != nil {
				h.Fatal(err)
			}
			if got >= id {
				break
			}
			if time.Since(start) > 10*time.Second {
				h.Fatalf("row %d never appeared on the replica", id)
			}
		}
		lags = append(lags, time.Since(start))
	}
	insert.Close()
	latest.Close()
	w.Close()
	r.Close()
	return lags
}

// runSnapshotBench builds a database of size bytes on a primary, measures
// its idle write rate, then starts a new replica and measures how long the
// replica takes to get in sync while a writer keeps committing on the
// primary, the writer's rate meanwhile, and both processes' peak memory.
func runSnapshotBench(h *harness, size int64) {
	primary := testutil.StartNode(h, testutil.NodeConfig{Name: "primary", Production: true})
	db := openDB(h, primary.Path("big.db"), "WAL", "NORMAL")
	mustExec(h, db, "CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
	const row = 1 << 20
	built := time.Now()
	for i := int64(0); i < size/row; i++ {
		// Half random, half compressible: neither best nor worst case.
		mustExec(h, db, "INSERT INTO t (v) VALUES (randomblob(524288) || zeroblob(524288))")
	}
	mustExec(h, db, "PRAGMA wal_checkpoint(TRUNCATE)")
	db.Close()
	// Let the kernel write the new database out before measuring.
	exec.Command("sync").Run()
	fmt.Printf("new replica of a %d MiB database (built in %s):\n", size>>20, time.Since(built).Round(time.Second))

	idle := writeLoad(h, primary.Path("load.db"), 3*time.Second, nil)
	fmt.Printf("  primary write rate while idle:          %8.0f tx/s\n", idle)
	{
		// For reference: the cost of a replica that only follows, on the
		// same machine (its CPU is taken from the primary's writer).
		rep := testutil.StartReplica(h, primary, testutil.NodeConfig{Name: "follower", Production: true})
		rep.WaitLog(h, "caught up with the primary", time.Minute)
		following := writeLoad(h, primary.Path("load.db"), 3*time.Second, nil)
		fmt.Printf("  ... with a replica following:           %8.0f tx/s  (ratio %.2f, no target)\n", following, following/idle)
		rep.Stop(h)
	}

	var done atomic.Bool
	rateCh := make(chan float64, 1)
	go func() { rateCh <- writeLoad(h, primary.Path("load.db"), time.Hour, &done) }()
	time.Sleep(200 * time.Millisecond)
	start := time.Now()
	primaryCPU := cpuTime(primary.PID())
	selfCPU := cpuTime(os.Getpid())
	replica := testutil.StartReplica(h, primary, testutil.NodeConfig{Name: "replica", Production: true})
	replica.WaitLog(h, "caught up with the primary", 10*time.Minute)
	took := time.Since(start)
	fmt.Printf("  CPU used during the transfer: primary %.2fs, replica %.2fs, writer %.2fs\n",
		(cpuTime(primary.PID()) - primaryCPU).Seconds(), cpuTime(replica.PID()).Seconds(), (cpuTime(os.Getpid()) - selfCPU).Seconds())
	primaryRSS, replicaRSS := peakRSS(primary.PID()), peakRSS(replica.PID())
	done.Store(true)
	during := <-rateCh

	fmt.Printf("  primary write rate during the transfer: %8.0f tx/s  (ratio %.2f, target >= 0.8: %s)\n", during, during/idle, verdict(during/idle >= 0.8))
	fmt.Printf("  replica in sync after                   %8.2f s     (target < 15 s: %s)\n", took.Seconds(), verdict(took < 15*time.Second))
	fmt.Printf("  peak resident memory: primary %.1f MiB, replica %.1f MiB (target < 100 MiB: %s)\n",
		float64(primaryRSS)/(1<<20), float64(replicaRSS)/(1<<20), verdict(max(primaryRSS, replicaRSS) < 100<<20))

	// Start-up of the primary with the database: it checksums all of it.
	primary.Stop(h)
	replica.Stop(h)
	restart := time.Now()
	primary.Start(h)
	fmt.Printf("  start-up of the primary with it:        %8.2f s     (target < 2 s: %s)\n", time.Since(restart).Seconds(), verdict(time.Since(restart) < 2*time.Second))
	primary.Stop(h)
}

// writeLoad commits one row per transaction into path until d passes or
// done is set, and returns the rate.
func writeLoad(h *harness, path string, d time.Duration, done *atomic.Bool) float64 {
	db := openDB(h, path, "WAL", "NORMAL")
	defer db.Close()
	mustExec(h, db, "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)")
	stmt, err := db.Prepare("INSERT INTO t (v) VALUES ('load')")
	if err != nil {
		h.Fatal(err)
	}
	defer stmt.Close()
	n, start := 0, time.Now()
	for time.Since(start) < d && (done == nil || !done.Load()) {
		if _, err := stmt.Exec(); err != nil {
			h.Fatal(err)
		}
		n++
	}
	return float64(n) / time.Since(start).Seconds()
}

func openDB(h *harness, path, mode, sync string) *sql.DB {
	db, err := sql.Open("sqlite3", fmt.Sprintf("file:%s?_journal_mode=%s&_synchronous=%s&_busy_timeout=5000", path, mode, sync))
	if err != nil {
		h.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	return db
}

func mustExec(h *harness, db *sql.DB, q string) {
	if _, err := db.Exec(q); err != nil {
		h.Fatalf("%s: %v", q, err)
	}
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

// percentile returns the p-th percentile (0..100) of durations.
func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[int(float64(len(s)-1)*p/100)].Round(time.Microsecond)
}

// peakRSS returns the peak resident set size of a process, in bytes.
func peakRSS(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			var kb int64
			fmt.Sscanf(strings.TrimSpace(strings.TrimPrefix(line, "VmHWM:")), "%d", &kb)
			return kb << 10
		}
	}
	return 0
}

// cpuTime returns the user and system CPU time a process has used.
func cpuTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	var utime, stime int64
	fmt.Sscan(f[11], &utime)
	fmt.Sscan(f[12], &stime)
	return time.Duration(utime+stime) * time.Second / 100
}
