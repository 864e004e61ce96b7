package http

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
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
	return newHaltPairOpts(t, store.TermOptions{HaltTTL: time.Minute})
}

// newHaltPairOpts is newHaltPair with the primary's term configured by
// opts (its epoch is 3).
func newHaltPairOpts(t *testing.T, opts store.TermOptions) *haltPair {
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
	opts.Epoch = 3
	term, err := p.primary.BeginTerm(context.Background(), opts)
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

// haltPost posts body to a HALT endpoint of the pair's primary and
// returns the status and the error it names.
func (p *haltPair) haltPost(t *testing.T, path string, hdr http.Header, body io.Reader, size int64) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, p.srv.URL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = size
	req.Header.Set("Content-Type", "application/json")
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e Error
	json.NewDecoder(resp.Body).Decode(&e)
	return resp.StatusCode, e.Error
}

// TestHaltMalformedIDs: a lock ID that is not 32 hexadecimal digits is
// refused with 400 by every endpoint that takes one, and the holder's
// lock is untouched.
func TestHaltMalformedIDs(t *testing.T) {
	p := newHaltPair(t)
	h, err := p.client.Acquire(context.Background(), "db", true)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"", "12345", "0123456789abcdef", strings.Repeat("x", 32), strings.Repeat("0", 32), strings.Repeat("a", 31)} {
		ref := fmt.Sprintf(`{"name":"db","id":%q,"epoch":3}`, id)
		for _, path := range []string{"/halt/keepalive", "/halt/release"} {
			if code, msg := p.haltPost(t, path, nil, strings.NewReader(ref), int64(len(ref))); code != http.StatusBadRequest || !strings.Contains(msg, "ID") {
				t.Errorf("%s with ID %q: %d %q, want 400", path, id, code, msg)
			}
		}
		hdr := http.Header{HaltIDHeader: {id}, "Content-Type": {"application/octet-stream"}}
		if code, msg := p.haltPost(t, "/halt/commit?name=db&epoch=3", hdr, strings.NewReader("ltx"), 3); code != http.StatusBadRequest || !strings.Contains(msg, "ID") {
			t.Errorf("commit with ID %q: %d %q, want 400", id, code, msg)
		}
	}
	if err := h.Lost(); err != nil {
		t.Fatalf("the holder lost its lock: %v", err)
	}
}

// TestHaltCommitRefusedBeforeBody: a commit for a lock that is not held,
// or declaring more than the term's MaxHaltCommit, or no length at all,
// is answered while its body has not been sent.
func TestHaltCommitRefusedBeforeBody(t *testing.T) {
	p := newHaltPairOpts(t, store.TermOptions{HaltTTL: time.Minute, MaxHaltCommit: 1 << 20})
	h, err := p.client.Acquire(context.Background(), "db", true)
	if err != nil {
		t.Fatal(err)
	}
	id := h.(*remoteHalt).ref.ID.String()
	for _, tc := range []struct {
		name string
		id   string
		size int64
		code int
	}{
		{"over the limit", id, 1<<20 + 1, http.StatusRequestEntityTooLarge},
		{"not the holder", strings.Repeat("ab", 16), 100, http.StatusConflict},
		{"no length", id, -1, http.StatusLengthRequired},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The body never arrives: only an answer that needs none
			// comes back.
			body, w := io.Pipe()
			defer w.Close()
			hdr := http.Header{HaltIDHeader: {tc.id}, "Content-Type": {"application/octet-stream"}}
			if code, msg := p.haltPost(t, "/halt/commit?name=db&epoch=3", hdr, body, tc.size); code != tc.code {
				t.Fatalf("%d %q, want %d", code, msg, tc.code)
			}
		})
	}
	if err := h.Lost(); err != nil {
		t.Fatalf("the holder lost its lock: %v", err)
	}
	// The holder's own commit of a changeset that does not fit is still
	// heard and refused on its merits.
	if err := h.Commit(context.Background(), bytes.Repeat([]byte{1}, 10)); err == nil || !errors.Is(err, store.ErrCommitRefused) {
		t.Fatalf("commit of a bad changeset: %v", err)
	}
}

// TestHaltRetryable: the replica asks again after a full queue (429), a
// wait past its deadline (408), a primary without a term (503), and gives
// up on anything else.
func TestHaltRetryable(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{&StatusError{Code: http.StatusTooManyRequests}, true},
		{&StatusError{Code: http.StatusRequestTimeout}, true},
		{&StatusError{Code: http.StatusServiceUnavailable}, true},
		{&StatusError{Code: http.StatusConflict, Message: store.ErrStaleEpoch.Error()}, true},
		{&StatusError{Code: http.StatusBadRequest}, false},
		{&StatusError{Code: http.StatusNotFound}, false},
		{store.ErrHaltHeld, false},
	} {
		if got := retryable(tc.err); got != tc.want {
			t.Errorf("retryable(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
