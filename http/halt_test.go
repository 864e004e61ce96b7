package http

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/litefs-project/litefs/store"
)

// The HALT protocol between a real client and a real server on loopback,
// with stores of their own: the lock belongs to the primary's term, and
// the replica learns at once when it is gone.

type haltPair struct {
	primary *store.Store
	term    *store.Term
	srv     *httptest.Server
	replica *store.Store
	client  *HaltClient

	mu    sync.Mutex
	url   string
	epoch uint64
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newHaltPair(t *testing.T) *haltPair {
	t.Helper()
	open := func() *store.Store {
		st, err := store.Open(store.Options{Dir: t.TempDir(), Logger: quietLogger()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return st
	}
	p := &haltPair{primary: open(), replica: open()}
	if _, err := p.primary.CreateDB("db"); err != nil {
		t.Fatal(err)
	}
	term, err := p.primary.BeginTerm(context.Background(), store.TermOptions{Epoch: 3, HaltTTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	p.term = term
	srv := NewServer(context.Background(), p.primary, ServerOptions{Logger: quietLogger()})
	p.srv = httptest.NewServer(srv)
	t.Cleanup(func() {
		term.End(context.Background())
		p.srv.Close()
	})
	p.url, p.epoch = p.srv.URL, 3
	p.replica.SetWritable(false)
	p.client = NewHaltClient(context.Background(), HaltClientOptions{
		Store:   p.replica,
		Primary: p.primaryOf,
		NodeID:  "replica",
		Logger:  quietLogger(),
	})
	t.Cleanup(p.client.Close)
	return p
}

func (p *haltPair) primaryOf() (string, uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.url, p.epoch
}

func (p *haltPair) follow(url string, epoch uint64) {
	p.mu.Lock()
	p.url, p.epoch = url, epoch
	p.mu.Unlock()
	p.client.PrimaryChanged()
}

func waitLost(t *testing.T, h store.Halt) error {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for h.Lost() == nil {
		if time.Now().After(deadline) {
			t.Fatal("the lock was not lost within 10s")
		}
		time.Sleep(time.Millisecond)
	}
	return h.Lost()
}

// TestHaltClientRelease: a released lock ends on the primary, and its
// connection is reused for the next one.
func TestHaltClientRelease(t *testing.T) {
	p := newHaltPair(t)
	h, err := p.client.Acquire(context.Background(), "db", true)
	if err != nil {
		t.Fatal(err)
	}
	h.Release()
	// The primary's lock table is free again: a local holder gets it.
	g, err := p.term.GrantHalt(context.Background(), store.HaltRequest{DB: "db", Epoch: 3, Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.term.ReleaseHalt(3, "db", g.ID); err != nil {
		t.Fatal(err)
	}
	if n := p.primary.HaltEnds()["released"]; n != 2 {
		t.Fatalf("released grants: %d, want 2", n)
	}
}

// TestHaltClientLosesLockWithTerm: when the primary's term ends, the holder
// learns it from the grant's connection, without waiting for a keepalive,
// and its commits fail without reaching the network.
func TestHaltClientLosesLockWithTerm(t *testing.T) {
	p := newHaltPair(t)
	h, err := p.client.Acquire(context.Background(), "db", true)
	if err != nil {
		t.Fatal(err)
	}
	p.term.End(context.Background())
	err = waitLost(t, h)
	if !strings.Contains(err.Error(), "epoch 3") {
		t.Fatalf("lost because %v; want the term named", err)
	}
	if err := h.Commit(context.Background(), []byte("ltx")); err == nil {
		t.Fatal("a commit under a lost lock succeeded")
	}
}

// TestHaltClientLosesLockOnNewPrimary: a lock of an earlier term is lost
// as soon as the node follows another term, and a new request asks the
// new primary.
func TestHaltClientLosesLockOnNewPrimary(t *testing.T) {
	p := newHaltPair(t)
	h, err := p.client.Acquire(context.Background(), "db", true)
	if err != nil {
		t.Fatal(err)
	}
	p.follow(p.srv.URL, 4) // the same node, a new term
	if err := h.Lost(); err == nil || !strings.Contains(err.Error(), "epoch 4") {
		t.Fatalf("lock after the change of term: %v", err)
	}
	// The primary is still in epoch 3: a request for epoch 4 is refused.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := p.client.Acquire(ctx, "db", false); err == nil {
		t.Fatal("a primary in epoch 3 granted a lock for epoch 4")
	}
	var se *StatusError
	if _, err := p.client.acquireFrom(ctx, p.srv.URL, 4, p.client.gen, "db", false); !errors.As(err, &se) || se.Code != 409 {
		t.Fatalf("request for another term: %v, want 409", err)
	}
}
