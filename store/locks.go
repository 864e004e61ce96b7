package store

import (
	"context"
	"fmt"
	"syscall"

	"github.com/litefs-project/litefs/internal/rangelock"
)

// table returns the lock table of a file kind, or nil if it cannot be locked.
func (db *DB) table(kind FileKind) *rangelock.Table {
	switch kind {
	case FileDatabase:
		return db.dbLocks
	case FileSHM:
		return db.shmLocks
	case FileLock:
		return db.haltLocks
	}
	return nil
}

// Lock applies an F_SETLK request: it takes, changes or releases a byte
// range lock without waiting, returning false if another owner's lock
// conflicts. Releasing the last write lock of a database may commit pages
// written without a journal; that commit may be a *Pending (see Pending).
func (db *DB) Lock(kind FileKind, req rangelock.Lock) (bool, error) {
	t := db.table(kind)
	if t == nil {
		return false, fmt.Errorf("lock %s of %s: %w", kind, db.name, syscall.EINVAL)
	}
	if kind == FileLock {
		if req.Type == rangelock.Write {
			// Taking the HALT byte may ask the primary: LockHalt, off
			// the FUSE loop, with a context.
			return false, fmt.Errorf("lock %s of %s: a write lock on the lock file goes through LockHalt: %w", kind, db.name, syscall.EINVAL)
		}
		if !t.TryLock(req) {
			return false, nil
		}
		db.checkHaltReleased()
		return true, nil
	}
	if db.turn.gated(kind, req) || !t.TryLock(req) {
		switch {
		case req.Type == rangelock.Read:
			// Readers are owed a turn by applies.
			db.turn.refuse()
		case isWriterLock(kind, req):
			// Writers are owed a turn by HALT grants.
			db.turn.writers.refuse()
		}
		return false, nil
	}
	return true, db.afterLocalLock(kind, req)
}

// LockHalt applies a lock request on the NAME-lock file, waiting for a
// conflicting lock to go if wait is set. Taking the HALT byte on a replica
// asks the primary for it, so callers run it off the FUSE loop; ctx is the
// request's own.
func (db *DB) LockHalt(ctx context.Context, req rangelock.Lock, wait bool) (bool, error) {
	return db.lockHalt(ctx, req, wait)
}

// LockWait applies an F_SETLKW request, waiting for conflicting locks to go.
func (db *DB) LockWait(ctx context.Context, kind FileKind, req rangelock.Lock) error {
	t := db.table(kind)
	if t == nil {
		return fmt.Errorf("lock %s of %s: %w", kind, db.name, syscall.EINVAL)
	}
	if kind == FileLock {
		_, err := db.lockHalt(ctx, req, true)
		return err
	}
	if err := t.Lock(ctx, req); err != nil {
		return err
	}
	return db.afterLocalLock(kind, req)
}

// afterLocalLock follows a lock request from SQLite that succeeded.
func (db *DB) afterLocalLock(kind FileKind, req rangelock.Lock) error {
	if kind == FileLock {
		return nil
	}
	if req.Type != rangelock.Unlock {
		db.turn.serve()
	}
	if isWriterLock(kind, req) {
		db.turn.writers.serve()
	}
	if kind == FileSHM && db.turn.applying.Load() {
		// An apply waiting for rollback-mode readers tells WAL-mode
		// connections apart by their WAL index locks.
		db.dbLocks.Wake()
	}
	if req.Type != rangelock.Write && kind == FileDatabase {
		return db.afterDatabaseUnlock()
	}
	return nil
}

// QueryLock answers F_GETLK: a lock that would block req, if any.
func (db *DB) QueryLock(kind FileKind, req rangelock.Lock) (rangelock.Lock, bool) {
	if t := db.table(kind); t != nil {
		return t.Conflict(req)
	}
	return rangelock.Lock{}, false
}

// ReleaseOwner drops the POSIX locks of owner on a file: the process closed
// one of its descriptors for it. Like Lock, it may return a *Pending.
func (db *DB) ReleaseOwner(kind FileKind, owner rangelock.Owner) error {
	if t := db.table(kind); t != nil {
		t.ReleaseOwner(owner)
	}
	if kind == FileLock {
		db.checkHaltReleased()
	}
	if kind == FileDatabase {
		return db.afterDatabaseUnlock()
	}
	return nil
}

// ReleaseHandle drops the locks taken through an open file handle: its last
// descriptor was closed, which ends its OFD locks. Like Lock, it may
// return a *Pending.
func (db *DB) ReleaseHandle(kind FileKind, handle uint64) error {
	if t := db.table(kind); t != nil {
		t.ReleaseHandle(handle)
	}
	if kind == FileLock {
		db.checkHaltReleased()
	}
	if kind == FileDatabase {
		return db.afterDatabaseUnlock()
	}
	return nil
}

// afterDatabaseUnlock commits pages written to the database file outside
// of any journal once nobody holds a write lock on it any more. Nobody
// waits for the answer of such a commit, so a failure is only logged; a
// *Pending is returned to be waited for.
func (db *DB) afterDatabaseUnlock() error {
	db.mu.Lock()
	defer db.mu.Unlock()
	if db.closed || !db.tx.pending() {
		return nil
	}
	err := db.commitOrphanWrites()
	if err != nil && PendingOf(err) == nil {
		db.logger.Error("commit writes made without a journal", "err", err)
		return nil
	}
	return err
}
