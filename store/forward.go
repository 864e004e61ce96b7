package store

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"syscall"

	"github.com/litefs-project/litefs/internal/rangelock"
	"github.com/litefs-project/litefs/internal/sqlite"
	"github.com/litefs-project/litefs/ltx"
)

// This file applies a forwarded commit on the primary (Term.CommitHalted):
// a changeset that the HALT holder committed on its node. It is decoded
// once, into memory, and checked whole before anything is written: it must
// continue the database exactly (as a replica checks a changeset, see
// verifyChangeset) and its pages must be what SQLite accepts
// (pagecheck.go). It is then written where the primary's own SQLite would
// have written the transaction:
//
//   - A database in WAL mode gets WAL frames, appended after the last
//     commit, and the WAL index its readers use is updated as SQLite's
//     writer updates it. Nothing is fsynced unless the holder's
//     application asked for a durable commit (sync): with
//     synchronous=NORMAL a crash may lose the last commits but never
//     leaves the database inconsistent, since a torn WAL tail is ignored
//     and recovery (recover.go) reconciles WAL and log as after any crash.
//     With sync the WAL is fsynced before the commit is acknowledged; the
//     log need not be, since recovery rebuilds a changeset the log lacks
//     from the WAL.
//   - Any other database gets its pages written into the database file, as
//     a replica applies a changeset, and log and file are fsynced before
//     the commit is acknowledged when sync is set.
//
// The WAL of a database under a grant holds only forwarded commits: the
// grant folded it into the database file when it began (settle), and the
// grant keeps SQLite's writers out. A commit that would not fit in the
// first block of the WAL index folds the WAL into the database file first.

// maxForwardedMemory bounds the decoded pages of a forwarded commit kept in
// memory; a larger one is checked and applied straight from the request
// body, and always made durable.
const maxForwardedMemory = 8 << 20

// ErrOutcomeUnknown marks a forwarded commit that was applied but could
// not be made durable: whether it survives a crash of the primary is not
// known.
var ErrOutcomeUnknown = errors.New("the commit was applied but could not be made durable")

// forwardedTx is a forwarded changeset, decoded.
type forwardedTx struct {
	hdr     ltx.Header
	trailer ltx.Trailer
	pgnos   []uint32       // ascending
	sums    []ltx.Checksum // of each page
	pages   []byte         // the pages, one after the other
}

func (f *forwardedTx) page(i int) []byte {
	ps := int(f.hdr.PageSize)
	return f.pages[i*ps : (i+1)*ps]
}

// decodeForwarded decodes a whole changeset, checking its structure and
// file checksum. It returns nil, and no error, when its pages would take
// more than maxForwardedMemory.
func decodeForwarded(data io.ReaderAt, size int64) (*forwardedTx, error) {
	dec := ltx.NewDecoder(io.NewSectionReader(data, 0, size))
	dec.SetRetainPageIndex(false)
	if err := dec.DecodeHeader(); err != nil {
		return nil, err
	}
	f := &forwardedTx{hdr: dec.Header()}
	ps := int(f.hdr.PageSize)
	h := ltx.NewHasher()
	for {
		if len(f.pages)+ps > maxForwardedMemory {
			return nil, nil
		}
		f.pages = slices.Grow(f.pages, ps)[:len(f.pages)+ps]
		buf := f.pages[len(f.pages)-ps:]
		var ph ltx.PageHeader
		if err := dec.DecodePage(&ph, buf); errors.Is(err, io.EOF) {
			f.pages = f.pages[:len(f.pages)-ps]
			break
		} else if err != nil {
			return nil, err
		}
		f.pgnos = append(f.pgnos, ph.Pgno)
		f.sums = append(f.sums, checksumPage(h, ph.Pgno, buf))
	}
	if err := dec.Close(); err != nil {
		return nil, err
	}
	f.trailer = dec.Trailer()
	return f, nil
}

// checkContinuesLocked checks that f continues the database, as
// verifyChangeset does for a changeset it decodes: the next TXID, a
// pre-apply checksum equal to the position, every new page of a database
// it grows, and a post-apply checksum equal to what the content will be.
// Caller holds db.mu.
func (db *DB) checkContinuesLocked(f *forwardedTx) error {
	if db.closed {
		return ErrNotExist
	}
	hdr := f.hdr
	if hdr.MinTXID != hdr.MaxTXID || hdr.MinTXID != db.pos.TXID+1 ||
		(hdr.MinTXID > 1 && hdr.PreApplyChecksum != db.pos.PostApplyChecksum) {
		return fmt.Errorf("%w: changeset %s-%s (pre-apply %s) for %s at %s",
			ErrMismatch, hdr.MinTXID, hdr.MaxTXID, hdr.PreApplyChecksum, db.name, db.pos)
	}
	full := hdr.IsSnapshot() || hdr.PageSize != db.chk.pageSize
	xor := db.chk.xor
	if full {
		xor = 0
		if !coversAllPages(f.pgnos, hdr.Commit, hdr.PageSize) {
			return fmt.Errorf("%w: changeset %s for %s changes the page size but not every page", ErrMismatch, hdr.MinTXID, db.name)
		}
	}
	for i, pgno := range f.pgnos {
		if !full {
			xor ^= db.chk.Get(pgno)
		}
		xor ^= f.sums[i]
	}
	if !full {
		for pgno := hdr.Commit + 1; pgno <= db.chk.PageN(); pgno++ {
			xor ^= db.chk.Get(pgno)
		}
		if old := db.chk.PageN(); hdr.Commit > old {
			n, want := newPages(f.pgnos, old), expectedPages(hdr.Commit, hdr.PageSize)-expectedPages(old, hdr.PageSize)
			if n != want {
				return fmt.Errorf("%w: changeset %s for %s grows it from %d to %d pages but holds %d of the %d new pages",
					ErrMismatch, hdr.MinTXID, db.name, old, hdr.Commit, n, want)
			}
		}
	}
	if sum := ltx.ChecksumFlag | xor; sum != f.trailer.PostApplyChecksum {
		return fmt.Errorf("%w: changeset %s for %s: post-apply checksum %s, but applying it to this database gives %s",
			ErrMismatch, hdr.MinTXID, db.name, f.trailer.PostApplyChecksum, sum)
	}
	return nil
}

// checkForwardedPages is checkForwarded for a decoded changeset.
func (db *DB) checkForwardedPages(f *forwardedTx) error {
	db.mu.Lock()
	old := oldContent{pageSize: db.chk.pageSize, pageN: db.chk.PageN()}
	db.mu.Unlock()
	old.read = func(pgno uint32, buf []byte) error {
		db.mu.Lock()
		defer db.mu.Unlock()
		if db.closed {
			return ErrNotExist
		}
		return db.readPage(pgno, buf)
	}
	err := func() error {
		c, err := newPageChecker(f.hdr, old)
		if err != nil {
			return err
		}
		for i, pgno := range f.pgnos {
			if err := c.add(pgno, f.page(i)); err != nil {
				return err
			}
		}
		return c.finish(old)
	}()
	if err != nil {
		return fmt.Errorf("changeset for %s: %w", db.name, err)
	}
	return nil
}

// forwardWAL is what a grant knows of the WAL it writes forwarded commits
// into: the page of each frame, and the salts of the WAL they belong to.
type forwardWAL struct {
	frames       []uint32
	salt1, salt2 uint32
}

// framesLocked returns how many frames the WAL holds, all written by this
// grant, or -1 if it holds anything else. Caller holds db.mu.
func (w *forwardWAL) framesLocked(db *DB, pageSize uint32) int {
	ws := &db.walState
	if !ws.valid {
		if ws.commitEnd == 0 && len(ws.pages) == 0 {
			w.frames = w.frames[:0]
			return 0 // no WAL: a new one starts
		}
		return -1
	}
	if ws.hdr.PageSize != pageSize {
		return -1
	}
	n := len(w.frames)
	if ws.commitEnd != sqlite.WALHeaderSize+int64(n)*ws.hdr.FrameSize() ||
		(n > 0 && (ws.hdr.Salt1 != w.salt1 || ws.hdr.Salt2 != w.salt2)) {
		return -1
	}
	return n
}

// walIndexUpdate is what the WAL index must learn of a forwarded commit.
type walIndexUpdate struct {
	first uint32   // 1-based number of the first new frame
	all   []uint32 // the page of every frame in the WAL; the grant's, read under its lock
	hdr   walIndexHeader
}

// writeForwarded writes a checked forwarded commit and makes it the
// database's position, while the grant's hold (owner) keeps writers out.
func (db *DB) writeForwarded(ctx context.Context, f *forwardedTx, data io.ReaderAt, size int64, owner rangelock.Owner, sync bool, w *forwardWAL) (ltx.Pos, error) {
	unlock, err := db.lockReaders(ctx, owner)
	if err != nil {
		return db.Pos(), err
	}
	defer unlock()

	db.mu.Lock()
	if err := db.checkNextLocked(f.hdr); err != nil {
		db.mu.Unlock()
		return db.Pos(), err
	}
	inWAL := len(f.pgnos) > 0 && !f.hdr.IsSnapshot() && f.hdr.PageSize == db.chk.pageSize && db.walModeLocked(f)
	settle := db.unsettledLocked()
	if inWAL {
		n := w.framesLocked(db, f.hdr.PageSize)
		settle = n < 0 || n+len(f.pgnos) > walIndexFirstFrames
		if len(f.pgnos) > walIndexFirstFrames {
			inWAL = false
		}
	}
	if settle {
		// The pages in the WAL go into the database file first; readers
		// then find the WAL empty.
		err := db.settleLocked()
		pageSize := db.chk.pageSize
		db.mu.Unlock()
		db.afterApply(nil, pageSize)
		if err != nil {
			return db.Pos(), fmt.Errorf("apply changeset %s to %s: %w", f.hdr.MinTXID, db.name, err)
		}
		db.mu.Lock()
		if err := db.checkNextLocked(f.hdr); err != nil {
			db.mu.Unlock()
			return db.Pos(), err
		}
		w.frames = w.frames[:0]
		if inWAL && w.framesLocked(db, f.hdr.PageSize) < 0 {
			// A WAL with no committed frame but a header of its own (of
			// another page size): the commit starts a new one.
			db.walState.reset()
		}
	}
	if !inWAL {
		pos, err := db.writeChangeset(f.hdr, f.trailer, io.NewSectionReader(data, 0, size))
		if err == nil && sync {
			if err = db.log.Sync(); err == nil {
				err = db.dbFile.Sync()
			}
			if err != nil {
				err = fmt.Errorf("%w: %v", ErrOutcomeUnknown, err)
			}
		}
		db.mu.Unlock()
		if err == nil || errors.Is(err, ErrOutcomeUnknown) {
			db.afterApply(f.pgnos, f.hdr.PageSize)
		}
		return pos, err
	}
	pos, walStart, walEnd, created, u, err := db.appendWALLocked(f, data, size, sync, w)
	db.mu.Unlock()
	if err != nil {
		return pos, err
	}
	inv := db.store.invalidator()
	walName := db.name + FileWAL.Suffix()
	if created {
		inv.InvalidateEntry(walName)
	}
	inv.InvalidateData(walName, walStart, walEnd-walStart)
	db.updateWALIndex(u)
	return pos, nil
}

// checkNextLocked fails unless hdr is still the next transaction and the
// log can take it. Caller holds db.mu.
func (db *DB) checkNextLocked(hdr ltx.Header) error {
	if db.closed {
		return ErrNotExist
	}
	if hdr.MinTXID != db.pos.TXID+1 {
		return fmt.Errorf("%w: changeset %s for %s, which moved to %s meanwhile", ErrMismatch, hdr.MinTXID, db.name, db.pos)
	}
	if lp := db.log.Pos(); lp != db.pos {
		return fmt.Errorf("apply changeset %s to %s: the log is at %s, the database at %s: %w", hdr.MinTXID, db.name, lp, db.pos, syscall.EIO)
	}
	return nil
}

// walModeLocked reports whether the database is in WAL mode before and
// after f: its page 1 says so, and f's page 1, if it writes one. A commit
// that changes the journal mode is written into the database file, where
// readers of both modes look. Caller holds db.mu.
func (db *DB) walModeLocked(f *forwardedTx) bool {
	buf := make([]byte, f.hdr.PageSize)
	if err := db.readPage(1, buf); err != nil {
		return false
	}
	if hdr, err := sqlite.ParseDBHeader(buf); err != nil || !hdr.IsWAL() {
		return false
	}
	if len(f.pgnos) > 0 && f.pgnos[0] == 1 {
		if hdr, err := sqlite.ParseDBHeader(f.page(0)); err != nil || !hdr.IsWAL() {
			return false
		}
	}
	return true
}

// appendWALLocked appends f to the log and to the WAL as one SQLite
// transaction, fsyncs the WAL if sync, and makes f the position. It
// returns the range of the WAL it wrote, whether it created the WAL file,
// and what the WAL index must learn. On failure nothing of f remains.
// Caller holds db.mu and the reader locks.
func (db *DB) appendWALLocked(f *forwardedTx, data io.ReaderAt, size int64, sync bool, w *forwardWAL) (pos ltx.Pos, start, end int64, created bool, u walIndexUpdate, err error) {
	ws := &db.walState
	ps := f.hdr.PageSize
	newWAL := !ws.valid
	var hdr sqlite.WALHeader
	var s1, s2 uint32
	if newWAL {
		hdr = db.newWALHeaderLocked(ps)
		start = sqlite.WALHeaderSize
		s1, s2 = hdr.Checksum1, hdr.Checksum2
	} else {
		hdr = ws.hdr
		start = ws.commitEnd
		s1, s2 = hdr.Checksum1, hdr.Checksum2
		if start > sqlite.WALHeaderSize {
			var fh [sqlite.WALFrameHeaderSize]byte
			if err := readFullAt(db.wal, fh[:], start-hdr.FrameSize()); err != nil {
				return db.pos, 0, 0, false, u, fmt.Errorf("apply changeset %s to %s: read the last WAL frame: %w", f.hdr.MinTXID, db.name, err)
			}
			last := sqlite.ParseWALFrameHeader(fh[:])
			s1, s2 = last.Checksum1, last.Checksum2
		}
	}
	fsz := int(hdr.FrameSize())
	off := start
	var buf []byte
	if newWAL {
		off = 0
		buf = make([]byte, sqlite.WALHeaderSize, sqlite.WALHeaderSize+len(f.pgnos)*fsz)
		hdr.Encode(buf)
	} else {
		buf = make([]byte, 0, len(f.pgnos)*fsz)
	}
	for i, pgno := range f.pgnos {
		var commit uint32
		if i == len(f.pgnos)-1 {
			commit = f.hdr.Commit
		}
		n := len(buf)
		buf = buf[:n+fsz]
		s1, s2 = sqlite.EncodeWALFrameHeader(buf[n:], hdr, pgno, commit, s1, s2, f.page(i))
		copy(buf[n+sqlite.WALFrameHeaderSize:], f.page(i))
	}
	end = off + int64(len(buf))

	if err := db.beforeWALWrite(off, int64(len(buf))); err != nil {
		return db.pos, 0, 0, false, u, err
	}
	// The log first: a crash before the WAL has the frames leaves a log
	// record recovery drops, one after leaves both.
	pos, err = db.log.AppendEncoded(f.hdr, f.trailer, io.NewSectionReader(data, 0, size))
	if err != nil {
		return db.pos, 0, 0, false, u, fmt.Errorf("apply changeset %s to %s: %w", f.hdr.MinTXID, db.name, err)
	}
	undo := func(cause error) error {
		// Nothing of the changeset may remain: the holder is told the
		// primary refused it.
		err := errors.Join(db.wal.Truncate(off), db.log.TruncateAfter(f.hdr.MinTXID-1))
		if err != nil {
			db.logger.Error("could not remove a forwarded commit that failed", "txid", f.hdr.MinTXID.String(), "err", err)
			return fmt.Errorf("%w: apply changeset %s to %s: %v", ErrOutcomeUnknown, f.hdr.MinTXID, db.name, cause)
		}
		return fmt.Errorf("apply changeset %s to %s: %w", f.hdr.MinTXID, db.name, cause)
	}
	if _, err := db.wal.WriteAt(buf, off); err != nil {
		return db.pos, 0, 0, false, u, undo(err)
	}
	if sync {
		if err := db.wal.Sync(); err != nil {
			return db.pos, 0, 0, false, u, undo(err)
		}
	}

	if newWAL {
		ws.reset()
		ws.hdr, ws.valid = hdr, true
		w.frames = w.frames[:0]
	}
	w.salt1, w.salt2 = hdr.Salt1, hdr.Salt2
	for i, pgno := range f.pgnos {
		ws.pages[pgno] = start + int64(i*fsz)
	}
	for pgno := range ws.pages {
		if pgno > f.hdr.Commit {
			delete(ws.pages, pgno)
		}
	}
	ws.commitEnd = end
	created = !db.walExists
	db.walExists = true
	db.chk.Resize(f.hdr.Commit)
	for i, pgno := range f.pgnos {
		db.chk.Set(pgno, f.sums[i])
	}
	db.pos = pos
	db.notifyLocked()

	first := uint32(len(w.frames)) + 1
	w.frames = append(w.frames, f.pgnos...)
	u = walIndexUpdate{first: first, all: w.frames, hdr: walIndexHeader{
		bigEndian: hdr.BigEndianChecksum(),
		pageSize:  ps,
		maxFrame:  uint32(len(w.frames)),
		pageN:     f.hdr.Commit,
		frameSum1: s1,
		frameSum2: s2,
		salt1:     hdr.Salt1,
		salt2:     hdr.Salt2,
	}}
	return pos, start, end, created, u, nil
}

// newWALHeaderLocked returns the header of a new WAL, as SQLite starts
// one: a first salt one more than the last WAL's (from the WAL index),
// and a random second one, so that no frame of an earlier WAL still in the
// file can pass for one of the new. Caller holds db.mu.
func (db *DB) newWALHeaderLocked(pageSize uint32) sqlite.WALHeader {
	var r [8]byte
	if _, err := rand.Read(r[:]); err != nil {
		panic(fmt.Sprintf("read random bytes: %v", err))
	}
	salt1, salt2 := binary.BigEndian.Uint32(r[:]), binary.BigEndian.Uint32(r[4:])
	if h, ok := readWALIndexHeader(db.shm); ok {
		salt1 = h.salt1 + 1
	}
	return sqlite.NewWALHeader(pageSize, 0, salt1, salt2, shmBigEndian)
}

// updateWALIndex tells the primary's readers of a forwarded commit in the
// WAL: the WAL index gets the new frames and a new header, as SQLite's
// writer would write them. Readers are locked out. The kernel may cache
// the index's block (mapped by SQLite, possibly dirty with a reader's
// marks): it writes it back and drops it first, and drops it again after,
// in case a reader faulted it in meanwhile. An index that is not there,
// or not one the WAL's frames explain, is rebuilt from the frames. Called
// without db.mu.
func (db *DB) updateWALIndex(u walIndexUpdate) {
	db.mu.Lock()
	has := db.shmExists && len(db.shm) >= walIndexBlock
	db.mu.Unlock()
	if !has {
		return // no reader has it; SQLite builds it from the WAL
	}
	inv := db.store.invalidator()
	shmName := db.name + FileSHM.Suffix()
	inv.InvalidateData(shmName, 0, walIndexBlock)
	db.mu.Lock()
	if db.shmExists && len(db.shm) >= walIndexBlock {
		old, ok := readWALIndexHeader(db.shm)
		u.hdr.change = old.change + 1
		if ok && u.first > 1 && old.maxFrame == u.first-1 && old.salt1 == u.hdr.salt1 && old.salt2 == u.hdr.salt2 {
			appendWALIndex(db.shm, u.first, u.all[u.first-1:])
		} else {
			appendWALIndex(db.shm, 1, u.all)
			resetWALIndexCheckpoint(db.shm)
		}
		writeWALIndexHeader(db.shm, u.hdr)
	}
	db.mu.Unlock()
	inv.InvalidateData(shmName, 0, walIndexBlock)
}

// syncForwarded makes the database's content durable up to txid, which
// must have been applied. Forwarded commits in the WAL need the WAL alone
// (the database file was made durable when the grant folded the WAL into
// it); those written into the database file need the log, then the file.
func (db *DB) syncForwarded(txid ltx.TXID) error {
	db.mu.Lock()
	defer db.mu.Unlock()
	if db.closed {
		return ErrNotExist
	}
	if db.pos.TXID < txid {
		return fmt.Errorf("%w: sync of %s up to %s, which is at %s", ErrMismatch, db.name, txid, db.pos)
	}
	var err error
	if db.walState.valid && db.walState.commitEnd > sqlite.WALHeaderSize {
		err = db.wal.Sync()
	} else if err = db.log.Sync(); err == nil {
		err = db.dbFile.Sync()
	}
	if err != nil {
		return fmt.Errorf("sync %s: %w", db.name, err)
	}
	return nil
}
