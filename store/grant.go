package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/litefs-project/litefs/internal/clock"
	"github.com/litefs-project/litefs/internal/rangelock"
	"github.com/litefs-project/litefs/internal/sqlite"
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
	haltEndPreempted    = "preempted"    // held past the term's HaltMaxHold while others waited to write
)

// HaltEndReasons lists why grants end, for metrics.
var HaltEndReasons = []string{haltEndReleased, haltEndExpired, haltEndDisconnected, haltEndTerm, haltEndPreempted}

// Errors of HALT grants on the primary.
var (
	// ErrBadHaltID: a lock ID that is not one this node could have made.
	ErrBadHaltID = errors.New("malformed HALT lock ID")
	// ErrHaltQueueFull: as many HALT requests as a database queues are
	// already waiting for its lock.
	ErrHaltQueueFull = errors.New("too many HALT requests waiting")
	// ErrHaltWaitTimeout: a HALT request waited as long as a request may.
	ErrHaltWaitTimeout = fmt.Errorf("HALT lock not granted in time: %w", context.DeadlineExceeded)
	// ErrTooLarge: a forwarded changeset larger than the term accepts.
	ErrTooLarge = errors.New("changeset too large")
)

// HaltID names a HALT grant: 128 random bits. The ID is the holder's only
// credential for its keepalives, commits and release, so knowing any
// number of other IDs must tell nothing about it, and guessing it must be
// hopeless. Its text form is 32 hexadecimal digits.
type HaltID [16]byte

// newHaltID returns a random, non-zero lock ID.
func newHaltID() HaltID {
	var id HaltID
	for id.IsZero() {
		if _, err := rand.Read(id[:]); err != nil {
			panic(fmt.Sprintf("read random bytes: %v", err))
		}
	}
	return id
}

// ParseHaltID parses the text form of a lock ID.
func ParseHaltID(s string) (HaltID, error) {
	var id HaltID
	if len(s) != hex.EncodedLen(len(id)) {
		return id, fmt.Errorf("%w %q: want %d hexadecimal digits", ErrBadHaltID, clip(s), hex.EncodedLen(len(id)))
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return id, fmt.Errorf("%w %q: %v", ErrBadHaltID, clip(s), err)
	}
	if id.IsZero() {
		return id, fmt.Errorf("%w: zero", ErrBadHaltID)
	}
	return id, nil
}

// clip shortens text from a request for an error message.
func clip(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

// IsZero reports whether id is the zero ID, which names no grant.
func (id HaltID) IsZero() bool { return id == HaltID{} }

// String returns the text form of the ID.
func (id HaltID) String() string { return hex.EncodeToString(id[:]) }

// MarshalText implements encoding.TextMarshaler.
func (id HaltID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler; it refuses anything
// ParseHaltID refuses.
func (id *HaltID) UnmarshalText(b []byte) error {
	v, err := ParseHaltID(string(b))
	if err != nil {
		return err
	}
	*id = v
	return nil
}

// HaltRequest asks for the HALT lock on a database.
type HaltRequest struct {
	DB     string
	NodeID string // the asking node, for logs
	Epoch  uint64 // the term the asking node believes current
	Wait   bool   // wait for the lock rather than fail at once
}

// HaltGrant is a HALT lock granted to a replica.
type HaltGrant struct {
	ID    HaltID
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
	term    *Term
	db      *DB
	id      HaltID
	nodeID  string
	hold    *Hold     // the writer locks; the HALT byte is held under hold.owner too
	granted time.Time // on the term's clock

	mu    sync.Mutex // serialises commits, keepalives and the end of the grant
	timer clock.Timer
	check clock.Timer // looks for writers waiting, once the grant is HaltMaxHold old
	ended bool
	why   error // why it ended, unless released
	done  chan struct{}
}

// GrantHalt gives the HALT lock on a database to a replica: it waits for
// the lock (if req.Wait), for in-flight write transactions to end, folds
// the WAL into the database file (forwarded changesets are written there),
// and keeps local writers out until the grant ends. The grant expires
// after the term's HALT TTL unless kept alive.
//
// At most the term's HaltQueue requests wait for the lock on one database
// (more fail at once with ErrHaltQueueFull), and none waits longer than
// HaltQueueWait (ErrHaltWaitTimeout). Local writers refused during the
// previous grant write before the next one begins.
func (t *Term) GrantHalt(ctx context.Context, req HaltRequest) (HaltGrant, error) {
	if err := t.enter(req.Epoch); err != nil {
		return HaltGrant{}, fmt.Errorf("halt %s: %w", req.DB, err)
	}
	defer t.leave()
	db := t.store.DB(req.DB)
	if db == nil {
		return HaltGrant{}, fmt.Errorf("halt %s: %w", req.DB, ErrNotExist)
	}
	if req.Wait {
		if err := t.enqueue(db); err != nil {
			return HaltGrant{}, fmt.Errorf("halt %s: %w", req.DB, err)
		}
		defer t.dequeue(db)
	}
	t.store.haltWaiting.Add(1)
	defer t.store.haltWaiting.Add(-1)
	ctx, cancel := t.bind(ctx)
	defer cancel()
	ctx, cancelWait := context.WithCancelCause(ctx)
	deadline := t.clock.AfterFunc(t.haltQueueWait, func() {
		cancelWait(fmt.Errorf("%w: the lock on %s was not free within %s; ask again", ErrHaltWaitTimeout, req.DB, t.haltQueueWait))
	})
	defer func() {
		deadline.Stop()
		cancelWait(nil)
	}()

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
	if err := db.turn.writers.wait(ctx); err != nil {
		unlockByte()
		return HaltGrant{}, fmt.Errorf("halt %s: %w", req.DB, t.waitErr(ctx, err))
	}
	hold, err := t.hold(ctx, owner, []*DB{db})
	if err != nil {
		unlockByte()
		return HaltGrant{}, fmt.Errorf("halt %s: %w", req.DB, t.waitErr(ctx, err))
	}
	if err := db.settle(ctx, owner); err != nil {
		hold.Release()
		unlockByte()
		return HaltGrant{}, fmt.Errorf("halt %s: %w", req.DB, t.waitErr(ctx, err))
	}

	g := &haltGrant{term: t, db: db, id: newHaltID(), nodeID: req.NodeID, hold: hold, granted: t.clock.Now(), done: make(chan struct{})}
	// The grant is published with its timers in place: nothing can reach
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
	g.check = t.clock.AfterFunc(t.haltMaxHold, g.checkContention)
	g.mu.Unlock()
	db.logger.Info("HALT lock granted", "peer", req.NodeID, "epoch", t.epoch, "pos", pos.String())
	return HaltGrant{ID: g.id, Epoch: t.epoch, TTL: t.haltTTL, Pos: pos, g: g}, nil
}

// enqueue counts a request waiting for the HALT lock on db, unless as many
// as the term allows already wait: a queue without a bound would let
// requests pile up for as long as the lock is held, each holding a
// connection and, when its turn comes, the database's writers.
func (t *Term) enqueue(db *DB) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if n := t.queued[db]; n >= t.haltQueue {
		return fmt.Errorf("%w: %d requests already wait for the HALT lock on %s, the most one database queues; ask again later", ErrHaltQueueFull, n, db.name)
	}
	t.queued[db]++
	return nil
}

func (t *Term) dequeue(db *DB) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.queued[db]--; t.queued[db] <= 0 {
		delete(t.queued, db)
	}
}

// haltQueued returns how many HALT requests wait for the lock on db.
func (t *Term) haltQueued(db *DB) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.queued[db]
}

// A grant may be held for as long as its holder keeps it alive, as long
// as nobody else wants to write. Once it is the term's HaltMaxHold old, it
// ends (preempted) as soon as another HALT request waits for the database
// or a local writer is refused because of it: a holder that keeps its
// grant alive without end, committing or not, cannot keep the database's
// other writers out for longer than that.

// checkContention runs once the grant is HaltMaxHold old, and then every
// contentionCheck until it ends.
func (g *haltGrant) checkContention() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ended || g.preemptLocked() {
		return
	}
	g.check.Reset(contentionCheck)
}

// contentionCheck is how often an old grant looks for waiting writers.
const contentionCheck = 100 * time.Millisecond

// preemptLocked ends the grant if it is HaltMaxHold old and others wait to
// write. Caller holds g.mu.
func (g *haltGrant) preemptLocked() bool {
	t := g.term
	if t.clock.Now().Sub(g.granted) < t.haltMaxHold {
		return false
	}
	if t.haltQueued(g.db) == 0 && !g.db.turn.writers.contended() {
		return false
	}
	g.endLocked(haltEndPreempted)
	return true
}

// grant returns the term's grant id on the named database.
func (t *Term) grant(epoch uint64, name string, id HaltID) (*haltGrant, error) {
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

// heldLocked fails unless the grant is alive (and not due to give way to
// waiting writers), and pauses its expiry. Caller holds g.mu; resume
// restarts the expiry.
func (g *haltGrant) heldLocked() error {
	if g.ended || g.preemptLocked() {
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

// CheckHaltCommit checks, before a forwarded commit's body is read, what
// can be checked without it: grant id on the named database is alive in
// the term of epoch, the database exists, and a changeset of size bytes
// is within the term's MaxHaltCommit. A request that cannot succeed is
// refused without spooling anything.
func (t *Term) CheckHaltCommit(epoch uint64, name string, id HaltID, size int64) error {
	g, err := t.grant(epoch, name, id)
	if err != nil {
		return err
	}
	if t.store.DB(name) != g.db {
		return fmt.Errorf("commit to %s: %w", name, ErrNotExist)
	}
	if size > t.maxHaltCommit {
		return fmt.Errorf("%w: a changeset of %d bytes for %s; the most a forwarded commit may be is %d bytes", ErrTooLarge, size, name, t.maxHaltCommit)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ended {
		return g.endedErr()
	}
	return nil
}

// KeepHalt extends a grant by the TTL.
func (t *Term) KeepHalt(epoch uint64, name string, id HaltID) error {
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
func (t *Term) ReleaseHalt(epoch uint64, name string, id HaltID) error {
	g, err := t.grant(epoch, name, id)
	if err != nil {
		return err
	}
	g.end(haltEndReleased)
	return nil
}

// DropHalt ends a grant whose holder's connection closed.
func (t *Term) DropHalt(id HaltID) {
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
func (t *Term) CommitHalted(ctx context.Context, epoch uint64, name string, id HaltID, data io.ReaderAt, size int64) (ltx.Pos, error) {
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
	refuse := func(err error) (ltx.Pos, error) {
		g.db.logger.Warn("changeset from the HALT holder refused", "peer", g.nodeID, "epoch", t.epoch, "err", err)
		return ltx.Pos{}, err
	}
	if size > t.maxHaltCommit {
		return refuse(fmt.Errorf("%w: a changeset of %d bytes for %s; the most a forwarded commit may be is %d bytes", ErrTooLarge, size, name, t.maxHaltCommit))
	}
	// The changeset must continue the database, and its pages must be
	// what SQLite would accept (pagecheck.go): a holder can give any
	// content correct checksums.
	if _, _, _, err := g.db.verifyChangeset(io.NewSectionReader(data, 0, size)); err != nil {
		return refuse(err)
	}
	if err := g.db.checkForwarded(data, size); err != nil {
		return refuse(err)
	}
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
	g.endLocked(why)
}

// endLocked is end with g.mu held.
func (g *haltGrant) endLocked(why string) {
	if g.ended {
		return
	}
	g.ended = true
	if g.timer != nil {
		g.timer.Stop()
	}
	if g.check != nil {
		g.check.Stop()
	}
	switch why {
	case haltEndExpired:
		g.why = fmt.Errorf("the lock on %s expired: no sign of life from its holder within %s", g.db.name, g.term.haltTTL)
	case haltEndDisconnected:
		g.why = fmt.Errorf("the holder of the lock on %s disconnected", g.db.name)
	case haltEndTerm:
		g.why = fmt.Errorf("the primary's term (epoch %d) ended", g.term.epoch)
	case haltEndPreempted:
		g.why = fmt.Errorf("the lock on %s was held for %s, the most a HALT lock lasts while other writers wait for the database, and was ended to let them in", g.db.name, g.term.haltMaxHold)
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

// writerTurn lets the primary's local writers in between HALT grants.
// SQLite's writers poll for their locks, sleeping up to 100 ms between
// tries, so a grant that follows another at once finds the writer locks
// free before a polling writer tries again: back-to-back grants would keep
// local writers out for as long as HALT requests keep coming. So a local
// write lock that is refused owes the writers a turn, and the next grant
// first waits until a local writer got its lock (then, as every hold does,
// for its transaction to end), or for maxWriterTurn.
type writerTurn struct {
	owed   atomic.Bool
	halts  atomic.Int32 // local HALT lock requests waiting for the byte
	mu     sync.Mutex
	at     time.Time     // when a local write lock was last refused
	served chan struct{} // closed when a local writer gets its lock
}

const (
	// maxWriterTurn bounds how long a grant gives way to a refused
	// writer: several of SQLite's retries.
	maxWriterTurn = 250 * time.Millisecond
	// writerWaits is how long after its last refusal a writer still
	// counts as waiting: SQLite's busy handler retries far more often.
	writerWaits = time.Second
)

// isWriterLock reports whether req takes the lock a SQLite writer takes:
// RESERVED on the database file, or the WAL write lock.
func isWriterLock(kind FileKind, req rangelock.Lock) bool {
	if req.Type != rangelock.Write {
		return false
	}
	switch kind {
	case FileDatabase:
		return req.Start <= sqlite.ReservedByte && sqlite.ReservedByte <= req.End
	case FileSHM:
		return req.Start <= shmLockWrite && shmLockWrite <= req.End
	}
	return false
}

// refuse records that a local writer's lock was refused.
func (w *writerTurn) refuse() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.owed.Load() {
		w.served = make(chan struct{})
		w.owed.Store(true)
	}
	w.at = time.Now()
}

// serve records that a local writer got its lock.
func (w *writerTurn) serve() {
	if !w.owed.Load() {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.owed.Load() {
		w.owed.Store(false)
		close(w.served)
	}
}

// contended reports whether a local writer waits for the database: one
// was refused lately and has not got in since, or a local HALT lock
// request waits.
func (w *writerTurn) contended() bool {
	if w.halts.Load() > 0 {
		return true
	}
	if !w.owed.Load() {
		return false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.owed.Load() && time.Since(w.at) < writerWaits
}

// wait lets a refused local writer in before a grant takes the writer
// locks.
func (w *writerTurn) wait(ctx context.Context) error {
	w.mu.Lock()
	owed, served, at := w.owed.Load(), w.served, w.at
	w.mu.Unlock()
	if !owed || time.Since(at) >= writerWaits {
		return nil
	}
	timer := time.NewTimer(maxWriterTurn)
	defer timer.Stop()
	select {
	case <-served:
	case <-timer.C:
		// The writer gave up, or polls more slowly: its turn is over.
		w.mu.Lock()
		if w.served == served && w.owed.Load() {
			w.owed.Store(false)
			close(w.served)
		}
		w.mu.Unlock()
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}
