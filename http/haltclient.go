package http

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/litefs-project/litefs/ltx"
	"github.com/litefs-project/litefs/store"
)

// Timeouts of the HALT client.
const (
	// haltRoundTimeout bounds one request for the lock; a waiting request
	// that has not got it by then asks again.
	haltRoundTimeout = time.Minute
	// haltCallTimeout bounds keepalives and releases.
	haltCallTimeout = 5 * time.Second
)

// HaltClient obtains HALT locks from the primary for a replica: it
// implements store.Halter. Every lock it hands out belongs to the term of
// the primary that granted it; PrimaryChanged ends the others.
type HaltClient struct {
	store   *store.Store
	primary func() (url string, epoch uint64)
	nodeID  string
	logger  *slog.Logger
	client  *http.Client

	ctx    context.Context // background work: keepalives, releases
	cancel context.CancelFunc

	mu      sync.Mutex
	halts   map[*remoteHalt]struct{}
	changed chan struct{} // closed and replaced when the primary changes
	gen     uint64        // counts changes of primary
	closed  bool          // no new locks
	stopped bool          // no new background work; wg is being waited for
	wg      sync.WaitGroup
}

// HaltClientOptions configures a HaltClient.
type HaltClientOptions struct {
	Store *store.Store
	// Primary returns the API and epoch of the primary this node follows,
	// or "" when it follows none.
	Primary func() (url string, epoch uint64)
	NodeID  string
	// Security is the credentials presented to the primary; nil for none.
	Security *Security
	Logger   *slog.Logger
}

// NewHaltClient returns a HALT client. ctx bounds its background work;
// Close ends it.
func NewHaltClient(ctx context.Context, opts HaltClientOptions) *HaltClient {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	ctx, cancel := context.WithCancel(ctx)
	return &HaltClient{
		ctx:     ctx,
		cancel:  cancel,
		store:   opts.Store,
		primary: opts.Primary,
		nodeID:  opts.NodeID,
		logger:  opts.Logger,
		client: &http.Client{Transport: opts.Security.Client(&http.Transport{
			Proxy:               nil,
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 15 * time.Second}).DialContext,
			MaxIdleConnsPerHost: 8,
			IdleConnTimeout:     time.Minute,
		})},
		halts:   make(map[*remoteHalt]struct{}),
		changed: make(chan struct{}),
	}
}

// PrimaryChanged tells the client that the node follows another primary,
// or another term of the same one: every lock of an earlier term is lost,
// and requests waiting for a primary try the new one.
func (c *HaltClient) PrimaryChanged() {
	url, epoch := c.primary()
	c.mu.Lock()
	close(c.changed)
	c.changed = make(chan struct{})
	c.gen++
	var lost []*remoteHalt
	for h := range c.halts {
		if h.base != url || h.ref.Epoch != epoch {
			lost = append(lost, h)
		}
	}
	c.mu.Unlock()
	for _, h := range lost {
		h.lose(fmt.Errorf("HALT lock on %s was lost: the primary changed (the lock was granted in epoch %d; now following %q, epoch %d)", h.ref.Name, h.ref.Epoch, strings.TrimPrefix(url, "http://"), epoch))
	}
}

// Close releases every lock still held and waits for the client's
// background work to finish.
func (c *HaltClient) Close() {
	c.mu.Lock()
	c.closed = true
	var held []*remoteHalt
	for h := range c.halts {
		held = append(held, h)
	}
	c.mu.Unlock()
	for _, h := range held {
		h.Release()
	}
	c.mu.Lock()
	c.stopped = true
	c.mu.Unlock()
	c.wg.Wait()
	c.cancel()
}

// goBackground runs f on a goroutine that Close waits for, unless Close is
// already waiting; it reports whether f runs.
func (c *HaltClient) goBackground(f func()) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return false
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		f()
	}()
	return true
}

// Acquire asks the primary for the lock and waits until this node has the
// primary's position. With wait set it keeps asking, the current primary
// each time, until it gets the lock or ctx ends.
func (c *HaltClient) Acquire(ctx context.Context, name string, wait bool) (store.Halt, error) {
	for {
		c.mu.Lock()
		changed, closed := c.changed, c.closed
		c.mu.Unlock()
		if closed {
			return nil, errors.New("the node is shutting down")
		}
		c.mu.Lock()
		gen := c.gen
		c.mu.Unlock()
		base, epoch := c.primary()
		var err error
		if base == "" {
			err = errors.New("no primary is known")
		} else {
			var h store.Halt
			if h, err = c.acquireFrom(ctx, base, epoch, gen, name, wait); err == nil {
				return h, nil
			}
		}
		if !wait || ctx.Err() != nil || !retryable(err) {
			return nil, err
		}
		c.logger.Debug("HALT lock not granted yet; asking again", "db", name, "err", err)
		t := time.NewTimer(time.Second)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, err
		case <-changed:
			t.Stop()
		case <-t.C:
		}
	}
}

// retryable reports whether a failed request for the lock is worth asking
// again: no primary, a primary whose term ended or that is not the one
// asked, a round that timed out, or a primary with as many requests
// waiting as it queues.
func retryable(err error) bool {
	var se *StatusError
	if errors.As(err, &se) {
		return se.Code == http.StatusServiceUnavailable || se.Code == http.StatusRequestTimeout || se.Code == http.StatusTooManyRequests ||
			(se.Code == http.StatusConflict && strings.Contains(se.Message, store.ErrStaleEpoch.Error()))
	}
	return !errors.Is(err, store.ErrHaltHeld)
}

// acquireFrom asks the primary at base for the lock, within one round. gen
// is the count of primary changes when base was read: a grant that comes
// after a change is given back.
func (c *HaltClient) acquireFrom(ctx context.Context, base string, epoch, gen uint64, name string, wait bool) (store.Halt, error) {
	body, err := json.Marshal(HaltRequest{Name: name, NodeID: c.nodeID, Wait: wait, Epoch: epoch})
	if err != nil {
		return nil, err
	}
	// The connection outlives ctx, whose cancellation (and the round's
	// deadline) matters only until the grant arrives.
	hctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stopCancel := context.AfterFunc(ctx, cancel)
	round := time.AfterFunc(haltRoundTimeout, cancel)
	fail := func(err error) (store.Halt, error) {
		round.Stop()
		stopCancel()
		cancel()
		return nil, err
	}
	req, err := http.NewRequestWithContext(hctx, http.MethodPost, base+"/halt", bytes.NewReader(body))
	if err != nil {
		return fail(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.client.Do(req)
	if err != nil {
		if ctx.Err() == nil && hctx.Err() != nil {
			err = &StatusError{Code: http.StatusRequestTimeout, Message: "no grant within " + haltRoundTimeout.String()}
		}
		return fail(fmt.Errorf("halt %s: %w", name, err))
	}
	if err := CheckResponse(resp); err != nil {
		resp.Body.Close()
		var se *StatusError
		if errors.As(err, &se) && se.Code == http.StatusConflict && !wait && strings.Contains(se.Message, store.ErrHaltHeld.Error()) {
			return fail(store.ErrHaltHeld)
		}
		return fail(fmt.Errorf("halt %s: %w", name, err))
	}
	dec := json.NewDecoder(resp.Body)
	var grant HaltResponse
	if err := dec.Decode(&grant); err != nil || grant.ID.IsZero() {
		resp.Body.Close()
		return fail(fmt.Errorf("halt %s: reading the grant from %s: %v", name, base, err))
	}
	// From here on only Release, loss or Close end the connection.
	if !round.Stop() || !stopCancel() {
		resp.Body.Close()
		return fail(fmt.Errorf("halt %s: %w", name, context.Canceled))
	}
	h := &remoteHalt{
		c:       c,
		base:    base,
		ref:     HaltRef{Name: name, ID: grant.ID, Epoch: grant.Epoch},
		ttl:     time.Duration(grant.TTLMS) * time.Millisecond,
		cancel:  cancel,
		stop:    make(chan struct{}),
		watched: make(chan struct{}),
	}
	c.mu.Lock()
	if c.closed || c.stopped {
		c.mu.Unlock()
		cancel()
		resp.Body.Close()
		return nil, errors.New("the node is shutting down")
	}
	if c.gen != gen {
		// The node follows another primary now: this grant is of the old
		// one's term. Closing the connection ends it there.
		c.mu.Unlock()
		cancel()
		resp.Body.Close()
		return nil, &StatusError{Code: http.StatusServiceUnavailable, Message: "the primary changed while the lock was granted"}
	}
	c.halts[h] = struct{}{}
	c.wg.Add(2)
	c.mu.Unlock()
	go func() {
		defer c.wg.Done()
		h.watch(resp.Body, dec)
	}()
	go func() {
		defer c.wg.Done()
		h.keepAlive()
	}()
	// The primary's writers wait meanwhile: a replica that cannot catch up
	// gives the lock back rather than hold it.
	wctx, wcancel := context.WithTimeout(ctx, haltRoundTimeout)
	defer wcancel()
	if err := c.waitPos(wctx, name, grant.Pos); err != nil {
		h.Release()
		return nil, err
	}
	return h, nil
}

// waitPos waits until the local database reaches pos.
func (c *HaltClient) waitPos(ctx context.Context, name string, pos ltx.Pos) error {
	for {
		changed := c.store.Changed()
		if db := c.store.DB(name); db != nil {
			cur := db.Pos()
			if cur == pos {
				return nil
			}
			if cur.TXID >= pos.TXID {
				return fmt.Errorf("%s is at %s, which is not on the primary (at %s)", name, cur, pos)
			}
		} else if pos.TXID == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("catching up with the primary's %s at %s: %w", name, pos, ctx.Err())
		case <-changed:
		}
	}
}

// post sends body as JSON and decodes a 200 answer.
func (c *HaltClient) post(ctx context.Context, u string, body, out any) error {
	api := APIClient{HTTP: c.client}
	return api.call(ctx, http.MethodPost, u, body, out)
}

// postChangeset sends a changeset committed under the lock ref.
func (c *HaltClient) postChangeset(ctx context.Context, base string, ref HaltRef, data []byte) error {
	q := url.Values{"name": {ref.Name}, "epoch": {strconv.FormatUint(ref.Epoch, 10)}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/halt/commit?"+q.Encode(), bytes.NewReader(data))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set(HaltIDHeader, ref.ID.String())
	api := APIClient{HTTP: c.client}
	return api.do(req, nil)
}

// remoteHalt is a HALT lock held from the primary.
type remoteHalt struct {
	c      *HaltClient
	base   string
	ref    HaltRef
	ttl    time.Duration
	cancel context.CancelFunc // closes the grant's connection

	mu       sync.Mutex
	lost     error // set once the primary no longer holds the lock for us
	released bool
	stop     chan struct{} // closed when the lock ends, stopping keepAlive
	watched  chan struct{} // closed when watch has read the grant's connection to its end
}

// end marks the lock over and reports whether this call did it.
func (h *remoteHalt) end(lost error, released bool) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.released || h.lost != nil {
		return false
	}
	h.lost, h.released = lost, released
	close(h.stop)
	h.c.mu.Lock()
	delete(h.c.halts, h)
	h.c.mu.Unlock()
	return true
}

// lose records that the lock is gone, and why.
func (h *remoteHalt) lose(err error) {
	if h.end(err, false) {
		h.c.logger.Warn("HALT lock lost", "db", h.ref.Name, "epoch", h.ref.Epoch, "err", err)
		h.cancel()
	}
}

// Lost implements store.Halt.
func (h *remoteHalt) Lost() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.released && h.lost == nil {
		return fmt.Errorf("HALT lock on %s was released", h.ref.Name)
	}
	return h.lost
}

// watch reads the grant's connection until it ends: a line saying why the
// primary ended the grant, or the end of the connection.
func (h *remoteHalt) watch(body io.ReadCloser, dec *json.Decoder) {
	defer close(h.watched)
	// A connection read to its end goes back to the pool for the next
	// lock.
	defer body.Close()
	var msg HaltResponse
	err := dec.Decode(&msg)
	switch {
	case err == nil && msg.Lost != "":
		h.lose(fmt.Errorf("HALT lock on %s was lost: %s", h.ref.Name, msg.Lost))
	default:
		h.lose(fmt.Errorf("HALT lock on %s was lost: the connection to the primary %s ended", h.ref.Name, strings.TrimPrefix(h.base, "http://")))
	}
}

// keepAlive renews the lock three times per TTL until it ends.
func (h *remoteHalt) keepAlive() {
	every := max(h.ttl/3, 10*time.Millisecond)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-h.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(h.c.ctx, min(every, haltCallTimeout))
		err := h.c.post(ctx, h.base+"/halt/keepalive", h.ref, nil)
		cancel()
		var se *StatusError
		if errors.As(err, &se) && (se.Code == http.StatusConflict || se.Code == http.StatusServiceUnavailable) {
			h.lose(fmt.Errorf("HALT lock on %s was lost: %s", h.ref.Name, se.Message))
			return
		} else if err != nil {
			h.c.logger.Warn("keep HALT lock alive", "db", h.ref.Name, "err", err)
		}
	}
}

// Commit sends a changeset to the primary.
func (h *remoteHalt) Commit(ctx context.Context, data []byte) error {
	if err := h.Lost(); err != nil {
		return err
	}
	err := h.c.postChangeset(ctx, h.base, h.ref, data)
	if err == nil {
		return nil
	}
	var se *StatusError
	if !errors.As(err, &se) || se.Code >= 500 && se.Code != http.StatusServiceUnavailable {
		// No answer, or a failure on the primary's side: whether it
		// applied the changeset is not known.
		return fmt.Errorf("commit to the primary %s: %w", strings.TrimPrefix(h.base, "http://"), err)
	}
	if se.Code == http.StatusConflict || se.Code == http.StatusServiceUnavailable {
		h.lose(fmt.Errorf("HALT lock on %s was lost: %s", h.ref.Name, se.Message))
	}
	return fmt.Errorf("%w (%s): %w", store.ErrCommitRefused, strings.TrimPrefix(h.base, "http://"), err)
}

// Release gives the lock back, in the background.
func (h *remoteHalt) Release() {
	if !h.end(nil, true) {
		return
	}
	started := h.c.goBackground(func() {
		defer h.cancel()
		ctx, cancel := context.WithTimeout(h.c.ctx, haltCallTimeout)
		defer cancel()
		if err := h.c.post(ctx, h.base+"/halt/release", h.ref, nil); err != nil {
			h.c.logger.Warn("release HALT lock on the primary", "db", h.ref.Name, "err", err)
			return
		}
		// The primary ends the grant's answer now; reading it to its
		// end keeps the connection for the next lock.
		select {
		case <-h.watched:
		case <-ctx.Done():
		}
	})
	if !started {
		// Shutting down: closing the connection ends the grant too.
		h.cancel()
	}
}
