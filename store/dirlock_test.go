package store

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

func openQuiet(dir string) (*Store, error) {
	return Open(Options{Dir: dir, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
}

// TestOpenRefusesDirInUse: two stores on one data directory would each
// write their own changesets under the same TXIDs, and a restart would
// keep one and lose the other's acknowledged commits. The second Open is
// refused, naming the directory and the owner, and the first store's
// data and writes are unaffected.
func TestOpenRefusesDirInUse(t *testing.T) {
	r := newReplica(t, "a.db")
	m := newTestDB(4096, 1)
	m, b := m.change(t, 3, 1, 2, 3)
	r.apply(m, b)
	dir := r.st.Dir()

	st2, err := openQuiet(dir)
	if err == nil {
		st2.Close()
		t.Fatal("a second store opened a data directory in use")
	}
	want := fmt.Sprintf("data.dir %s is in use by litefs pid %d", dir, os.Getpid())
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("second Open: %v, want it to say %q", err, want)
	}

	// The refused Open changed nothing: the owner still has its data and
	// takes the next changeset.
	r.check(m)
	m, b = m.change(t, 4, 4)
	r.apply(m, b)
	r.checkLog(1, m.pos.TXID)

	// Close releases the directory.
	if err := r.st.Close(); err != nil {
		t.Fatal(err)
	}
	r.st = openReplica(t, dir)
	r.check(m)
}

// TestOpenAfterCrashedOwner: the lock is the kernel's (flock), so a
// process that dies without closing its store does not leave the data
// directory locked, whatever its lock file still says.
func TestOpenAfterCrashedOwner(t *testing.T) {
	dir := t.TempDir()
	child := exec.Command(os.Args[0], "-test.run=^TestDirLockHelperProcess$", "-test.count=1")
	child.Env = append(os.Environ(), "LITEFS_DIRLOCK_HELPER_DIR="+dir)
	child.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := child.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	stdout, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	child.Stderr = os.Stderr
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	defer func() {
		if !killed {
			child.Process.Kill()
			child.Wait()
		}
	}()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "open" {
		t.Fatalf("helper process: %q, %v", line, err)
	}

	if st, err := openQuiet(dir); err == nil {
		st.Close()
		t.Fatal("opened a data directory another process holds")
	} else if want := fmt.Sprintf("data.dir %s is in use by litefs pid %d", dir, child.Process.Pid); !strings.Contains(err.Error(), want) {
		t.Fatalf("Open: %v, want it to say %q", err, want)
	}

	// SIGKILL: the owner's store is never closed.
	if err := child.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	child.Wait()
	killed = true

	st, err := openQuiet(dir)
	if err != nil {
		t.Fatalf("Open after the owner was killed: %v", err)
	}
	defer st.Close()
	if pid := lockFilePID(t, dir); pid != os.Getpid() {
		t.Errorf("lock file names pid %d, want this process's %d", pid, os.Getpid())
	}
}

// TestDirLockHelperProcess is the owner TestOpenAfterCrashedOwner kills:
// it opens a store, says so, and holds it until killed or its stdin closes.
func TestDirLockHelperProcess(t *testing.T) {
	dir := os.Getenv("LITEFS_DIRLOCK_HELPER_DIR")
	if dir == "" {
		t.Skip("run by TestOpenAfterCrashedOwner")
	}
	st, err := openQuiet(dir)
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Println("open")
	io.Copy(io.Discard, os.Stdin)
	st.Close()
	os.Exit(0)
}

// TestOpenStaleLockFile: a lock file left with another PID in it, and no
// lock held, is taken over.
func TestOpenStaleLockFile(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "litefs.lock"), []byte("4194303\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	st, err := openQuiet(dir)
	if err != nil {
		t.Fatalf("Open with a stale lock file: %v", err)
	}
	if pid := lockFilePID(t, dir); pid != os.Getpid() {
		t.Errorf("lock file names pid %d, want %d", pid, os.Getpid())
	}
	if dbs := st.DBs(); len(dbs) != 0 {
		t.Errorf("the lock file shows up as databases: %v", dbs)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	// Closed: the file names no owner, and the directory opens again.
	if b, err := os.ReadFile(filepath.Join(dir, "litefs.lock")); err != nil || len(b) != 0 {
		t.Errorf("lock file after Close: %q, %v; want it empty", b, err)
	}
	st, err = openQuiet(dir)
	if err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
	st.Close()
}

func lockFilePID(t *testing.T, dir string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "litefs.lock"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("lock file holds %q: %v", b, err)
	}
	return pid
}
