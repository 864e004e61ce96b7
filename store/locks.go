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
// conflicts.
func (db *DB) Lock(kind FileKind, req rangelock.Lock) (bool, error) {
	t := db.table(kind)
	if t == nil {
		return false, fmt.Errorf("lock %s of %s: %w", kind, db.name, syscall.EINVAL)
	}
	if kind == FileLock {
		return db.lockHalt(context.Background(), req, false)
	}
	if db.turn.gated(kind, req) || !t.TryLock(req) {
		if req.Type == rangelock.Read {
			// Only readers are owed a turn; writers wait for
			// their own locks (and are held off under HALT).
			db.turn.refuse()
		}
		return false, nil
	}
	db.afterLocalLock(kind, req)
	return true, nil
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
	db.afterLocalLock(kind, req)
	return nil
}

// afterLocalLock follows a lock request from SQLite that succeeded.
func (db *DB) afterLocalLock(kind FileKind, req rangelock.Lock) {
	if kind == FileLock {
		return
	}
	if req.Type != rangelock.Unlock {
		db.turn.serve()
	}
	if kind == FileSHM && db.turn.applying.Load() {
		// An apply waiting for rollback-mode readers tells WAL-mode
		// connections apart by their WAL index locks.
		db.dbLocks.Wake()
	}
	if req.Type != rangelock.Write && kind == FileDatabase {
		db.afterDatabaseUnlock()
	}
}

// QueryLock answers F_GETLK: a lock that would block req, if any.
func (db *DB) QueryLock(kind FileKind, req rangelock.Lock) (rangelock.Lock, bool) {
	if t := db.table(kind); t != nil {
		return t.Conflict(req)
	}
	return rangelock.Lock{}, false
}

// ReleaseOwner drops the POSIX locks of owner on a file: the process closed
// one of its descriptors for it.
func (db *DB) ReleaseOwner(kind FileKind, owner rangelock.Owner) {
	if t := db.table(kind); t != nil {
		t.ReleaseOwner(owner)
	}
	if kind == FileLock {
		db.checkHaltReleased()
	}
	if kind == FileDatabase {
		db.afterDatabaseUnlock()
	}
}

// ReleaseHandle drops the locks taken through an open file handle: its last
// descriptor was closed, which ends its OFD locks.
func (db *DB) ReleaseHandle(kind FileKind, handle uint64) {
	if t := db.table(kind); t != nil {
		t.ReleaseHandle(handle)
	}
	if kind == FileLock {
		db.checkHaltReleased()
	}
	if kind == FileDatabase {
		db.afterDatabaseUnlock()
	}
}

// afterDatabaseUnlock commits pages written to the database file outside
// of any journal once nobody holds a write lock on it any more.
func (db *DB) afterDatabaseUnlock() {
	db.mu.Lock()
	defer db.mu.Unlock()
	if db.closed || !db.tx.pending() {
		return
	}
	if err := db.commitOrphanWrites(); err != nil {
		db.logger.Error("commit writes made without a journal", "err", err)
	}
}
