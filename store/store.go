// Package store owns a node's databases: their files as SQLite sees them,
// the detection of committed transactions, the page checksums that define
// each database's position, crash recovery, and the changeset logs. It
// knows nothing of FUSE or HTTP; those layers call into it.
package store

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults for Options.
const (
	DefaultRetention                = 10 * time.Minute
	DefaultRetentionMonitorInterval = 1 * time.Minute
)

// Options configures a Store.
type Options struct {
	Dir                      string        // data directory
	Retention                time.Duration // keep changesets at least this long
	RetentionMonitorInterval time.Duration // how often to prune
	StrictVerify             bool          // recompute the full checksum after every commit
	SegmentSize              int64         // changeset log segment size; 0 for the default
	Logger                   *slog.Logger
}

// Store is the set of databases on this node.
type Store struct {
	opts   Options
	logger *slog.Logger
	nodeID uint64
	lock   *dirLock // the data directory's, from Open to Close

	mu  sync.Mutex
	dbs map[string]*DB
	inv Invalidator

	changeMu sync.Mutex
	changed  chan struct{} // closed and replaced on any change

	writable   atomic.Bool
	halter     Halter       // asks the primary for HALT locks; guarded by mu
	term       *Term        // while this node is the primary; guarded by mu
	createHeld atomic.Int32 // holds on every database in force: no new database meanwhile

	haltWaiting  atomic.Int64    // HALT lock requests waiting
	holdsWaiting atomic.Int64    // write holds (handoffs, imports, grants) waiting for writers
	haltEnds     [5]atomic.Int64 // HALT grants ended, by HaltEndReasons

	stop chan struct{}
	wg   sync.WaitGroup
}

// Open loads every database under opts.Dir, recovering each to a
// consistent state, and starts the retention monitor. The directory is
// locked until Close; one another store holds is refused with a
// *DirInUseError.
func Open(opts Options) (*Store, error) {
	if opts.Dir == "" {
		return nil, errors.New("open store: data directory required")
	}
	if opts.Retention <= 0 {
		opts.Retention = DefaultRetention
	}
	if opts.RetentionMonitorInterval <= 0 {
		opts.RetentionMonitorInterval = DefaultRetentionMonitorInterval
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	s := &Store{
		opts:    opts,
		logger:  opts.Logger,
		dbs:     make(map[string]*DB),
		changed: make(chan struct{}),
		stop:    make(chan struct{}),
	}
	s.writable.Store(true)
	lock, err := lockDir(opts.Dir) // before anything in the directory is touched
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	s.lock = lock
	opened := false
	defer func() {
		if !opened {
			s.lock.release()
		}
	}()
	if err := os.MkdirAll(s.dbsDir(), 0o755); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	id, err := loadNodeID(filepath.Join(opts.Dir, "id"))
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	s.nodeID = id

	ents, err := os.ReadDir(s.dbsDir())
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	for _, ent := range ents {
		name := ent.Name()
		if strings.HasPrefix(name, ".") {
			// Left over from a deletion interrupted by a crash.
			_ = os.RemoveAll(filepath.Join(s.dbsDir(), name))
			continue
		}
		if !ent.IsDir() || ValidateName(name) != nil {
			continue
		}
		db, err := openDB(s, name)
		if err != nil {
			s.closeDBs()
			return nil, err
		}
		s.dbs[name] = db
	}

	s.wg.Add(1)
	go s.monitorRetention()
	opened = true
	return s, nil
}

// Close stops background work and closes every database.
func (s *Store) Close() error {
	select {
	case <-s.stop:
		return nil
	default:
		close(s.stop)
	}
	s.wg.Wait()
	// The lock goes last: the next owner may start once nothing is written.
	return errors.Join(s.closeDBs(), s.lock.release())
}

func (s *Store) closeDBs() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for _, db := range s.dbs {
		db.mu.Lock()
		errs = append(errs, db.closeLocked())
		db.mu.Unlock()
	}
	return errors.Join(errs...)
}

// Dir returns the data directory.
func (s *Store) Dir() string { return s.opts.Dir }

// NodeID returns this node's identifier, persisted in the data directory.
func (s *Store) NodeID() uint64 { return s.nodeID }

// Writable reports whether local writes are accepted (this node is primary).
func (s *Store) Writable() bool { return s.writable.Load() }

// SetWritable switches the node between accepting and refusing writes.
func (s *Store) SetWritable(v bool) { s.writable.Store(v) }

func (s *Store) dbsDir() string { return filepath.Join(s.opts.Dir, "dbs") }

// segmentMaxAge seals log segments often enough for retention to prune
// them close to on time.
func (s *Store) segmentMaxAge() time.Duration {
	return max(s.opts.Retention/2, time.Second)
}

// DB returns the named database, or nil.
func (s *Store) DB(name string) *DB {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dbs[name]
}

// DBs returns every database, sorted by name.
func (s *Store) DBs() []*DB {
	s.mu.Lock()
	dbs := make([]*DB, 0, len(s.dbs))
	for _, db := range s.dbs {
		dbs = append(dbs, db)
	}
	s.mu.Unlock()
	sort.Slice(dbs, func(i, j int) bool { return dbs[i].name < dbs[j].name })
	return dbs
}

// CreateDB creates an empty database, or returns the existing one. Only a
// writable node creates databases; replicas get theirs from the primary.
func (s *Store) CreateDB(name string) (*DB, error) {
	return s.createDB(name, false)
}

func (s *Store) createDB(name string, replicated bool) (*DB, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if db := s.dbs[name]; db != nil {
		return db, nil
	}
	if !replicated && !s.Writable() {
		return nil, fmt.Errorf("create database %q: %w", name, ErrReadOnly)
	}
	if !replicated && s.createHeld.Load() > 0 {
		// A handoff holds every database's writers: a new one would be
		// missing from the positions it hands over.
		return nil, fmt.Errorf("create database %q: writes are held for a change of primary: %w", name, ErrReadOnly)
	}
	if err := os.MkdirAll(filepath.Join(s.dbsDir(), name), 0o755); err != nil {
		return nil, fmt.Errorf("create database %q: %w", name, err)
	}
	db, err := openDB(s, name)
	if err != nil {
		return nil, err
	}
	s.dbs[name] = db
	s.logger.Info("database created", "db", name)
	s.notify()
	return db, nil
}

// DeleteDB removes a database and its changeset log.
func (s *Store) DeleteDB(name string) error {
	if !s.Writable() {
		return fmt.Errorf("delete database %q: %w", name, ErrReadOnly)
	}
	return s.deleteDB(name)
}

func (s *Store) deleteDB(name string) error {
	s.mu.Lock()
	db := s.dbs[name]
	delete(s.dbs, name)
	s.mu.Unlock()
	if db == nil {
		return fmt.Errorf("delete database %q: %w", name, ErrNotExist)
	}

	db.mu.Lock()
	err := db.closeLocked()
	db.mu.Unlock()
	if err != nil {
		s.logger.Warn("closing deleted database", "db", name, "err", err)
	}
	// Rename first so that a crash mid-removal cannot leave half a database.
	trash := filepath.Join(s.dbsDir(), fmt.Sprintf(".deleted-%s-%d", name, time.Now().UnixNano()))
	if err := os.Rename(db.dir, trash); err != nil {
		return fmt.Errorf("delete database %q: %w", name, err)
	}
	if err := os.RemoveAll(trash); err != nil {
		return fmt.Errorf("delete database %q: %w", name, err)
	}
	s.logger.Info("database deleted", "db", name)
	s.notify()
	return nil
}

// monitorRetention prunes changesets older than the retention period.
func (s *Store) monitorRetention() {
	defer s.wg.Done()
	ticker := time.NewTicker(s.opts.RetentionMonitorInterval)
	defer ticker.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-ticker.C:
			s.EnforceRetention()
		}
	}
}

// EnforceRetention prunes every database's log once.
func (s *Store) EnforceRetention() {
	cutoff := time.Now().Add(-s.opts.Retention)
	for _, db := range s.DBs() {
		n, err := db.log.Prune(cutoff)
		if err != nil {
			db.logger.Error("prune changesets", "err", err)
		} else if n > 0 {
			db.logger.Debug("pruned changesets", "count", n, "base", db.log.Base())
		}
	}
}

// loadNodeID reads the node ID from path, creating a random one if needed.
func loadNodeID(path string) (uint64, error) {
	if b, err := os.ReadFile(path); err == nil {
		id, err := strconv.ParseUint(strings.TrimSpace(string(b)), 16, 64)
		if err != nil || id == 0 {
			return 0, fmt.Errorf("invalid node id in %s", path)
		}
		return id, nil
	} else if !os.IsNotExist(err) {
		return 0, err
	}
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return 0, err
	}
	id := binary.BigEndian.Uint64(b[:]) | 1
	if err := os.WriteFile(path, []byte(fmt.Sprintf("%016X\n", id)), 0o644); err != nil {
		return 0, fmt.Errorf("write node id: %w", err)
	}
	return id, nil
}
