package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"syscall"

	"github.com/litefs-project/litefs/internal/rangelock"
	"github.com/litefs-project/litefs/internal/sqlite"
	"github.com/litefs-project/litefs/ltx"
)

// This file is the replica side of replication: changesets and snapshots
// from the primary are verified completely before anything touches the
// database, then written straight into the database file while the SQLite
// locks that readers use keep them out, so a reader sees each transaction
// whole or not at all. The replica's WAL stays empty.

// ErrMismatch is returned when a changeset does not fit the database it is
// applied to: not the next TXID, or checksums that do not agree.
var ErrMismatch = errors.New("changeset does not match the database")

// applyOwner is the lock owner the daemon itself uses.
const applyOwner rangelock.Owner = 0x4c69746546530001

// maxInvalidations bounds per-page cache invalidations after an apply;
// beyond it the whole file is invalidated at once.
const maxInvalidations = 64

// Positions returns the position of every database.
func (s *Store) Positions() map[string]ltx.Pos {
	m := make(map[string]ltx.Pos)
	for _, db := range s.DBs() {
		m[db.Name()] = db.Pos()
	}
	return m
}

// ApplyChangeset verifies and applies one encoded changeset from the
// primary to the named database, creating the database if the changeset
// is its first. data holds the whole LTX file.
func (s *Store) ApplyChangeset(ctx context.Context, name string, data io.ReaderAt, size int64) (ltx.Pos, error) {
	db := s.DB(name)
	if db == nil {
		var err error
		if db, err = s.createDB(name, true); err != nil {
			return ltx.Pos{}, err
		}
	}
	return db.applyChangeset(ctx, data, size)
}

// ApplySnapshot replaces the named database with a snapshot streamed from
// the primary, creating it if needed. The snapshot is decoded into a new
// file and verified completely before it replaces the database.
func (s *Store) ApplySnapshot(ctx context.Context, name string, r io.Reader) (ltx.Pos, error) {
	db := s.DB(name)
	if db == nil {
		var err error
		if db, err = s.createDB(name, true); err != nil {
			return ltx.Pos{}, err
		}
	}
	return db.applySnapshot(ctx, r)
}

// DropDB deletes a database that the primary deleted.
func (s *Store) DropDB(name string) error {
	if s.DB(name) == nil {
		return nil
	}
	if err := s.deleteDB(name); err != nil {
		return err
	}
	inv := s.invalidator()
	for _, k := range []FileKind{FileDatabase, FileJournal, FileWAL, FileSHM, FilePos, FileLock} {
		inv.InvalidateEntry(name + k.Suffix())
	}
	return nil
}

// applyChangeset verifies data against the database, then applies it. A
// changeset this node already has (its own, sent to the primary under the
// HALT lock and streamed back) is skipped.
func (db *DB) applyChangeset(ctx context.Context, data io.ReaderAt, size int64) (ltx.Pos, error) {
	return db.applyChangesetHeld(ctx, data, size, 0)
}

// applyChangesetHeld is applyChangeset while the hold owned by held keeps
// local writers out (0 for none).
func (db *DB) applyChangesetHeld(ctx context.Context, data io.ReaderAt, size int64, held rangelock.Owner) (ltx.Pos, error) {
	// A commit of this node's waiting for the primary comes first: the
	// changeset may be that very commit, coming back.
	if err := db.awaitPending(ctx); err != nil {
		return ltx.Pos{}, err
	}
	if pos, ok := db.alreadyHas(data, size); ok {
		return pos, nil
	}
	hdr, trailer, pgnos, err := db.verifyChangeset(io.NewSectionReader(data, 0, size))
	if err != nil {
		return ltx.Pos{}, err
	}

	unlock, err := db.lockReaders(ctx, held)
	if err != nil {
		return ltx.Pos{}, err
	}
	defer unlock()

	db.mu.Lock()
	if db.pending != nil {
		err := db.errCommitInFlight()
		db.mu.Unlock()
		return db.Pos(), err
	}
	// Pages committed locally under the HALT lock may still be in the
	// WAL; they go into the database file before anything is written over
	// them. The kernel may cache the file's old content of those pages
	// (readers found them in the WAL until now), so the whole file's
	// cache goes after the apply, whether or not it succeeds.
	settled := db.unsettledLocked()
	if err := db.settleLocked(); err != nil {
		db.mu.Unlock()
		db.afterApply(nil, hdr.PageSize)
		return db.Pos(), fmt.Errorf("apply changeset to %s: %w", db.name, err)
	}
	pos, err := db.writeChangeset(hdr, trailer, io.NewSectionReader(data, 0, size))
	db.mu.Unlock()
	if settled {
		pgnos = nil
	}
	if err != nil {
		if settled {
			db.afterApply(nil, hdr.PageSize)
		}
		return pos, err
	}
	db.afterApply(pgnos, hdr.PageSize)
	return pos, nil
}

// alreadyHas reports whether the changeset in data is one this node
// committed itself (under the HALT lock) and the primary sent back: made
// here, already in the log with the same post-apply checksum. Any other
// changeset that does not continue the database is refused.
func (db *DB) alreadyHas(data io.ReaderAt, size int64) (ltx.Pos, bool) {
	hdr, err := ltx.DecodeHeader(io.NewSectionReader(data, 0, size))
	if err != nil || hdr.NodeID != db.store.nodeID {
		return ltx.Pos{}, false
	}
	cur := db.Pos()
	if hdr.MaxTXID > cur.TXID {
		return ltx.Pos{}, false
	}
	info, err := db.log.Info(hdr.MaxTXID)
	if err != nil {
		return ltx.Pos{}, false
	}
	_, trailer, err := ltx.Verify(io.NewSectionReader(data, 0, size))
	if err != nil || trailer.PostApplyChecksum != info.Pos().PostApplyChecksum {
		return ltx.Pos{}, false
	}
	return cur, true
}

// verifyChangeset decodes a whole changeset and checks that it continues
// the database: next TXID, pre-apply checksum equal to the position, file
// checksum, every new page of a database it grows, and a post-apply
// checksum equal to what the database's content will be once the pages
// are written. It returns the pages.
func (db *DB) verifyChangeset(r io.Reader) (ltx.Header, ltx.Trailer, []uint32, error) {
	db.mu.Lock()
	defer db.mu.Unlock()
	if db.closed {
		return ltx.Header{}, ltx.Trailer{}, nil, ErrNotExist
	}
	dec := ltx.NewDecoder(r)
	dec.SetRetainPageIndex(false)
	if err := dec.DecodeHeader(); err != nil {
		return ltx.Header{}, ltx.Trailer{}, nil, fmt.Errorf("changeset for %s: %w", db.name, err)
	}
	hdr := dec.Header()
	if hdr.MinTXID != hdr.MaxTXID || hdr.MinTXID != db.pos.TXID+1 ||
		(hdr.MinTXID > 1 && hdr.PreApplyChecksum != db.pos.PostApplyChecksum) {
		return hdr, ltx.Trailer{}, nil, fmt.Errorf("%w: changeset %s-%s (pre-apply %s) for %s at %s",
			ErrMismatch, hdr.MinTXID, hdr.MaxTXID, hdr.PreApplyChecksum, db.name, db.pos)
	}
	full := hdr.IsSnapshot() || hdr.PageSize != db.chk.pageSize
	xor := db.chk.xor
	if full {
		xor = 0
	}
	pgnos := []uint32{} // not nil: nil means the whole file to afterApply
	buf := make([]byte, hdr.PageSize)
	h := ltx.NewHasher()
	for {
		var ph ltx.PageHeader
		if err := dec.DecodePage(&ph, buf); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return hdr, ltx.Trailer{}, nil, fmt.Errorf("changeset %s for %s: %w", hdr.MinTXID, db.name, err)
		}
		if !full {
			xor ^= db.chk.Get(ph.Pgno)
		}
		xor ^= checksumPage(h, ph.Pgno, buf)
		pgnos = append(pgnos, ph.Pgno)
	}
	if err := dec.Close(); err != nil {
		return hdr, ltx.Trailer{}, nil, fmt.Errorf("changeset %s for %s: %w", hdr.MinTXID, db.name, err)
	}
	if full && !coversAllPages(pgnos, hdr.Commit, hdr.PageSize) {
		return hdr, ltx.Trailer{}, nil, fmt.Errorf("%w: changeset %s for %s changes the page size but not every page", ErrMismatch, hdr.MinTXID, db.name)
	}
	if !full {
		for pgno := hdr.Commit + 1; pgno <= db.chk.PageN(); pgno++ {
			xor ^= db.chk.Get(pgno)
		}
		// A transaction that grows the database writes its new pages.
		// Without them the file would grow by zeros that the checksums
		// do not count, and a size the input does not back would cost
		// memory for page checksums.
		if old := db.chk.PageN(); hdr.Commit > old {
			n, want := newPages(pgnos, old), expectedPages(hdr.Commit, hdr.PageSize)-expectedPages(old, hdr.PageSize)
			if n != want {
				return hdr, ltx.Trailer{}, nil, fmt.Errorf("%w: changeset %s for %s grows it from %d to %d pages but holds %d of the %d new pages",
					ErrMismatch, hdr.MinTXID, db.name, old, hdr.Commit, n, want)
			}
		}
	}
	trailer := dec.Trailer()
	if sum := ltx.ChecksumFlag | xor; sum != trailer.PostApplyChecksum {
		return hdr, trailer, nil, fmt.Errorf("%w: changeset %s for %s: post-apply checksum %s, but applying it to this replica gives %s",
			ErrMismatch, hdr.MinTXID, db.name, trailer.PostApplyChecksum, sum)
	}
	return hdr, trailer, pgnos, nil
}

// newPages counts the pages of pgnos (ascending) beyond a database of
// pageN pages.
func newPages(pgnos []uint32, pageN uint32) uint32 {
	i, _ := slices.BinarySearch(pgnos, pageN+1)
	return uint32(len(pgnos) - i)
}

// coversAllPages reports whether pgnos, distinct and ascending, are every
// page of a database of commit pages.
func coversAllPages(pgnos []uint32, commit, pageSize uint32) bool {
	return uint32(len(pgnos)) == expectedPages(commit, pageSize)
}

// expectedPages is the number of pages a changeset holding a whole database
// of commit pages has: all but the lock page.
func expectedPages(commit, pageSize uint32) uint32 {
	if commit >= sqlite.LockPgno(pageSize) {
		return commit - 1
	}
	return commit
}

// writeChangeset writes a verified changeset into the database file and
// appends it to the log. The page checksums and the position change only
// once all of that succeeded; a failure after the first page was written
// leaves the file between two versions, so reads of it fail (db.damaged)
// until an apply succeeds: the changeset's pages, written again, repair it.
// Caller holds db.mu and the reader locks.
func (db *DB) writeChangeset(hdr ltx.Header, trailer ltx.Trailer, r io.ReadSeeker) (ltx.Pos, error) {
	if db.closed {
		return db.pos, ErrNotExist
	}
	if hdr.MinTXID != db.pos.TXID+1 {
		return db.pos, fmt.Errorf("%w: changeset %s for %s, which moved to %s meanwhile", ErrMismatch, hdr.MinTXID, db.name, db.pos)
	}
	// Nothing is written unless the log can take the changeset after.
	if lp := db.log.Pos(); lp != db.pos {
		return db.pos, fmt.Errorf("apply changeset %s to %s: the log is at %s, the database at %s: %w", hdr.MinTXID, db.name, lp, db.pos, syscall.EIO)
	}
	dec := ltx.NewDecoder(r)
	dec.SetRetainPageIndex(false)
	if err := dec.DecodeHeader(); err != nil {
		return db.pos, err
	}
	type pageSum struct {
		pgno uint32
		sum  ltx.Checksum
	}
	var sums []pageSum
	buf := make([]byte, hdr.PageSize)
	h := ltx.NewHasher()
	written := false
	fail := func(err error) (ltx.Pos, error) {
		if written {
			db.damaged = fmt.Errorf("changeset %s was written in part: %v", hdr.MinTXID, err)
			db.logger.Error("apply failed after writing part of a changeset; the database file reads as an I/O error until an apply succeeds", "txid", hdr.MinTXID.String(), "err", err)
		}
		return db.pos, err
	}
	for {
		var ph ltx.PageHeader
		if err := dec.DecodePage(&ph, buf); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return fail(err)
		}
		off := int64(ph.Pgno-1) * int64(hdr.PageSize)
		if err := db.beforeDatabaseWrite(off, int64(hdr.PageSize)); err != nil {
			return fail(err)
		}
		written = true
		if _, err := db.dbFile.WriteAt(buf, off); err != nil {
			return fail(fmt.Errorf("apply changeset %s to %s: %w", hdr.MinTXID, db.name, err))
		}
		sums = append(sums, pageSum{ph.Pgno, checksumPage(h, ph.Pgno, buf)})
	}
	size := int64(hdr.Commit) * int64(hdr.PageSize)
	if err := db.beforeDatabaseTruncate(size); err != nil {
		return fail(err)
	}
	if err := db.dbFile.Truncate(size); err != nil {
		return fail(fmt.Errorf("apply changeset %s to %s: %w", hdr.MinTXID, db.name, err))
	}
	if _, err := r.Seek(0, io.SeekStart); err != nil {
		return fail(err)
	}
	pos, err := db.log.AppendEncoded(hdr, trailer, r)
	if err != nil {
		return fail(fmt.Errorf("apply changeset %s to %s: %w", hdr.MinTXID, db.name, err))
	}

	if hdr.IsSnapshot() || hdr.PageSize != db.chk.pageSize {
		db.chk = &pageChecksums{pageSize: hdr.PageSize}
	}
	for _, ps := range sums {
		db.chk.Set(ps.pgno, ps.sum)
	}
	db.chk.pageSize = hdr.PageSize
	db.chk.Resize(hdr.Commit)
	db.filePageSize = hdr.PageSize
	db.damaged = nil
	db.pos = pos
	db.noteJournalMode()
	db.notifyLocked()
	return pos, nil
}

// applySnapshot decodes a snapshot into a new file beside the database,
// verifying it as it goes, and swaps it in only once it is complete.
func (db *DB) applySnapshot(ctx context.Context, r io.Reader) (ltx.Pos, error) {
	tmpPath := filepath.Join(db.dir, databaseFile+".snapshot")
	tmp, err := os.OpenFile(tmpPath, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return ltx.Pos{}, fmt.Errorf("snapshot of %s: %w", db.name, err)
	}
	defer func() {
		tmp.Close()
		os.Remove(tmpPath)
	}()

	dec := ltx.NewDecoder(r)
	dec.SetRetainPageIndex(false)
	if err := dec.DecodeHeader(); err != nil {
		return ltx.Pos{}, fmt.Errorf("snapshot of %s: %w", db.name, err)
	}
	hdr := dec.Header()
	if !hdr.IsSnapshot() {
		return ltx.Pos{}, fmt.Errorf("%w: snapshot of %s starts at txid %s", ErrMismatch, db.name, hdr.MinTXID)
	}
	chk := &pageChecksums{pageSize: hdr.PageSize}
	buf := make([]byte, hdr.PageSize)
	h := ltx.NewHasher()
	pw := newRunWriter(tmp, hdr.PageSize)
	for {
		var ph ltx.PageHeader
		if err := dec.DecodePage(&ph, buf); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return ltx.Pos{}, fmt.Errorf("snapshot of %s: %w", db.name, err)
		}
		if err := pw.Write(ph.Pgno, buf); err != nil {
			return ltx.Pos{}, fmt.Errorf("snapshot of %s: %w", db.name, err)
		}
		chk.Set(ph.Pgno, checksumPage(h, ph.Pgno, buf))
	}
	if err := pw.Flush(); err != nil {
		return ltx.Pos{}, fmt.Errorf("snapshot of %s: %w", db.name, err)
	}
	// The decoder checks that a snapshot's pages run in order from page 1
	// but not that they reach its size; a short one must not pass.
	if want := expectedPages(hdr.Commit, hdr.PageSize); dec.PageN() != int(want) {
		return ltx.Pos{}, fmt.Errorf("%w: snapshot of %s has %d pages, its size needs %d", ErrMismatch, db.name, dec.PageN(), want)
	}
	// Close verifies the file checksum and, for a snapshot, that the pages
	// add up to the post-apply checksum.
	if err := dec.Close(); err != nil {
		return ltx.Pos{}, fmt.Errorf("snapshot of %s: %w", db.name, err)
	}
	chk.Resize(hdr.Commit)
	pos := ltx.Pos{TXID: hdr.MaxTXID, PostApplyChecksum: dec.Trailer().PostApplyChecksum}
	if chk.Sum() != pos.PostApplyChecksum {
		return ltx.Pos{}, fmt.Errorf("%w: snapshot of %s: content checksum %s, snapshot says %s", ErrMismatch, db.name, chk.Sum(), pos.PostApplyChecksum)
	}
	if err := tmp.Truncate(int64(hdr.Commit) * int64(hdr.PageSize)); err != nil {
		return ltx.Pos{}, err
	}
	if err := tmp.Sync(); err != nil {
		return ltx.Pos{}, err
	}

	if err := db.awaitPending(ctx); err != nil {
		return ltx.Pos{}, err
	}
	unlock, err := db.lockReaders(ctx, 0)
	if err != nil {
		return ltx.Pos{}, err
	}
	defer unlock()
	db.mu.Lock()
	if db.pending != nil {
		err := db.errCommitInFlight()
		db.mu.Unlock()
		return ltx.Pos{}, err
	}
	err = db.swapInSnapshot(tmpPath, chk, pos)
	db.mu.Unlock()
	if err != nil {
		return ltx.Pos{}, err
	}
	db.afterApply(nil, hdr.PageSize)
	return pos, nil
}

// swapInSnapshot replaces the database file with a verified snapshot file.
// Caller holds db.mu and the reader locks.
func (db *DB) swapInSnapshot(path string, chk *pageChecksums, pos ltx.Pos) error {
	if db.closed {
		return ErrNotExist
	}
	if err := db.beforeDatabaseTruncate(0); err != nil {
		return err
	}
	if err := os.Rename(path, filepath.Join(db.dir, databaseFile)); err != nil {
		return fmt.Errorf("install snapshot of %s: %w", db.name, err)
	}
	f, err := os.OpenFile(filepath.Join(db.dir, databaseFile), os.O_RDWR, 0o644)
	if err != nil {
		return fmt.Errorf("install snapshot of %s: %w", db.name, err)
	}
	db.dbFile.Close()
	db.dbFile = f
	if err := db.beforeWALTruncate(0); err != nil {
		return err
	}
	if err := db.wal.Truncate(0); err != nil {
		return err
	}
	db.walState.reset()
	db.tx = rollbackTx{dirty: make(map[uint32]struct{})}
	db.chk, db.pos, db.filePageSize = chk, pos, chk.pageSize
	db.damaged = nil
	if err := db.log.Reset(pos); err != nil {
		return fmt.Errorf("install snapshot of %s: %w", db.name, err)
	}
	db.noteJournalMode()
	db.notifyLocked()
	db.logger.Info("installed snapshot", "pos", pos.String())
	return nil
}

// noteJournalMode makes the WAL file exist, empty, when the database is in
// WAL mode: SQLite cannot open a WAL-mode database read-only without one.
// Caller holds db.mu.
func (db *DB) noteJournalMode() {
	b := make([]byte, sqlite.HeaderSize)
	if err := readFullAt(db.dbFile, b, 0); err != nil {
		return
	}
	if hdr, err := sqlite.ParseDBHeader(b); err == nil && hdr.IsWAL() {
		db.walExists = true
	}
}

// lockReaders takes the SQLite locks that keep local readers out while the
// database changes underneath them, and returns their release. See
// readerTurn for how applies and readers share the locks.
//
// The WAL index's writer, checkpointer, recovery and reader locks keep out
// connections in WAL mode. The database's PENDING lock stops new readers in
// rollback mode, and the wait lets the ones mid-transaction finish. A
// connection in WAL mode holds a shared lock on the database for as long as
// it is open; it is recognised by its hold on the WAL index's DMS byte and
// is already kept out by the WAL index locks.
//
// held is the owner of a write hold the caller has on the database (0 for
// none): the WAL write lock is already its, and it keeps writers out.
func (db *DB) lockReaders(ctx context.Context, held rangelock.Owner) (func(), error) {
	if err := db.turn.wait(ctx); err != nil {
		return nil, err
	}
	db.turn.applying.Store(true)
	shm := rangelock.Lock{Owner: applyOwner, Start: shmLockWrite, End: shmLockRead4, Type: rangelock.Write}
	if held != 0 && db.shmLocks.Holds(held, shmLockWrite, shmLockWrite, rangelock.Write) {
		shm.Start++ // writers are held off already
	}
	pending := rangelock.Lock{Owner: applyOwner, Start: sqlite.PendingByte, End: sqlite.PendingByte, Type: rangelock.Write}
	release := func() {
		db.dbLocks.TryLock(rangelock.Lock{Owner: applyOwner, Start: pending.Start, End: pending.End, Type: rangelock.Unlock})
		db.shmLocks.TryLock(rangelock.Lock{Owner: applyOwner, Start: shm.Start, End: shm.End, Type: rangelock.Unlock})
		db.turn.applying.Store(false)
	}
	if err := db.shmLocks.Lock(ctx, shm); err != nil {
		release()
		return nil, err
	}
	if err := db.dbLocks.Lock(ctx, pending); err != nil {
		release()
		return nil, err
	}
	const sharedEnd = sqlite.SharedFirst + sqlite.SharedSize - 1
	err := db.dbLocks.Wait(ctx, func(locks []rangelock.Lock) bool {
		for _, l := range locks {
			if l.Owner == applyOwner || isHoldOwner(l.Owner) || l.End < sqlite.ReservedByte || l.Start > sharedEnd {
				continue
			}
			walConn := l.Type == rangelock.Read && l.Start >= sqlite.SharedFirst &&
				db.shmLocks.Holds(l.Owner, shmLockDMS, shmLockDMS, rangelock.Read)
			if !walConn {
				return false
			}
		}
		return true
	})
	if err != nil {
		release()
		return nil, err
	}
	return release, nil
}

// afterApply makes the kernel drop what it cached of the changed pages and
// rewrites the WAL index header so that readers notice the new content.
// pgnos nil means the whole file changed. Called without db.mu, with the
// reader locks held.
func (db *DB) afterApply(pgnos []uint32, pageSize uint32) {
	inv := db.store.invalidator()
	if pgnos == nil || len(pgnos) > maxInvalidations {
		inv.InvalidateData(db.name, 0, -1)
	} else {
		for _, pgno := range pgnos {
			inv.InvalidateData(db.name, int64(pgno-1)*int64(pageSize), int64(pageSize))
		}
		inv.InvalidateData(db.name, -1, 0) // size and attributes
	}

	// The kernel writes back any page of the WAL index dirtied through a
	// mapping before dropping it; the header is rewritten in between, and
	// dropped again in case a reader faulted the old one back in.
	db.mu.Lock()
	hasIndex := db.shmExists && len(db.shm) >= walIndexMinSize
	db.mu.Unlock()
	if !hasIndex {
		return
	}
	shmName := db.name + FileSHM.Suffix()
	inv.InvalidateData(shmName, 0, walIndexMinSize)
	db.mu.Lock()
	if len(db.shm) >= walIndexMinSize {
		resetWALIndex(db.shm, db.chk.pageSize, db.chk.PageN())
	}
	db.mu.Unlock()
	inv.InvalidateData(shmName, 0, walIndexMinSize)
}

// runWriter writes pages to a file, one call per run of consecutive pages.
type runWriter struct {
	w        io.WriterAt
	pageSize int64
	first    uint32 // first page of the pending run
	n        int    // pages pending
	buf      []byte
}

func newRunWriter(w io.WriterAt, pageSize uint32) *runWriter {
	return &runWriter{w: w, pageSize: int64(pageSize), buf: make([]byte, 0, 64*int(pageSize))}
}

// Write queues page pgno, writing out the pending run first if pgno does
// not extend it or the run is full.
func (rw *runWriter) Write(pgno uint32, data []byte) error {
	if rw.n > 0 && (pgno != rw.first+uint32(rw.n) || len(rw.buf)+len(data) > cap(rw.buf)) {
		if err := rw.Flush(); err != nil {
			return err
		}
	}
	if rw.n == 0 {
		rw.first = pgno
	}
	rw.buf = append(rw.buf, data...)
	rw.n++
	return nil
}

// Flush writes the pending run.
func (rw *runWriter) Flush() error {
	if rw.n == 0 {
		return nil
	}
	_, err := rw.w.WriteAt(rw.buf, int64(rw.first-1)*rw.pageSize)
	rw.buf, rw.n = rw.buf[:0], 0
	return err
}
