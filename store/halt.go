package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/litefs-project/litefs/internal/rangelock"
)

// The HALT lock lets a replica write. A write lock on byte HaltByte of the
// hidden NAME-lock file takes it: on the primary it is a local lock that
// remote holders share the table of (grant.go); on a replica the store
// asks the primary for it through a Halter, catches up to the primary's
// position, and then accepts local writes to that database, sending each
// commit to the primary (Halt.Commit) before SQLite sees it succeed
// (pending.go).

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
	// Release gives the lock back. It does not wait for the network; the
	// Halter finishes the release in the background and waits for it when
	// it is closed.
	Release()
	// Lost returns why the lock is no longer held for this node (the
	// primary ended it, or a new primary took over), or nil while it is.
	Lost() error
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
	return db.store.Writable() || (db.halt != nil && db.halt.remote != nil && db.halt.remote.Lost() == nil)
}

// forwardingLocked reports whether a commit must reach the primary before
// SQLite sees it succeed. Caller holds db.mu.
func (db *DB) forwardingLocked() bool {
	return !db.store.Writable() && db.halt != nil && db.halt.remote != nil
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
	HaltWaiting    int   // HALT lock requests waiting for it: a replica's, or local ones on the primary
}

// Stats returns the database's counters.
func (db *DB) Stats() Stats {
	n, b := db.log.Appended()
	db.mu.Lock()
	held := db.halt != nil || db.grant != nil
	db.mu.Unlock()
	waiting := int(db.turn.writers.halts.Load())
	if t := db.store.CurrentTerm(); t != nil {
		waiting += t.haltQueued(db)
	}
	return Stats{Commits: db.commits.Load(), Changesets: n, ChangesetBytes: b, HaltHeld: held, HaltWaiting: waiting}
}

// HaltWaiting returns how many HALT lock requests are waiting.
func (s *Store) HaltWaiting() int64 { return s.haltWaiting.Load() }

// HoldsWaiting returns how many write holds (for handoffs, imports and
// HALT grants) are waiting for the writers they keep out.
func (s *Store) HoldsWaiting() int64 { return s.holdsWaiting.Load() }

// HaltEnds returns how many HALT grants this node ended, by reason
// (released, expired, disconnected, term-ended).
func (s *Store) HaltEnds() map[string]int64 {
	m := make(map[string]int64, len(HaltEndReasons))
	for i, why := range HaltEndReasons {
		m[why] = s.haltEnds[i].Load()
	}
	return m
}

func (s *Store) countHaltEnd(why string) {
	for i, r := range HaltEndReasons {
		if r == why {
			s.haltEnds[i].Add(1)
		}
	}
}

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
		if wait && db.store.Writable() {
			// A process on the primary waiting for the byte is a local
			// writer waiting: an old grant gives way to it (grant.go).
			db.turn.writers.halts.Add(1)
			defer db.turn.writers.halts.Add(-1)
		}
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
	case covers && req.Type == rangelock.Write && (cur == nil || cur.owner != req.Owner || (cur.remote != nil && cur.remote.Lost() != nil)):
		// A holder taking the byte again after the primary ended its lock
		// asks the primary again.
		h := &localHalt{owner: req.Owner, handle: req.Handle}
		if !db.store.Writable() {
			halter := db.store.getHalter()
			var err error
			if halter == nil {
				err = errors.New("this node cannot reach a primary")
			} else {
				// The Halter bounds each request to the primary; ctx
				// is the lock request's own, which an interrupt ends.
				h.remote, err = halter.Acquire(ctx, db.name, wait)
			}
			if err != nil {
				db.unlockHaltByte(req.Owner)
				if errors.Is(err, ErrHaltHeld) {
					return false, nil
				}
				db.logger.Warn("HALT lock refused", "err", err)
				return false, fmt.Errorf("halt %s: %w", db.name, err)
			}
		}
		// The holder may have given the byte up while the primary was
		// asked (it closed the file, or exited): then the lock goes back.
		db.mu.Lock()
		if !db.haltLocks.Holds(req.Owner, HaltByte, HaltByte, rangelock.Write) {
			db.mu.Unlock()
			if h.remote != nil {
				h.remote.Release()
			}
			return false, fmt.Errorf("halt %s: the lock was given up while it was being acquired: %w", db.name, context.Canceled)
		}
		db.halt = h
		pos := db.pos
		db.mu.Unlock()
		if h.remote != nil {
			db.logger.Info("HALT lock acquired from the primary", "pos", pos.String())
		}
	case covers && req.Type != rangelock.Write:
		db.checkHaltReleased()
	}
	return true, nil
}

func (db *DB) unlockHaltByte(owner rangelock.Owner) {
	db.haltLocks.TryLock(rangelock.Lock{Owner: owner, Start: HaltByte, End: HaltByte, Type: rangelock.Unlock})
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
	if h.remote != nil {
		db.logger.Info("HALT lock released")
		h.remote.Release()
	}
}
