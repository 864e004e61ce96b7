// Command litefs-bench measures litefs against plain SQLite on the same
// machine in the same run, and prints the figures with their ratios.
//
// Every workload is one writer, one row per transaction. A litefs node runs
// as its own process, as in production; the writer uses the real SQLite
// driver through the mount, then the same workload runs in a local
// directory on the same disk.
package main

import (
	"database/sql"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/litefs-project/litefs/internal/testutil"
)

func main() {
	binary := flag.String("litefs", "bin/litefs", "litefs binary to benchmark")
	duration := flag.Duration("duration", 3*time.Second, "how long each write workload runs")
	only := flag.String("only", "write,lag,tls,snapshot,importexport,halt,lease,faults,stall", "which benchmarks to run")
	haltCycles := flag.Int("halt-cycles", 500, "HALT acquire + release cycles measured")
	leaseRuns := flag.Int("lease-runs", 3, "failovers and handoffs measured")
	leaseTTL := flag.Duration("lease-ttl", 10*time.Second, "lease.consul.ttl for the lease benchmark")
	leaseLockDelay := flag.Duration("lease-lock-delay", time.Second, "lease.consul.lock-delay for the lease benchmark")
	faultRuns := flag.Int("fault-runs", 3, "faults of each kind measured")
	lagCommits := flag.Int("lag-commits", 1000, "commits measured for replication lag")
	snapshotMiB := flag.String("snapshot-mib", "256,1024", "sizes of the database a new replica copies, in MiB, comma-separated")
	snapshotRuns := flag.Int("snapshot-runs", 3, "new replicas measured at each snapshot size")
	importMiB := flag.Int64("import-mib", 1024, "size of the database imported and exported, in MiB")
	workdir := flag.String("dir", "", "directory for data (default: a temporary directory)")
	flag.Parse()

	h := newHarness(*workdir)
	defer h.close()
	abs, err := filepath.Abs(*binary)
	if err != nil {
		h.Fatal(err)
	}
	testutil.BinaryPath = abs

	for _, b := range strings.Split(*only, ",") {
		switch b {
		case "write":
			fmt.Printf("write throughput, %s per workload, single writer, one row per transaction:\n", *duration)
			runWriteBench(h, *duration)
		case "lag":
			runLagBench(h, *lagCommits)
		case "tls":
			runTLSBench(h, *lagCommits, *duration)
		case "snapshot":
			runSnapshotBench(h, parseMiB(h, "-snapshot-mib", *snapshotMiB), *snapshotRuns)
		case "importexport":
			runImportExportBench(h, *importMiB<<20, 3)
		case "halt":
			runHaltBench(h, *haltCycles, *duration)
		case "lease":
			runLeaseBench(h, *leaseRuns, *leaseTTL, *leaseLockDelay)
		case "faults":
			runFaultsBench(h, *faultRuns, *leaseTTL, *leaseLockDelay)
		case "stall":
			runStallBench(h)
		default:
			h.Fatalf("unknown benchmark %q", b)
		}
		fmt.Println()
	}
}

// workload is one write benchmark configuration.
type workload struct {
	name    string
	mode    string // journal mode
	sync    string // synchronous setting
	target  float64
	targetS string
}

var workloads = []workload{
	{"WAL, synchronous=NORMAL", "WAL", "NORMAL", 2500, ">= 2500 tx/s"},
	{"WAL, synchronous=FULL", "WAL", "FULL", 1000, ">= 1000 tx/s"},
	{"rollback journal (DELETE)", "DELETE", "FULL", 450, ">= 450 tx/s"},
}

func runWriteBench(h *harness, d time.Duration) {
	node := testutil.StartNode(h, testutil.NodeConfig{Name: "bench", Production: true})

	local := h.TempDir()
	fmt.Printf("  %-28s %12s %12s %8s  %s\n", "workload", "local tx/s", "litefs tx/s", "ratio", "target")
	for _, w := range workloads {
		localRate := writeRate(h, filepath.Join(local, w.mode+".db"), w, d)
		mountRate := writeRate(h, node.Path(strings.ToLower(w.mode)+"-"+strings.ToLower(w.sync)+".db"), w, d)
		fmt.Printf("  %-28s %12.0f %12.0f %8.3f  %s (%s)\n", w.name, localRate, mountRate, mountRate/localRate, w.targetS, verdict(mountRate >= w.target))
	}
	fmt.Printf("  litefs peak resident memory during the run: %.1f MiB\n", float64(peakRSS(node.PID()))/(1<<20))
	node.Stop(h)
}

// writeRate inserts one row per transaction into a fresh database at path
// for duration d and returns transactions per second.
func writeRate(h *harness, path string, w workload, d time.Duration) float64 {
	for _, suffix := range []string{"", "-wal", "-shm", "-journal"} {
		os.Remove(path + suffix)
	}
	db, err := sql.Open("sqlite3", fmt.Sprintf("file:%s?_journal_mode=%s&_synchronous=%s&_busy_timeout=5000", path, w.mode, w.sync))
	if err != nil {
		h.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	if _, err := db.Exec("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"); err != nil {
		h.Fatalf("%s: %v", path, err)
	}
	stmt, err := db.Prepare("INSERT INTO t (v) VALUES (?)")
	if err != nil {
		h.Fatal(err)
	}
	defer stmt.Close()

	// Warm up, then measure.
	for i := 0; i < 200; i++ {
		if _, err := stmt.Exec("warm-up row"); err != nil {
			h.Fatalf("%s: %v", path, err)
		}
	}
	n := 0
	start := time.Now()
	for time.Since(start) < d {
		if _, err := stmt.Exec(fmt.Sprintf("row %d with some text to make it realistic", n)); err != nil {
			h.Fatalf("%s: %v", path, err)
		}
		n++
	}
	return float64(n) / time.Since(start).Seconds()
}

// harness implements testutil.T for a program: failures end the run after
// the cleanups.
type harness struct {
	dir      string
	mu       sync.Mutex
	cleanups []func()
	failed   bool
	n        int
}

func newHarness(dir string) *harness {
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "litefs-bench-"); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	return &harness{dir: dir}
}

func (h *harness) Helper()                 {}
func (h *harness) Failed() bool            { return h.failed }
func (h *harness) Cleanup(fn func())       { h.mu.Lock(); h.cleanups = append(h.cleanups, fn); h.mu.Unlock() }
func (h *harness) Logf(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }
func (h *harness) Errorf(f string, a ...any) {
	h.failed = true
	fmt.Fprintf(os.Stderr, "error: "+f+"\n", a...)
}
func (h *harness) Fatal(a ...any) { h.Fatalf("%s", fmt.Sprint(a...)) }
func (h *harness) Fatalf(f string, a ...any) {
	h.Errorf(f, a...)
	h.close()
	os.Exit(1)
}

func (h *harness) TempDir() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.n++
	dir := filepath.Join(h.dir, fmt.Sprintf("%03d", h.n))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		panic(err)
	}
	return dir
}

func (h *harness) close() {
	h.mu.Lock()
	fns := h.cleanups
	h.cleanups = nil
	h.mu.Unlock()
	for i := len(fns) - 1; i >= 0; i-- {
		fns[i]()
	}
	os.RemoveAll(h.dir)
}
