// Package litefs is the client side of a litefs mount for Go applications:
// the HALT lock that lets any node write, and questions about the cluster
// that the mount answers.
//
// All functions take paths inside the mount. They use only the files the
// mount provides (NAME-lock, NAME-pos, .primary), so they work with LiteFS
// too, and LiteFS clients work against litefs.
package litefs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// HaltByte is the byte of the NAME-lock file whose write lock is the HALT
// lock.
const HaltByte = 72

// Halt takes the HALT lock on the database at path, waiting for it. On a
// replica the node obtains the lock from the primary and catches up with
// it; until Unhalt, this node's connections may write to the database and
// every commit is sent to the primary before it returns. The lock is an
// open file description lock: it is released by Unhalt, by closing the
// returned file, or when the process exits.
func Halt(path string) (*os.File, error) {
	return halt(path, unix.F_OFD_SETLKW)
}

// TryHalt is Halt without waiting: it returns an error wrapping
// unix.EAGAIN when another holder has the lock.
func TryHalt(path string) (*os.File, error) {
	return halt(path, unix.F_OFD_SETLK)
}

func halt(path string, cmd int) (*os.File, error) {
	f, err := os.OpenFile(path+"-lock", os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("halt %s: %w", path, err)
	}
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: HaltByte, Len: 1}
	for {
		err = unix.FcntlFlock(f.Fd(), cmd, &lk)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("halt %s: %w", path, err)
	}
	return f, nil
}

// Unhalt releases a HALT lock taken by Halt and closes its file.
func Unhalt(f *os.File) error {
	lk := unix.Flock_t{Type: unix.F_UNLCK, Whence: 0, Start: HaltByte, Len: 1}
	err := unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("unhalt %s: %w", strings.TrimSuffix(f.Name(), "-lock"), err)
	}
	return nil
}

// WithHalt runs fn holding the HALT lock on the database at path.
func WithHalt(path string, fn func() error) error {
	f, err := Halt(path)
	if err != nil {
		return err
	}
	defer Unhalt(f)
	return fn()
}

// IsPrimary reports whether the node whose mount is dir is the primary.
func IsPrimary(dir string) (bool, error) {
	_, err := os.Stat(filepath.Join(dir, ".primary"))
	if errors.Is(err, os.ErrNotExist) {
		return true, nil
	}
	return false, err
}

// PrimaryHostname returns the primary's hostname as the node whose mount is
// dir knows it, or "" if that node is the primary.
func PrimaryHostname(dir string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dir, ".primary"))
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	} else if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// TXID returns the transaction ID of the database at path on this node.
func TXID(path string) (uint64, error) {
	b, err := os.ReadFile(path + "-pos")
	if err != nil {
		return 0, err
	}
	s, _, ok := strings.Cut(strings.TrimSpace(string(b)), "/")
	if !ok {
		return 0, fmt.Errorf("%s-pos: unexpected content %q", path, b)
	}
	return strconv.ParseUint(s, 16, 64)
}

// WaitTXID waits until the database at path on this node has reached
// transaction txid, as a replica does when it catches up with a write made
// elsewhere.
func WaitTXID(ctx context.Context, path string, txid uint64) error {
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	for {
		cur, err := TXID(path)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		if cur >= txid {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for txid %d on %s (at %d): %w", txid, path, cur, ctx.Err())
		case <-t.C:
		}
	}
}
