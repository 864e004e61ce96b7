package store

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/litefs-project/litefs/internal/rangelock"
	"github.com/litefs-project/litefs/internal/sqlite"
)

// Tests of what bounds a HALT grant: unguessable IDs, a bounded queue
// whose requests have a deadline, and grants that give way to waiting
// writers once they are old.

func TestHaltIDText(t *testing.T) {
	seen := make(map[HaltID]bool)
	for i := 0; i < 100; i++ {
		id := newHaltID()
		if id.IsZero() || seen[id] {
			t.Fatalf("lock ID %s is zero or repeats", id)
		}
		seen[id] = true
		back, err := ParseHaltID(id.String())
		if err != nil || back != id || len(id.String()) != 32 {
			t.Fatalf("round trip of %s: %s, %v", id, back, err)
		}
	}
	for _, s := range []string{"", "12345", "1234567890abcdef", strings.Repeat("0", 32), strings.Repeat("g", 32), strings.Repeat("a", 33), strings.Repeat("a", 1000)} {
		if _, err := ParseHaltID(s); !errors.Is(err, ErrBadHaltID) || len(err.Error()) > 200 {
			t.Errorf("ParseHaltID(%.40q): %v, want ErrBadHaltID in a short message", s, err)
		}
	}
	var v struct{ ID HaltID }
	if err := json.Unmarshal([]byte(`{"ID":"12345"}`), &v); !errors.Is(err, ErrBadHaltID) {
		t.Fatalf("JSON with a 64-bit decimal ID: %v", err)
	}
	id := newHaltID()
	b, _ := json.Marshal(struct{ ID HaltID }{id})
	if err := json.Unmarshal(b, &v); err != nil || v.ID != id {
		t.Fatalf("JSON round trip %s: %s, %v", b, v.ID, err)
	}
}

// localWriter is an SQLite connection on the primary asking for RESERVED
// the way SQLite does, through DB.Lock.
func (f *termFixture) localWriter() bool {
	f.t.Helper()
	db := f.db()
	req := rangelock.Lock{Owner: writerOwner, Start: sqlite.ReservedByte, End: sqlite.ReservedByte, Type: rangelock.Write}
	ok, err := db.Lock(FileDatabase, req)
	if err != nil {
		f.t.Fatal(err)
	}
	if ok {
		req.Type = rangelock.Unlock
		if _, err := db.Lock(FileDatabase, req); err != nil {
			f.t.Fatal(err)
		}
	}
	return ok
}

// restart ends the fixture's term and begins the next one with opts (on
// the fixture's clock and HALT TTL).
func (f *termFixture) restart(opts TermOptions) {
	f.t.Helper()
	f.term.End(context.Background())
	f.epoch++
	opts.Epoch, opts.HaltTTL, opts.Clock = f.epoch, testHaltTTL, f.clk
	term, err := f.r.st.BeginTerm(context.Background(), opts)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { term.End(context.Background()) })
	f.term = term
}

// waiter asks for the lock in the background.
func (f *termFixture) waiter(ctx context.Context) chan error {
	res := make(chan error, 1)
	go func() {
		g, err := f.term.GrantHalt(ctx, HaltRequest{DB: "db", NodeID: "waiter", Epoch: f.epoch, Wait: true})
		if err == nil {
			f.term.ReleaseHalt(f.epoch, "db", g.ID)
		}
		res <- err
	}()
	return res
}

// TestGrantQueueBounded: at most DefaultHaltQueue requests wait for a
// database's lock, and the database's stats count them; one more is
// refused at once, naming the bound.
func TestGrantQueueBounded(t *testing.T) {
	f := newTermFixture(t)
	g := f.grant(false)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var waiting []chan error
	for i := 0; i < DefaultHaltQueue; i++ {
		waiting = append(waiting, f.waiter(ctx))
	}
	waitFor(t, func() bool { return f.db().Stats().HaltWaiting == DefaultHaltQueue })
	_, err := f.term.GrantHalt(context.Background(), HaltRequest{DB: "db", Epoch: f.epoch, Wait: true})
	if !errors.Is(err, ErrHaltQueueFull) || !strings.Contains(err.Error(), "4 requests already wait") {
		t.Fatalf("a request beyond the queue: %v, want ErrHaltQueueFull", err)
	}
	// A request that does not wait is not queued: it hears the lock is held.
	if _, err := f.term.GrantHalt(context.Background(), HaltRequest{DB: "db", Epoch: f.epoch}); !errors.Is(err, ErrHaltHeld) {
		t.Fatalf("a request that does not wait: %v, want ErrHaltHeld", err)
	}
	// The waiters are served in turn once the holder lets go.
	if err := f.term.ReleaseHalt(f.epoch, "db", g.ID); err != nil {
		t.Fatal(err)
	}
	for _, w := range waiting {
		if err := <-w; err != nil {
			t.Fatalf("a queued request: %v", err)
		}
	}
	if n := f.db().Stats().HaltWaiting; n != 0 {
		t.Fatalf("%d requests still counted as waiting", n)
	}
}

// TestGrantQueueDeadline: a request that waits for HaltQueueWait gives up
// with ErrHaltWaitTimeout (a deadline, so the replica asks again), leaves
// the queue and takes nothing.
func TestGrantQueueDeadline(t *testing.T) {
	f := newTermFixture(t)
	f.restart(TermOptions{HaltQueueWait: 2 * time.Second})
	g := f.grant(false)
	w := f.waiter(context.Background())
	waitFor(t, func() bool { return f.db().Stats().HaltWaiting == 1 })
	f.clk.Advance(2 * time.Second)
	err := <-w
	if !errors.Is(err, ErrHaltWaitTimeout) || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "2s") {
		t.Fatalf("a request past its deadline: %v", err)
	}
	if n := f.db().Stats().HaltWaiting; n != 0 {
		t.Fatalf("%d requests still counted as waiting", n)
	}
	if ended(g.Done()) {
		t.Fatal("the holder's grant ended")
	}
	f.term.ReleaseHalt(f.epoch, "db", g.ID)
	f.grant(false) // the byte is free: nothing of the expired request is left
}

// TestGrantGivesWayToWriters: a grant kept alive past HaltMaxHold lasts as
// long as nobody else wants to write; once a local writer is refused, or
// another HALT request waits, it ends (preempted) and they get in.
func TestGrantGivesWayToWriters(t *testing.T) {
	maxHold := DefaultHaltMaxHoldTTLs * testHaltTTL
	keepFor := func(f *termFixture, g HaltGrant, d time.Duration) {
		t.Helper()
		for end := f.clk.Now().Add(d); f.clk.Now().Before(end); {
			f.clk.Advance(testHaltTTL / 2)
			if err := f.term.KeepHalt(f.epoch, "db", g.ID); err != nil {
				t.Fatalf("keepalive: %v", err)
			}
		}
	}
	t.Run("local writer", func(t *testing.T) {
		f := newTermFixture(t)
		g := f.grant(false)
		// A writer refused early does not end a young grant.
		if f.localWriter() {
			t.Fatal("a local writer got RESERVED under a HALT grant")
		}
		keepFor(f, g, maxHold-testHaltTTL)
		if ended(g.Done()) {
			t.Fatal("a grant younger than HaltMaxHold ended")
		}
		// Without contention an old grant lives on.
		f.r.st.DB("db").turn.writers.serve()
		keepFor(f, g, 2*maxHold)
		if ended(g.Done()) {
			t.Fatal("an old grant nobody waits for ended")
		}
		if f.localWriter() {
			t.Fatal("a local writer got RESERVED under a HALT grant")
		}
		err := f.term.KeepHalt(f.epoch, "db", g.ID)
		if !errors.Is(err, ErrHaltNotHeld) || !strings.Contains(err.Error(), "other writers wait") {
			t.Fatalf("keepalive of an old grant a writer waits for: %v", err)
		}
		if !ended(g.Done()) || !f.localWriter() {
			t.Fatal("the writer is still held out")
		}
		if n := f.r.st.HaltEnds()["preempted"]; n != 1 {
			t.Fatalf("preempted grants counted: %d", n)
		}
	})
	t.Run("queued request", func(t *testing.T) {
		// A grant younger than its TTL and older than HaltMaxHold: its
		// own check ends it, with no keepalive or commit to notice.
		f := newTermFixture(t)
		f.restart(TermOptions{HaltMaxHold: time.Second})
		g := f.grant(false)
		w := f.waiter(context.Background())
		waitFor(t, func() bool { return f.db().Stats().HaltWaiting == 1 })
		f.clk.Advance(time.Second - time.Millisecond)
		if ended(g.Done()) {
			t.Fatal("a grant younger than HaltMaxHold ended")
		}
		f.clk.Advance(time.Millisecond)
		if !ended(g.Done()) || !strings.Contains(g.Err().Error(), "other writers wait") {
			t.Fatalf("an old grant a request waits for: %v", g.Err())
		}
		if err := <-w; err != nil {
			t.Fatalf("the waiting request: %v", err)
		}
	})
}
