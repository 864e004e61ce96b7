package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/litefs-project/litefs/internal/rangelock"
	"github.com/litefs-project/litefs/internal/sqlite"
	"github.com/litefs-project/litefs/ltx"
)

// Names of a database's files under its data directory.
const (
	databaseFile = "database"
	journalFile  = "journal"
	walFile      = "wal"
	logDir       = "log"
)

// Errors returned by database file operations. The FUSE layer maps them to
// errno values; each wraps enough context to be logged as it is.
var (
	ErrNotExist    = errors.New("file does not exist")
	ErrReadOnly    = errors.New("database is read-only on this node")
	ErrUnaligned   = errors.New("write is not page-aligned")
	ErrInvalidPage = errors.New("invalid database page")
)

// DB is one replicated SQLite database: its files as SQLite sees them
// through the mount, its page checksums and its changeset log.
//
// Locking order: DB.mu before the log's and lock tables' own mutexes.
// Nothing that can wait on a FUSE request is done while holding DB.mu.
type DB struct {
	store  *Store
	name   string
	dir    string
	log    *ltx.Log
	logger *slog.Logger

	// Byte-range locks of the files SQLite locks, and of the HALT file.
	dbLocks   *rangelock.Table
	shmLocks  *rangelock.Table
	haltLocks *rangelock.Table
	turn      readerTurn // fairness between applies and local readers

	mu            sync.Mutex
	dbFile        file     // backing file of the database
	journal       *os.File // backing file of the rollback journal
	wal           *os.File // backing file of the WAL
	journalExists bool     // the journal exists as SQLite sees it
	walExists     bool
	shmExists     bool
	shm           []byte         // the WAL index lives in memory only; SQLite rebuilds it
	chk           *pageChecksums // checksums of the committed logical content
	filePageSize  uint32         // page size in the database file's header, committed or not
	pos           ltx.Pos
	tx            rollbackTx // rollback-journal transaction in progress
	walState      walState
	views         []*view       // pinned by snapshots being read out
	changed       chan struct{} // closed and replaced on every commit
	refusedAt     time.Time     // when a refused write was last logged
	commits       atomic.Int64  // transactions committed through this mount
	halt          *localHalt    // the HALT lock taken through this mount
	grant         *haltGrant    // the HALT lock granted to a replica, on the primary
	pending       *Pending      // a commit waiting for the primary
	fwdMu         sync.Mutex    // guards fwdReader; taken after mu, if both
	fwdReader     *ltx.Reader   // reads the changesets of pending commits
	damaged       error         // set when an apply failed half way, until one succeeds
	closed        bool
}

// file is what the store needs of a backing file: an *os.File, or in tests
// a wrapper that injects faults.
type file interface {
	io.ReaderAt
	io.WriterAt
	Truncate(size int64) error
	Sync() error
	Stat() (os.FileInfo, error)
	Close() error
}

// rollbackTx tracks a transaction written straight to the database file
// (rollback journal modes) until SQLite commits it.
type rollbackTx struct {
	dirty     map[uint32]struct{} // pages written since the last commit
	truncated bool                // the database file was truncated
	synced    bool                // SQLite fsynced the database file
}

func (t *rollbackTx) pending() bool { return len(t.dirty) > 0 || t.truncated }

// walState follows the WAL file as SQLite writes it.
type walState struct {
	hdr       sqlite.WALHeader
	valid     bool             // a valid header has been written
	commitEnd int64            // offset just past the last committed frame
	pages     map[uint32]int64 // pgno -> offset of the frame with its latest committed version
}

func (w *walState) reset() {
	*w = walState{pages: make(map[uint32]int64)}
}

func openDB(s *Store, name string) (*DB, error) {
	dir := filepath.Join(s.dbsDir(), name)
	db := &DB{
		store:     s,
		name:      name,
		dir:       dir,
		logger:    s.logger.With("db", name),
		dbLocks:   rangelock.New(),
		shmLocks:  rangelock.New(),
		haltLocks: rangelock.New(),
		tx:        rollbackTx{dirty: make(map[uint32]struct{})},
		changed:   make(chan struct{}),
	}
	db.walState.reset()
	var err error
	open := func(name string) *os.File {
		if err != nil {
			return nil
		}
		var f *os.File
		f, err = os.OpenFile(filepath.Join(dir, name), os.O_RDWR|os.O_CREATE, 0o644)
		return f
	}
	dbFile := open(databaseFile)
	if dbFile != nil {
		db.dbFile = dbFile
	}
	db.journal, db.wal = open(journalFile), open(walFile)
	if err == nil {
		db.log, err = ltx.OpenLog(filepath.Join(dir, logDir), ltx.Options{
			SegmentSize:   s.opts.SegmentSize,
			SegmentMaxAge: s.segmentMaxAge(),
		})
	}
	if err == nil {
		err = db.recover()
	}
	if err != nil {
		db.closeFiles()
		return nil, fmt.Errorf("open database %q: %w", name, err)
	}
	return db, nil
}

// Name returns the database name.
func (db *DB) Name() string { return db.name }

// Log returns the database's changeset log.
func (db *DB) Log() *ltx.Log { return db.log }

// Pos returns the position of the last committed transaction.
func (db *DB) Pos() ltx.Pos {
	db.mu.Lock()
	defer db.mu.Unlock()
	return db.pos
}

// PageSize returns the page size, zero for an empty database.
func (db *DB) PageSize() uint32 {
	db.mu.Lock()
	defer db.mu.Unlock()
	return db.chk.pageSize
}

// Changed returns a channel closed at the next commit.
func (db *DB) Changed() <-chan struct{} {
	db.mu.Lock()
	defer db.mu.Unlock()
	return db.changed
}

// Exists reports whether a file of the given kind exists as SQLite sees it.
func (db *DB) Exists(kind FileKind) bool {
	db.mu.Lock()
	defer db.mu.Unlock()
	switch kind {
	case FileJournal:
		return db.journalExists
	case FileWAL:
		return db.walExists
	case FileSHM:
		return db.shmExists
	}
	return !db.closed
}

// Stat returns the size and modification time of a file of the given kind.
func (db *DB) Stat(kind FileKind) (size int64, mtime time.Time, err error) {
	db.mu.Lock()
	defer db.mu.Unlock()
	if !db.existsLocked(kind) {
		return 0, time.Time{}, ErrNotExist
	}
	switch kind {
	case FileDatabase, FileJournal, FileWAL:
		fi, err := db.backing(kind).Stat()
		if err != nil {
			return 0, time.Time{}, err
		}
		return fi.Size(), fi.ModTime(), nil
	case FileSHM:
		fi, err := db.dbFile.Stat()
		if err != nil {
			return 0, time.Time{}, err
		}
		return int64(len(db.shm)), fi.ModTime(), nil
	case FilePos:
		return int64(len(ltx.FormatPos(db.pos))), db.log.LastTime(), nil
	}
	return 0, time.Time{}, nil
}

func (db *DB) existsLocked(kind FileKind) bool {
	switch kind {
	case FileJournal:
		return db.journalExists
	case FileWAL:
		return db.walExists
	case FileSHM:
		return db.shmExists
	}
	return !db.closed
}

func (db *DB) backing(kind FileKind) file {
	switch kind {
	case FileDatabase:
		return db.dbFile
	case FileJournal:
		return db.journal
	case FileWAL:
		return db.wal
	}
	return nil
}

// Create makes a journal, WAL or shared-memory file exist.
func (db *DB) Create(kind FileKind) error {
	db.mu.Lock()
	defer db.mu.Unlock()
	if db.closed {
		return ErrNotExist
	}
	// A replica lets SQLite create an empty WAL: a reader of a database in
	// WAL mode needs one, and the last connection to close (under the HALT
	// lock, say) deletes it.
	if kind != FileSHM && kind != FileDatabase && kind != FileWAL && !db.writableLocked() {
		return fmt.Errorf("create %s of %s: %w", kind, db.name, ErrReadOnly)
	}
	switch kind {
	case FileJournal:
		db.journalExists = true
	case FileWAL:
		db.walExists = true
	case FileSHM:
		db.shmExists = true
	}
	return nil
}

// ReadAt reads from one of the database's files.
func (db *DB) ReadAt(kind FileKind, p []byte, off int64) (int, error) {
	db.mu.Lock()
	if !db.existsLocked(kind) {
		db.mu.Unlock()
		return 0, ErrNotExist
	}
	switch kind {
	case FileSHM:
		defer db.mu.Unlock()
		if off >= int64(len(db.shm)) {
			return 0, nil
		}
		return copy(p, db.shm[off:]), nil
	case FilePos:
		defer db.mu.Unlock()
		s := ltx.FormatPos(db.pos)
		if off >= int64(len(s)) {
			return 0, nil
		}
		return copy(p, s[off:]), nil
	case FileLock:
		db.mu.Unlock()
		return 0, nil
	}
	if kind == FileDatabase && db.damaged != nil {
		err := db.damaged
		db.mu.Unlock()
		return 0, fmt.Errorf("read %s: %w: %v", db.name, syscall.EIO, err)
	}
	f := db.backing(kind)
	db.mu.Unlock()

	// Backing files are only written through this DB, and SQLite's own
	// locks order its reads and writes, so reading without db.mu is safe.
	n, err := f.ReadAt(p, off)
	if err == io.EOF {
		err = nil
	}
	return n, err
}

// WriteAt writes to one of the database's files, committing a transaction
// when the write completes one.
func (db *DB) WriteAt(kind FileKind, p []byte, off int64) (int, error) {
	db.mu.Lock()
	defer db.mu.Unlock()
	if !db.existsLocked(kind) {
		return 0, ErrNotExist
	}
	if kind == FileSHM {
		if end := off + int64(len(p)); end > int64(len(db.shm)) {
			db.resizeSHM(end)
		}
		return copy(db.shm[off:], p), nil
	}
	if kind == FilePos || kind == FileLock {
		return 0, fmt.Errorf("write %s of %s: %w", kind, db.name, syscall.EACCES)
	}
	if !db.writableLocked() {
		if time.Since(db.refusedAt) > 10*time.Second {
			db.refusedAt = time.Now()
			db.logger.Warn("write refused: this node is not the primary", "file", kind.String())
		}
		return 0, fmt.Errorf("write %s of %s: %w", kind, db.name, ErrReadOnly)
	}
	switch kind {
	case FileDatabase:
		return db.writeDatabase(p, off)
	case FileJournal:
		return db.writeJournal(p, off)
	case FileWAL:
		return db.writeWAL(p, off)
	}
	return 0, fmt.Errorf("write to %s: %w", kind, syscall.EINVAL)
}

// Remove deletes a journal, WAL or shared-memory file. The backing file is
// kept, emptied, so that the next transaction does not pay for creating it.
func (db *DB) Remove(kind FileKind) error {
	db.mu.Lock()
	defer db.mu.Unlock()
	if !db.existsLocked(kind) {
		return ErrNotExist
	}
	switch kind {
	case FileSHM:
		db.shm, db.shmExists = nil, false
		return nil
	case FileJournal, FileWAL:
	default:
		return fmt.Errorf("remove %s of %s: %w", kind, db.name, syscall.EPERM)
	}
	if !db.writableLocked() {
		return fmt.Errorf("remove %s of %s: %w", kind, db.name, ErrReadOnly)
	}
	if kind == FileJournal {
		return db.removeJournal()
	}
	return db.removeWAL()
}

// Sync makes a file durable. Before the database file itself is synced,
// the changeset log is, so the log is never behind what SQLite made durable
// (a WAL checkpoint syncs the database before frames can be overwritten).
func (db *DB) Sync(kind FileKind) error {
	db.mu.Lock()
	defer db.mu.Unlock()
	if !db.existsLocked(kind) {
		return ErrNotExist
	}
	switch kind {
	case FileDatabase:
		if err := db.log.Sync(); err != nil {
			return err
		}
		if db.tx.pending() {
			db.tx.synced = true
		}
		return db.dbFile.Sync()
	case FileJournal:
		return db.journal.Sync()
	case FileWAL:
		return db.wal.Sync()
	}
	return nil
}

func (db *DB) resizeSHM(size int64) {
	if size <= int64(cap(db.shm)) {
		old := len(db.shm)
		db.shm = db.shm[:size]
		if int(size) > old {
			clear(db.shm[old:])
		}
		return
	}
	grown := make([]byte, size)
	copy(grown, db.shm)
	db.shm = grown
}

// notifyLocked wakes everyone waiting for the next commit. Caller holds db.mu.
func (db *DB) notifyLocked() {
	close(db.changed)
	db.changed = make(chan struct{})
	db.store.notify()
}

// WaitPos blocks until the database reaches txid or ctx ends.
func (db *DB) WaitPos(ctx context.Context, txid ltx.TXID) error {
	for {
		db.mu.Lock()
		reached, ch := db.pos.TXID >= txid, db.changed
		db.mu.Unlock()
		if reached {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// close releases the database's files. Caller holds db.mu.
func (db *DB) closeLocked() error {
	if db.closed {
		return nil
	}
	db.closed = true
	db.closeForwardReader()
	err := db.log.Close()
	db.closeFiles()
	db.notifyLocked()
	return err
}

func (db *DB) closeFiles() {
	if db.dbFile != nil {
		_ = db.dbFile.Close()
	}
	for _, f := range []*os.File{db.journal, db.wal} {
		if f != nil {
			_ = f.Close()
		}
	}
}

// now is the clock used for changeset timestamps; tests may replace it.
var now = time.Now
