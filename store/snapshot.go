package store

import (
	"errors"
	"fmt"
	"io"
	"maps"

	"github.com/litefs-project/litefs/internal/sqlite"
	"github.com/litefs-project/litefs/ltx"
)

// A snapshot streams a consistent copy of a database at one position
// without copying it into memory and without holding writers (or
// checkpoints) off for the transfer. At open it pins a view: where each
// page's content lives at that position (a WAL frame or the database
// file). Writes that would overwrite bytes the view still needs first save
// those pages aside; pages are read in ascending order and stop needing
// protection once read. Writers only ever wait for the short moments in
// which a batch's sources are looked up: the reads themselves happen
// without the database's lock (see readView).

// snapshotBatch is the number of pages read per batch: under db.mu the
// batch's sources are looked up, then read without it.
const snapshotBatch = 64

// stageMemory bounds the memory a view uses for saved pages; beyond it
// they go to a temporary file in the database's directory.
const stageMemory = 8 << 20

// view is a pinned copy of a database's logical content.
type view struct {
	pos       ltx.Pos
	pageSize  uint32
	commit    uint32
	next      uint32           // pages before next have been read
	walPages  map[uint32]int64 // pgno -> WAL frame offset at the view's position
	walFrames map[int64]uint32 // the reverse, to recognise overwritten frames
	saved     *pageStage       // pages writers overwrote before they were read

	// Scratch for readView.
	fileRuns [][2]uint32
	walOffs  []walRead
}

// walRead is a page a view reads from a WAL frame.
type walRead struct {
	pgno uint32
	off  int64
}

// needs reports whether the view still needs pgno from its source.
func (v *view) needs(pgno uint32) bool {
	return pgno >= v.next && pgno <= v.commit && pgno != sqlite.LockPgno(v.pageSize) && !v.saved.Has(pgno)
}

// Snapshot is a pinned view of a database being read out.
type Snapshot struct {
	db   *DB
	v    *view
	pace func() // called every few pages; nil for none
}

// ErrEmpty is returned when a snapshot of a database with no committed
// transaction is asked for.
var ErrEmpty = errors.New("database has no committed transaction")

// OpenSnapshot pins the database's content at its current position. Close
// it when done.
func (db *DB) OpenSnapshot() (*Snapshot, error) {
	db.mu.Lock()
	defer db.mu.Unlock()
	if db.closed {
		return nil, ErrNotExist
	}
	if db.pos.TXID == 0 {
		return nil, ErrEmpty
	}
	v := &view{
		pos:       db.pos,
		pageSize:  db.chk.pageSize,
		commit:    db.chk.PageN(),
		next:      1,
		walPages:  maps.Clone(db.walState.pages),
		walFrames: make(map[int64]uint32, len(db.walState.pages)),
		saved:     newPageStage(db.dir, db.chk.pageSize, stageMemory),
	}
	for pgno, off := range v.walPages {
		v.walFrames[off] = pgno
	}
	db.views = append(db.views, v)
	return &Snapshot{db: db, v: v}, nil
}

// Pos returns the position the snapshot is at.
func (s *Snapshot) Pos() ltx.Pos { return s.v.pos }

// Close unpins the view.
func (s *Snapshot) Close() error {
	s.db.mu.Lock()
	defer s.db.mu.Unlock()
	for i, v := range s.db.views {
		if v == s.v {
			s.db.views = append(s.db.views[:i], s.db.views[i+1:]...)
			break
		}
	}
	return s.v.saved.Close()
}

// WriteTo encodes the snapshot as one LTX file holding every page, with
// TXIDs 1 to the snapshot's position.
func (s *Snapshot) WriteTo(w io.Writer) (int64, error) {
	v := s.v
	enc, err := ltx.NewEncoder(w)
	if err != nil {
		return 0, err
	}
	enc.SetSpillDir(s.db.dir) // bound the page index's memory on huge databases
	defer enc.Cleanup()
	if err := enc.EncodeHeader(ltx.Header{
		Version:   ltx.Version,
		PageSize:  v.pageSize,
		Commit:    v.commit,
		MinTXID:   1,
		MaxTXID:   v.pos.TXID,
		Timestamp: now().UnixMilli(),
		NodeID:    s.db.store.nodeID,
	}); err != nil {
		return enc.N(), fmt.Errorf("snapshot %s: %w", s.db.name, err)
	}

	lockPgno := sqlite.LockPgno(v.pageSize)
	err = s.eachPage(func(pgno uint32, data []byte) error {
		if pgno == lockPgno {
			return nil
		}
		if err := enc.EncodePage(ltx.PageHeader{Pgno: pgno}, data); err != nil {
			return fmt.Errorf("page %d: %w", pgno, err)
		}
		return nil
	})
	if err != nil {
		return enc.N(), fmt.Errorf("snapshot %s: %w", s.db.name, err)
	}
	enc.SetPostApplyChecksum(v.pos.PostApplyChecksum)
	if err := enc.Close(); err != nil {
		return enc.N(), fmt.Errorf("snapshot %s: %w", s.db.name, err)
	}
	return enc.N(), nil
}

// eachPage calls fn with every page of the snapshot in order, the lock
// page (never used by SQLite) as zeros, and the pacing function, if any,
// after each.
func (s *Snapshot) eachPage(fn func(pgno uint32, data []byte) error) error {
	v := s.v
	ps := int(v.pageSize)
	batch := make([]byte, snapshotBatch*ps)
	for first := uint32(1); first <= v.commit; first += snapshotBatch {
		last := min(first+snapshotBatch-1, v.commit)
		buf := batch[:int(last-first+1)*ps]
		if err := s.db.readView(v, first, last, buf); err != nil {
			return err
		}
		for pgno := first; pgno <= last; pgno++ {
			if err := fn(pgno, buf[int(pgno-first)*ps:][:ps]); err != nil {
				return err
			}
			if s.pace != nil {
				s.pace()
			}
		}
	}
	return nil
}

// SetPace sets a function the snapshot calls after each page it reads
// out (a few microseconds of work), from the reading goroutine. Bulk work
// uses it to give way to other threads (see internal/lowprio).
func (s *Snapshot) SetPace(fn func()) { s.pace = fn }

// WriteDatabase writes the snapshot as a plain SQLite database file.
func (s *Snapshot) WriteDatabase(w io.Writer) (int64, error) {
	var n int64
	err := s.eachPage(func(pgno uint32, data []byte) error {
		m, err := w.Write(data)
		n += int64(m)
		return err
	})
	if err != nil {
		return n, fmt.Errorf("export %s: %w", s.db.name, err)
	}
	return n, nil
}

// viewReadAt reads pages for a view, without db.mu; tests replace it to
// act while a read is under way.
var viewReadAt = func(f io.ReaderAt, buf []byte, off int64) error { return readFullAt(f, buf, off) }

// readView reads pages [first, last] of a view into buf (one page after
// the other) and marks them read.
//
// The reads themselves happen without db.mu, so that a commit never waits
// for a snapshot's disk reads (or for a snapshot thread the kernel has
// put aside for higher-priority work while it held the lock). That is
// safe because of how writers treat a view: until v.next moves past a
// page, any write that would overwrite the bytes the view reads it from
// first saves them into the view's stage, under db.mu. So, once the
// reads are done, a page not in the stage was not overwritten while it
// was read, and a page in the stage has its view content there.
func (db *DB) readView(v *view, first, last uint32, buf []byte) error {
	ps := int64(v.pageSize)
	page := func(pgno uint32) []byte { return buf[int64(pgno-first)*ps:][:ps] }
	lockPgno := sqlite.LockPgno(v.pageSize)

	// Under db.mu: where each page is read from. Staged pages are copied
	// now; they stay staged until the end, so that writers do not save
	// them again in the meantime.
	db.mu.Lock()
	if db.closed {
		db.mu.Unlock()
		return ErrNotExist
	}
	dbFile, wal := db.dbFile, db.wal
	v.walOffs = v.walOffs[:0]
	fileRuns := v.fileRuns[:0] // [start, end) page ranges read from the database file
	for pgno := first; pgno <= last; pgno++ {
		if pgno == lockPgno {
			clear(page(pgno))
			continue
		}
		if ok, err := v.saved.Get(pgno, page(pgno)); err != nil {
			db.mu.Unlock()
			return err
		} else if ok {
			continue
		}
		if off, ok := v.walPages[pgno]; ok {
			v.walOffs = append(v.walOffs, walRead{pgno, off})
			continue
		}
		if n := len(fileRuns); n > 0 && fileRuns[n-1][1] == pgno {
			fileRuns[n-1][1]++
		} else {
			fileRuns = append(fileRuns, [2]uint32{pgno, pgno + 1})
		}
	}
	v.fileRuns = fileRuns
	db.mu.Unlock()

	// Without db.mu: one read per run of consecutive pages in the
	// database file, one per WAL frame. A failed read (the file was
	// replaced or truncated meanwhile) only matters if the pages it was
	// for were not saved in the meantime.
	var failed [][2]uint32
	var readErr error
	for _, r := range fileRuns {
		dst := buf[int64(r[0]-first)*ps : int64(r[1]-first)*ps]
		if err := viewReadAt(dbFile, dst, int64(r[0]-1)*ps); err != nil {
			failed, readErr = append(failed, r), err
		}
	}
	for _, w := range v.walOffs {
		if err := viewReadAt(wal, page(w.pgno), w.off+sqlite.WALFrameHeaderSize); err != nil {
			failed, readErr = append(failed, [2]uint32{w.pgno, w.pgno + 1}), err
		}
	}

	// Under db.mu again: pages saved while they were read come from the
	// stage instead, and the batch is done.
	db.mu.Lock()
	defer db.mu.Unlock()
	if db.closed {
		return ErrNotExist
	}
	for _, r := range fileRuns {
		for pgno := r[0]; pgno < r[1]; pgno++ {
			if _, err := v.saved.Get(pgno, page(pgno)); err != nil {
				return err
			}
		}
	}
	for _, w := range v.walOffs {
		if _, err := v.saved.Get(w.pgno, page(w.pgno)); err != nil {
			return err
		}
	}
	for _, r := range failed {
		for pgno := r[0]; pgno < r[1]; pgno++ {
			if !v.saved.Has(pgno) {
				return fmt.Errorf("read page %d for a snapshot: %w", pgno, readErr)
			}
		}
	}
	for pgno := first; pgno <= last; pgno++ {
		v.saved.Drop(pgno)
	}
	v.next = last + 1
	return nil
}

// beforeDatabaseWrite saves, for every pinned view, the pages of the
// database file in [off, off+size) it still needs. Caller holds db.mu.
func (db *DB) beforeDatabaseWrite(off, size int64) error {
	for _, v := range db.views {
		ps := int64(v.pageSize)
		for pgno := uint32(off/ps) + 1; int64(pgno-1)*ps < off+size; pgno++ {
			if err := db.saveDatabasePage(v, pgno); err != nil {
				return err
			}
		}
	}
	return nil
}

// beforeDatabaseTruncate saves the pages a truncation to size would drop.
func (db *DB) beforeDatabaseTruncate(size int64) error {
	for _, v := range db.views {
		for pgno := max(uint32(size/int64(v.pageSize))+1, v.next); pgno <= v.commit; pgno++ {
			if err := db.saveDatabasePage(v, pgno); err != nil {
				return err
			}
		}
	}
	return nil
}

func (db *DB) saveDatabasePage(v *view, pgno uint32) error {
	if _, inWAL := v.walPages[pgno]; inWAL || !v.needs(pgno) {
		return nil
	}
	buf := make([]byte, v.pageSize)
	if err := readFullAt(db.dbFile, buf, int64(pgno-1)*int64(v.pageSize)); err != nil {
		return fmt.Errorf("save page %d for a snapshot: %w", pgno, err)
	}
	return v.saved.Put(pgno, buf)
}

// beforeWALWrite saves the pages of WAL frames in [off, off+size) that a
// view still needs: once the WAL restarts, new frames overwrite old ones.
func (db *DB) beforeWALWrite(off, size int64) error {
	for _, v := range db.views {
		if len(v.walFrames) == 0 {
			continue
		}
		fs := int64(sqlite.WALFrameHeaderSize) + int64(v.pageSize)
		first := max(off-sqlite.WALHeaderSize, 0) / fs
		for i := first; sqlite.WALHeaderSize+i*fs < off+size; i++ {
			if err := db.saveWALFrame(v, sqlite.WALHeaderSize+i*fs); err != nil {
				return err
			}
		}
	}
	return nil
}

// beforeWALTruncate saves the pages of frames a truncation to size drops.
func (db *DB) beforeWALTruncate(size int64) error {
	for _, v := range db.views {
		fs := int64(sqlite.WALFrameHeaderSize) + int64(v.pageSize)
		for off := range v.walFrames {
			if off+fs > size {
				if err := db.saveWALFrame(v, off); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func (db *DB) saveWALFrame(v *view, off int64) error {
	pgno, ok := v.walFrames[off]
	if !ok || !v.needs(pgno) {
		return nil
	}
	buf := make([]byte, v.pageSize)
	if err := readFullAt(db.wal, buf, off+sqlite.WALFrameHeaderSize); err != nil {
		return fmt.Errorf("save wal frame at %d for a snapshot: %w", off, err)
	}
	return v.saved.Put(pgno, buf)
}
