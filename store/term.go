package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/litefs-project/litefs/internal/clock"
	"github.com/litefs-project/litefs/internal/rangelock"
)

// A Term is one tenure of this node as the primary. It begins when the node
// acquires the lease and ends when the lease ends, for whatever reason, and
// it has the epoch of that acquisition. Everything the primary hands out
// while it holds the lease is registered with the term and ended by it:
// write holds, HALT grants, the forwarded commits and imports in flight,
// and the members (replication streams) that carry the term's changesets to
// replicas. Requests from other nodes name the epoch they are for; a term
// refuses any other.
//
// End ends everything in this order, and nothing can be added once it has
// begun:
//
//  1. The node stops accepting writes, and every wait bound to the term
//     (a HALT request queued for the lock, a hold waiting for writers, a
//     forwarded commit waiting for readers) is cancelled.
//  2. Forwarded commits and imports in flight finish or fail. One that was
//     already writing finishes, so every commit that succeeded is in the
//     log before step 5; one that finishes after the term began to end
//     reports an unknown outcome, never success.
//  3. HALT grants end: their holders learn it at once, and their next
//     commit fails.
//  4. Write holds are released.
//  5. Members are stopped: each stream sends every changeset in the log,
//     then closes. End waits for them (until its context ends, then aborts
//     those that are left) before it returns, and the node follows a new
//     primary only after End returns.
//
// Lock order: a grant's mu, then Term.mu, then DB.mu.
type Term struct {
	store         *Store
	epoch         uint64
	haltTTL       time.Duration
	haltQueue     int
	haltQueueWait time.Duration
	haltMaxHold   time.Duration
	maxHaltCommit int64
	clock         clock.Clock
	ctx           context.Context // cancelled when the term begins to end
	cancel        context.CancelCauseFunc

	mu        sync.Mutex
	ending    bool
	holds     map[*Hold]struct{}
	grants    map[HaltID]*haltGrant
	queued    map[*DB]int // HALT requests waiting, by database
	members   map[*member]struct{}
	nextOwner rangelock.Owner
	ops       sync.WaitGroup // requests in flight: grants being made, forwarded commits, imports
	ended     chan struct{}
}

// Errors of terms.
var (
	// ErrTermEnded: the request came as, or after, the term ended.
	ErrTermEnded = errors.New("the primary's term has ended")
	// ErrStaleEpoch: the request names a term other than this node's.
	ErrStaleEpoch = errors.New("request for another term")
	// ErrNotPrimary: this node holds no term.
	ErrNotPrimary = errors.New("this node is not the primary")
)

// TermOptions configures a term.
type TermOptions struct {
	Epoch   uint64        // the lease acquisition's epoch; must be non-zero
	HaltTTL time.Duration // how long a HALT grant lives without a sign of life
	// HaltQueue is the most HALT requests that wait for the lock on one
	// database; 0 for DefaultHaltQueue.
	HaltQueue int
	// HaltQueueWait is the longest a HALT request waits for the lock; 0
	// for HaltMaxHold plus HaltTTL, long enough for a grant ahead of it to
	// give way.
	HaltQueueWait time.Duration
	// HaltMaxHold is how long a grant lasts at most once other writers
	// wait for its database; 0 for DefaultHaltMaxHoldTTLs HALT TTLs.
	HaltMaxHold time.Duration
	// MaxHaltCommit is the largest forwarded changeset accepted, in bytes;
	// 0 for DefaultMaxHaltCommit.
	MaxHaltCommit int64
	Clock         clock.Clock // nil for the system clock
}

// Defaults of TermOptions.
const (
	// DefaultHaltTTL is how long a HALT grant outlives its holder's last
	// sign of life.
	DefaultHaltTTL = 5 * time.Second
	// DefaultHaltQueue is how many HALT requests may wait for the lock on
	// one database; more are refused at once.
	DefaultHaltQueue = 4
	// DefaultHaltMaxHoldTTLs is HaltMaxHold in HALT TTLs: 30 s at the
	// default TTL.
	DefaultHaltMaxHoldTTLs = 6
	// DefaultMaxHaltCommit bounds the size of one forwarded changeset.
	DefaultMaxHaltCommit = 1 << 30
)

// holdOwnerBase is the first lock owner of the daemon's write holds; each
// holder gets one of its own.
const holdOwnerBase rangelock.Owner = 0x4c69746546530100

// isHoldOwner reports whether o is the owner of a daemon write hold.
func isHoldOwner(o rangelock.Owner) bool {
	return o >= holdOwnerBase && o < holdOwnerBase+1<<32
}

// BeginTerm makes this node the primary for the term of opts.Epoch and
// accepts local writes. It fails if a term is in progress. The term's
// waits carry ctx's values; only End cancels them.
func (s *Store) BeginTerm(ctx context.Context, opts TermOptions) (*Term, error) {
	if opts.Epoch == 0 {
		return nil, errors.New("begin term: epoch 0")
	}
	if opts.HaltTTL <= 0 {
		opts.HaltTTL = DefaultHaltTTL
	}
	if opts.HaltQueue <= 0 {
		opts.HaltQueue = DefaultHaltQueue
	}
	if opts.HaltMaxHold <= 0 {
		opts.HaltMaxHold = DefaultHaltMaxHoldTTLs * opts.HaltTTL
	}
	if opts.HaltQueueWait <= 0 {
		// At the default TTL, 35 s: shorter than the replica's own bound
		// on a request (a minute), so the replica hears why.
		opts.HaltQueueWait = opts.HaltMaxHold + opts.HaltTTL
	}
	if opts.MaxHaltCommit <= 0 {
		opts.MaxHaltCommit = DefaultMaxHaltCommit
	}
	if opts.Clock == nil {
		opts.Clock = clock.Real()
	}
	ctx, cancel := context.WithCancelCause(context.WithoutCancel(ctx))
	t := &Term{
		store:         s,
		epoch:         opts.Epoch,
		haltTTL:       opts.HaltTTL,
		haltQueue:     opts.HaltQueue,
		haltQueueWait: opts.HaltQueueWait,
		haltMaxHold:   opts.HaltMaxHold,
		maxHaltCommit: opts.MaxHaltCommit,
		clock:         opts.Clock,
		ctx:           ctx,
		cancel:        cancel,
		holds:         make(map[*Hold]struct{}),
		grants:        make(map[HaltID]*haltGrant),
		queued:        make(map[*DB]int),
		members:       make(map[*member]struct{}),
		nextOwner:     holdOwnerBase,
		ended:         make(chan struct{}),
	}
	s.mu.Lock()
	if cur := s.term; cur != nil {
		s.mu.Unlock()
		cancel(nil)
		return nil, fmt.Errorf("begin term %d: term %d has not ended", opts.Epoch, cur.epoch)
	}
	s.term = t
	s.mu.Unlock()
	s.SetWritable(true)
	s.logger.Info("term began", "epoch", t.epoch)
	return t, nil
}

// CurrentTerm returns the term in progress, or nil when this node is not
// the primary. A term that is ending is still returned until End returns;
// its methods refuse new work.
func (s *Store) CurrentTerm() *Term {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.term
}

// Epoch returns the term's epoch.
func (t *Term) Epoch() uint64 { return t.epoch }

// Done is closed when the term begins to end.
func (t *Term) Done() <-chan struct{} { return t.ctx.Done() }

// Ended is closed once End has finished.
func (t *Term) Ended() <-chan struct{} { return t.ended }

// Admit checks that a request for epoch may be served by this term.
func (t *Term) Admit(epoch uint64) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.admitLocked(epoch)
}

func (t *Term) admitLocked(epoch uint64) error {
	switch {
	case t.ending:
		return fmt.Errorf("%w (epoch %d)", ErrTermEnded, t.epoch)
	case epoch != t.epoch:
		return fmt.Errorf("%w: this node's term is epoch %d, the request is for epoch %d", ErrStaleEpoch, t.epoch, epoch)
	}
	return nil
}

// enter registers a request in flight, which End waits for.
func (t *Term) enter(epoch uint64) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.admitLocked(epoch); err != nil {
		return err
	}
	t.ops.Add(1)
	return nil
}

func (t *Term) leave() { t.ops.Done() }

// bind returns ctx cancelled also when the term begins to end, with
// ErrTermEnded as the cause.
func (t *Term) bind(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(ctx)
	stop := context.AfterFunc(t.ctx, func() { cancel(t.endedErr()) })
	return ctx, func() {
		stop()
		cancel(nil)
	}
}

func (t *Term) endedErr() error { return fmt.Errorf("%w (epoch %d)", ErrTermEnded, t.epoch) }

// waitErr explains why a wait bound to the term stopped: the term ended,
// or a HALT request's deadline passed.
func (t *Term) waitErr(ctx context.Context, err error) error {
	if cause := context.Cause(ctx); cause != nil && (errors.Is(cause, ErrTermEnded) || errors.Is(cause, ErrHaltWaitTimeout)) {
		return cause
	}
	return err
}

// MaxHaltCommit returns the largest forwarded changeset the term accepts.
func (t *Term) MaxHaltCommit() int64 { return t.maxHaltCommit }

// ending reports whether End has begun.
func (t *Term) isEnding() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.ending
}

// SetWritable pauses or resumes local writes within the term (a handoff
// pauses them while the lease changes hands). It fails once the term is
// ending: only End changes writability then.
func (t *Term) SetWritable(v bool) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.ending {
		return t.endedErr()
	}
	t.store.SetWritable(v)
	return nil
}

// newOwner returns a lock owner no other holder of this term uses.
func (t *Term) newOwner() rangelock.Owner {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.nextOwner++
	return t.nextOwner
}

// Hold keeps local writers out of some databases: it holds the locks
// SQLite writers take (RESERVED on the database file and the WAL write
// lock) under an owner of its own. Release frees only what it took.
type Hold struct {
	term  *Term
	owner rangelock.Owner
	all   bool // every database: creating databases is refused meanwhile
	dbs   []*DB
	once  sync.Once
}

// HoldWrites waits for the in-flight write transactions of the named
// databases (all of them when names is empty) to end and keeps new ones
// out (they get SQLITE_BUSY) until the hold is released or the term ends.
func (t *Term) HoldWrites(ctx context.Context, names ...string) (*Hold, error) {
	if err := t.Admit(t.epoch); err != nil {
		return nil, err
	}
	var dbs []*DB
	all := len(names) == 0
	if all {
		// No database may appear that the hold does not cover.
		t.store.createHeld.Add(1)
		dbs = t.store.DBs()
	} else {
		for _, name := range names {
			db := t.store.DB(name)
			if db == nil {
				return nil, fmt.Errorf("hold writes on %s: %w", name, ErrNotExist)
			}
			dbs = append(dbs, db)
		}
	}
	h, err := t.hold(ctx, t.newOwner(), dbs)
	if err != nil {
		if all {
			t.store.createHeld.Add(-1)
		}
		return nil, err
	}
	h.all = all
	return h, nil
}

// hold takes the writer locks of dbs under owner and registers the hold.
func (t *Term) hold(ctx context.Context, owner rangelock.Owner, dbs []*DB) (*Hold, error) {
	ctx, cancel := t.bind(ctx)
	defer cancel()
	t.store.holdsWaiting.Add(1)
	defer t.store.holdsWaiting.Add(-1)
	h := &Hold{term: t, owner: owner}
	for _, db := range dbs {
		if err := db.holdWrites(ctx, owner); err != nil {
			h.unlock()
			return nil, t.waitErr(ctx, err)
		}
		h.dbs = append(h.dbs, db)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.ending {
		h.unlock()
		return nil, t.endedErr()
	}
	t.holds[h] = struct{}{}
	return h, nil
}

// Owner returns the lock owner the hold uses.
func (h *Hold) Owner() rangelock.Owner { return h.owner }

// Release lets writers in again. It frees only this hold's locks and may
// be called more than once.
func (h *Hold) Release() {
	h.once.Do(func() {
		h.term.mu.Lock()
		delete(h.term.holds, h)
		h.term.mu.Unlock()
		h.unlock()
		if h.all {
			h.term.store.createHeld.Add(-1)
		}
	})
}

func (h *Hold) unlock() {
	for i := len(h.dbs) - 1; i >= 0; i-- {
		h.dbs[i].unholdWrites(h.owner)
	}
	h.dbs = nil
}

// member is something that carries the term's changesets (a replication
// stream): stopped when the term ends, then waited for.
type member struct {
	stop  func() // finish what the log has, then leave
	abort func() // leave now
	left  chan struct{}
	once  sync.Once
}

// Join registers a member of the term. stop asks it to send what it has
// and end; abort, called if it has not left by End's deadline, ends it at
// once. The member calls leave when it has ended.
func (t *Term) Join(stop, abort func()) (leave func(), err error) {
	m := &member{stop: stop, abort: abort, left: make(chan struct{})}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.ending {
		return nil, t.endedErr()
	}
	t.members[m] = struct{}{}
	return func() {
		m.once.Do(func() {
			t.mu.Lock()
			delete(t.members, m)
			t.mu.Unlock()
			close(m.left)
		})
	}, nil
}

// End ends the term in the order documented on Term. ctx bounds the wait
// for members to finish sending; members still running when it ends are
// aborted. A second call waits for the first.
func (t *Term) End(ctx context.Context) {
	t.mu.Lock()
	if t.ending {
		t.mu.Unlock()
		<-t.ended
		return
	}
	t.ending = true
	t.store.SetWritable(false)
	t.mu.Unlock()
	t.cancel(t.endedErr())

	// 2. Requests in flight see the cancellation and return.
	t.ops.Wait()

	// 3. HALT grants.
	t.mu.Lock()
	grants := make([]*haltGrant, 0, len(t.grants))
	for _, g := range t.grants {
		grants = append(grants, g)
	}
	t.mu.Unlock()
	for _, g := range grants {
		g.end(haltEndTerm)
	}

	// 4. Write holds.
	t.mu.Lock()
	holds := make([]*Hold, 0, len(t.holds))
	for h := range t.holds {
		holds = append(holds, h)
	}
	t.mu.Unlock()
	for _, h := range holds {
		h.Release()
	}

	// 5. Members send what the log has, then leave.
	t.mu.Lock()
	members := make([]*member, 0, len(t.members))
	for m := range t.members {
		members = append(members, m)
	}
	t.mu.Unlock()
	for _, m := range members {
		m.stop()
	}
	for _, m := range members {
		select {
		case <-m.left:
			continue
		case <-ctx.Done():
		}
		select {
		case <-m.left: // it left as the deadline passed
		default:
			t.store.logger.Warn("a replication stream did not finish sending before the term's deadline; closing it", "epoch", t.epoch)
			m.abort()
			<-m.left
		}
	}

	t.store.mu.Lock()
	if t.store.term == t {
		t.store.term = nil
	}
	t.store.mu.Unlock()
	close(t.ended)
	t.store.logger.Info("term ended", "epoch", t.epoch)
}
