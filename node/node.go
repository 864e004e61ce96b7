// Package node is a litefs node's role: it follows the lease, serves as
// primary for a term while it holds it, replicates from the primary
// otherwise, and hands the lease over on request. It reaches the world
// through narrow interfaces (the lease, a transport to other nodes, the
// clock) so that its logic runs in tests without processes or sockets.
package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	lhttp "github.com/litefs-project/litefs/http"
	"github.com/litefs-project/litefs/internal/clock"
	"github.com/litefs-project/litefs/lease"
	"github.com/litefs-project/litefs/store"
)

// Defaults for Config.
const (
	DefaultHandoffTimeout = 15 * time.Second
	DefaultReconnectDelay = time.Second
	// termEndTimeout bounds how long a term's streams may take to send
	// what they have when the term ends.
	termEndTimeout = 10 * time.Second
	// drainGrace is how long a replica keeps reading the old primary's
	// stream once the lease is free: the primary sends everything it
	// committed before it lets the lease go.
	drainGrace = time.Second
)

// Transport reaches other nodes.
type Transport interface {
	// Stream replicates from the primary at url, which must be in the
	// term of epoch, until the stream ends or ctx ends.
	Stream(ctx context.Context, url string, epoch uint64) error
	// Handoff asks the primary at url to hold its writes for a handoff.
	Handoff(ctx context.Context, url string, req lhttp.HandoffRequest) (lhttp.HandoffResponse, error)
	// ReleaseHandoff asks the primary at url to pass the lease.
	ReleaseHandoff(ctx context.Context, url string, req lhttp.HandoffRequest) error
	// Promote asks the candidate at url to take the lease by handoff.
	Promote(ctx context.Context, url string, req lhttp.PromoteRequest) (lhttp.Info, error)
}

// Config configures a Node.
type Config struct {
	Hostname     string // this node, as the lease knows it
	AdvertiseURL string // this node's API, as the lease knows it
	NodeID       string

	Leaser    lease.Leaser
	Store     *store.Store
	Transport Transport
	Clock     clock.Clock // nil for the system clock
	Logger    *slog.Logger

	HaltTTL        time.Duration // lifetime of a HALT grant without a sign of life
	HandoffTimeout time.Duration // how long a primary holds writes for a handoff
	ReconnectDelay time.Duration // longest wait between attempts to reach the primary
	DemoteDelay    time.Duration // after handing the lease off, how long not to campaign
	Promote        bool          // take the lease by handoff once caught up

	// ReplicaReady is closed once this node has first caught up with a
	// primary; Lag says how far behind it is; Replicas lists the replicas
	// streaming from it.
	ReplicaReady <-chan struct{}
	Lag          func() time.Duration
	Replicas     func() []lhttp.ReplicaInfo

	// OnRoleChange is told of every change of role, from the goroutine
	// that runs the node, with no lock held.
	OnRoleChange func(Role)
}

// Role is what a node is at a moment.
type Role struct {
	IsPrimary bool
	// Primary is the primary a replica follows; zero when it follows none.
	Primary lease.PrimaryInfo
	// Epoch is the term the node holds or follows; 0 if none.
	Epoch uint64
}

// Node is a litefs node's role logic.
type Node struct {
	cfg    Config
	logger *slog.Logger

	mu          sync.Mutex
	role        Role
	term        *store.Term // while primary
	lease       lease.Lease // while primary
	handoff     *handoff    // a handoff in progress, on the primary
	seen        uint64      // the highest epoch seen
	proxyURL    string
	quietUntil  time.Time     // no campaigning before, after a handoff
	roleChanged chan struct{} // closed and replaced on every change of role
	terms       int64         // terms held

	ready     chan struct{} // closed once primary or caught up
	readyOnce sync.Once
	wg        sync.WaitGroup // goroutines the node started; Run waits for them
}

// New returns a node; Run runs it.
func New(cfg Config) *Node {
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.HandoffTimeout <= 0 {
		cfg.HandoffTimeout = DefaultHandoffTimeout
	}
	if cfg.ReconnectDelay <= 0 {
		cfg.ReconnectDelay = DefaultReconnectDelay
	}
	if cfg.Lag == nil {
		cfg.Lag = func() time.Duration { return 0 }
	}
	if cfg.Replicas == nil {
		cfg.Replicas = func() []lhttp.ReplicaInfo { return nil }
	}
	return &Node{cfg: cfg, logger: cfg.Logger, ready: make(chan struct{}), roleChanged: make(chan struct{})}
}

// Ready is closed once the node is primary or has caught up with the
// primary for the first time.
func (n *Node) Ready() <-chan struct{} { return n.ready }

func (n *Node) markReady() { n.readyOnce.Do(func() { close(n.ready) }) }

// Run follows the lease until ctx ends: a candidate that acquires it
// serves as primary until it loses it; otherwise the node replicates from
// the primary until the stream ends or the lease names another. When Run
// returns, the node's term (if any) has ended and its lease is released.
func (n *Node) Run(ctx context.Context) {
	defer n.wg.Wait()
	if n.cfg.ReplicaReady != nil {
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			select {
			case <-n.cfg.ReplicaReady:
				n.markReady()
				if n.cfg.Promote && n.cfg.Leaser.Candidate() && !n.IsPrimary() {
					n.autoPromote(ctx)
				}
			case <-ctx.Done():
			}
		}()
	}
	b := newBackoff(n.cfg.Clock, 100*time.Millisecond, n.cfg.ReconnectDelay)
	for ctx.Err() == nil {
		if n.campaigning() {
			l, err := n.cfg.Leaser.Acquire(ctx)
			if err == nil {
				n.lead(ctx, l)
				b.reset()
				continue
			}
			if !errors.Is(err, lease.ErrPrimaryExists) {
				n.logger.Warn("acquire lease", "err", err)
				b.wait(ctx)
				continue
			}
		}

		info, err := n.cfg.Leaser.PrimaryInfo(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, lease.ErrNoPrimary) && n.cfg.Leaser.Candidate():
			sleep(ctx, n.cfg.Clock, 100*time.Millisecond) // free, or within a lock delay: try again soon
			continue
		case err != nil:
			n.logger.Info("no primary yet", "err", err)
			b.wait(ctx)
			continue
		case info.AdvertiseURL == n.cfg.AdvertiseURL:
			// The lease still names this node from before a restart; its
			// old session has to end first.
			n.cfg.Leaser.WaitChange(ctx, info)
			continue
		}
		start := n.cfg.Clock.Now()
		err = n.follow(ctx, info)
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, errLeaseChanged):
			n.logger.Info("the lease names a new primary", "old", info.Hostname, "old_epoch", info.Epoch)
			b.reset()
			continue
		}
		n.logger.Warn("replication stream ended; reconnecting", "primary", info.Hostname, "epoch", info.Epoch, "err", err)
		if n.cfg.Clock.Now().Sub(start) > 10*time.Second {
			b.reset() // it worked for a while: retry promptly
		}
		// A primary that died is replaced through the lease: follow the
		// new one as soon as the lease names it, not after the back-off.
		n.waitOrChange(ctx, info, b)
	}
}

// waitOrChange waits for the back-off, or until the lease no longer names
// info, whichever comes first.
func (n *Node) waitOrChange(ctx context.Context, info lease.PrimaryInfo, b *backoff) {
	wctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if n.cfg.Leaser.WaitChange(wctx, info) == nil {
			cancel()
		}
	}()
	b.wait(wctx)
	cancel()
	wg.Wait()
}

// campaigning reports whether the node tries to acquire the lease now.
func (n *Node) campaigning() bool {
	if !n.cfg.Leaser.Candidate() {
		return false
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return !n.cfg.Clock.Now().Before(n.quietUntil)
}

// lead serves a term as primary until the lease ends or ctx ends.
func (n *Node) lead(ctx context.Context, l lease.Lease) {
	epoch := l.Epoch()
	term, err := n.cfg.Store.BeginTerm(ctx, store.TermOptions{Epoch: epoch, HaltTTL: n.cfg.HaltTTL, Clock: n.cfg.Clock})
	if err != nil {
		n.logger.Error("cannot begin a term; giving the lease up", "epoch", epoch, "err", err)
		l.Close()
		return
	}
	n.mu.Lock()
	n.term, n.lease = term, l
	n.terms++
	n.noteEpochLocked(epoch)
	n.mu.Unlock()
	n.setRole(Role{IsPrimary: true, Epoch: epoch})
	n.logger.Info("primary lease acquired", "type", n.cfg.Leaser.Type(), "hostname", n.cfg.Hostname, "epoch", epoch)
	n.markReady()

	stopping := false
	select {
	case <-l.Done():
		n.logger.Warn("primary lease ended; no longer accepting writes", "epoch", epoch)
	case <-ctx.Done():
		stopping = true
	}
	// The term ends before anything else: writes stop, grants and holds
	// end, streams send what the log has. Only then is the lease released
	// and the node free to follow another primary.
	endCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), termEndTimeout)
	term.End(endCtx)
	cancel()
	if stopping {
		if err := l.Close(); err != nil {
			n.logger.Warn("release lease", "err", err)
		}
	}
	n.mu.Lock()
	h := n.handoff
	n.term, n.lease, n.handoff = nil, nil, nil
	n.mu.Unlock()
	if h != nil && h.timer != nil {
		h.timer.Stop() // its hold ended with the term
	}
	n.setRole(Role{})
}

// errLeaseChanged ends following a primary the lease no longer names.
var errLeaseChanged = errors.New("the lease names another primary")

// follow replicates from the primary of info until the stream ends or the
// lease changes.
func (n *Node) follow(ctx context.Context, info lease.PrimaryInfo) error {
	n.mu.Lock()
	n.noteEpochLocked(info.Epoch)
	n.mu.Unlock()
	n.setRole(Role{Primary: info, Epoch: info.Epoch})
	if err := n.cfg.Store.Demote(ctx); err != nil {
		return fmt.Errorf("prepare databases to replicate: %w", err)
	}

	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	streamDone := make(chan struct{})
	changed := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if n.cfg.Leaser.WaitChange(sctx, info) != nil {
			return
		}
		// A free lease means the primary let it go after sending what it
		// had; let its stream end on its own. A new primary ends it now.
		if _, err := n.cfg.Leaser.PrimaryInfo(sctx); errors.Is(err, lease.ErrNoPrimary) {
			grace := n.cfg.Clock.AfterFunc(drainGrace, cancel)
			defer grace.Stop()
			select {
			case <-streamDone:
			case <-sctx.Done():
			}
		}
		close(changed)
		cancel()
	}()
	err := n.cfg.Transport.Stream(sctx, info.AdvertiseURL, info.Epoch)
	close(streamDone)
	cancel()
	wg.Wait()
	select {
	case <-changed:
		return errLeaseChanged
	default:
	}
	return err
}

// noteEpochLocked records an epoch seen. An epoch lower than one seen
// before means the lease store was reset (a new Consul cluster): the lease
// is the authority, so the node follows it, and says so. Caller holds n.mu.
func (n *Node) noteEpochLocked(epoch uint64) {
	if epoch < n.seen {
		n.logger.Warn("the lease's epoch went back; was the lease store reset?", "epoch", epoch, "highest_seen", n.seen)
	}
	n.seen = epoch
}

// setRole records the node's role and tells OnRoleChange.
func (n *Node) setRole(r Role) {
	n.mu.Lock()
	if n.role == r {
		n.mu.Unlock()
		return
	}
	n.role = r
	close(n.roleChanged)
	n.roleChanged = make(chan struct{})
	n.mu.Unlock()
	if n.cfg.OnRoleChange != nil {
		n.cfg.OnRoleChange(r)
	}
}

// Role returns the node's role now.
func (n *Node) Role() Role {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.role
}

// Terms returns how many terms this node has held as primary.
func (n *Node) Terms() int64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.terms
}

// HandoffInProgress reports whether a handoff waits for or holds writes.
func (n *Node) HandoffInProgress() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.handoff != nil
}

// IsPrimary reports whether this node holds the lease.
func (n *Node) IsPrimary() bool { return n.Role().IsPrimary }

// Epoch returns the term the node holds or follows, 0 if none.
func (n *Node) Epoch() uint64 { return n.Role().Epoch }

// PrimaryURL returns the API and epoch of the primary this node follows,
// "" while it is the primary or follows none.
func (n *Node) PrimaryURL() (string, uint64) {
	r := n.Role()
	if r.IsPrimary {
		return "", 0
	}
	return r.Primary.AdvertiseURL, r.Primary.Epoch
}

// PrimaryHostname implements fuse.Status: the primary's name, on replicas.
func (n *Node) PrimaryHostname() (string, bool) {
	r := n.Role()
	if r.IsPrimary || r.Primary.Hostname == "" {
		return "", false
	}
	return r.Primary.Hostname, true
}

// Lag implements fuse.Status.
func (n *Node) Lag() time.Duration {
	if n.IsPrimary() {
		return 0
	}
	return n.cfg.Lag()
}

// SetProxyURL records where other nodes reach this node's proxy.
func (n *Node) SetProxyURL(u string) {
	n.mu.Lock()
	n.proxyURL = u
	n.mu.Unlock()
}

// Info describes the node, as GET /info answers.
func (n *Node) Info() lhttp.Info {
	n.mu.Lock()
	r, proxy := n.role, n.proxyURL
	n.mu.Unlock()
	return lhttp.Info{
		NodeID:       n.cfg.NodeID,
		Hostname:     n.cfg.Hostname,
		AdvertiseURL: n.cfg.AdvertiseURL,
		IsPrimary:    r.IsPrimary,
		Candidate:    n.cfg.Leaser.Candidate(),
		Epoch:        r.Epoch,
		Primary:      r.Primary.Hostname,
		PrimaryURL:   r.Primary.AdvertiseURL,
		ProxyURL:     proxy,
		Databases:    n.cfg.Store.Positions(),
	}
}

// sleep waits for d on clk, or until ctx ends.
func sleep(ctx context.Context, clk clock.Clock, d time.Duration) {
	done := make(chan struct{})
	t := clk.AfterFunc(d, func() { close(done) })
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-done:
	}
}

// backoff waits longer after each failure, up to a limit.
type backoff struct {
	clk           clock.Clock
	min, max, cur time.Duration
}

func newBackoff(clk clock.Clock, lo, hi time.Duration) *backoff {
	if hi < lo {
		hi = lo
	}
	return &backoff{clk: clk, min: lo, max: hi, cur: lo}
}

func (b *backoff) reset() { b.cur = b.min }

func (b *backoff) wait(ctx context.Context) {
	sleep(ctx, b.clk, b.cur)
	b.cur = min(2*b.cur, b.max)
}
