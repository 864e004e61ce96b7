package store

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/litefs-project/litefs/internal/clock"
	"github.com/litefs-project/litefs/internal/rangelock"
	"github.com/litefs-project/litefs/ltx"
)

// This file is the primary's side of the HALT lock: grants to replicas,
// which belong to the term that made them.

// Why a HALT grant ended, as counted in HaltStats.
const (
	haltEndReleased     = "released"     // the holder gave it back
	haltEndExpired      = "expired"      // no sign of life within the TTL
	haltEndDisconnected = "disconnected" // the holder's connection closed
	haltEndTerm         = "term-ended"   // the primary's term ended
)

// HaltEndReasons lists why grants end, for metrics.
var HaltEndReasons = []string{haltEndReleased, haltEndExpired, haltEndDisconnected, haltEndTerm}

// HaltRequest asks for the HALT lock on a database.
type HaltRequest struct {
	DB     string
	NodeID string // the asking node, for logs
	Epoch  uint64 // the term the asking node believes current
	Wait   bool   // wait for the lock rather than fail at once
}

// HaltGrant is a HALT lock granted to a replica.
type HaltGrant struct {
	ID    uint64
	Epoch uint64
	TTL   time.Duration
	Pos   ltx.Pos // this node's position when granted; the holder catches up to it
	g     *haltGrant
}

// Done is closed when the grant ends, for any reason.
func (g HaltGrant) Done() <-chan struct{} { return g.g.done }

// Err says why the grant ended; nil while it is held, and when its holder
// released it.
func (g HaltGrant) Err() error {
	g.g.mu.Lock()
	defer g.g.mu.Unlock()
	return g.g.why
}

// haltGrant is the primary's record of a grant.
type haltGrant struct {
	term   *Term
	db     *DB
	id     uint64
	nodeID string
	hold   *Hold // the writer locks; the HALT byte is held under hold.owner too

	mu    sync.Mutex // serialises commits, keepalives and the end of the grant
	timer clock.Timer
	ended bool
	why   error // why it ended, unless released
	done  chan struct{}
}

// GrantHalt gives the HALT lock on a database to a replica: it waits for
// the lock (if req.Wait), for in-flight write transactions to end, folds
// the WAL into the database file (forwarded changesets are written there),
// and keeps local writers out until the grant ends. The grant expires
// after the term's HALT TTL unless kept alive.
func (t *Term) GrantHalt(ctx context.Context, req HaltRequest) (HaltGrant, error) {
	if err := t.enter(req.Epoch); err != nil {
		return HaltGrant{}, fmt.Errorf("halt %s: %w", req.DB, err)
	}
	defer t.leave()
	db := t.store.DB(req.DB)
	if db == nil {
		return HaltGrant{}, fmt.Errorf("halt %s: %w", req.DB, ErrNotExist)
	}
	t.store.haltWaiting.Add(1)
	defer t.store.haltWaiting.Add(-1)
	ctx, cancel := t.bind(ctx)
	defer cancel()

	owner := t.newOwner()
	lock := rangelock.Lock{Owner: owner, Start: HaltByte, End: HaltByte, Type: rangelock.Write}
	if req.Wait {
		if err := db.haltLocks.Lock(ctx, lock); err != nil {
			return HaltGrant{}, fmt.Errorf("halt %s: %w", req.DB, t.waitErr(ctx, err))
		}
	} else if !db.haltLocks.TryLock(lock) {
		return HaltGrant{}, fmt.Errorf("halt %s: %w", req.DB, ErrHaltHeld)
	}
	unlockByte := func() {
		db.haltLocks.TryLock(rangelock.Lock{Owner: owner, Start: HaltByte, End: HaltByte, Type: rangelock.Unlock})
	}
	hold, err := t.hold(ctx, owner, []*DB{db})
	if err != nil {
		unlockByte()
		return HaltGrant{}, fmt.Errorf("halt %s: %w", req.DB, err)
	}
	if err := db.settle(ctx, owner); err != nil {
		hold.Release()
		unlockByte()
		return HaltGrant{}, fmt.Errorf("halt %s: %w", req.DB, t.waitErr(ctx, err))
	}

	g := &haltGrant{term: t, db: db, id: newHaltID(), nodeID: req.NodeID, hold: hold, done: make(chan struct{})}
	// The grant is published with its timer in place: nothing can reach
	// it before g.mu is released.
	g.mu.Lock()
	t.mu.Lock()
	if t.ending {
		t.mu.Unlock()
		g.mu.Unlock()
		hold.Release()
		unlockByte()
		return HaltGrant{}, fmt.Errorf("halt %s: %w", req.DB, t.endedErr())
	}
	t.grants[g.id] = g
	t.mu.Unlock()
	db.mu.Lock()
	db.grant = g
	pos := db.pos
	db.mu.Unlock()
	g.timer = t.clock.AfterFunc(t.haltTTL, func() { g.end(haltEndExpired) })
	g.mu.Unlock()
	db.logger.Info("HALT lock granted", "peer", req.NodeID, "epoch", t.epoch, "pos", pos.String())
	return HaltGrant{ID: g.id, Epoch: t.epoch, TTL: t.haltTTL, Pos: pos, g: g}, nil
}

// newHaltID returns a random, non-zero lock ID: a holder's own ID tells
// nothing about another's.
func newHaltID() uint64 {
	var b [8]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			panic(fmt.Sprintf("read random bytes: %v", err))
		}
		if id := binary.BigEndian.Uint64(b[:]); id != 0 {
			return id
		}
	}
}

// grant returns the term's grant id on the named database.
func (t *Term) grant(epoch uint64, name string, id uint64) (*haltGrant, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.admitLocked(epoch); err != nil {
		return nil, err
	}
	g := t.grants[id]
	if g == nil || g.db.name != name {
		return nil, fmt.Errorf("%w: that lock ID on %s is not the holder's (expired, released or never granted in epoch %d)", ErrHaltNotHeld, name, t.epoch)
	}
	return g, nil
}

// heldLocked fails unless the grant is alive, and pauses its expiry.
// Caller holds g.mu; resume restarts the expiry.
func (g *haltGrant) heldLocked() error {
	if g.ended {
		return g.endedErr()
	}
	if !g.timer.Stop() {
		// The TTL ran out just now: the expiry is waiting for g.mu.
		return fmt.Errorf("%w: the lock on %s expired", ErrHaltNotHeld, g.db.name)
	}
	return nil
}

func (g *haltGrant) resumeLocked() { g.timer.Reset(g.term.haltTTL) }

func (g *haltGrant) endedErr() error {
	if g.why != nil {
		return fmt.Errorf("%w: %v", ErrHaltNotHeld, g.why)
	}
	return fmt.Errorf("%w: the lock on %s was released", ErrHaltNotHeld, g.db.name)
}

// HaltHeld checks that grant id on the named database is alive in the term
// of epoch, so that a request that cannot succeed is refused before its
// body is read.
func (t *Term) HaltHeld(epoch uint64, name string, id uint64) error {
	g, err := t.grant(epoch, name, id)
	if err != nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ended {
		return g.endedErr()
	}
	return nil
}

// KeepHalt extends a grant by the TTL.
func (t *Term) KeepHalt(epoch uint64, name string, id uint64) error {
	g, err := t.grant(epoch, name, id)
	if err != nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.heldLocked(); err != nil {
		return err
	}
	g.resumeLocked()
	return nil
}

// ReleaseHalt ends a grant at its holder's request.
func (t *Term) ReleaseHalt(epoch uint64, name string, id uint64) error {
	g, err := t.grant(epoch, name, id)
	if err != nil {
		return err
	}
	g.end(haltEndReleased)
	return nil
}

// DropHalt ends a grant whose holder's connection closed.
func (t *Term) DropHalt(id uint64) {
	t.mu.Lock()
	g := t.grants[id]
	t.mu.Unlock()
	if g != nil {
		g.end(haltEndDisconnected)
	}
}

// CommitHalted applies a changeset that the holder of grant id committed
// on its node. It must continue the database exactly; it is verified
// whole, written and made durable before CommitHalted returns, and then
// streams to every replica. A commit that completes after the term began
// to end is reported as failed: its outcome is unknown.
func (t *Term) CommitHalted(ctx context.Context, epoch uint64, name string, id uint64, data io.ReaderAt, size int64) (ltx.Pos, error) {
	if err := t.enter(epoch); err != nil {
		return ltx.Pos{}, err
	}
	defer t.leave()
	g, err := t.grant(epoch, name, id)
	if err != nil {
		return ltx.Pos{}, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.heldLocked(); err != nil {
		return ltx.Pos{}, err
	}
	defer g.resumeLocked()
	ctx, cancel := t.bind(ctx)
	defer cancel()
	pos, err := g.db.applyChangesetSync(ctx, data, size, g.hold.owner)
	if err != nil {
		err = t.waitErr(ctx, err)
		g.db.logger.Warn("changeset from the HALT holder refused", "peer", g.nodeID, "epoch", t.epoch, "err", err)
		return pos, err
	}
	if t.isEnding() {
		return pos, fmt.Errorf("%w while the changeset %s was applied; it may or may not survive the change of primary", t.endedErr(), pos.TXID)
	}
	return pos, nil
}

// end ends the grant, for why, and lets local writers in again.
func (g *haltGrant) end(why string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ended {
		return
	}
	g.ended = true
	if g.timer != nil {
		g.timer.Stop()
	}
	switch why {
	case haltEndExpired:
		g.why = fmt.Errorf("the lock on %s expired: no sign of life from its holder within %s", g.db.name, g.term.haltTTL)
	case haltEndDisconnected:
		g.why = fmt.Errorf("the holder of the lock on %s disconnected", g.db.name)
	case haltEndTerm:
		g.why = fmt.Errorf("the primary's term (epoch %d) ended", g.term.epoch)
	}
	t := g.term
	t.mu.Lock()
	delete(t.grants, g.id)
	t.mu.Unlock()
	db := g.db
	db.mu.Lock()
	if db.grant == g {
		db.grant = nil
	}
	db.mu.Unlock()
	g.hold.Release()
	db.haltLocks.TryLock(rangelock.Lock{Owner: g.hold.owner, Start: HaltByte, End: HaltByte, Type: rangelock.Unlock})
	t.store.countHaltEnd(why)
	close(g.done)
	db.logger.Info("HALT lock "+why, "peer", g.nodeID, "epoch", t.epoch)
}

// applyChangesetSync is applyChangeset made durable before it returns.
// owner is the hold that keeps local writers out meanwhile.
func (db *DB) applyChangesetSync(ctx context.Context, data io.ReaderAt, size int64, owner rangelock.Owner) (ltx.Pos, error) {
	pos, err := db.applyChangesetHeld(ctx, data, size, owner)
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
