package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/litefs-project/litefs/internal/rangelock"
	"github.com/litefs-project/litefs/internal/sqlite"
)

// This file handles a node changing role. A replica's database file holds
// the whole committed content and its WAL stays empty (see apply.go); a
// primary's committed pages may still sit in its WAL, and a transaction
// may be half written. Before a former primary applies anything from the
// new one, Demote folds the committed WAL into the database file and rolls
// back what was never committed.

// holdWrites waits for the database's in-flight write transaction to end
// and keeps new ones out under owner, which must be a hold owner. It takes
// the locks SQLite writers take: RESERVED on the database file and the WAL
// write lock.
func (db *DB) holdWrites(ctx context.Context, owner rangelock.Owner) error {
	reserved := rangelock.Lock{Owner: owner, Start: sqlite.ReservedByte, End: sqlite.ReservedByte, Type: rangelock.Write}
	walWrite := rangelock.Lock{Owner: owner, Start: shmLockWrite, End: shmLockWrite, Type: rangelock.Write}
	if err := db.dbLocks.Lock(ctx, reserved); err != nil {
		return fmt.Errorf("hold writes on %s: %w", db.name, err)
	}
	if err := db.shmLocks.Lock(ctx, walWrite); err != nil {
		db.unholdWrites(owner)
		return fmt.Errorf("hold writes on %s: %w", db.name, err)
	}
	return nil
}

// unholdWrites releases what holdWrites took under owner, and only that.
func (db *DB) unholdWrites(owner rangelock.Owner) {
	db.shmLocks.TryLock(rangelock.Lock{Owner: owner, Start: shmLockWrite, End: shmLockWrite, Type: rangelock.Unlock})
	db.dbLocks.TryLock(rangelock.Lock{Owner: owner, Start: sqlite.ReservedByte, End: sqlite.ReservedByte, Type: rangelock.Unlock})
}

// Demote stops local writes and brings every database's files to the
// shape a replica keeps: committed content in the database file alone.
func (s *Store) Demote(ctx context.Context) error {
	s.SetWritable(false)
	var errs []error
	for _, db := range s.DBs() {
		if err := db.settle(ctx, 0); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// settle rolls back an interrupted rollback-journal transaction and copies
// the WAL's committed pages into the database file, with readers out.
// held is the hold owner that keeps writers out meanwhile, if any.
func (db *DB) settle(ctx context.Context, held rangelock.Owner) error {
	if err := db.awaitPending(ctx); err != nil {
		return fmt.Errorf("settle %s: %w", db.name, err)
	}
	db.mu.Lock()
	needed := db.unsettledLocked()
	db.mu.Unlock()
	if !needed {
		return nil
	}
	unlock, err := db.lockReaders(ctx, held)
	if err != nil {
		return fmt.Errorf("settle %s: %w", db.name, err)
	}
	defer unlock()

	db.mu.Lock()
	err = db.settleLocked()
	pageSize := db.chk.pageSize
	db.mu.Unlock()
	if err != nil {
		return fmt.Errorf("settle %s: %w", db.name, err)
	}
	db.afterApply(nil, pageSize)
	return nil
}

// unsettledLocked reports whether settle has work to do. Caller holds db.mu.
func (db *DB) unsettledLocked() bool {
	return db.journalHot() || db.tx.pending() || len(db.walState.pages) > 0 || db.walState.commitEnd > sqlite.WALHeaderSize
}

// settleLocked does settle's work, if any. Caller holds db.mu and the
// reader locks.
func (db *DB) settleLocked() error {
	if !db.unsettledLocked() {
		return nil
	}
	if db.journalHot() {
		if err := db.rollbackHotJournal(); err != nil {
			return err
		}
		db.journalExists = false
	} else if db.tx.pending() {
		db.logger.Warn("uncommitted writes without a journal are left in the database file", "pages", len(db.tx.dirty))
	}
	db.tx = rollbackTx{dirty: make(map[uint32]struct{})}

	if n := len(db.walState.pages); n > 0 {
		buf := make([]byte, db.chk.pageSize)
		for pgno := range db.walState.pages {
			if err := db.readPage(pgno, buf); err != nil {
				return err
			}
			off := int64(pgno-1) * int64(len(buf))
			if err := db.beforeDatabaseWrite(off, int64(len(buf))); err != nil {
				return err
			}
			if _, err := db.dbFile.WriteAt(buf, off); err != nil {
				return err
			}
		}
		db.logger.Info("copied committed WAL pages into the database file", "pages", n, "pos", db.pos.String())
	}
	size := int64(db.chk.PageN()) * int64(db.chk.pageSize)
	if err := db.beforeDatabaseTruncate(size); err != nil {
		return err
	}
	if err := db.dbFile.Truncate(size); err != nil {
		return err
	}
	if err := db.dbFile.Sync(); err != nil {
		return err
	}
	if err := db.beforeWALTruncate(0); err != nil {
		return err
	}
	if err := db.wal.Truncate(0); err != nil {
		return err
	}
	db.walState.reset()
	return nil
}
