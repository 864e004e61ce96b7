package store

import (
	"fmt"
	"syscall"

	"github.com/litefs-project/litefs/internal/rangelock"
	"github.com/litefs-project/litefs/internal/sqlite"
)

// Truncate sets the size of one of the database's files on behalf of the
// process pid: the process ID as lock requests report it, or 0 if it is
// not known.
//
// SQLite truncates the database file only inside a transaction: a commit
// that shrinks it (VACUUM, auto_vacuum), a rollback that plays a journal
// back, and a WAL checkpoint that cuts the file to the committed size. A
// truncation of the database file that changes its content is accepted
// only from a process holding the database's write lock, and becomes part
// of that transaction; any other one is refused with EINVAL, since nothing
// would commit the change and the position would no longer describe the
// content.
func (db *DB) Truncate(kind FileKind, size int64, pid uint32) error {
	db.mu.Lock()
	defer db.mu.Unlock()
	if !db.existsLocked(kind) {
		return ErrNotExist
	}
	switch kind {
	case FileSHM:
		db.resizeSHM(size)
		return nil
	case FilePos, FileLock:
		return fmt.Errorf("truncate %s of %s: %w", kind, db.name, syscall.EACCES)
	}
	if !db.writableLocked() {
		return fmt.Errorf("truncate %s of %s: %w", kind, db.name, ErrReadOnly)
	}
	switch kind {
	case FileDatabase:
		return db.truncateDatabase(size, pid)
	case FileJournal:
		return db.truncateJournal(size)
	default:
		return db.truncateWAL(size)
	}
}

// truncateDatabase handles a truncation of the database file. Caller holds
// db.mu.
func (db *DB) truncateDatabase(size int64, pid uint32) error {
	committed := int64(db.chk.PageN()) * int64(db.chk.pageSize)
	switch {
	case len(db.walState.pages) > 0:
		// In WAL mode only a checkpoint changes the database file. It cuts
		// the file to the size of the transaction it copied, or sets it to
		// the size to come before copying (with mmap); a writer may have
		// committed since, so that size need not be the committed one. Any
		// such truncation keeps every committed page the WAL does not hold,
		// and readers see what they saw. One that cuts such a page would
		// lose content.
		if pgno, cut := db.cutsUnloggedPage(size); cut {
			return db.refuseTruncate(size, committed, fmt.Sprintf("the database is in WAL mode, and page %d, which only the database file holds, would be cut off", pgno))
		}
	case db.writeLockHeldBy(pid):
		// Part of the rollback-journal transaction in progress, committed
		// with it (or, with no journal, once the write lock is released).
		db.tx.truncated = true
	case size == committed && !db.tx.pending():
		// Cuts off only what is past the committed content, or sets the
		// size it already has: nothing changes.
	default:
		return db.refuseTruncate(size, committed, "no transaction is in progress in the truncating process (it holds no write lock on the database)")
	}
	if err := db.beforeDatabaseTruncate(size); err != nil {
		return err
	}
	if err := db.dbFile.Truncate(size); err != nil {
		return fmt.Errorf("truncate %s: %w", db.name, err)
	}
	return nil
}

// cutsUnloggedPage reports the first committed page that truncating the
// database file to size would cut off and that has no committed frame in
// the WAL. Caller holds db.mu.
func (db *DB) cutsUnloggedPage(size int64) (uint32, bool) {
	ps := int64(db.chk.pageSize)
	if ps == 0 || size >= int64(db.chk.PageN())*ps {
		return 0, false
	}
	lockPgno := sqlite.LockPgno(db.chk.pageSize)
	for pgno := uint32(size/ps) + 1; pgno <= db.chk.PageN(); pgno++ {
		if _, ok := db.walState.pages[pgno]; !ok && pgno != lockPgno {
			return pgno, true
		}
	}
	return 0, false
}

func (db *DB) refuseTruncate(size, committed int64, why string) error {
	db.logger.Warn("refused a truncation of the database file", "size", size, "committed_size", committed, "reason", why)
	return fmt.Errorf("truncate %s to %d bytes (committed size %d): %s: %w", db.name, size, committed, why, syscall.EINVAL)
}

// writeLockHeldBy reports whether process pid holds a write lock on any of
// the database's lock bytes (RESERVED, PENDING or EXCLUSIVE), as SQLite
// does while it writes a transaction. A pid of 0 (unknown) matches the
// lock of any process. Locks the store takes itself (to apply changesets
// or hold writers) have no process and never match. Caller holds db.mu.
func (db *DB) writeLockHeldBy(pid uint32) bool {
	for _, l := range db.dbLocks.Snapshot() {
		if l.Type == rangelock.Write && l.PID != 0 && (pid == 0 || l.PID == pid) &&
			l.Start <= sqlite.SharedFirst+sqlite.SharedSize-1 && l.End >= sqlite.PendingByte {
			return true
		}
	}
	return false
}
