package store

import (
	"fmt"
	"slices"
	"syscall"

	"github.com/litefs-project/litefs/internal/rangelock"
	"github.com/litefs-project/litefs/internal/sqlite"
	"github.com/litefs-project/litefs/ltx"
)

// This file turns SQLite's writes into transactions. SQLite commits in one
// of two ways, and litefs watches for both:
//
//   - Rollback journal (DELETE, TRUNCATE, PERSIST): pages are written in
//     place into the database file while a hot journal holds the originals;
//     the transaction commits when the journal stops being hot (deleted,
//     truncated to zero, or its header zeroed). Pages written since the last
//     commit are tracked as dirty.
//   - WAL: frames are appended to the WAL; the transaction commits when a
//     frame carrying a non-zero "database size" field is complete. Database
//     file writes in WAL mode are checkpoints, which do not change the
//     logical content, and are recognised by the page having a committed
//     frame in the WAL.

// writeDatabase handles a write to the database file. Caller holds db.mu.
func (db *DB) writeDatabase(p []byte, off int64) (int, error) {
	pageSize := db.filePageSize
	if off == 0 {
		hdr, err := sqlite.ParseDBHeader(p)
		if err != nil {
			return 0, fmt.Errorf("write page 1 of %s: %w: %v", db.name, ErrInvalidPage, err)
		}
		pageSize = hdr.PageSize
	}
	if pageSize == 0 {
		return 0, fmt.Errorf("write to %s at offset %d: %w: the first write must be page 1 with a SQLite header", db.name, off, ErrUnaligned)
	}
	if off%int64(pageSize) != 0 || len(p)%int(pageSize) != 0 {
		return 0, fmt.Errorf("write of %d bytes to %s at offset %d: %w (page size %d)", len(p), db.name, off, ErrUnaligned, pageSize)
	}

	// Pages are marked dirty before the write: a write that fails half way
	// still changed the file, and the commit reads back what is there.
	first := uint32(off/int64(pageSize)) + 1
	for i := uint32(0); i < uint32(len(p))/pageSize; i++ {
		pgno := first + i
		if _, checkpoint := db.walState.pages[pgno]; !checkpoint {
			db.tx.dirty[pgno] = struct{}{}
		}
	}
	if err := db.beforeDatabaseWrite(off, int64(len(p))); err != nil {
		return 0, err
	}
	n, err := db.dbFile.WriteAt(p, off)
	if err != nil {
		return n, fmt.Errorf("write %s: %w", db.name, err)
	}
	db.filePageSize = pageSize
	return n, nil
}

func (db *DB) writeJournal(p []byte, off int64) (int, error) {
	// PERSIST mode (and exclusive locking mode) commit by zeroing the
	// journal header instead of deleting the file; the header is written
	// once the commit is.
	if off == 0 && len(p) >= len(sqlite.JournalMagic) && !sqlite.IsHotJournalHeader(p) {
		err := db.commitRollback(func() error {
			if _, err := db.journal.WriteAt(p, off); err != nil {
				return fmt.Errorf("write journal of %s: %w", db.name, err)
			}
			return nil
		})
		if err != nil && PendingOf(err) == nil {
			return 0, err
		}
		return len(p), err
	}
	n, err := db.journal.WriteAt(p, off)
	if err != nil {
		return n, fmt.Errorf("write journal of %s: %w", db.name, err)
	}
	return n, nil
}

func (db *DB) truncateJournal(size int64) error {
	truncate := func() error {
		if err := db.journal.Truncate(size); err != nil {
			return fmt.Errorf("truncate journal of %s: %w", db.name, err)
		}
		return nil
	}
	if size == 0 {
		return db.commitRollback(truncate)
	}
	return truncate()
}

func (db *DB) removeJournal() error {
	return db.commitRollback(func() error {
		if err := db.journal.Truncate(0); err != nil {
			return fmt.Errorf("remove journal of %s: %w", db.name, err)
		}
		db.journalExists = false
		return nil
	})
}

// journalHot reports whether the journal holds a transaction in progress.
// Caller holds db.mu.
func (db *DB) journalHot() bool {
	if !db.journalExists {
		return false
	}
	b := make([]byte, len(sqlite.JournalMagic))
	n, _ := db.journal.ReadAt(b, 0)
	return sqlite.IsHotJournalHeader(b[:n])
}

// commitOrphanWrites commits pages written to the database file with no
// journal and no write lock held: journal_mode=MEMORY or OFF once SQLite
// drops its lock, or a plain copy of a database file into the mount once
// it is closed. Caller holds db.mu.
func (db *DB) commitOrphanWrites() error {
	if !db.tx.pending() || db.journalHot() {
		return nil
	}
	if db.dbLocks.Locked(sqlite.PendingByte, sqlite.SharedFirst+sqlite.SharedSize-1, rangelock.Write) {
		return nil
	}
	return db.commitRollback(nil)
}

// commitRollback commits the pages written to the database file since the
// last commit, then calls onCommit (if set) to finish the file operation
// that committed it; with nothing to commit it calls onCommit at once.
// Caller holds db.mu.
func (db *DB) commitRollback(onCommit func() error) error {
	if !db.tx.pending() {
		return runHook(onCommit)
	}
	tx := db.tx
	db.tx = rollbackTx{dirty: make(map[uint32]struct{})}

	fi, err := db.dbFile.Stat()
	if err != nil {
		return err
	}
	var pageSize, commit uint32
	if fi.Size() >= sqlite.HeaderSize {
		b := make([]byte, sqlite.HeaderSize)
		if _, err := db.dbFile.ReadAt(b, 0); err != nil {
			return fmt.Errorf("read header of %s: %w", db.name, err)
		}
		hdr, err := sqlite.ParseDBHeader(b)
		if err != nil {
			return fmt.Errorf("commit %s: %w: %v", db.name, ErrInvalidPage, err)
		}
		pageSize = hdr.PageSize
		commit = uint32(fi.Size() / int64(pageSize))
		if n, ok := hdr.InHeaderPageN(); ok {
			commit = n
		}
	}

	pgnos := make([]uint32, 0, len(tx.dirty))
	for pgno := range tx.dirty {
		if pgno <= commit {
			pgnos = append(pgnos, pgno)
		}
	}
	if tx.truncated && pageSize != 0 {
		// Pages the truncation cut off that the header still counts read
		// as zeros now, whatever they held: they are part of the change,
		// so the position describes what readers see.
		lockPgno := sqlite.LockPgno(pageSize)
		for pgno := uint32(fi.Size()/int64(pageSize)) + 1; pgno <= commit; pgno++ {
			if _, ok := tx.dirty[pgno]; !ok && pgno != lockPgno {
				pgnos = append(pgnos, pgno)
			}
		}
	}
	slices.Sort(pgnos)
	return db.commit(change{
		pageSize:        pageSize,
		commit:          commit,
		pgnos:           pgnos,
		read:            db.readDatabasePage,
		skipIfUnchanged: true,
		sync:            tx.synced,
		onCommit:        onCommit,
	})
}

func runHook(f func() error) error {
	if f == nil {
		return nil
	}
	return f()
}

// writeWAL handles a write to the WAL file. Caller holds db.mu.
func (db *DB) writeWAL(p []byte, off int64) (int, error) {
	if err := db.beforeWALWrite(off, int64(len(p))); err != nil {
		return 0, err
	}
	n, err := db.wal.WriteAt(p, off)
	if err != nil {
		return n, fmt.Errorf("write wal of %s: %w", db.name, err)
	}

	// A new header starts a new WAL generation. SQLite only restarts the
	// WAL once every frame has been checkpointed, so the database file
	// holds everything the old frames did.
	if off == 0 && len(p) >= sqlite.WALHeaderSize {
		if hdr, err := sqlite.ParseWALHeader(p); err == nil {
			db.walState.reset()
			db.walState.hdr, db.walState.valid = hdr, true
			db.walState.commitEnd = sqlite.WALHeaderSize
		}
		return n, nil
	}

	w := &db.walState
	if !w.valid {
		return n, nil
	}
	end := off + int64(len(p))
	frameSize := w.hdr.FrameSize()
	if end <= w.commitEnd || (end-sqlite.WALHeaderSize)%frameSize != 0 {
		return n, nil
	}
	frameOff := end - frameSize
	fh := make([]byte, sqlite.WALFrameHeaderSize)
	if _, err := db.wal.ReadAt(fh, frameOff); err != nil {
		return n, fmt.Errorf("read wal frame header of %s: %w", db.name, err)
	}
	hdr := sqlite.ParseWALFrameHeader(fh)
	if hdr.Commit == 0 || hdr.Salt1 != w.hdr.Salt1 || hdr.Salt2 != w.hdr.Salt2 {
		return n, nil
	}
	if err := db.commitWAL(w.commitEnd, end); err != nil {
		if PendingOf(err) != nil {
			return n, err // the write succeeds once the primary has it
		}
		// SQLite sees the write fail and rolls the transaction back; its
		// next transaction overwrites these frames. The frames are left in
		// place: the kernel may have split SQLite's write, and SQLite
		// retries the rest of a short write, so they may yet be committed.
		return 0, err
	}
	return n, nil
}

// commitWAL commits the frames in [start, end), the last of which is a
// commit frame. Caller holds db.mu.
func (db *DB) commitWAL(start, end int64) error {
	w := &db.walState
	txn := sqlite.WALTxn{Start: start, End: end}
	fh := make([]byte, sqlite.WALFrameHeaderSize)
	for off := start; off < end; off += w.hdr.FrameSize() {
		if _, err := db.wal.ReadAt(fh, off); err != nil {
			return fmt.Errorf("read wal frame header of %s at %d: %w", db.name, off, err)
		}
		hdr := sqlite.ParseWALFrameHeader(fh)
		if hdr.Salt1 != w.hdr.Salt1 || hdr.Salt2 != w.hdr.Salt2 {
			return fmt.Errorf("commit %s: wal frame at offset %d (txn %d-%d) has salts %x/%x, wal header %x/%x: %w", db.name, off, start, end, hdr.Salt1, hdr.Salt2, w.hdr.Salt1, w.hdr.Salt2, syscall.EIO)
		}
		txn.Frames = append(txn.Frames, sqlite.WALFrameRef{Pgno: hdr.Pgno, Offset: off})
		txn.Commit = hdr.Commit
	}
	return db.applyWALTxn(txn)
}

// applyWALTxn commits one WAL transaction and records its frames as the
// latest versions of their pages. Caller holds db.mu.
func (db *DB) applyWALTxn(txn sqlite.WALTxn) error {
	w := &db.walState
	latest := make(map[uint32]int64, len(txn.Frames))
	for _, f := range txn.Frames {
		latest[f.Pgno] = f.Offset // later frames win
	}
	pgnos := make([]uint32, 0, len(latest))
	for pgno := range latest {
		if pgno <= txn.Commit {
			pgnos = append(pgnos, pgno)
		}
	}
	slices.Sort(pgnos)

	read := func(pgno uint32, buf []byte) error {
		if off, ok := latest[pgno]; ok {
			return readFullAt(db.wal, buf, off+sqlite.WALFrameHeaderSize)
		}
		return db.readPage(pgno, buf)
	}
	// The frames become the latest versions of their pages once the
	// transaction is committed, which on a replica under the HALT lock is
	// once the primary has it.
	return db.commit(change{
		pageSize:  w.hdr.PageSize,
		commit:    txn.Commit,
		pgnos:     pgnos,
		read:      read,
		walOffset: txn.Start,
		walSize:   txn.End - txn.Start,
		walSalt1:  w.hdr.Salt1,
		walSalt2:  w.hdr.Salt2,
		onCommit: func() error {
			for _, pgno := range pgnos {
				w.pages[pgno] = latest[pgno]
			}
			for pgno := range w.pages {
				if pgno > txn.Commit {
					delete(w.pages, pgno)
				}
			}
			w.commitEnd = txn.End
			return nil
		},
	})
}

func (db *DB) truncateWAL(size int64) error {
	if err := db.beforeWALTruncate(size); err != nil {
		return err
	}
	if err := db.wal.Truncate(size); err != nil {
		return fmt.Errorf("truncate wal of %s: %w", db.name, err)
	}
	if size < db.walState.commitEnd {
		// wal_checkpoint(TRUNCATE), or a journal_size_limit after a restart:
		// every committed frame is in the database file by now.
		db.walState.reset()
	}
	return nil
}

func (db *DB) removeWAL() error {
	if err := db.beforeWALTruncate(0); err != nil {
		return err
	}
	if err := db.wal.Truncate(0); err != nil {
		return fmt.Errorf("remove wal of %s: %w", db.name, err)
	}
	db.walState.reset()
	db.walExists = false
	return nil
}

// readDatabasePage reads a page straight from the database file.
func (db *DB) readDatabasePage(pgno uint32, buf []byte) error {
	return readFullAt(db.dbFile, buf, int64(pgno-1)*int64(len(buf)))
}

// readPage reads a page of the committed logical content: its latest frame
// in the WAL, else the database file. Caller holds db.mu, or has exclusive
// access during recovery.
func (db *DB) readPage(pgno uint32, buf []byte) error {
	if off, ok := db.walState.pages[pgno]; ok {
		return readFullAt(db.wal, buf, off+sqlite.WALFrameHeaderSize)
	}
	return db.readDatabasePage(pgno, buf)
}

// change is one transaction to commit.
type change struct {
	pageSize uint32
	commit   uint32     // database size in pages after the transaction
	pgnos    []uint32   // pages written, ascending, all <= commit
	read     pageReader // reads a page's new content

	full            bool // include every page, as after a page size change
	skipIfUnchanged bool // a rolled-back rollback-journal transaction leaves the content as it was
	sync            bool // SQLite made the transaction durable; so must the log

	walOffset, walSize int64
	walSalt1, walSalt2 uint32

	// onCommit finishes the file operation that committed the transaction,
	// once it is the database's position (or at once if there was nothing
	// to commit).
	onCommit func() error
}

// commit appends the changeset for c to the log and makes it the
// database's position. On a replica under the HALT lock it returns a
// *Pending instead, and the position moves when the primary has the
// changeset. Caller holds db.mu.
func (db *DB) commit(c change) error {
	if db.pending != nil {
		return db.errCommitInFlight()
	}
	lockPgno := sqlite.LockPgno(max(c.pageSize, sqlite.MinPageSize))
	full := c.full || db.pos.TXID == 0 || (db.chk.pageSize != 0 && db.chk.pageSize != c.pageSize)
	if full {
		// The first changeset is a snapshot, and a page size change
		// rewrites every page: include them all.
		c.pgnos = c.pgnos[:0]
		for pgno := uint32(1); pgno <= c.commit; pgno++ {
			if pgno != lockPgno {
				c.pgnos = append(c.pgnos, pgno)
			}
		}
	}

	// New checksums of the changed pages, and the resulting database sum.
	sums := make([]ltx.Checksum, len(c.pgnos))
	buf := make([]byte, c.pageSize)
	h := ltx.NewHasher()
	xor := db.chk.xor
	if full {
		xor = 0
	}
	for i, pgno := range c.pgnos {
		if err := c.read(pgno, buf); err != nil {
			return fmt.Errorf("commit %s: read page %d: %w", db.name, pgno, err)
		}
		sums[i] = checksumPage(h, pgno, buf)
		if !full {
			xor ^= db.chk.Get(pgno)
		}
		xor ^= sums[i]
	}
	if !full {
		for pgno := c.commit + 1; pgno <= db.chk.PageN(); pgno++ {
			xor ^= db.chk.Get(pgno)
		}
	}
	post := ltx.ChecksumFlag | xor
	if c.skipIfUnchanged && !full && post == db.chk.Sum() && c.commit == db.chk.PageN() {
		return runHook(c.onCommit)
	}
	if db.pos.TXID == 0 && c.commit == 0 {
		return runHook(c.onCommit) // nothing was ever written
	}

	hdr := ltx.Header{
		Version:   ltx.Version,
		PageSize:  c.pageSize,
		Commit:    c.commit,
		MinTXID:   db.pos.TXID + 1,
		MaxTXID:   db.pos.TXID + 1,
		Timestamp: now().UnixMilli(),
		WALOffset: c.walOffset,
		WALSize:   c.walSize,
		WALSalt1:  c.walSalt1,
		WALSalt2:  c.walSalt2,
		NodeID:    db.store.nodeID,
	}
	if hdr.MinTXID > 1 {
		hdr.PreApplyChecksum = db.pos.PostApplyChecksum
	}
	pos, err := db.log.Append(hdr, post, func(enc *ltx.Encoder) error {
		for _, pgno := range c.pgnos {
			if err := c.read(pgno, buf); err != nil {
				return fmt.Errorf("read page %d: %w", pgno, err)
			}
			if err := enc.EncodePage(ltx.PageHeader{Pgno: pgno}, buf); err != nil {
				return fmt.Errorf("encode page %d: %w", pgno, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("commit %s: %w", db.name, err)
	}
	publish := func() error {
		if c.sync {
			if err := db.log.Sync(); err != nil {
				return fmt.Errorf("commit %s: %w", db.name, err)
			}
		}
		if full {
			db.chk = &pageChecksums{pageSize: c.pageSize}
		}
		db.chk.pageSize = c.pageSize
		db.chk.Resize(c.commit)
		for i, pgno := range c.pgnos {
			db.chk.Set(pgno, sums[i])
		}
		db.pos = pos
		db.commits.Add(1)
		db.notifyLocked()
		if db.store.opts.StrictVerify {
			if err := db.verifyLocked(c.read); err != nil {
				return err
			}
		}
		return runHook(c.onCommit)
	}
	if db.forwardingLocked() {
		p := &Pending{db: db, txid: pos.TXID, remote: db.halt.remote, publish: publish, done: make(chan struct{})}
		db.pending = p
		return p
	}
	return publish()
}

// verifyLocked recomputes the checksum of the whole database from its files
// and compares it with the incrementally maintained position.
func (db *DB) verifyLocked(read pageReader) error {
	full, err := checksumPages(db.chk.pageSize, db.chk.PageN(), read)
	if err != nil {
		return fmt.Errorf("verify %s: %w", db.name, err)
	}
	if full.Sum() != db.pos.PostApplyChecksum {
		db.logger.Error("strict verify: checksum mismatch", "txid", db.pos.TXID,
			"position", db.pos.PostApplyChecksum, "content", full.Sum())
		return fmt.Errorf("verify %s at txid %s: content checksum %s does not match position %s: %w",
			db.name, db.pos.TXID, full.Sum(), db.pos.PostApplyChecksum, syscall.EIO)
	}
	return nil
}
