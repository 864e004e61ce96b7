package tests

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/litefs-project/litefs/internal/testutil"
)

// lockHolder is a python3 process that takes an fcntl lock on a file in
// the mount and holds it until told to release it or killed.
type lockHolder struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stdout *bufio.Reader
}

// holdLock starts a process holding a POSIX write (or read) lock on
// [start, start+length) of path.
func holdLock(t *testing.T, path string, write bool, start, length int64) *lockHolder {
	t.Helper()
	typ := "fcntl.F_RDLCK"
	if write {
		typ = "fcntl.F_WRLCK"
	}
	script := fmt.Sprintf(`
import fcntl, os, struct, sys
fd = os.open(%q, os.O_RDWR)
fcntl.fcntl(fd, fcntl.F_SETLK, struct.pack('hhllhh', %s, 0, %d, %d, 0, 0))
print("locked", flush=True)
sys.stdin.readline()
fcntl.fcntl(fd, fcntl.F_SETLK, struct.pack('hhllhh', fcntl.F_UNLCK, 0, %d, %d, 0, 0))
print("released", flush=True)
sys.stdin.readline()
`, path, typ, start, length, start, length)
	cmd := exec.Command("python3", "-c", script)
	stdin, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &lockHolder{cmd: cmd, stdin: stdin, stdout: bufio.NewReader(out)}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	h.expect(t, "locked")
	return h
}

func (h *lockHolder) expect(t *testing.T, want string) {
	t.Helper()
	line, err := h.stdout.ReadString('\n')
	if strings.TrimSpace(line) != want {
		t.Fatalf("lock holder said %q (%v), want %q", line, err, want)
	}
}

func (h *lockHolder) release(t *testing.T) {
	t.Helper()
	fmt.Fprintln(h.stdin)
	h.expect(t, "released")
}

func ofdLock(fd int, cmd int, typ int16, start, length int64) error {
	lk := unix.Flock_t{Type: typ, Whence: 0, Start: start, Len: length}
	return unix.FcntlFlock(uintptr(fd), cmd, &lk)
}

func TestPOSIXLocksAcrossProcesses(t *testing.T) {
	n := testutil.StartNode(t, testutil.NodeConfig{})
	conn := testutil.OpenDB(t, n.Path("l.db"), "WAL")
	testutil.Exec(t, conn, "CREATE TABLE t (v)")
	conn.Close()

	for _, name := range []string{"l.db", "l.db-shm"} {
		t.Run(name, func(t *testing.T) {
			path := n.Path(name)
			if name == "l.db-shm" {
				if err := os.WriteFile(path, make([]byte, 32768), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			fd := int(f.Fd())

			holder := holdLock(t, path, true, 120, 8)

			// F_SETLK on an overlapping byte fails at once.
			if err := ofdLock(fd, unix.F_OFD_SETLK, unix.F_WRLCK, 127, 1); !errors.Is(err, syscall.EAGAIN) {
				t.Fatalf("conflicting F_SETLK: got %v, want EAGAIN", err)
			}
			// A read lock conflicts with a write lock too.
			if err := ofdLock(fd, unix.F_OFD_SETLK, unix.F_RDLCK, 120, 1); !errors.Is(err, syscall.EAGAIN) {
				t.Fatalf("conflicting read lock: got %v, want EAGAIN", err)
			}
			// Bytes next to the held range are free.
			if err := ofdLock(fd, unix.F_OFD_SETLK, unix.F_WRLCK, 128, 4); err != nil {
				t.Fatalf("lock next to the held range: %v", err)
			}
			ofdLock(fd, unix.F_OFD_SETLK, unix.F_UNLCK, 128, 4)

			// F_GETLK names the holder.
			lk := unix.Flock_t{Type: unix.F_WRLCK, Start: 100, Len: 50}
			if err := unix.FcntlFlock(uintptr(fd), unix.F_GETLK, &lk); err != nil {
				t.Fatal(err)
			}
			if lk.Type != unix.F_WRLCK || lk.Start != 120 || lk.Len != 8 || int(lk.Pid) != holder.cmd.Process.Pid {
				t.Fatalf("F_GETLK = %+v, want a write lock on 120+8 by pid %d", lk, holder.cmd.Process.Pid)
			}

			// F_SETLKW waits until the holder releases.
			acquired := make(chan error, 1)
			go func() {
				f2, err := os.OpenFile(path, os.O_RDWR, 0)
				if err != nil {
					acquired <- err
					return
				}
				defer f2.Close()
				acquired <- ofdLock(int(f2.Fd()), unix.F_OFD_SETLKW, unix.F_WRLCK, 121, 1)
				ofdLock(int(f2.Fd()), unix.F_OFD_SETLK, unix.F_UNLCK, 121, 1)
			}()
			select {
			case err := <-acquired:
				t.Fatalf("F_SETLKW returned (%v) while the lock was held", err)
			case <-time.After(300 * time.Millisecond):
			}
			holder.release(t)
			if err := <-acquired; err != nil {
				t.Fatalf("F_SETLKW after release: %v", err)
			}

			// Shared locks coexist; the lock of a killed process goes away.
			reader := holdLock(t, path, false, 123, 1)
			if err := ofdLock(fd, unix.F_OFD_SETLK, unix.F_RDLCK, 123, 1); err != nil {
				t.Fatalf("second shared lock: %v", err)
			}
			ofdLock(fd, unix.F_OFD_SETLK, unix.F_UNLCK, 123, 1)
			reader.cmd.Process.Kill()
			reader.cmd.Wait()
			if err := ofdLock(fd, unix.F_OFD_SETLK, unix.F_WRLCK, 123, 1); err != nil {
				t.Fatalf("lock of a killed process was not released: %v", err)
			}
		})
	}
}

// TestLockSemantics checks the owner rules: closing any descriptor of a
// file drops the process's POSIX locks on it, while an OFD lock lasts until
// its own open file description is closed.
func TestLockSemantics(t *testing.T) {
	n := testutil.StartNode(t, testutil.NodeConfig{})
	conn := testutil.OpenDB(t, n.Path("s.db"), "DELETE")
	testutil.Exec(t, conn, "CREATE TABLE t (v)")
	conn.Close()
	path := n.Path("s.db")

	open := func() *os.File {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	probe := open()
	defer probe.Close()
	free := func(start int64) bool {
		err := ofdLock(int(probe.Fd()), unix.F_OFD_SETLK, unix.F_WRLCK, start, 1)
		if err == nil {
			ofdLock(int(probe.Fd()), unix.F_OFD_SETLK, unix.F_UNLCK, start, 1)
		}
		return err == nil
	}

	// OFD lock on a, POSIX lock on b; closing an unrelated descriptor of
	// the same file ends the POSIX lock only.
	a, b, other := open(), open(), open()
	if err := ofdLock(int(a.Fd()), unix.F_OFD_SETLK, unix.F_WRLCK, 10, 1); err != nil {
		t.Fatal(err)
	}
	if err := ofdLock(int(b.Fd()), unix.F_SETLK, unix.F_WRLCK, 20, 1); err != nil {
		t.Fatal(err)
	}
	if free(10) || free(20) {
		t.Fatal("held locks look free")
	}
	other.Close()
	if free(10) {
		t.Fatal("closing another descriptor released an OFD lock")
	}
	if !free(20) {
		t.Fatal("closing a descriptor did not release the process's POSIX lock")
	}
	a.Close()
	if !free(10) {
		t.Fatal("closing the OFD lock's descriptor did not release it")
	}
	b.Close()

	// Upgrading and downgrading one owner's lock, and splitting a range.
	c := open()
	defer c.Close()
	if err := ofdLock(int(c.Fd()), unix.F_OFD_SETLK, unix.F_RDLCK, 30, 10); err != nil {
		t.Fatal(err)
	}
	if err := ofdLock(int(c.Fd()), unix.F_OFD_SETLK, unix.F_WRLCK, 30, 10); err != nil {
		t.Fatalf("upgrade own read lock: %v", err)
	}
	if err := ofdLock(int(c.Fd()), unix.F_OFD_SETLK, unix.F_UNLCK, 34, 2); err != nil {
		t.Fatal(err)
	}
	if !free(34) || !free(35) || free(33) || free(36) {
		t.Fatal("unlocking the middle of a range did not split it")
	}
}

// TestWALReadersInOtherProcesses runs sqlite3 processes that query in a
// loop while this process writes in WAL mode: the shared-memory index is
// mapped by every process. No reader may see an error or a count going
// backwards, and all must see the final count.
func TestWALReadersInOtherProcesses(t *testing.T) {
	n := testutil.StartNode(t, testutil.NodeConfig{})
	path := n.Path("r.db")
	conn := testutil.OpenDB(t, path, "WAL")
	conn.SetMaxOpenConns(1)
	testutil.Exec(t, conn, "CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")

	const inserts = 400
	type result struct {
		counts []int
		err    error
	}
	results := make(chan result, 3)
	stop := make(chan struct{})
	for r := 0; r < 3; r++ {
		go func() {
			cmd := exec.Command("sqlite3", "-batch", path)
			stdin, _ := cmd.StdinPipe()
			out, _ := cmd.StdoutPipe()
			cmd.Stderr = cmd.Stdout
			if err := cmd.Start(); err != nil {
				results <- result{err: err}
				return
			}
			fmt.Fprintln(stdin, ".timeout 10000")
			go func() {
				defer stdin.Close()
				for {
					select {
					case <-stop:
						fmt.Fprintln(stdin, "SELECT count(*) FROM t;")
						return
					default:
						fmt.Fprintln(stdin, "SELECT count(*) FROM t;")
						time.Sleep(time.Millisecond)
					}
				}
			}()
			var res result
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				var c int
				if _, err := fmt.Sscan(sc.Text(), &c); err != nil {
					res.err = fmt.Errorf("reader output %q", sc.Text())
					break
				}
				res.counts = append(res.counts, c)
			}
			cmd.Wait()
			results <- res
		}()
	}
	for i := 0; i < inserts; i++ {
		testutil.Exec(t, conn, "INSERT INTO t (v) VALUES (randomblob(300))")
	}
	close(stop)
	for r := 0; r < 3; r++ {
		res := <-results
		if res.err != nil {
			t.Fatal(res.err)
		}
		for i := 1; i < len(res.counts); i++ {
			if res.counts[i] < res.counts[i-1] {
				t.Fatalf("reader saw the count go from %d to %d", res.counts[i-1], res.counts[i])
			}
		}
		if len(res.counts) == 0 || res.counts[len(res.counts)-1] != inserts {
			t.Fatalf("reader's last count is not %d: %d queries", inserts, len(res.counts))
		}
	}
	checkDB(t, n, "r.db", conn)
}
