package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/litefs-project/litefs/internal/rangelock"
	"github.com/litefs-project/litefs/ltx"
)

// The HALT lock lets a replica write. A write lock on byte HaltByte of the
// hidden NAME-lock file takes it: on the primary it is a local lock that
// remote holders share the table of; on a replica the store asks the
// primary for it through a Halter, catches up to the primary's position,
// and then accepts local writes to that database, sending each commit to
// the primary (Halt.Commit) before SQLite sees it succeed.

// HaltByte is the byte of NAME-lock whose write lock is the HALT lock.
const HaltByte = 72

// Errors of the HALT protocol.
var (
	// ErrHaltHeld: another node or process holds the HALT lock.
	ErrHaltHeld = errors.New("HALT lock held by another holder")
	// ErrHaltNotHeld: a lock ID that is not the current holder's.
	ErrHaltNotHeld = errors.New("HALT lock not held")
)

// Halter obtains the HALT lock from the primary, on a replica.
type Halter interface {
	// Acquire asks the primary for the lock on db, waiting for it if
	// wait is set, and returns once this node has the primary's position.
	// It returns ErrHaltHeld if wait is false and someone holds it.
	Acquire(ctx context.Context, db string, wait bool) (Halt, error)
}

// Halt is a HALT lock held from the primary.
type Halt interface {
	// Commit sends a changeset committed locally to the primary, which
	// applies it durably before Commit returns.
	Commit(ctx context.Context, data []byte) error
	// Release gives the lock back.
	Release(ctx context.Context) error
}

// SetHalter sets how this node asks the primary for HALT locks.
func (s *Store) SetHalter(h Halter) {
	s.mu.Lock()
	s.halter = h
	s.mu.Unlock()
}

func (s *Store) getHalter() Halter {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.halter
}

// localHalt is the state of a HALT lock taken through this node's mount.
type localHalt struct {
	owner  rangelock.Owner // who holds byte HaltByte in db.haltLocks
	handle uint64          // through which open file
	remote Halt            // the primary's lock, on a replica
}

// writableLocked reports whether local writes to db are accepted: this node
// is primary, or it holds the primary's HALT lock on db. Caller holds db.mu.
func (db *DB) writableLocked() bool {
	return db.store.Writable() || (db.halt != nil && db.halt.remote != nil)
}

// Writable reports whether local writes to the database are accepted.
func (db *DB) Writable() bool {
	db.mu.Lock()
	defer db.mu.Unlock()
	return db.writableLocked()
}

// Stats are a database's counters since the node started.
type Stats struct {
	Commits        int64 // transactions committed through this node's mount
	Changesets     int64 // changesets appended to the log (commits and applied)
	ChangesetBytes int64 // their encoded size
	HaltHeld       bool  // a HALT lock is held on it, here or for a replica
}

// Stats returns the database's counters.
func (db *DB) Stats() Stats {
	n, b := db.log.Appended()
	db.mu.Lock()
	held := db.halt != nil || db.grant != nil
	db.mu.Unlock()
	return Stats{Commits: db.commits.Load(), Changesets: n, ChangesetBytes: b, HaltHeld: held}
}

// HaltWaiting returns how many HALT lock requests are waiting.
func (s *Store) HaltWaiting() int64 { return s.haltWaiting.Load() }

// Halted reports whether this replica holds the primary's HALT lock on db.
func (db *DB) Halted() bool {
	db.mu.Lock()
	defer db.mu.Unlock()
	return db.halt != nil && db.halt.remote != nil
}

// lockHalt applies a lock request on the NAME-lock file. Taking the HALT
// byte on a replica asks the primary; giving it up releases the primary's
// lock. It may wait on the network: callers run it off the FUSE loop.
func (db *DB) lockHalt(ctx context.Context, req rangelock.Lock, wait bool) (bool, error) {
	if req.Type == rangelock.Write {
		db.store.haltWaiting.Add(1)
		defer db.store.haltWaiting.Add(-1)
	}
	if wait {
		if err := db.haltLocks.Lock(ctx, req); err != nil {
			return false, err
		}
	} else if !db.haltLocks.TryLock(req) {
		return false, nil
	}
	covers := req.Start <= HaltByte && HaltByte <= req.End
	db.mu.Lock()
	cur := db.halt
	db.mu.Unlock()
	switch {
	case covers && req.Type == rangelock.Write && (cur == nil || cur.owner != req.Owner):
		h := &localHalt{owner: req.Owner, handle: req.Handle}
		if !db.store.Writable() {
			halter := db.store.getHalter()
			var err error
			if halter == nil {
				err = errors.New("this node cannot reach a primary")
			} else {
				h.remote, err = halter.Acquire(ctx, db.name, wait)
			}
			if err != nil {
				db.haltLocks.TryLock(rangelock.Lock{Owner: req.Owner, Start: HaltByte, End: HaltByte, Type: rangelock.Unlock})
				if errors.Is(err, ErrHaltHeld) {
					return false, nil
				}
				db.logger.Warn("HALT lock refused", "err", err)
				return false, fmt.Errorf("halt %s: %w", db.name, err)
			}
			db.logger.Info("HALT lock acquired from the primary", "pos", db.Pos().String())
		}
		db.mu.Lock()
		db.halt = h
		db.mu.Unlock()
	case covers && req.Type != rangelock.Write:
		db.checkHaltReleased()
	}
	return true, nil
}

// checkHaltReleased ends the HALT lock once its holder no longer has the
// byte (it unlocked it, closed the file, or exited).
func (db *DB) checkHaltReleased() {
	db.mu.Lock()
	h := db.halt
	if h == nil || db.haltLocks.Holds(h.owner, HaltByte, HaltByte, rangelock.Write) {
		db.mu.Unlock()
		return
	}
	db.halt = nil
	db.mu.Unlock()
	if h.remote == nil {
		return
	}
	db.logger.Info("HALT lock released")
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := h.remote.Release(ctx); err != nil {
			db.logger.Warn("release HALT lock on the primary", "err", err)
		}
	}()
}

// forwardLocked sends the changeset just appended as txid to the primary.
// On failure the record is removed again and the commit fails. Caller
// holds db.mu.
func (db *DB) forwardLocked(txid ltx.TXID) error {
	r := db.log.NewReader()
	defer r.Close()
	_, sr, err := r.Read(txid)
	if err != nil {
		return err
	}
	data, err := io.ReadAll(sr)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := db.halt.remote.Commit(ctx, data); err != nil {
		if terr := db.log.TruncateAfter(txid - 1); terr != nil {
			db.logger.Error("remove a changeset the primary refused", "txid", txid.String(), "err", terr)
		}
		db.logger.Error("commit refused by the primary; the transaction fails", "txid", txid.String(), "err", err)
		return fmt.Errorf("forward changeset %s of %s: %w", txid, db.name, err)
	}
	return nil
}

// haltGrant is a HALT lock this primary granted to a replica.
type haltGrant struct {
	mu       sync.Mutex // serialises commits with expiry
	id       uint64
	nodeID   string
	owner    rangelock.Owner
	ttl      time.Duration
	timer    *time.Timer
	release  func() // lets local writers in again
	released bool
}

// HaltGrant is the primary's answer to a HALT request.
type HaltGrant struct {
	ID      uint64
	Expires time.Time
	Pos     ltx.Pos
}

// haltIDs never repeat: they start from the clock at start-up.
var haltIDs atomic.Uint64

func init() { haltIDs.Store(uint64(time.Now().UnixNano())) }

// haltOwnerBase marks lock owners that stand for remote holders.
const haltOwnerBase rangelock.Owner = 0x4c69746546530100

// GrantHalt gives the HALT lock on the named database to a replica: it
// waits for the lock (if wait), for in-flight write transactions to end,
// holds off new ones, and returns the lock's ID and this node's position.
// The lock expires after ttl unless kept alive.
func (s *Store) GrantHalt(ctx context.Context, name, nodeID string, ttl time.Duration, wait bool) (HaltGrant, error) {
	if !s.Writable() {
		return HaltGrant{}, fmt.Errorf("halt %s: %w", name, ErrReadOnly)
	}
	db := s.DB(name)
	if db == nil {
		return HaltGrant{}, fmt.Errorf("halt %s: %w", name, ErrNotExist)
	}
	id := haltIDs.Add(1)
	g := &haltGrant{id: id, nodeID: nodeID, owner: haltOwnerBase + rangelock.Owner(id&0xffff), ttl: ttl}
	lock := rangelock.Lock{Owner: g.owner, Start: HaltByte, End: HaltByte, Type: rangelock.Write}
	if wait {
		if err := db.haltLocks.Lock(ctx, lock); err != nil {
			return HaltGrant{}, fmt.Errorf("halt %s: %w", name, err)
		}
	} else if !db.haltLocks.TryLock(lock) {
		return HaltGrant{}, fmt.Errorf("halt %s: %w", name, ErrHaltHeld)
	}
	unlock := func() {
		db.haltLocks.TryLock(rangelock.Lock{Owner: g.owner, Start: HaltByte, End: HaltByte, Type: rangelock.Unlock})
	}
	release, err := db.holdWrites(ctx)
	if err != nil {
		unlock()
		return HaltGrant{}, err
	}
	// Changesets from the holder go straight into the database file, so
	// the WAL's committed pages must be there first.
	if err := db.settle(ctx); err != nil {
		release()
		unlock()
		return HaltGrant{}, err
	}
	g.release = func() {
		release()
		unlock()
	}
	db.mu.Lock()
	if db.grant != nil {
		db.mu.Unlock()
		g.release()
		return HaltGrant{}, fmt.Errorf("halt %s: %w", name, ErrHaltHeld)
	}
	db.grant = g
	pos := db.pos
	db.mu.Unlock()
	g.mu.Lock()
	g.timer = time.AfterFunc(ttl, func() { db.expireGrant(g) })
	g.mu.Unlock()
	db.logger.Info("HALT lock granted", "peer", nodeID, "lock_id", id, "pos", pos.String())
	return HaltGrant{ID: id, Expires: time.Now().Add(ttl), Pos: pos}, nil
}

// grantOf returns the current grant if its ID is id.
func (s *Store) grantOf(name string, id uint64) (*DB, *haltGrant, error) {
	db := s.DB(name)
	if db == nil {
		return nil, nil, fmt.Errorf("halt %s: %w", name, ErrNotExist)
	}
	db.mu.Lock()
	g := db.grant
	db.mu.Unlock()
	if g == nil || g.id != id {
		return db, nil, fmt.Errorf("%w: lock ID %d on %s is not the holder's (expired, released or never granted)", ErrHaltNotHeld, id, name)
	}
	return db, g, nil
}

// KeepHalt extends a grant by its TTL.
func (s *Store) KeepHalt(name string, id uint64) error {
	_, g, err := s.grantOf(name, id)
	if err != nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.released {
		return fmt.Errorf("%w: lock ID %d on %s expired", ErrHaltNotHeld, id, name)
	}
	g.timer.Reset(g.ttl)
	return nil
}

// ReleaseHalt ends a grant at its holder's request.
func (s *Store) ReleaseHalt(name string, id uint64) error {
	db, g, err := s.grantOf(name, id)
	if err != nil {
		return err
	}
	db.endGrant(g, "released")
	return nil
}

func (db *DB) expireGrant(g *haltGrant) { db.endGrant(g, "expired") }

// endGrant lets local writers in again.
func (db *DB) endGrant(g *haltGrant, why string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.released {
		return
	}
	g.released = true
	g.timer.Stop()
	db.mu.Lock()
	if db.grant == g {
		db.grant = nil
	}
	db.mu.Unlock()
	g.release()
	db.logger.Info("HALT lock "+why, "peer", g.nodeID, "lock_id", g.id)
}

// CommitHalted applies a changeset that the holder of lock id committed on
// its node. It must continue this database exactly; it is verified whole,
// written and made durable before CommitHalted returns, and then streams
// to every replica.
func (s *Store) CommitHalted(ctx context.Context, name string, id uint64, data io.ReaderAt, size int64) (ltx.Pos, error) {
	db, g, err := s.grantOf(name, id)
	if err != nil {
		return ltx.Pos{}, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.released {
		return ltx.Pos{}, fmt.Errorf("%w: lock ID %d on %s expired", ErrHaltNotHeld, id, name)
	}
	g.timer.Reset(g.ttl)
	pos, err := db.applyChangesetSync(ctx, data, size)
	if err != nil {
		db.logger.Warn("changeset from the HALT holder refused", "peer", g.nodeID, "lock_id", id, "err", err)
		return pos, err
	}
	return pos, nil
}

// applyChangesetSync is applyChangeset made durable before it returns.
func (db *DB) applyChangesetSync(ctx context.Context, data io.ReaderAt, size int64) (ltx.Pos, error) {
	pos, err := db.applyChangeset(ctx, data, size)
	if err != nil {
		return pos, err
	}
	db.mu.Lock()
	defer db.mu.Unlock()
	if err := db.log.Sync(); err != nil {
		return pos, err
	}
	return pos, db.dbFile.Sync()
}
