package store

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/litefs-project/litefs/internal/clock"
	"github.com/litefs-project/litefs/internal/rangelock"
	"github.com/litefs-project/litefs/internal/sqlite"
)

// Tests of terms: what a primary hands out ends with its term, each holder
// frees only what it took, and requests for another term are refused.

const testHaltTTL = 5 * time.Second

// termFixture is a store with one database of a few transactions, in a
// term of epoch 7 on a fake clock.
type termFixture struct {
	t     *testing.T
	r     *replica
	m     *testDB
	clk   *clock.Fake
	term  *Term
	epoch uint64
}

func newTermFixture(t *testing.T) *termFixture {
	t.Helper()
	r := newReplica(t, "db")
	m := newTestDB(4096, 1)
	for i := 0; i < 3; i++ {
		var b []byte
		m, b = m.change(t, 4, 2)
		r.apply(m, b)
	}
	clk := clock.NewFake(time.Unix(1_700_000_000, 0))
	term, err := r.st.BeginTerm(context.Background(), TermOptions{Epoch: 7, HaltTTL: testHaltTTL, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { term.End(context.Background()) })
	return &termFixture{t: t, r: r, m: m, clk: clk, term: term, epoch: 7}
}

func (f *termFixture) db() *DB { return f.r.st.DB("db") }

// writerOwner stands for an SQLite connection's lock owner.
const writerOwner rangelock.Owner = 0x1234

// writerCanLock reports whether an SQLite writer could take RESERVED now,
// and gives it back.
func (f *termFixture) writerCanLock() bool {
	db := f.db()
	req := rangelock.Lock{Owner: writerOwner, Start: sqlite.ReservedByte, End: sqlite.ReservedByte, Type: rangelock.Write}
	if !db.dbLocks.TryLock(req) {
		return false
	}
	req.Type = rangelock.Unlock
	db.dbLocks.TryLock(req)
	return true
}

func (f *termFixture) grant(wait bool) HaltGrant {
	f.t.Helper()
	g, err := f.term.GrantHalt(context.Background(), HaltRequest{DB: "db", NodeID: "replica", Epoch: f.epoch, Wait: wait})
	if err != nil {
		f.t.Fatalf("grant: %v", err)
	}
	return g
}

func ended(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// TestTermHoldsHaveTheirOwnOwners: two holders of the write locks exclude
// each other, and the release of one frees nothing of the other.
func TestTermHoldsHaveTheirOwnOwners(t *testing.T) {
	f := newTermFixture(t)
	a, err := f.term.HoldWrites(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if f.writerCanLock() {
		t.Fatal("a writer got RESERVED under a hold")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	_, err = f.term.HoldWrites(ctx, "db")
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a second hold while the first is in force: %v, want it to wait", err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 20*time.Millisecond)
	_, err = f.term.GrantHalt(ctx, HaltRequest{DB: "db", Epoch: f.epoch, Wait: true})
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a HALT grant while a hold is in force: %v, want it to wait", err)
	}

	// b waits for a, and gets the locks once a is released.
	got := make(chan *Hold, 1)
	go func() {
		b, err := f.term.HoldWrites(context.Background(), "db")
		if err != nil {
			t.Error(err)
		}
		got <- b
	}()
	a.Release()
	b := <-got
	a.Release() // twice: still frees nothing of b's
	if f.writerCanLock() {
		t.Fatal("releasing the first hold freed the second's locks")
	}
	b.Release()
	if !f.writerCanLock() {
		t.Fatal("writers are still held out after every hold was released")
	}
}

// TestTermHandoffHoldWaitsForHalt: a hold (as a handoff or an import takes)
// waits while a replica holds the HALT lock; the grant's release does not
// free the hold's locks.
func TestTermHandoffHoldWaitsForHalt(t *testing.T) {
	f := newTermFixture(t)
	g := f.grant(false)
	held := make(chan *Hold, 1)
	go func() {
		h, err := f.term.HoldWrites(context.Background())
		if err != nil {
			t.Error(err)
		}
		held <- h
	}()
	waitFor(t, func() bool { return f.r.st.createHeld.Load() == 1 }) // the hold is being taken
	select {
	case <-held:
		t.Fatal("a hold was taken while a replica holds the HALT lock")
	default:
	}
	if err := f.term.ReleaseHalt(f.epoch, "db", g.ID); err != nil {
		t.Fatal(err)
	}
	h := <-held
	if f.writerCanLock() {
		t.Fatal("the hold does not keep writers out")
	}
	h.Release()
}

// TestTermGrantExpires: a grant whose holder goes quiet ends after the
// TTL; keepalives extend it; its commits are refused afterwards and local
// writers get in again.
func TestTermGrantExpires(t *testing.T) {
	f := newTermFixture(t)
	g := f.grant(true)
	if f.writerCanLock() {
		t.Fatal("a writer got RESERVED under a HALT grant")
	}
	f.clk.Advance(testHaltTTL - time.Millisecond)
	if err := f.term.KeepHalt(f.epoch, "db", g.ID); err != nil {
		t.Fatalf("keepalive before the TTL: %v", err)
	}
	f.clk.Advance(testHaltTTL - time.Millisecond)
	if ended(g.Done()) {
		t.Fatal("the grant ended although it was kept alive")
	}
	f.clk.Advance(2 * time.Millisecond)
	if !ended(g.Done()) {
		t.Fatal("the grant outlived its TTL")
	}
	if err := g.Err(); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("grant ended with %v, want an expiry", err)
	}
	next, b := f.m.change(t, 4, 3)
	_, err := f.term.CommitHalted(context.Background(), f.epoch, "db", g.ID, bytes.NewReader(b), int64(len(b)))
	if !errors.Is(err, ErrHaltNotHeld) {
		t.Fatalf("commit under an expired grant: %v, want ErrHaltNotHeld", err)
	}
	if pos := f.db().Pos(); pos != f.m.pos || pos == next.pos {
		t.Fatalf("position %s after a refused commit, want %s", pos, f.m.pos)
	}
	if !f.writerCanLock() {
		t.Fatal("writers are still held out after the grant expired")
	}
	if n := f.r.st.HaltEnds()["expired"]; n != 1 {
		t.Fatalf("expired grants counted: %d", n)
	}
}

// TestTermStaleEpoch: requests naming another term are refused with both
// epochs named, and change nothing.
func TestTermStaleEpoch(t *testing.T) {
	f := newTermFixture(t)
	g := f.grant(true)
	_, b := f.m.change(t, 4, 3)
	for _, epoch := range []uint64{f.epoch - 1, f.epoch + 1} {
		_, err := f.term.CommitHalted(context.Background(), epoch, "db", g.ID, bytes.NewReader(b), int64(len(b)))
		if !errors.Is(err, ErrStaleEpoch) || !strings.Contains(err.Error(), "epoch 7") || !strings.Contains(err.Error(), "epoch "+itoa(int64(epoch))) {
			t.Fatalf("commit for epoch %d: %v", epoch, err)
		}
		if err := f.term.KeepHalt(epoch, "db", g.ID); !errors.Is(err, ErrStaleEpoch) {
			t.Fatalf("keepalive for epoch %d: %v", epoch, err)
		}
		if err := f.term.ReleaseHalt(epoch, "db", g.ID); !errors.Is(err, ErrStaleEpoch) {
			t.Fatalf("release for epoch %d: %v", epoch, err)
		}
		if _, err := f.term.GrantHalt(context.Background(), HaltRequest{DB: "db", Epoch: epoch}); !errors.Is(err, ErrStaleEpoch) {
			t.Fatalf("halt for epoch %d: %v", epoch, err)
		}
	}
	if pos := f.db().Pos(); pos != f.m.pos {
		t.Fatalf("position moved to %s", pos)
	}
	if ended(g.Done()) {
		t.Fatal("a stale release ended the grant")
	}
	// The holder's own request, for the right term, goes through.
	next, b := f.m.change(t, 4, 3)
	pos, err := f.term.CommitHalted(context.Background(), f.epoch, "db", g.ID, bytes.NewReader(b), int64(len(b)))
	if err != nil || pos != next.pos {
		t.Fatalf("commit for the term: %s, %v", pos, err)
	}
}

// TestTermEndEndsEverything: ending the term ends grants (their holders
// learn why), releases holds, stops members after both, stops writes,
// refuses new requests, and cancels a grant still waiting for the lock.
func TestTermEndEndsEverything(t *testing.T) {
	f := newTermFixture(t)
	g := f.grant(true)
	waitErr := make(chan error, 1)
	go func() {
		_, err := f.term.GrantHalt(context.Background(), HaltRequest{DB: "db", Epoch: f.epoch, Wait: true})
		waitErr <- err
	}()
	var order []string
	var leave func()
	leave, err := f.term.Join(func() {
		defer leave()
		if !ended(g.Done()) {
			order = append(order, "member stopped before the grant ended")
		}
		if !f.writerCanLock() {
			order = append(order, "member stopped before the holds were released")
		}
		order = append(order, "stopped")
	}, func() { order = append(order, "aborted") })
	if err != nil {
		t.Fatal(err)
	}
	f.term.End(context.Background())

	if err := <-waitErr; !errors.Is(err, ErrTermEnded) {
		t.Fatalf("a grant waiting when the term ended: %v, want ErrTermEnded", err)
	}
	if !ended(g.Done()) || g.Err() == nil || !strings.Contains(g.Err().Error(), "term") {
		t.Fatalf("the grant did not end with the term: %v", g.Err())
	}
	if f.r.st.Writable() {
		t.Fatal("the store is writable after its term ended")
	}
	if f.r.st.CurrentTerm() != nil {
		t.Fatal("the ended term is still current")
	}
	if !f.writerCanLock() {
		t.Fatal("locks remain after the term ended")
	}
	if db := f.db(); db.haltLocks.Locked(0, rangelock.MaxEnd, rangelock.Read) {
		t.Fatalf("HALT lock table not empty: %v", db.haltLocks.Snapshot())
	}
	if len(order) != 1 || order[0] != "stopped" {
		t.Fatalf("member: %v", order)
	}
	if _, err := f.term.HoldWrites(context.Background()); !errors.Is(err, ErrTermEnded) {
		t.Fatalf("hold after the end: %v", err)
	}
	if _, err := f.term.Join(func() {}, func() {}); !errors.Is(err, ErrTermEnded) {
		t.Fatalf("join after the end: %v", err)
	}
	if err := f.term.SetWritable(true); err == nil || f.r.st.Writable() {
		t.Fatal("an ended term made the store writable")
	}
	if _, err := f.r.st.BeginTerm(context.Background(), TermOptions{Epoch: 8}); err != nil {
		t.Fatalf("the next term: %v", err)
	}
}

// TestTermEndDuringCommit: the lease ends while a forwarded commit waits
// for readers; the commit fails, nothing of it is applied, and the end
// does not wait for the readers.
func TestTermEndDuringCommit(t *testing.T) {
	f := newTermFixture(t)
	g := f.grant(true)
	// A rollback-mode reader keeps the apply waiting.
	db := f.db()
	reader := rangelock.Lock{Owner: 0x5678, Start: sqlite.SharedFirst, End: sqlite.SharedFirst, Type: rangelock.Read}
	if !db.dbLocks.TryLock(reader) {
		t.Fatal("reader lock")
	}
	_, b := f.m.change(t, 4, 3)
	res := make(chan error, 1)
	go func() {
		_, err := f.term.CommitHalted(context.Background(), f.epoch, "db", g.ID, bytes.NewReader(b), int64(len(b)))
		res <- err
	}()
	waitFor(t, db.turn.applying.Load) // the commit waits for the reader
	f.term.End(context.Background())
	if err := <-res; !errors.Is(err, ErrTermEnded) {
		t.Fatalf("commit when the term ended: %v, want ErrTermEnded", err)
	}
	if pos := db.Pos(); pos != f.m.pos {
		t.Fatalf("position %s after a commit cut off by the end of the term, want %s", pos, f.m.pos)
	}
	f.r.check(f.m)
}

// waitFor polls cond, for conditions that have no channel to wait on.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached within 10s")
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// TestTermHoldCutOffByEnd: a hold whose wait is cut off by the end of
// the term leaves no lock behind.
func TestTermHoldCutOffByEnd(t *testing.T) {
	f := newTermFixture(t)
	g := f.grant(true) // the hold below waits for it
	res := make(chan error, 1)
	go func() {
		_, err := f.term.HoldWrites(context.Background())
		res <- err
	}()
	waitFor(t, func() bool { return f.r.st.createHeld.Load() == 1 }) // the hold is waiting
	f.term.End(context.Background())
	if err := <-res; !errors.Is(err, ErrTermEnded) {
		t.Fatalf("hold cut off by the end of the term: %v", err)
	}
	if !ended(g.Done()) {
		t.Fatal("grant outlived the term")
	}
	if !f.writerCanLock() {
		t.Fatal("a lock leaked")
	}
	if f.r.st.createHeld.Load() != 0 {
		t.Fatal("database creation is still held")
	}
}
