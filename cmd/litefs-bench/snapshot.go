package main

import (
	"bufio"
	"database/sql"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/litefs-project/litefs/internal/testutil"
)

// The snapshot benchmark measures what a new replica's snapshot costs the
// primary's writers. A writer process of its own commits one row per
// transaction into the database being copied, on the primary's mount, at
// full speed, and records when each commit started and how long it took.
// A new replica then joins; the transfer window is the time the primary
// spends sending it the snapshot (from the primary's log), and the idle
// window is a window of the same length just before the replica started.
// Both windows' rates and commit latencies come from the same writer run,
// so nothing but the snapshot differs between them.
//
// With two or more CPUs the replica runs on CPU 1 and the primary and the
// writer on CPU 0 (taskset), standing in for a replica on another machine.

// writerCommand is the first argument that makes litefs-bench run as the
// benchmark's writer process instead of the benchmarks.
const writerCommand = "snapshot-writer"

func init() {
	// The writer is this binary started again, so that the benchmark needs
	// nothing else installed and the writer uses the same SQLite build.
	if len(os.Args) > 1 && os.Args[1] == writerCommand {
		if err := runWriter(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "snapshot writer:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
}

// runWriter commits one row per transaction into the database args[0]
// until its standard input closes, then writes every commit's start (Unix
// nanoseconds) and duration (nanoseconds) to args[1] as pairs of
// little-endian int64s. It prints "ready" once warmed up.
func runWriter(args []string) error {
	if len(args) != 2 {
		return fmt.Errorf("usage: litefs-bench %s DB OUT", writerCommand)
	}
	db, err := sql.Open("sqlite3", "file:"+args[0]+"?_journal_mode=WAL&_synchronous=NORMAL&_busy_timeout=5000")
	if err != nil {
		return err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	if _, err := db.Exec("CREATE TABLE IF NOT EXISTS load (id INTEGER PRIMARY KEY, v TEXT)"); err != nil {
		return err
	}
	stmt, err := db.Prepare("INSERT INTO load (v) VALUES ('row written by the snapshot benchmark')")
	if err != nil {
		return err
	}
	defer stmt.Close()
	for i := 0; i < 200; i++ {
		if _, err := stmt.Exec(); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
	}
	stop := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(stop)
	}()
	fmt.Println("ready")
	recs := make([]int64, 0, 1<<20)
	for {
		select {
		case <-stop:
			buf := make([]byte, 8*len(recs))
			for i, v := range recs {
				binary.LittleEndian.PutUint64(buf[8*i:], uint64(v))
			}
			return os.WriteFile(args[1], buf, 0o644)
		default:
		}
		start := time.Now()
		if _, err := stmt.Exec(); err != nil {
			return err
		}
		recs = append(recs, start.UnixNano(), int64(time.Since(start)))
	}
}

// commitRec is one commit the writer made.
type commitRec struct {
	start time.Time
	took  time.Duration
}

// writerProc is a running writer process.
type writerProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   string
}

// startWriter starts a writer process on path (on cpu, if pin) and waits
// until it has warmed up.
func startWriter(h *harness, path string, pin bool, cpu int) *writerProc {
	self, err := os.Executable()
	if err != nil {
		h.Fatal(err)
	}
	out := filepath.Join(h.TempDir(), "commits")
	args := []string{self, writerCommand, path, out}
	if pin {
		args = append([]string{"taskset", "-c", strconv.Itoa(cpu)}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		h.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		h.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		h.Fatal(err)
	}
	w := &writerProc{cmd: cmd, stdin: stdin, out: out}
	h.Cleanup(func() { w.stdin.Close(); _ = w.cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		h.Fatalf("snapshot writer did not start: %q %v", line, err)
	}
	return w
}

// stop ends the writer and returns its commits.
func (w *writerProc) stop(h *harness) []commitRec {
	w.stdin.Close()
	if err := w.cmd.Wait(); err != nil {
		h.Fatalf("snapshot writer: %v", err)
	}
	b, err := os.ReadFile(w.out)
	if err != nil {
		h.Fatal(err)
	}
	recs := make([]commitRec, len(b)/16)
	for i := range recs {
		recs[i] = commitRec{
			start: time.Unix(0, int64(binary.LittleEndian.Uint64(b[16*i:]))),
			took:  time.Duration(binary.LittleEndian.Uint64(b[16*i+8:])),
		}
	}
	return recs
}

// windowStats are the writer's figures over one window.
type windowStats struct {
	rate          float64
	p50, p99, max time.Duration
}

// window summarises the commits that started in [from, to).
func window(recs []commitRec, from, to time.Time) windowStats {
	var lat []time.Duration
	for _, r := range recs {
		if !r.start.Before(from) && r.start.Before(to) {
			lat = append(lat, r.took)
		}
	}
	if len(lat) == 0 {
		return windowStats{}
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	at := func(p float64) time.Duration { return lat[int(float64(len(lat)-1)*p)] }
	return windowStats{
		rate: float64(len(lat)) / to.Sub(from).Seconds(),
		p50:  at(0.50),
		p99:  at(0.99),
		max:  lat[len(lat)-1],
	}
}

// snapshotRun is one new replica's catch-up.
type snapshotRun struct {
	idle, transfer      windowStats
	window              time.Duration // length of both windows
	idleShort           bool          // the writer had not run a whole window before the replica started
	inSync              time.Duration // replica start to caught up
	primaryCPU, replCPU time.Duration // during the transfer window's run
	writerCPU           time.Duration
	primaryRSS, replRSS int64
}

// rateRatio and p99Ratio compare the transfer window with the idle one.
func (r snapshotRun) rateRatio() float64 { return r.transfer.rate / r.idle.rate }
func (r snapshotRun) p99Ratio() float64 {
	return float64(r.transfer.p99) / float64(max(r.idle.p99, time.Microsecond))
}

// runSnapshotBench builds a database on a primary at each of sizes (in
// ascending order, growing the same database), and at each size runs a new
// replica's catch-up runs times, reporting every run and the best.
func runSnapshotBench(h *harness, sizes []int64, runs int) {
	sort.Slice(sizes, func(i, j int) bool { return sizes[i] < sizes[j] })
	pin := runtime.NumCPU() >= 2
	if _, err := exec.LookPath("taskset"); err != nil {
		fmt.Printf("snapshots: taskset not found (util-linux): primary, writer and replica share every CPU\n")
		pin = false
	}
	if pin {
		fmt.Printf("snapshots: primary and writer on CPU 0, replica on CPU 1 (taskset); writer in its own process, WAL, synchronous=NORMAL\n")
	} else if runtime.NumCPU() < 2 {
		fmt.Printf("snapshots: one CPU: primary, writer and replica share it\n")
	}
	fmt.Printf("  load average at start: %s\n", loadAverage())

	bin := testutil.BinaryPath
	defer func() { testutil.BinaryPath = bin }()
	testutil.BinaryPath = pinned(h, bin, pin, 0)
	primary := testutil.StartNode(h, testutil.NodeConfig{Name: "primary", Production: true})

	db := openDB(h, primary.Path("big.db"), "WAL", "NORMAL")
	mustExec(h, db, "CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
	const row = 1 << 20
	var rows int64
	for _, size := range sizes {
		var prevWindow time.Duration
		built := time.Now()
		for ; rows < size/row; rows++ {
			// Half random, half compressible: neither best nor worst case.
			mustExec(h, db, "INSERT INTO t (v) VALUES (randomblob(524288) || zeroblob(524288))")
		}
		mustExec(h, db, "PRAGMA wal_checkpoint(TRUNCATE)")
		// Let the kernel write the database out before measuring.
		_ = exec.Command("sync").Run()
		fmt.Printf("new replica of a %d MiB database (built in %s), %d runs:\n", size>>20, time.Since(built).Round(time.Second), runs)
		fmt.Printf("    %-3s %7s  %9s %9s %5s  %8s %8s %8s %8s %5s  %7s\n", "run", "window",
			"idle tx/s", "xfer tx/s", "ratio", "idle p50", "idle p99", "xfer p50", "xfer p99", "ratio", "in sync")

		var all []snapshotRun
		for i := 0; i < runs; i++ {
			// The idle window must fit before the replica starts: as long as
			// the previous transfer took, with a margin, else a guess.
			idleFor := max(3*time.Second, time.Duration(size/(80<<20))*time.Second)
			if prevWindow > 0 {
				idleFor = max(3*time.Second, prevWindow*5/4)
			}
			r := snapshotOnce(h, primary, bin, pin, idleFor)
			prevWindow = r.window
			all = append(all, r)
			short := ""
			if r.idleShort {
				short = "  (idle window shorter: the writer ran less than a window before the replica)"
			}
			fmt.Printf("    %-3d %6.2fs  %9.0f %9.0f %5.2f  %8s %8s %8s %8s %5.2f  %6.2fs%s\n", i+1, r.window.Seconds(),
				r.idle.rate, r.transfer.rate, r.rateRatio(), us(r.idle.p50), us(r.idle.p99),
				us(r.transfer.p50), us(r.transfer.p99), r.p99Ratio(), r.inSync.Seconds(), short)
			fmt.Printf("        max commit %s idle, %s during; CPU during the catch-up: primary %.2fs, replica %.2fs, writer %.2fs; peak RSS primary %.1f MiB, replica %.1f MiB\n",
				us(r.idle.max), us(r.transfer.max), r.primaryCPU.Seconds(), r.replCPU.Seconds(), r.writerCPU.Seconds(),
				float64(r.primaryRSS)/(1<<20), float64(r.replRSS)/(1<<20))
		}
		// Best of the runs, each window on its own: the machine may be
		// shared, and a window disturbed by other work says nothing about
		// litefs, whichever of the two it is.
		idle, xfer := bestWindow(all, func(r snapshotRun) windowStats { return r.idle }), bestWindow(all, func(r snapshotRun) windowStats { return r.transfer })
		sync, rss := all[0].inSync, max(all[0].primaryRSS, all[0].replRSS)
		for _, r := range all[1:] {
			sync, rss = min(sync, r.inSync), min(rss, max(r.primaryRSS, r.replRSS))
		}
		rate, p99 := xfer.rate/idle.rate, float64(xfer.p99)/float64(max(idle.p99, time.Microsecond))
		fmt.Printf("  best of %d: idle %.0f tx/s, p50 %s, p99 %s; during the transfer %.0f tx/s, p50 %s, p99 %s\n", runs,
			idle.rate, us(idle.p50), us(idle.p99), xfer.rate, us(xfer.p50), us(xfer.p99))
		fmt.Printf("  write rate during the transfer %.2f of idle (target >= 0.8: %s), commit p99 %.2fx idle (target <= 2: %s)\n",
			rate, verdict(rate >= 0.8), p99, verdict(p99 <= 2))
		fmt.Printf("  replica in sync after %.2f s (target < 15 s: %s); peak resident memory %.1f MiB (target < 100 MiB: %s)\n",
			sync.Seconds(), verdict(sync < 15*time.Second), float64(rss)/(1<<20), verdict(rss < 100<<20))
	}
	db.Close()
	fmt.Printf("  load average at end: %s\n", loadAverage())

	// Start-up of the primary with the largest database: it checksums all of it.
	primary.Stop(h)
	restart := time.Now()
	primary.Start(h)
	fmt.Printf("  start-up of the primary with it:        %8.2f s     (target < 2 s: %s)\n", time.Since(restart).Seconds(), verdict(time.Since(restart) < 2*time.Second))
	primary.Stop(h)
}

// snapshotOnce runs the writer for idleFor, starts a new replica, waits
// until it caught up, and measures both windows.
func snapshotOnce(h *harness, primary *testutil.Node, bin string, pin bool, idleFor time.Duration) snapshotRun {
	// The writer commits into the database being copied, as an
	// application with one database would.
	w := startWriter(h, primary.Path("big.db"), pin, 0)
	writerStart := time.Now()
	time.Sleep(idleFor) // the idle window is the end of this
	logFrom := fileSize(primary.LogPath)
	pcpu, wcpu := cpuTime(primary.PID()), cpuTime(w.cmd.Process.Pid)

	testutil.BinaryPath = pinned(h, bin, pin, 1)
	start := time.Now()
	replica := testutil.StartReplica(h, primary, testutil.NodeConfig{Name: "replica", Production: true})
	testutil.BinaryPath = pinned(h, bin, pin, 0)
	replica.WaitLog(h, "caught up with the primary", 10*time.Minute)
	var r snapshotRun
	r.inSync = time.Since(start)
	r.primaryCPU = cpuTime(primary.PID()) - pcpu
	r.writerCPU = cpuTime(w.cmd.Process.Pid) - wcpu
	r.replCPU = cpuTime(replica.PID())
	r.primaryRSS, r.replRSS = peakRSS(primary.PID()), peakRSS(replica.PID())
	recs := w.stop(h)

	from, to := snapshotTimes(h, primary.LogPath, logFrom, "big.db")
	r.window = to.Sub(from)
	idleTo := start
	idleFrom := idleTo.Add(-r.window)
	if idleFrom.Before(writerStart) {
		idleFrom, r.idleShort = writerStart, true
	}
	r.idle = window(recs, idleFrom, idleTo)
	r.transfer = window(recs, from, to)

	replica.Stop(h)
	os.RemoveAll(replica.Root)
	// Let the replica's writes reach the disk before the next run's idle window.
	_ = exec.Command("sync").Run()
	return r
}

// snapshotTimes finds, in the log at path from offset on, when the primary
// began sending db's snapshot and when it finished.
func snapshotTimes(h *harness, path string, offset int64, db string) (from, to time.Time) {
	f, err := os.Open(path)
	if err != nil {
		h.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		h.Fatal(err)
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, " db="+db+" ") {
			continue
		}
		switch {
		case strings.Contains(line, `msg="sending snapshot"`):
			from = logTime(h, line)
		case strings.Contains(line, `msg="snapshot sent"`):
			to = logTime(h, line)
		}
	}
	if from.IsZero() || to.IsZero() {
		h.Fatalf("%s: no snapshot of %s sent after offset %d", path, db, offset)
	}
	return from, to
}

// logTime parses the time= field of a log line.
func logTime(h *harness, line string) time.Time {
	f, _, _ := strings.Cut(strings.TrimPrefix(line, "time="), " ")
	t, err := time.Parse(time.RFC3339Nano, f)
	if err != nil {
		h.Fatalf("log line %q: %v", line, err)
	}
	return t
}

// pinned returns a script that runs bin on cpu, or bin if !pin.
func pinned(h *harness, bin string, pin bool, cpu int) string {
	if !pin {
		return bin
	}
	path := filepath.Join(h.dir, fmt.Sprintf("litefs-cpu%d", cpu))
	script := fmt.Sprintf("#!/bin/sh\nexec taskset -c %d %q \"$@\"\n", cpu, bin)
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		h.Fatal(err)
	}
	return path
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// parseMiB parses a comma-separated list of sizes in MiB into bytes.
func parseMiB(h *harness, flagName, list string) []int64 {
	var sizes []int64
	for _, f := range strings.Split(list, ",") {
		n, err := strconv.ParseInt(strings.TrimSpace(f), 10, 64)
		if err != nil || n <= 0 {
			h.Fatalf("%s: %q is not a size in MiB (want positive integers separated by commas)", flagName, f)
		}
		sizes = append(sizes, n<<20)
	}
	return sizes
}

func us(d time.Duration) string { return d.Round(time.Microsecond).String() }

// bestWindow returns the best of the runs' windows that get picks: the
// highest rate, and the lowest latencies, each on its own.
func bestWindow(runs []snapshotRun, get func(snapshotRun) windowStats) windowStats {
	best := get(runs[0])
	for _, r := range runs[1:] {
		w := get(r)
		best.rate = max(best.rate, w.rate)
		best.p50, best.p99, best.max = min(best.p50, w.p50), min(best.p99, w.p99), min(best.max, w.max)
	}
	return best
}
