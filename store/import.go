package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/litefs-project/litefs/internal/rangelock"
	"github.com/litefs-project/litefs/internal/sqlite"
	"github.com/litefs-project/litefs/ltx"
)

// ImportOptions changes how Term.ImportFile treats its file.
type ImportOptions struct {
	// Validate, if set, checks the file (with SQLite's integrity check,
	// say) while the import checksums its pages, before any lock is
	// taken; both only read it. If it fails, the import is refused with an
	// *ImportRefusedError and nothing changes: not even a new database's
	// name is created.
	Validate func(path string) error

	// Take lets the import move the file into place as the new database
	// file instead of copying it. The file must be one the caller made for
	// the import, in the store's directory (Store.Dir), that nothing
	// writes any more. The caller still removes path afterwards: the name
	// is gone only if the import succeeded.
	Take bool
}

// ImportRefusedError is the error of an import whose file
// ImportOptions.Validate refused.
type ImportRefusedError struct{ Err error }

func (e *ImportRefusedError) Error() string { return "refused: " + e.Err.Error() }
func (e *ImportRefusedError) Unwrap() error { return e.Err }

// Import is ImportFile with no validation, copying the file.
func (t *Term) Import(ctx context.Context, epoch uint64, name, path string) (ltx.Pos, error) {
	return t.ImportFile(ctx, epoch, name, path, ImportOptions{})
}

// ImportFile replaces the named database, or creates it, with the SQLite
// database file at path, as one transaction of the term of epoch: the
// whole file becomes the next changeset, which every replica receives.
//
// What does not depend on the database is done first, at once and before
// any lock is taken: opts.Validate, the page checksums, and making the new
// file durable. Then in-flight writers finish and new ones (and HALT
// grants) wait while the changeset is encoded straight into the log and
// synced; readers go on reading the old content meanwhile. Last, readers
// are kept out for the moment it takes to rename the file over the
// database file. The caller has checked the file's content
// (opts.Validate, or before); ImportFile checks only its shape. An import
// that completes after the term began to end is reported as failed: its
// outcome is unknown.
func (t *Term) ImportFile(ctx context.Context, epoch uint64, name, path string, opts ImportOptions) (ltx.Pos, error) {
	if err := t.enter(epoch); err != nil {
		return ltx.Pos{}, fmt.Errorf("import %s: %w", name, err)
	}
	defer t.leave()
	s := t.store
	if !opts.Take {
		// What is imported must be what was read: a copy of our own
		// cannot change under the import.
		cp, err := copyForImport(path, s.Dir())
		if err != nil {
			return ltx.Pos{}, fmt.Errorf("import %s: %w", name, err)
		}
		defer os.Remove(cp)
		path = cp
	}
	f, err := os.Open(path)
	if err != nil {
		return ltx.Pos{}, fmt.Errorf("import %s: %w", name, err)
	}
	defer f.Close()
	pageSize, pageN, err := importShape(f)
	if err != nil {
		return ltx.Pos{}, fmt.Errorf("import %s: %w", name, err)
	}

	start := time.Now()
	chk, err := prepareImport(f, path, pageSize, pageN, opts.Validate)
	var refused *ImportRefusedError
	if errors.As(err, &refused) {
		s.logger.Warn("import refused", "db", name, "err", refused.Err)
	}
	if err != nil {
		return ltx.Pos{}, fmt.Errorf("import %s: %w", name, err)
	}
	prepared := time.Now()

	db := s.DB(name)
	if db == nil {
		if db, err = s.createDB(name, false); err != nil {
			return ltx.Pos{}, err
		}
	}
	hold, err := t.HoldWrites(ctx, name)
	if err != nil {
		return ltx.Pos{}, fmt.Errorf("import %s: %w", name, err)
	}
	defer hold.Release()
	held := time.Now()
	ctx, cancel := t.bind(ctx)
	defer cancel()
	newPos, size, err := db.importHeld(ctx, hold.Owner(), f, path, chk)
	if err != nil {
		return newPos, fmt.Errorf("import %s: %w", name, t.waitErr(ctx, err))
	}
	if t.isEnding() {
		return newPos, fmt.Errorf("import %s: %w while it was applied; it may or may not survive the change of primary", name, t.endedErr())
	}
	db.logger.Info("database imported", "pages", pageN, "page_size", pageSize, "changeset_bytes", size, "pos", newPos.String(),
		"prepare", prepared.Sub(start).String(), "writers_held", time.Since(held).String())
	return newPos, nil
}

// prepareImport runs, concurrently, validate (if not nil), an fsync of the
// file, and the checksums of its pages, and returns the checksums once all
// three are done. A refusal by validate comes first among the errors.
func prepareImport(f *os.File, path string, pageSize, pageN uint32, validate func(string) error) (*pageChecksums, error) {
	var (
		wg                        sync.WaitGroup
		validErr, syncErr, chkErr error
		chk                       *pageChecksums
	)
	if validate != nil {
		wg.Go(func() { validErr = validate(path) })
	}
	wg.Go(func() {
		// The file becomes the database file once its changeset is in
		// the log: it must be on disk by then. The disk writes it out
		// while the CPUs do the rest.
		if syncErr = f.Chmod(0o644); syncErr == nil {
			syncErr = f.Sync()
		}
	})
	chk, chkErr = checksumFile(f, pageSize, pageN)
	wg.Wait()
	switch {
	case validErr != nil:
		return nil, &ImportRefusedError{Err: validErr}
	case chkErr != nil:
		return nil, chkErr
	case syncErr != nil:
		return nil, fmt.Errorf("sync %s: %w", path, syncErr)
	}
	return chk, nil
}

// importHeld makes the file at path, whose page checksums are chk, the
// database's next transaction, while the hold owned by held keeps writers
// out. It encodes the changeset from f into the log and syncs it, then
// renames the file over the database file with readers locked out. The
// log is one record ahead of the database in between (streams send only
// up to the database's position, and recovery drops such a record); if
// the file cannot be put in place, the record is removed again.
func (db *DB) importHeld(ctx context.Context, held rangelock.Owner, f *os.File, path string, chk *pageChecksums) (ltx.Pos, int64, error) {
	pre := db.Pos()
	hdr := db.store.importHeader(chk.pageSize, chk.PageN(), pre)
	_, before := db.log.Appended()
	logged, err := db.log.Append(hdr, chk.Sum(), func(enc *ltx.Encoder) error {
		return encodeFile(ctx, enc, f, hdr.PageSize, hdr.Commit)
	})
	if err != nil {
		return pre, 0, err
	}
	_, after := db.log.Appended()
	undo := func(cause error) error {
		if terr := db.log.TruncateAfter(pre.TXID); terr != nil {
			db.mu.Lock()
			db.damaged = fmt.Errorf("import %s failed (%v), and its changeset could not be removed from the log: %v", hdr.MinTXID, cause, terr)
			db.mu.Unlock()
			db.logger.Error("import failed after its changeset was logged", "txid", hdr.MinTXID.String(), "err", cause, "truncate_err", terr)
		}
		return cause
	}
	// The changeset is durable before the file it explains is in place,
	// so that recovery never finds content the log cannot account for.
	if err := db.log.Sync(); err != nil {
		return pre, 0, undo(err)
	}
	if err := db.awaitPending(ctx); err != nil {
		return pre, 0, undo(err)
	}
	// Opened before anything changes: once the file is renamed into place
	// no error may leave the store on the old one.
	nf, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return pre, 0, undo(err)
	}
	unlock, err := db.lockReaders(ctx, held)
	if err != nil {
		nf.Close()
		return pre, 0, undo(err)
	}
	defer unlock()
	db.mu.Lock()
	pos, err := db.installImportLocked(nf, path, hdr, chk, pre, logged)
	installed := db.dbFile == nf
	db.mu.Unlock()
	if !installed {
		nf.Close()
		err = undo(err)
	}
	// Settling may have changed the file even if the import failed; the
	// kernel's cache of it goes either way.
	db.afterApply(nil, hdr.PageSize)
	return pos, after - before, err
}

// importHeader is the header of an import's changeset for a database at pos.
func (s *Store) importHeader(pageSize, pageN uint32, pos ltx.Pos) ltx.Header {
	hdr := ltx.Header{
		Version:   ltx.Version,
		PageSize:  pageSize,
		Commit:    pageN,
		MinTXID:   pos.TXID + 1,
		MaxTXID:   pos.TXID + 1,
		Timestamp: now().UnixMilli(),
		NodeID:    s.nodeID,
	}
	if pos.TXID > 0 {
		hdr.PreApplyChecksum = pos.PostApplyChecksum
	}
	return hdr
}

// encodeFile encodes every page of a database file of pageN pages,
// reading it 1 MiB at a time.
func encodeFile(ctx context.Context, enc *ltx.Encoder, f io.ReaderAt, pageSize, pageN uint32) error {
	ps := int64(pageSize)
	perChunk := max(1, (1<<20)/ps)
	chunk := make([]byte, perChunk*ps)
	lockPgno := sqlite.LockPgno(pageSize)
	for first := int64(1); first <= int64(pageN); first += perChunk {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := min(perChunk, int64(pageN)-first+1)
		buf := chunk[:n*ps]
		if _, err := f.ReadAt(buf, (first-1)*ps); err != nil {
			return fmt.Errorf("read pages %d-%d: %w", first, first+n-1, err)
		}
		for i := range n {
			pgno := uint32(first + i)
			if pgno == lockPgno {
				continue
			}
			if err := enc.EncodePage(ltx.PageHeader{Pgno: pgno}, buf[i*ps:(i+1)*ps]); err != nil {
				return err
			}
		}
	}
	return nil
}

// installImportLocked renames the file at path, open as nf, over the
// database file; its changeset hdr took the log from pre to logged, and
// chk are its page checksums.
// Caller holds db.mu and the reader locks.
func (db *DB) installImportLocked(nf *os.File, path string, hdr ltx.Header, chk *pageChecksums, pre, logged ltx.Pos) (ltx.Pos, error) {
	if db.closed {
		return db.pos, ErrNotExist
	}
	if db.pending != nil {
		return db.pos, db.errCommitInFlight()
	}
	if db.pos != pre || db.log.Pos() != logged {
		return db.pos, fmt.Errorf("%w: import %s encoded at %s, the database moved to %s and the log to %s", ErrMismatch, hdr.MinTXID, pre, db.pos, db.log.Pos())
	}
	// A hot journal is rolled back and committed WAL pages go into the
	// database file first, as before any apply: the WAL is then empty,
	// and the snapshot views have kept what they still need of it.
	if err := db.settleLocked(); err != nil {
		return db.pos, err
	}
	// Views still sending the old content copy what they need of it.
	if err := db.beforeDatabaseTruncate(0); err != nil {
		return db.pos, err
	}
	if err := os.Rename(path, filepath.Join(db.dir, databaseFile)); err != nil {
		return db.pos, err
	}
	db.dbFile.Close()
	db.dbFile = nf
	db.tx = rollbackTx{dirty: make(map[uint32]struct{})}
	db.chk, db.pos, db.filePageSize = chk, logged, hdr.PageSize
	db.damaged = nil
	db.noteJournalMode()
	db.notifyLocked()
	// The rename is in place; if the directory cannot be synced, a power
	// failure may still bring back the old file, which recovery then
	// reconciles with the log.
	if err := syncDir(db.dir); err != nil {
		return logged, fmt.Errorf("import applied, but syncing %s failed: %w", db.dir, err)
	}
	return logged, nil
}

// copyForImport copies the file at path into a new file in dir and
// returns its path.
func copyForImport(path, dir string) (string, error) {
	src, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer src.Close()
	dst, err := os.CreateTemp(dir, ".import-db-*")
	if err != nil {
		return "", err
	}
	_, err = io.Copy(dst, src)
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(dst.Name())
		return "", fmt.Errorf("copy %s: %w", path, err)
	}
	return dst.Name(), nil
}

// syncDir makes the entries of dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// importShape reads the page size and page count of a database file.
func importShape(f *os.File) (pageSize, pageN uint32, err error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, 0, err
	}
	hdr := make([]byte, sqlite.HeaderSize)
	if _, err := io.ReadFull(io.NewSectionReader(f, 0, fi.Size()), hdr); err != nil {
		return 0, 0, fmt.Errorf("not a SQLite database: %d bytes", fi.Size())
	}
	pageSize = uint32(binary.BigEndian.Uint16(hdr[16:18]))
	if pageSize == 1 {
		pageSize = 65536
	}
	if pageSize < 512 || pageSize > 65536 || pageSize&(pageSize-1) != 0 {
		return 0, 0, fmt.Errorf("not a SQLite database: page size %d", pageSize)
	}
	if fi.Size()%int64(pageSize) != 0 {
		return 0, 0, fmt.Errorf("file size %d is not a multiple of its page size %d", fi.Size(), pageSize)
	}
	return pageSize, uint32(fi.Size() / int64(pageSize)), nil
}
