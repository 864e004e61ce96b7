package node

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	lhttp "github.com/litefs-project/litefs/http"
	"github.com/litefs-project/litefs/internal/clock"
	"github.com/litefs-project/litefs/internal/rangelock"
	"github.com/litefs-project/litefs/internal/sqlite"
	"github.com/litefs-project/litefs/lease"
	"github.com/litefs-project/litefs/ltx"
	"github.com/litefs-project/litefs/store"
)

// The role logic on a real store, with a fake lease, transport and clock:
// no processes, no sockets, no sleeping.

// fakeLeaser is a Consul-like lease the test drives.
type fakeLeaser struct {
	candidate bool

	mu      sync.Mutex
	leases  chan *fakeLease // what Acquire hands out; none: ErrPrimaryExists
	primary lease.PrimaryInfo
	changed chan struct{}
	asked   chan struct{} // receives on every PrimaryInfo call, if set
}

func newFakeLeaser(candidate bool) *fakeLeaser {
	return &fakeLeaser{candidate: candidate, leases: make(chan *fakeLease, 4), changed: make(chan struct{})}
}

func (f *fakeLeaser) Type() string         { return "consul" }
func (f *fakeLeaser) Hostname() string     { return "self" }
func (f *fakeLeaser) AdvertiseURL() string { return "http://self" }
func (f *fakeLeaser) Candidate() bool      { return f.candidate }
func (f *fakeLeaser) Close() error         { return nil }

func (f *fakeLeaser) Acquire(ctx context.Context) (lease.Lease, error) {
	select {
	case l := <-f.leases:
		f.setPrimary(lease.PrimaryInfo{Hostname: "self", AdvertiseURL: "http://self", Epoch: l.epoch})
		return l, nil
	default:
		return nil, lease.ErrPrimaryExists
	}
}

func (f *fakeLeaser) PrimaryInfo(ctx context.Context) (lease.PrimaryInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.asked != nil {
		select {
		case f.asked <- struct{}{}:
		default:
		}
	}
	if f.primary.AdvertiseURL == "" {
		return lease.PrimaryInfo{}, lease.ErrNoPrimary
	}
	return f.primary, nil
}

func (f *fakeLeaser) WaitChange(ctx context.Context, current lease.PrimaryInfo) error {
	for {
		f.mu.Lock()
		p, ch := f.primary, f.changed
		f.mu.Unlock()
		if p != current {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// setPrimary makes the lease name p.
func (f *fakeLeaser) setPrimary(p lease.PrimaryInfo) {
	f.mu.Lock()
	f.primary = p
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
}

// fakeLease is one acquisition.
type fakeLease struct {
	epoch    uint64
	done     chan struct{}
	once     sync.Once
	mu       sync.Mutex
	handoffs []string
}

func newFakeLease(epoch uint64) *fakeLease {
	return &fakeLease{epoch: epoch, done: make(chan struct{})}
}

func (l *fakeLease) Epoch() uint64         { return l.epoch }
func (l *fakeLease) Done() <-chan struct{} { return l.done }
func (l *fakeLease) lose()                 { l.once.Do(func() { close(l.done) }) }
func (l *fakeLease) Close() error          { l.lose(); return nil }

func (l *fakeLease) Handoff(ctx context.Context, hostname string) error {
	l.mu.Lock()
	l.handoffs = append(l.handoffs, hostname)
	l.mu.Unlock()
	l.lose()
	return nil
}

func (l *fakeLease) handedTo() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.handoffs...)
}

// fakeTransport records streams; each runs until its context ends, or
// fails at once for a URL in dead.
type fakeTransport struct {
	streams chan streamCall
	dead    sync.Map // url -> true

	handoff  lhttp.HandoffResponse // what Handoff answers
	released atomic.Int32          // ReleaseHandoff calls
}

type streamCall struct {
	url   string
	epoch uint64
}

func (t *fakeTransport) Stream(ctx context.Context, url string, epoch uint64) error {
	t.streams <- streamCall{url, epoch}
	if _, ok := t.dead.Load(url); ok {
		return errors.New("connection refused")
	}
	<-ctx.Done()
	return ctx.Err()
}

func (t *fakeTransport) Handoff(ctx context.Context, url string, req lhttp.HandoffRequest) (lhttp.HandoffResponse, error) {
	return t.handoff, nil
}

func (t *fakeTransport) ReleaseHandoff(ctx context.Context, url string, req lhttp.HandoffRequest) error {
	t.released.Add(1)
	return nil
}

func (t *fakeTransport) Promote(ctx context.Context, url string, req lhttp.PromoteRequest) (lhttp.Info, error) {
	return lhttp.Info{}, errors.New("not used")
}

// fixture is a node on a real store with one database.
type fixture struct {
	t      *testing.T
	st     *store.Store
	leaser *fakeLeaser
	tr     *fakeTransport
	clk    *clock.Fake
	node   *Node
	roles  chan Role
	cancel context.CancelFunc
	done   chan struct{}
	first  *fakeLease
}

// newFixture starts a node; a non-zero epoch is the lease its first
// attempt to acquire gets, and primary what the lease names at first.
func newFixture(t *testing.T, candidate bool, epoch uint64, primary lease.PrimaryInfo) *fixture {
	t.Helper()
	st, err := store.Open(store.Options{Dir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.CreateDB("db"); err != nil {
		t.Fatal(err)
	}
	st.SetWritable(false)
	f := &fixture{
		t:      t,
		st:     st,
		leaser: newFakeLeaser(candidate),
		tr:     &fakeTransport{streams: make(chan streamCall, 8)},
		clk:    clock.NewFake(time.Unix(1_700_000_000, 0)),
		roles:  make(chan Role, 16),
		done:   make(chan struct{}),
	}
	f.node = New(Config{
		Hostname:       "self",
		AdvertiseURL:   "http://self",
		Leaser:         f.leaser,
		Store:          st,
		Transport:      f.tr,
		Clock:          f.clk,
		Logger:         slog.New(slog.NewTextHandler(io.Discard, nil)),
		HandoffTimeout: 15 * time.Second,
		DemoteDelay:    10 * time.Second,
		OnRoleChange:   func(r Role) { f.roles <- r },
	})
	if epoch != 0 {
		f.first = newFakeLease(epoch)
		f.leaser.leases <- f.first
	}
	f.leaser.primary = primary
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	go func() {
		defer close(f.done)
		f.node.Run(ctx)
	}()
	t.Cleanup(func() {
		f.cancel()
		<-f.done
		st.Close()
	})
	return f
}

// role waits for the next change of role.
func (f *fixture) role() Role {
	f.t.Helper()
	select {
	case r := <-f.roles:
		return r
	case <-time.After(10 * time.Second):
		f.t.Fatal("no change of role within 10s")
		return Role{}
	}
}

// lead waits until the node is the primary with its first lease.
func (f *fixture) lead() *fakeLease {
	f.t.Helper()
	for {
		if r := f.role(); r.IsPrimary && r.Epoch == f.first.epoch {
			return f.first
		}
	}
}

// writersHeld reports whether an SQLite writer is kept out of db.
func (f *fixture) writersHeld() bool {
	db := f.st.DB("db")
	req := rangelock.Lock{Owner: 0x99, Start: sqlite.ReservedByte, End: sqlite.ReservedByte, Type: rangelock.Write}
	ok, err := db.Lock(store.FileDatabase, req)
	if err != nil {
		f.t.Fatal(err)
	}
	if ok {
		req.Type = rangelock.Unlock
		db.Lock(store.FileDatabase, req)
	}
	return !ok
}

// TestNodeLeaseLostMidHandoff: the lease is lost while a handoff holds the
// writes; the term releases the hold, the late release step passes
// nothing on, and the node does not start accepting writes again.
func TestNodeLeaseLostMidHandoff(t *testing.T) {
	f := newFixture(t, true, 5, lease.PrimaryInfo{})
	l := f.lead()
	if _, err := f.node.beginHandoff(context.Background(), lhttp.HandoffRequest{Hostname: "cand", Epoch: 5}); err != nil {
		t.Fatal(err)
	}
	if !f.writersHeld() || f.st.Writable() {
		t.Fatal("a handoff in progress lets writers in")
	}
	l.lose()
	if r := f.role(); r.IsPrimary {
		t.Fatalf("still primary after the lease was lost: %+v", r)
	}
	err := f.node.releaseHandoff(context.Background(), lhttp.HandoffRequest{Hostname: "cand", Epoch: 5})
	if !errors.Is(err, ErrNoHandoff) {
		t.Fatalf("release after the lease was lost: %v, want ErrNoHandoff", err)
	}
	if len(l.handedTo()) != 0 {
		t.Fatal("a lost lease was handed on")
	}
	f.clk.Advance(time.Minute) // the handoff's timeout, had it not been stopped
	if f.st.Writable() {
		t.Fatal("a node that lost its lease accepts writes again")
	}
	if f.writersHeld() {
		t.Fatal("the handoff's hold outlived the term")
	}
}

// TestNodeHandoffTimeoutRacesRelease: a release that comes after the
// handoff timed out is refused, so the lease is never passed on once local
// writes were let in again; a release in time passes it exactly once.
func TestNodeHandoffTimeoutRacesRelease(t *testing.T) {
	f := newFixture(t, true, 5, lease.PrimaryInfo{})
	l := f.lead()
	req := lhttp.HandoffRequest{Hostname: "cand", Epoch: 5}
	if _, err := f.node.beginHandoff(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	f.clk.Advance(15 * time.Second)
	if !f.st.Writable() || f.writersHeld() {
		t.Fatal("writes did not resume when the handoff timed out")
	}
	if err := f.node.releaseHandoff(context.Background(), req); !errors.Is(err, ErrNoHandoff) {
		t.Fatalf("release after the timeout: %v, want ErrNoHandoff", err)
	}
	if len(l.handedTo()) != 0 {
		t.Fatal("the lease was passed on after writes resumed")
	}

	// In time: the lease goes to the candidate, and the node stops.
	if _, err := f.node.beginHandoff(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	f.clk.Advance(14 * time.Second)
	if err := f.node.releaseHandoff(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	if got := l.handedTo(); len(got) != 1 || got[0] != "cand" {
		t.Fatalf("lease handed to %v", got)
	}
	if r := f.role(); r.IsPrimary {
		t.Fatal("still primary after the handoff")
	}
	f.clk.Advance(time.Minute)
	if f.st.Writable() {
		t.Fatal("writes resumed after the lease was handed on")
	}
}

// TestNodeHandoffEpochs: a handoff for another term is refused; so is a
// second handoff while one is in progress.
func TestNodeHandoffEpochs(t *testing.T) {
	f := newFixture(t, true, 5, lease.PrimaryInfo{})
	f.lead()
	_, err := f.node.beginHandoff(context.Background(), lhttp.HandoffRequest{Hostname: "cand", Epoch: 4})
	if !errors.Is(err, store.ErrStaleEpoch) {
		t.Fatalf("handoff for epoch 4 in epoch 5: %v", err)
	}
	if f.writersHeld() {
		t.Fatal("a refused handoff holds writes")
	}
	if _, err := f.node.beginHandoff(context.Background(), lhttp.HandoffRequest{Hostname: "cand", Epoch: 5}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.node.beginHandoff(context.Background(), lhttp.HandoffRequest{Hostname: "other", Epoch: 5}); !errors.Is(err, errConflict) {
		t.Fatalf("second handoff: %v", err)
	}
}

// TestNodeHandoffWaitsForHalt: a handoff waits while a replica holds the
// HALT lock, and a HALT request made while the handoff holds writes waits
// for it and fails when the term ends.
func TestNodeHandoffWaitsForHalt(t *testing.T) {
	f := newFixture(t, true, 5, lease.PrimaryInfo{})
	l := f.lead()
	term := f.st.CurrentTerm()
	g, err := term.GrantHalt(context.Background(), store.HaltRequest{DB: "db", Epoch: 5})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	_, err = f.node.beginHandoff(ctx, lhttp.HandoffRequest{Hostname: "cand", Epoch: 5})
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("handoff while a replica holds HALT: %v, want it to wait", err)
	}
	if err := term.ReleaseHalt(5, "db", g.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := f.node.beginHandoff(context.Background(), lhttp.HandoffRequest{Hostname: "cand", Epoch: 5}); err != nil {
		t.Fatal(err)
	}
	waiting := make(chan error, 1)
	go func() {
		_, err := term.GrantHalt(context.Background(), store.HaltRequest{DB: "db", Epoch: 5, Wait: true})
		waiting <- err
	}()
	if err := f.node.releaseHandoff(context.Background(), lhttp.HandoffRequest{Hostname: "cand", Epoch: 5}); err != nil {
		t.Fatal(err)
	}
	if err := <-waiting; !errors.Is(err, store.ErrTermEnded) {
		t.Fatalf("HALT request queued during the handoff: %v, want ErrTermEnded", err)
	}
	if len(l.handedTo()) != 1 {
		t.Fatal("lease not handed off")
	}
}

// TestNodeFollowsNewTerm: a replica streams from the primary of the epoch
// the lease names, and drops that stream as soon as the lease names a new
// term.
func TestNodeFollowsNewTerm(t *testing.T) {
	f := newFixture(t, false, 0, lease.PrimaryInfo{Hostname: "a", AdvertiseURL: "http://a", Epoch: 5})
	if s := <-f.tr.streams; s.url != "http://a" || s.epoch != 5 {
		t.Fatalf("stream %+v", s)
	}
	if r := f.role(); r.IsPrimary || r.Primary.Hostname != "a" || r.Epoch != 5 {
		t.Fatalf("role %+v", r)
	}
	if url, epoch := f.node.PrimaryURL(); url != "http://a" || epoch != 5 {
		t.Fatalf("PrimaryURL %q %d", url, epoch)
	}
	f.leaser.setPrimary(lease.PrimaryInfo{Hostname: "b", AdvertiseURL: "http://b", Epoch: 9})
	if s := <-f.tr.streams; s.url != "http://b" || s.epoch != 9 {
		t.Fatalf("stream after the change %+v", s)
	}
	if r := f.role(); r.Primary.Hostname != "b" || r.Epoch != 9 {
		t.Fatalf("role after the change %+v", r)
	}
	if h, ok := f.node.PrimaryHostname(); !ok || h != "b" {
		t.Fatalf("PrimaryHostname %q %v", h, ok)
	}
}

// TestNodeTermEndsBeforeFollowing: when the lease ends, the node's term
// ends (HALT grants with it) before the node follows anyone.
func TestNodeTermEndsBeforeFollowing(t *testing.T) {
	f := newFixture(t, true, 5, lease.PrimaryInfo{})
	l := f.lead()
	term := f.st.CurrentTerm()
	g, err := term.GrantHalt(context.Background(), store.HaltRequest{DB: "db", Epoch: 5})
	if err != nil {
		t.Fatal(err)
	}
	f.leaser.setPrimary(lease.PrimaryInfo{Hostname: "b", AdvertiseURL: "http://b", Epoch: 8})
	l.lose()
	s := <-f.tr.streams
	if s.epoch != 8 {
		t.Fatalf("following epoch %d", s.epoch)
	}
	select {
	case <-g.Done():
	default:
		t.Fatal("the node follows a new primary while a grant of its term is alive")
	}
	select {
	case <-term.Ended():
	default:
		t.Fatal("the node follows a new primary before its term ended")
	}
	if f.st.Writable() {
		t.Fatal("writable after the term ended")
	}
}

// TestNodeDemoteDelay: after handing its lease over, a node does not
// campaign for lease.demote-delay, even when the lease is free.
func TestNodeDemoteDelay(t *testing.T) {
	f := newFixture(t, true, 5, lease.PrimaryInfo{})
	f.lead()
	req := lhttp.HandoffRequest{Hostname: "cand", Epoch: 5}
	if _, err := f.node.beginHandoff(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	f.leaser.mu.Lock()
	f.leaser.asked = make(chan struct{}, 1)
	f.leaser.mu.Unlock()
	if err := f.node.releaseHandoff(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	if r := f.role(); r.IsPrimary {
		t.Fatal("still primary")
	}
	// The lease is free and would be granted, but the node keeps quiet.
	f.leaser.leases <- newFakeLease(6)
	f.leaser.setPrimary(lease.PrimaryInfo{})
	for i := 0; i < 5; i++ {
		<-f.leaser.asked // the node looked at the lease instead of campaigning
		f.advanceWhenWaiting(t, time.Second, nil)
	}
	if len(f.leaser.leases) != 1 {
		t.Fatal("the node campaigned within its demote delay")
	}
	for leading := false; !leading; {
		select {
		case <-f.leaser.asked:
			// Once its delay is over the node campaigns instead of sleeping.
			f.advanceWhenWaiting(t, time.Second, func() bool { return f.Role().IsPrimary })
		case r := <-f.roles:
			leading = r.IsPrimary && r.Epoch == 6
		}
	}
	if f.clk.Now().Sub(time.Unix(1_700_000_000, 0)) < 10*time.Second {
		t.Fatal("the node campaigned before its demote delay ran out")
	}
}

// TestNodeFollowsReplacementOfDeadPrimary: a replica whose primary died
// (its stream fails) follows the new primary as soon as the lease names
// it, without waiting out its back-off.
func TestNodeFollowsReplacementOfDeadPrimary(t *testing.T) {
	f := newFixture(t, false, 0, lease.PrimaryInfo{Hostname: "a", AdvertiseURL: "http://a", Epoch: 5})
	if s := <-f.tr.streams; s.url != "http://a" {
		t.Fatalf("stream %+v", s)
	}
	f.tr.dead.Store("http://a", true)
	f.leaser.setPrimary(lease.PrimaryInfo{Hostname: "a", AdvertiseURL: "http://a", Epoch: 6}) // a restarts the stream
	for s := <-f.tr.streams; s.url == "http://a"; s = <-f.tr.streams {
		// Failing streams to a back off on the fake clock, which stands
		// still: only a change of the lease moves the node on.
		if s.epoch == 6 {
			f.leaser.setPrimary(lease.PrimaryInfo{Hostname: "b", AdvertiseURL: "http://b", Epoch: 9})
		}
	}
	for f.role().Primary.Hostname != "b" {
	}
}

func (f *fixture) Role() Role { return f.node.Role() }

// advanceWhenWaiting advances the fake clock by d once the node has set
// the timer it waits on: the node tells the lease it looked before it
// sleeps, and a clock moved in between would leave it asleep for good. It
// returns without advancing if instead (set and true) holds.
func (f *fixture) advanceWhenWaiting(t *testing.T, d time.Duration, instead func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for f.clk.Pending() == 0 {
		if instead != nil && instead() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the node set no timer")
		}
		time.Sleep(time.Millisecond)
	}
	f.clk.Advance(d)
}

// TestNodePromoteRefusesWhenAhead: a candidate whose database is ahead of
// the positions the primary holds its writes at has diverged; taking the
// lease would discard what the primary acknowledged, so it does not.
func TestNodePromoteRefusesWhenAhead(t *testing.T) {
	f := newFixture(t, true, 0, lease.PrimaryInfo{Hostname: "a", AdvertiseURL: "http://a", Epoch: 5})
	<-f.tr.streams
	// One transaction the primary never had.
	var buf bytes.Buffer
	enc, err := ltx.NewEncoder(&buf)
	if err != nil {
		t.Fatal(err)
	}
	page := make([]byte, 4096)
	copy(page, "SQLite format 3\x00")
	if err := enc.EncodeHeader(ltx.Header{Version: ltx.Version, PageSize: 4096, Commit: 1, MinTXID: 1, MaxTXID: 1, Timestamp: 1}); err != nil {
		t.Fatal(err)
	}
	if err := enc.EncodePage(ltx.PageHeader{Pgno: 1}, page); err != nil {
		t.Fatal(err)
	}
	enc.SetPostApplyChecksum(ltx.ChecksumFlag | ltx.ChecksumPage(1, page))
	if err := enc.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.st.ApplyChangeset(context.Background(), "db", bytes.NewReader(buf.Bytes()), int64(buf.Len())); err != nil {
		t.Fatal(err)
	}
	f.tr.handoff = lhttp.HandoffResponse{Positions: map[string]ltx.Pos{"db": {}}, Epoch: 5}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = f.node.promote(ctx, lhttp.PromoteRequest{})
	if err == nil || !strings.Contains(err.Error(), "diverged") {
		t.Fatalf("promote of a candidate ahead of the primary: %v", err)
	}
	if n := f.tr.released.Load(); n != 0 {
		t.Fatalf("the candidate asked for the lease %d times", n)
	}
}
