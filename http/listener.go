package http

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// listener is an HTTP server on one address: the node's API or the proxy.
type listener struct {
	name   string // names the server in errors
	addr   string
	ln     net.Listener
	srv    *http.Server
	cancel context.CancelFunc // ends the requests' base context, if set
	limit  *connLimiter       // bounds the open connections, if set
}

// Listen opens the listening socket.
func (l *listener) Listen() error {
	ln, err := net.Listen("tcp", l.addr)
	if err != nil {
		return fmt.Errorf("%s: listen on %s: %w", l.name, l.addr, err)
	}
	l.ln = ln
	if l.limit != nil {
		l.ln = l.limit.wrap(ln, l.srv.TLSConfig == nil)
	}
	return nil
}

// Addr returns the address the server listens on.
func (l *listener) Addr() net.Addr { return l.ln.Addr() }

// Serve serves requests until Shutdown, over TLS if the server has a TLS
// configuration.
func (l *listener) Serve() error {
	var err error
	if l.srv.TLSConfig != nil {
		err = l.srv.ServeTLS(l.ln, "", "")
	} else {
		err = l.srv.Serve(l.ln)
	}
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("%s: %w", l.name, err)
	}
	return nil
}

// Shutdown stops the server; connections still open when ctx ends (long
// replication streams, say) are closed.
func (l *listener) Shutdown(ctx context.Context) error {
	if l.cancel != nil {
		l.cancel()
	}
	err := l.srv.Shutdown(ctx)
	if err != nil {
		l.srv.Close()
	}
	return err
}

// connLimiter bounds the number of open connections of a server, so that
// clients cannot take every file descriptor of the process. At the limit,
// a new connection takes the place of one that costs the least to close:
// the longest-idle keep-alive connection, else the oldest one that has not
// sent a whole request header, else the slowest request body (one behind
// the minimum rate after its first second). If none can go, the new
// connection waits briefly for a slot, then is refused with 503. Answers
// in progress (the replication stream, a HALT grant, an export, a body
// arriving at a fair rate) are never closed for a newcomer.
type connLimiter struct {
	max       int
	wait      time.Duration
	minRate   int64         // bytes a second, below which a body is slow
	slowAfter time.Duration // how long a body must have been arriving to count as slow
	logger    *slog.Logger

	inner net.Listener
	plain bool // not TLS: a refusal can carry an HTTP answer

	mu      sync.Mutex
	conns   map[*limitConn]struct{}
	evicted int64 // connections closed to make room
	refused int64 // connections refused at the limit
	lastLog time.Time

	freed     chan struct{} // signalled when a connection closes
	done      chan struct{} // closed with the listener
	closeOnce sync.Once
}

// newConnLimiter returns a limiter of the options' connection limits.
func newConnLimiter(opts ServerOptions) *connLimiter {
	n := opts.MaxConnections
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err == nil && rl.Cur/2 < uint64(n) {
		n = int(max(rl.Cur/2, 1))
		opts.Logger.Info("http: connection limit lowered to half the open-file limit", "max_connections", opts.MaxConnections, "nofile", rl.Cur, "limit", n)
	}
	return &connLimiter{
		max:       n,
		wait:      opts.ConnectionWait,
		minRate:   opts.MinBodyRate,
		slowAfter: min(time.Second, opts.BodyReadTimeout),
		logger:    opts.Logger,
		conns:     make(map[*limitConn]struct{}),
		freed:     make(chan struct{}, 1),
		done:      make(chan struct{}),
	}
}

// wrap returns ln with the limit applied; plain is false under TLS.
func (cl *connLimiter) wrap(ln net.Listener, plain bool) net.Listener {
	cl.inner, cl.plain = ln, plain
	return cl
}

// Addr is the address of the listening socket.
func (cl *connLimiter) Addr() net.Addr { return cl.inner.Addr() }

// Close stops accepting; connections already open stay.
func (cl *connLimiter) Close() error {
	cl.closeOnce.Do(func() { close(cl.done) })
	return cl.inner.Close()
}

// Accept returns the next connection within the limit.
func (cl *connLimiter) Accept() (net.Conn, error) {
	for {
		c, err := cl.inner.Accept()
		if err != nil {
			// Out of descriptors (the limit is above what the process
			// may open, or the descriptors went elsewhere): closing an
			// idle connection makes room for the one waiting.
			if (errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)) && cl.evictOne() {
				continue
			}
			return nil, err
		}
		if lc := cl.admit(c); lc != nil {
			return lc, nil
		}
	}
}

// admit tracks c if there is room, or can be made, within the wait;
// otherwise it refuses c and returns nil.
func (cl *connLimiter) admit(c net.Conn) *limitConn {
	var timer *time.Timer
	var recheck <-chan time.Time
	for {
		cl.mu.Lock()
		if len(cl.conns) < cl.max || cl.evictLocked(time.Now()) {
			lc := &limitConn{Conn: c, l: cl, state: http.StateNew, since: time.Now()}
			cl.conns[lc] = struct{}{}
			cl.mu.Unlock()
			return lc
		}
		cl.mu.Unlock()
		if timer == nil {
			timer = time.NewTimer(cl.wait)
			defer timer.Stop()
			// A connection can become one to close while we wait (a body
			// falls behind, a request ends and leaves it idle).
			t := time.NewTicker(max(cl.wait/10, time.Millisecond))
			defer t.Stop()
			recheck = t.C
		}
		select {
		case <-cl.freed:
		case <-recheck:
		case <-timer.C:
			cl.refuse(c)
			return nil
		case <-cl.done:
			c.Close()
			return nil
		}
	}
}

// refuse closes a connection there is no room for, with a 503 answer when
// it can carry one.
func (cl *connLimiter) refuse(c net.Conn) {
	if cl.plain {
		const msg = `{"error":"this node has too many open connections; retry later"}` + "\n"
		c.SetDeadline(time.Now().Add(50 * time.Millisecond))
		fmt.Fprintf(c, "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(msg), msg)
		// Closing a socket with unread input resets the connection, and
		// the client may lose the answer with it: end the answer, then
		// read what the client sent (its request, most likely already
		// here) until it closes or the deadline passes.
		if cw, ok := c.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
		io.Copy(io.Discard, io.LimitReader(c, 64<<10))
	}
	c.Close()
	cl.mu.Lock()
	cl.refused++
	n, logNow := cl.refused, time.Since(cl.lastLog) > 10*time.Second
	if logNow {
		cl.lastLog = time.Now()
	}
	cl.mu.Unlock()
	if logNow {
		cl.logger.Warn("http: connection refused: too many open connections", "max_connections", cl.max, "refused_total", n, "remote", c.RemoteAddr().String())
	}
}

// evictOne closes one connection that can go, if any.
func (cl *connLimiter) evictOne() bool {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return cl.evictLocked(time.Now())
}

// evictLocked closes the connection that costs the least to close, if one
// can go, and reports whether it did.
func (cl *connLimiter) evictLocked(now time.Time) bool {
	var idle, fresh, slow *limitConn
	var slowRate float64
	for lc := range cl.conns {
		switch lc.state {
		case http.StateIdle:
			if idle == nil || lc.since.Before(idle.since) {
				idle = lc
			}
		case http.StateNew:
			if fresh == nil || lc.since.Before(fresh.since) {
				fresh = lc
			}
		case http.StateActive:
			if rate, ok := lc.bodyRate(now, cl.slowAfter); ok && rate < float64(cl.minRate) && (slow == nil || rate < slowRate) {
				slow, slowRate = lc, rate
			}
		}
	}
	victim := idle
	if victim == nil {
		victim = fresh
	}
	if victim == nil {
		victim = slow
	}
	if victim == nil {
		return false
	}
	delete(cl.conns, victim)
	cl.evicted++
	// The server's goroutine of that connection sees it closed and ends;
	// its own Close of it then finds nothing to release.
	victim.Conn.Close()
	return true
}

// track follows the server's view of each connection (http.Server.ConnState).
func (cl *connLimiter) track(c net.Conn, st http.ConnState) {
	lc := asLimitConn(c)
	if lc == nil {
		return
	}
	cl.mu.Lock()
	lc.state, lc.since = st, time.Now()
	cl.mu.Unlock()
}

func (cl *connLimiter) release(lc *limitConn) {
	cl.mu.Lock()
	delete(cl.conns, lc)
	cl.mu.Unlock()
	select {
	case cl.freed <- struct{}{}:
	default:
	}
}

// connStats counts a limiter's connections.
type connStats struct {
	open    int   // connections open
	reading int   // of which reading a request body
	evicted int64 // connections closed to make room
	refused int64 // connections refused at the limit
}

func (cl *connLimiter) stats() connStats {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	st := connStats{open: len(cl.conns), evicted: cl.evicted, refused: cl.refused}
	for lc := range cl.conns {
		if lc.bodyStart.Load() != 0 {
			st.reading++
		}
	}
	return st
}

// limitConn is a connection counted by a connLimiter.
type limitConn struct {
	net.Conn
	l    *connLimiter
	once sync.Once

	state http.ConnState // guarded by l.mu
	since time.Time      // when it entered state; guarded by l.mu

	// The request body being read, if any: when its first read began
	// (unix nanoseconds, 0 for none) and the bytes read so far.
	bodyStart atomic.Int64
	bodyBytes atomic.Int64
}

// Close closes the connection and frees its slot.
func (lc *limitConn) Close() error {
	err := lc.Conn.Close()
	lc.once.Do(func() { lc.l.release(lc) })
	return err
}

func (lc *limitConn) bodyStarted(t time.Time) {
	if lc != nil {
		lc.bodyBytes.Store(0)
		lc.bodyStart.Store(t.UnixNano())
	}
}

func (lc *limitConn) bodyProgress(n int64) {
	if lc != nil {
		lc.bodyBytes.Store(n)
	}
}

func (lc *limitConn) bodyEnded() {
	if lc != nil {
		lc.bodyStart.Store(0)
	}
}

// bodyRate is the average rate of the body being read, if one has been
// for at least after.
func (lc *limitConn) bodyRate(now time.Time, after time.Duration) (float64, bool) {
	start := lc.bodyStart.Load()
	if start == 0 {
		return 0, false
	}
	d := now.Sub(time.Unix(0, start))
	if d < after {
		return 0, false
	}
	return float64(lc.bodyBytes.Load()) / d.Seconds(), true
}

// asLimitConn finds the limitConn under c (a TLS connection wraps it).
func asLimitConn(c net.Conn) *limitConn {
	for {
		switch v := c.(type) {
		case *limitConn:
			return v
		case interface{ NetConn() net.Conn }:
			c = v.NetConn()
		default:
			return nil
		}
	}
}

// connKey is the context key of a request's connection.
type connKey struct{}

// withConn puts the connection in the context of its requests
// (http.Server.ConnContext).
func withConn(ctx context.Context, c net.Conn) context.Context {
	if lc := asLimitConn(c); lc != nil {
		return context.WithValue(ctx, connKey{}, lc)
	}
	return ctx
}

// connOf returns the limitConn a request came on, or nil.
func connOf(r *http.Request) *limitConn {
	lc, _ := r.Context().Value(connKey{}).(*limitConn)
	return lc
}
