package main

import (
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/litefs-project/litefs/internal/testutil"
	"github.com/litefs-project/litefs/ltx"
	"golang.org/x/sys/unix"
)

// runLagBench measures how long a commit on the primary takes to become
// visible to a query on a replica: one transaction at a time (an idle
// stream), then while a writer commits at full speed (a busy one).
func runLagBench(h *harness, n int) {
	primary, replica := startPair(h, nil)
	replica.WaitLog(h, "caught up with the primary", time.Minute)
	// An idle stream costs nothing but its heartbeats: no polling.
	pcpu, rcpu := cpuTime(primary.PID()), cpuTime(replica.PID())
	time.Sleep(idleWindow)
	idleP, idleR := cpuTime(primary.PID())-pcpu, cpuTime(replica.PID())-rcpu

	lags := measureLag(h, primary, replica, "lag.db", n)
	fmt.Printf("replication lag, commit on the primary to visible to a query on a replica (%d commits):\n", n)
	fmt.Printf("  p50 %s  p90 %s  p99 %s  max %s   (target p50 < 300µs: %s, p99 < 1ms: %s)\n",
		percentile(lags, 50), percentile(lags, 90), percentile(lags, 99), percentile(lags, 100),
		verdict(percentile(lags, 50) < 300*time.Microsecond), verdict(percentile(lags, 99) < time.Millisecond))
	fmt.Printf("  CPU of an idle stream: primary %dms, replica %dms in %s (counted in 10ms ticks)\n",
		idleP.Milliseconds(), idleR.Milliseconds(), idleWindow)

	// Then a writer at full speed, first on CPUs shared by everything,
	// then with each side on a CPU of its own, as on two machines: on
	// shared CPUs a replica that keeps up takes CPU from the primary's
	// writer, apart the primary's rate is what the stream costs it.
	loaded(h, primary, replica, "shared CPUs", nil)
	if cpus, ok := splitCPUs(); ok {
		pinProcess(h, primary.PID(), cpus[0])
		pinProcess(h, replica.PID(), cpus[1])
		loaded(h, primary, replica, fmt.Sprintf("primary and writer on CPU %d, replica and reader on CPU %d (taskset)", cpus[0], cpus[1]), &cpus)
	}
	replica.Stop(h)
	primary.Stop(h)
}

// loaded runs the loaded phases of the lag benchmark, the writer (and the
// reader) on cpus if set.
func loaded(h *harness, primary, replica *testutil.Node, how string, cpus *[2]int) {
	tag := strings.NewReplacer(" ", "-", ",", "", "(", "", ")", "").Replace(how)
	fmt.Printf("  writer at full speed, %s:\n", how)
	// A burst with nobody reading: how fast the primary commits with a
	// replica following, and how far behind the replica is when it ends.
	pcpu, rcpu := cpuTime(primary.PID()), cpuTime(replica.PID())
	rate, behind, catchUp := measureBurst(h, primary, replica, "burst-"+tag+".db", loadDuration, cpus)
	commits := rate * loadDuration.Seconds()
	fmt.Printf("    nobody reading: primary %.0f tx/s; replica %d tx behind at the last commit, in sync %s later\n",
		rate, behind, catchUp.Round(time.Microsecond))
	fmt.Printf("    CPU per commit: primary %.0fµs, replica %.0fµs\n",
		float64((cpuTime(primary.PID())-pcpu).Microseconds())/commits, float64((cpuTime(replica.PID())-rcpu).Microseconds())/commits)
	// The same with a reader polling the replica: the lag of every commit
	// while the stream is busy (changesets go in batches).
	load := measureLoadedLag(h, primary, replica, "loaded-"+tag+".db", loadDuration, cpus)
	fmt.Printf("    a reader polling the replica: primary %.0f tx/s, replica showed %.0f tx/s\n", load.primaryRate, load.replicaRate)
	fmt.Printf("    lag: p50 %s  p90 %s  p99 %s  max %s\n",
		percentile(load.lags, 50), percentile(load.lags, 90), percentile(load.lags, 99), percentile(load.lags, 100))
}

// splitCPUs returns two CPUs to run the two sides of a loaded phase on,
// when the machine has two and taskset is installed.
func splitCPUs() ([2]int, bool) {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil || set.Count() < 2 {
		return [2]int{}, false
	}
	if _, err := exec.LookPath("taskset"); err != nil {
		return [2]int{}, false
	}
	var cpus []int
	for cpu := 0; len(cpus) < 2; cpu++ {
		if set.IsSet(cpu) {
			cpus = append(cpus, cpu)
		}
	}
	return [2]int{cpus[0], cpus[1]}, true
}

// pinProcess moves every thread of a process to one CPU (the threads it
// starts later inherit it). The node keeps it until it stops.
func pinProcess(h *harness, pid, cpu int) {
	if out, err := exec.Command("taskset", "-a", "-p", "-c", strconv.Itoa(cpu), strconv.Itoa(pid)).CombinedOutput(); err != nil {
		h.Fatalf("taskset %d: %v: %s", pid, err, out)
	}
}

// pinThread locks the calling goroutine to its thread and the thread to
// one CPU. The goroutine must end without unlocking, so that the thread
// ends with it rather than running others on that CPU.
func pinThread(cpu int) error {
	runtime.LockOSThread()
	var set unix.CPUSet
	set.Set(cpu)
	return unix.SchedSetaffinity(0, &set)
}

// loadDuration is how long each loaded phase of the lag benchmark writes,
// and idleWindow how long its idle stream is watched.
const (
	loadDuration = 3 * time.Second
	idleWindow   = 2 * time.Second
)

// measureBurst commits single-row transactions on the primary as fast as
// one writer can for d (on the first of cpus, if set), with nobody reading
// the replica, and returns the primary's rate, how many transactions the
// replica lacked when the last commit returned, and how long after that
// it had them all.
func measureBurst(h *harness, primary, replica *testutil.Node, db string, d time.Duration, cpus *[2]int) (float64, ltx.TXID, time.Duration) {
	w := openDB(h, primary.Path(db), "WAL", "NORMAL")
	defer w.Close()
	mustExec(h, w, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
	replica.WaitPos(h, db, primary.Pos(h, db), time.Minute)
	rates := make(chan float64, 1)
	go func() {
		if cpus != nil {
			if err := pinThread(cpus[0]); err != nil {
				h.Fatal(err)
			}
		}
		rates <- writeLoad(h, primary.Path(db), d, nil)
	}()
	rate := <-rates
	end := time.Now()
	want := primary.Pos(h, db)
	got := readPos(h, replica, db)
	behind := want.TXID - min(got.TXID, want.TXID)
	for got != want {
		if time.Since(end) > time.Minute {
			h.Fatalf("replica stayed at %s, the primary is at %s", got, want)
		}
		time.Sleep(100 * time.Microsecond)
		got = readPos(h, replica, db)
	}
	return rate, behind, time.Since(end)
}

// readPos reads a database's position on a node, the zero position while
// the database does not exist there yet.
func readPos(h *harness, n *testutil.Node, db string) ltx.Pos {
	b, err := os.ReadFile(n.Path(db + "-pos"))
	if os.IsNotExist(err) {
		return ltx.Pos{}
	} else if err != nil {
		h.Fatal(err)
	}
	pos, err := ltx.ParsePos(strings.TrimSpace(string(b)))
	if err != nil {
		h.Fatalf("%s-pos: %v", db, err)
	}
	return pos
}

// loadedLag is what measureLoadedLag found.
type loadedLag struct {
	primaryRate float64         // commits per second on the primary
	replicaRate float64         // commits per second becoming visible on the replica
	lags        []time.Duration // commit returning on the primary to visible on the replica, each commit
}

// measureLoadedLag commits single-row transactions on the primary as fast
// as one writer can for d while a reader on the replica queries the newest
// row in a loop, and times each commit from its return on the primary to
// the first query on the replica that sees it. With cpus set, the writer
// runs on the first and the reader on the second.
func measureLoadedLag(h *harness, primary, replica *testutil.Node, db string, d time.Duration, cpus *[2]int) loadedLag {
	w := openDB(h, primary.Path(db), "WAL", "NORMAL")
	defer w.Close()
	mustExec(h, w, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
	replica.WaitPos(h, db, primary.Pos(h, db), time.Minute)
	r := openDB(h, replica.Path(db), "WAL", "NORMAL")
	defer r.Close()
	insert, err := w.Prepare("INSERT INTO t (v) VALUES ('replicated row')")
	if err != nil {
		h.Fatal(err)
	}
	defer insert.Close()
	latest, err := r.Prepare("SELECT coalesce(max(id), 0) FROM t")
	if err != nil {
		h.Fatal(err)
	}
	defer latest.Close()

	var (
		mu        sync.Mutex
		committed []time.Time  // committed[i] is when the commit of row i+1 returned
		last      atomic.Int64 // the last row committed, once the writer is done
	)
	go func() {
		if cpus != nil {
			if err := pinThread(cpus[0]); err != nil {
				h.Fatal(err)
			}
		}
		for start := time.Now(); time.Since(start) < d; {
			if _, err := insert.Exec(); err != nil {
				h.Fatal(err)
			}
			t := time.Now()
			mu.Lock()
			committed = append(committed, t)
			mu.Unlock()
		}
		mu.Lock()
		last.Store(int64(len(committed)))
		mu.Unlock()
	}()

	// The reader runs in a goroutine of its own, so that it can be pinned.
	res := make(chan loadedLag, 1)
	go func() {
		if cpus != nil {
			if err := pinThread(cpus[1]); err != nil {
				h.Fatal(err)
			}
		}
		var out loadedLag
		var seen, firstRow int64
		var firstSeen time.Time
		lastSeen := time.Now()
		for {
			var got int64
			if err := latest.QueryRow().Scan(&got); err != nil {
				h.Fatal(err)
			}
			now := time.Now()
			if got > seen {
				mu.Lock()
				for id := seen + 1; id <= got; id++ {
					// A row can be visible before its commit returned on
					// the primary (the stream starts before SQLite is
					// answered).
					lag := time.Duration(0)
					if int(id) <= len(committed) {
						lag = max(now.Sub(committed[id-1]), 0)
					}
					out.lags = append(out.lags, lag)
				}
				mu.Unlock()
				if seen == 0 {
					firstSeen, firstRow = now, got
				}
				seen, lastSeen = got, now
			}
			if n := last.Load(); n > 0 && seen >= n {
				break
			}
			if now.Sub(lastSeen) > 10*time.Second {
				h.Fatalf("the replica stopped at row %d", seen)
			}
		}
		out.replicaRate = float64(seen-firstRow) / lastSeen.Sub(firstSeen).Seconds()
		res <- out
	}()
	out := <-res
	mu.Lock()
	out.primaryRate = float64(len(committed)) / committed[len(committed)-1].Sub(committed[0]).Seconds()
	mu.Unlock()
	return out
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
