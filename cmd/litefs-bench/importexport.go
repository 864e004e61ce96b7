package main

import (
	"database/sql"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/litefs-project/litefs/internal/testutil"
)

// runImportExportBench builds a database of size bytes outside the mount,
// then times, best of runs, copying it with plain tools (cp and fsync,
// sqlite3's .backup) against `litefs import` of it on a primary with one
// replica (until the CLI returns, and until the replica has it too) and
// `litefs export` of it back out. The CLI's stderr is not a terminal here,
// so no progress is drawn.
func runImportExportBench(h *harness, size int64, runs int) {
	dir := h.TempDir()
	src := filepath.Join(dir, "src.db")
	built := time.Now()
	buildBlobDB(h, src, size)
	st, err := os.Stat(src)
	if err != nil {
		h.Fatal(err)
	}
	fmt.Printf("import and export of a %d MiB database (built in %s), best of %d on a shared 2-core machine:\n",
		st.Size()>>20, time.Since(built).Round(time.Second), runs)
	mb := float64(st.Size()) / 1e6
	line := func(what string, d time.Duration) {
		fmt.Printf("  %-44s %7.2f s %8.0f MB/s\n", what, d.Seconds(), mb/d.Seconds())
	}

	out := filepath.Join(dir, "copy.db")
	line("cp + fsync (baseline)", best(runs, func() time.Duration {
		os.Remove(out)
		start := time.Now()
		copyFileSync(h, src, out)
		return time.Since(start)
	}))
	line("sqlite3 .backup (baseline)", best(runs, func() time.Duration {
		os.Remove(out)
		start := time.Now()
		if b, err := exec.Command("sqlite3", src, ".backup '"+out+"'").CombinedOutput(); err != nil {
			h.Fatalf("sqlite3 .backup: %v: %s", err, b)
		}
		return time.Since(start)
	}))

	primary, replica := startPair(h, nil)
	var importCLI, importReplica time.Duration
	for i := 0; i < runs; i++ {
		start := time.Now()
		litefsCLI(h, "import", "-url", primary.URL(), "-name", "big.db", src)
		cli := time.Since(start)
		replica.WaitPos(h, "big.db", primary.Pos(h, "big.db"), 10*time.Minute)
		rep := time.Since(start)
		if i == 0 || cli < importCLI {
			importCLI = cli
		}
		if i == 0 || rep < importReplica {
			importReplica = rep
		}
	}
	line("litefs import (until the CLI returns)", importCLI)
	line("litefs import (until the replica has it)", importReplica)
	line("litefs export (from the primary)", best(runs, func() time.Duration {
		os.Remove(out)
		start := time.Now()
		litefsCLI(h, "export", "-url", primary.URL(), "-name", "big.db", out)
		return time.Since(start)
	}))
	line("litefs export (from the replica)", best(runs, func() time.Duration {
		os.Remove(out)
		start := time.Now()
		litefsCLI(h, "export", "-url", replica.URL(), "-name", "big.db", out)
		return time.Since(start)
	}))
	os.Remove(out)
	replica.Stop(h)
	primary.Stop(h)
}

// best runs fn n times and returns the shortest duration it reported.
func best(n int, fn func() time.Duration) time.Duration {
	var min time.Duration
	for i := 0; i < n; i++ {
		if d := fn(); i == 0 || d < min {
			min = d
		}
	}
	return min
}

// buildBlobDB writes a rollback-journal database of about size bytes at
// path: rows of 1 MiB, half random and half zeros, so that compression
// neither has it all nor nothing to do.
func buildBlobDB(h *harness, path string, size int64) {
	db, err := sql.Open("sqlite3", "file:"+path+"?_journal_mode=DELETE&_synchronous=OFF")
	if err != nil {
		h.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	mustExec(h, db, "CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
	const row = 1 << 20
	for i := int64(0); i < size/row; i++ {
		mustExec(h, db, "INSERT INTO t (v) VALUES (randomblob(524288) || zeroblob(524288))")
	}
	if err := db.Close(); err != nil {
		h.Fatal(err)
	}
	// Let the kernel write it out before anything is measured.
	exec.Command("sync").Run()
}

// copyFileSync copies src to dst and fsyncs dst.
func copyFileSync(h *harness, src, dst string) {
	in, err := os.Open(src)
	if err != nil {
		h.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		h.Fatal(err)
	}
	defer out.Close()
	if _, err := io.Copy(out, in); err != nil {
		h.Fatal(err)
	}
	if err := out.Sync(); err != nil {
		h.Fatal(err)
	}
}

// litefsCLI runs a litefs subcommand and fails the run if it fails.
func litefsCLI(h *harness, args ...string) {
	if b, err := exec.Command(testutil.BinaryPath, args...).CombinedOutput(); err != nil {
		h.Fatalf("litefs %v: %v: %s", args, err, b)
	}
}
