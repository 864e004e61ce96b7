package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// LockFile is the file in the data directory an open store holds an
// exclusive flock on, and which names its process. Its name is none of
// the store's own ("id", "dbs", dot-prefixed temporary files) nor the
// lease's ("clusterid").
const LockFile = "litefs.lock"

// DirInUseError is returned by Open when another store holds the data
// directory: two stores on one directory would each write changesets
// under the same TXIDs, and a restart would keep one's and lose the
// other's acknowledged commits.
type DirInUseError struct {
	Dir string
	PID int // the owner's process, 0 if its lock file does not say yet
}

func (e *DirInUseError) Error() string {
	if e.PID == 0 {
		return fmt.Sprintf("data.dir %s is in use by another litefs process", e.Dir)
	}
	return fmt.Sprintf("data.dir %s is in use by litefs pid %d", e.Dir, e.PID)
}

// dirLock is an exclusive flock on a data directory's lock file. The
// kernel drops it when the process dies, however it dies, so a crashed
// owner's file never blocks the next start; only its content is stale.
type dirLock struct {
	f *os.File
}

// lockDir creates dir if needed, takes its lock and writes this process's
// PID into the lock file, or returns a *DirInUseError naming the process
// that holds it.
func lockDir(dir string) (*dirLock, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("lock data directory: %w", err)
	}
	path := filepath.Join(dir, LockFile)
	// The file is opened close-on-exec (as os does for every file), so the
	// application litefs starts does not inherit the lock and keep it past
	// litefs's own exit.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock data directory: %w", err)
	}
	if err := flock(f, syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		defer f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, &DirInUseError{Dir: dir, PID: readPID(f)}
		}
		return nil, fmt.Errorf("lock data directory: flock %s: %w", path, err)
	}
	// The lock is held: the file's content is this process's to replace.
	// It is left in place on release, as removing it would let a process
	// that opened it before the removal lock a file no one else can see.
	if err := f.Truncate(0); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock data directory: %w", err)
	}
	if _, err := f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock data directory: %w", err)
	}
	return &dirLock{f: f}, nil
}

// release empties the lock file, so that it names no owner, and drops the
// lock.
func (l *dirLock) release() error {
	if l == nil || l.f == nil {
		return nil
	}
	terr := l.f.Truncate(0)
	cerr := l.f.Close() // closing the only descriptor drops the flock
	l.f = nil
	if err := errors.Join(terr, cerr); err != nil {
		return fmt.Errorf("release data directory lock: %w", err)
	}
	return nil
}

func flock(f *os.File, how int) error {
	for {
		err := syscall.Flock(int(f.Fd()), how)
		if err != syscall.EINTR {
			return err
		}
	}
}

// readPID reads the owner's PID from its lock file; 0 if the owner has
// not written it yet (it writes right after taking the lock) or the file
// holds something else.
func readPID(f *os.File) int {
	var b [32]byte
	n, _ := f.ReadAt(b[:], 0)
	pid, err := strconv.Atoi(strings.TrimSpace(string(b[:n])))
	if err != nil || pid <= 0 {
		return 0
	}
	return pid
}
