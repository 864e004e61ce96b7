package http

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Limits of the API server. A request may send only so much (each
// endpoint has a body limit), only so slowly (a body must keep arriving at
// a minimum average rate once a grace period has passed), and its answer
// must keep leaving (each write to the client must complete within a
// timeout, so a client that stops reading is cut off and whatever it
// pinned, a snapshot for one, is released). Deadlines are set per request
// and per write rather than on the connection, so that answers meant to
// last (the replication stream, a HALT grant's connection, the event
// stream) live as long as the client keeps up. The number of open
// connections is bounded too (connLimiter in listener.go).

// Defaults of the limits in ServerOptions.
const (
	// DefaultMaxImportSize bounds a database uploaded to POST /import.
	DefaultMaxImportSize = 4 << 30
	// DefaultMaxRequestBody bounds the body of every JSON endpoint.
	DefaultMaxRequestBody = 1 << 20
	// DefaultMaxConnections bounds the API's open connections. It is
	// lowered to half the process's open-file limit if that is smaller, so
	// that connections cannot take the descriptors the databases need.
	DefaultMaxConnections = 512
	// DefaultConnectionWait is how long a connection beyond the limit
	// waits for a slot when no open one can be closed.
	DefaultConnectionWait = time.Second
	// DefaultReadHeaderTimeout bounds the reading of a request's header.
	DefaultReadHeaderTimeout = 10 * time.Second
	// DefaultIdleTimeout is how long a keep-alive connection may wait for
	// its next request. It is longer than the node's own clients keep
	// idle connections (a minute), so that a client does not send on a
	// connection the server is closing.
	DefaultIdleTimeout = 2 * time.Minute
	// DefaultBodyReadTimeout is the grace period of a request body: after
	// it, the body must have arrived at DefaultMinBodyRate on average.
	DefaultBodyReadTimeout = 10 * time.Second
	// DefaultMinBodyRate is the slowest average rate, in bytes a second,
	// at which a request body may arrive once its grace period is over.
	DefaultMinBodyRate = 64 << 10
	// DefaultExportWriteTimeout bounds each write of GET /export.
	DefaultExportWriteTimeout = 30 * time.Second
)

// Body limits of the endpoints that take more than JSON.
const (
	// maxStreamRequest bounds POST /stream: a replica's position, and its
	// recent positions, of every database.
	maxStreamRequest = 16 << 20
	// maxHaltCommit bounds POST /halt/commit, as its handler does.
	maxHaltCommit = 1 << 34
)

// setLimitDefaults gives every unset limit its default.
func (o *ServerOptions) setLimitDefaults() {
	setDefault(&o.MaxImportSize, DefaultMaxImportSize)
	setDefault(&o.MaxRequestBody, DefaultMaxRequestBody)
	setDefault(&o.MaxConnections, DefaultMaxConnections)
	setDefault(&o.ConnectionWait, DefaultConnectionWait)
	setDefault(&o.ReadHeaderTimeout, DefaultReadHeaderTimeout)
	setDefault(&o.IdleTimeout, DefaultIdleTimeout)
	setDefault(&o.BodyReadTimeout, DefaultBodyReadTimeout)
	setDefault(&o.MinBodyRate, DefaultMinBodyRate)
	setDefault(&o.ExportWriteTimeout, DefaultExportWriteTimeout)
}

func setDefault[T int | int64 | time.Duration](v *T, def T) {
	if *v <= 0 {
		*v = def
	}
}

// forwardedPrefix is where the API takes the application's writes that
// other nodes' proxies forward (ProxyPrefix, proxy.go). Those are the
// application's requests, with the application's sizes and pace: the API's
// limits do not apply to them, as the proxy in front of the application
// sets none.
const forwardedPrefix = ProxyPrefix + "/"

// endpointLimits are the limits of one endpoint's requests.
type endpointLimits struct {
	none    bool  // the request is passed on as it is
	maxBody int64 // bytes its request body may have
	// writeTimeout bounds each write of the answer; 0 when the handler
	// sets its own write deadlines (the stream, the export).
	writeTimeout time.Duration
}

func (s *Server) limitsFor(r *http.Request) endpointLimits {
	if strings.HasPrefix(r.URL.Path, forwardedPrefix) {
		return endpointLimits{none: true}
	}
	switch r.URL.Path {
	case "/stream":
		return endpointLimits{maxBody: maxStreamRequest}
	case "/export":
		return endpointLimits{maxBody: s.opts.MaxRequestBody}
	case "/import":
		return endpointLimits{maxBody: s.opts.MaxImportSize, writeTimeout: s.opts.WriteTimeout}
	case "/halt/commit":
		return endpointLimits{maxBody: maxHaltCommit, writeTimeout: s.opts.WriteTimeout}
	}
	return endpointLimits{maxBody: s.opts.MaxRequestBody, writeTimeout: s.opts.WriteTimeout}
}

// withLimits applies the endpoint's limits to every request before h sees
// it: a body declared over the limit is refused at once, a body is cut at
// the limit and when it arrives too slowly, and each write of the answer
// gets a deadline.
func (s *Server) withLimits(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		lim := s.limitsFor(r)
		if lim.none {
			h.ServeHTTP(w, r)
			return
		}
		if r.ContentLength > lim.maxBody {
			// Not a byte of the body is read; the connection cannot be
			// reused.
			w.Header().Set("Connection", "close")
			writeError(w, http.StatusRequestEntityTooLarge, "request body of %d bytes is over the limit of %d bytes for %s", r.ContentLength, lim.maxBody, r.URL.Path)
			return
		}
		rc := http.NewResponseController(w)
		var body *bodyReader
		if r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0 {
			body = &bodyReader{
				body:  http.MaxBytesReader(w, r.Body, lim.maxBody),
				w:     w,
				rc:    rc,
				conn:  connOf(r),
				grace: s.opts.BodyReadTimeout,
				rate:  s.opts.MinBodyRate,
			}
			r = r.WithContext(r.Context()) // a copy, whose body is ours
			r.Body = body
		}
		out := w
		if lim.writeTimeout > 0 {
			out = &timedResponse{ResponseWriter: w, dw: newDeadlineWriter(w, rc, lim.writeTimeout)}
		}
		defer func() {
			body.finish()
			// The server flushes what the handler left in its buffers
			// after it returns.
			rc.SetWriteDeadline(time.Now().Add(s.opts.WriteTimeout))
		}()
		h.ServeHTTP(out, r)
	})
}

// errBodyTooSlow is the error of a request body that arrived slower than
// the server accepts.
var errBodyTooSlow = errors.New("request body arrived too slowly")

// bodyReader reads a request body under a deadline that moves with its
// progress: the body has until grace + n/rate after the handler began to
// read it to deliver its first n bytes. A client that stalls, or trickles a byte a
// second, is cut off once the grace period is over; one that keeps up is
// never cut, however long its body is.
type bodyReader struct {
	body  io.ReadCloser
	w     http.ResponseWriter
	rc    *http.ResponseController
	conn  *limitConn // nil when not served through the connection limiter
	start time.Time  // the first read; the client cannot send faster than it is read
	grace time.Duration
	rate  int64 // bytes a second

	n    int64 // bytes read so far
	done bool  // read to its end or failed: no deadline to manage
	err  error
}

// due is when the body must have delivered n+1 bytes.
func (b *bodyReader) due() time.Time {
	return b.start.Add(b.grace + time.Duration(float64(b.n)/float64(b.rate)*float64(time.Second)))
}

func (b *bodyReader) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if b.done {
		return b.body.Read(p)
	}
	if b.start.IsZero() {
		b.start = time.Now()
		b.conn.bodyStarted(b.start)
	}
	due := b.due()
	if !time.Now().Before(due) {
		return 0, b.tooSlow()
	}
	// No read of the connection is in progress while the body has not
	// reached its end (the server's own background read starts there, and
	// clears the deadline), so the deadline applies to this read only.
	if err := b.rc.SetReadDeadline(due); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return 0, err
	}
	n, err := b.body.Read(p)
	b.n += int64(n)
	b.conn.bodyProgress(b.n)
	var ne net.Error
	switch {
	case err == nil:
	case errors.As(err, &ne) && ne.Timeout():
		return n, b.tooSlow()
	default: // the end, the size limit, or a broken connection
		b.done = true
		b.conn.bodyEnded()
	}
	return n, err
}

func (b *bodyReader) Close() error { return b.body.Close() }

// tooSlow ends the body: the client is behind the minimum rate. The
// connection is closed after the handler's answer, since the rest of the
// body would arrive as slowly.
func (b *bodyReader) tooSlow() error {
	b.done = true
	b.conn.bodyEnded()
	b.w.Header().Set("Connection", "close")
	b.err = fmt.Errorf("%w: %d bytes in %s, slower than %d bytes/s after the first %s", errBodyTooSlow, b.n, time.Since(b.start).Round(time.Millisecond), b.rate, b.grace)
	return b.err
}

// finish runs when the handler returns. A body it did not read to its end
// is discarded by the server (if short) under the same deadline, so that a
// slow client cannot hold the connection with it either.
func (b *bodyReader) finish() {
	if b == nil {
		return
	}
	if !b.done {
		b.done = true
		b.conn.bodyEnded()
		if b.start.IsZero() {
			b.start = time.Now()
		}
		b.rc.SetReadDeadline(b.due())
	}
}

// deadlineWriter gives each write its own deadline: timeout from when the
// write starts, never past the bound if one is set. A client that keeps
// reading keeps the answer going; one that stops is cut off within
// timeout. abort ends it for good: no later write re-arms a deadline.
type deadlineWriter struct {
	w       io.Writer
	rc      *http.ResponseController
	timeout time.Duration

	mu      sync.Mutex
	bound   time.Time // no deadline later than this; zero for none
	aborted bool
}

func newDeadlineWriter(w io.Writer, rc *http.ResponseController, timeout time.Duration) *deadlineWriter {
	return &deadlineWriter{w: w, rc: rc, timeout: timeout}
}

// errAborted is returned by writes after abort.
var errAborted = errors.New("answer aborted")

func (d *deadlineWriter) Write(p []byte) (int, error) {
	if err := d.arm(); err != nil {
		return 0, err
	}
	return d.w.Write(p)
}

// Flush sends what is buffered, under a write deadline.
func (d *deadlineWriter) Flush() error {
	if err := d.arm(); err != nil {
		return err
	}
	return d.rc.Flush()
}

// setBound bounds every deadline from now on by t (zero for no bound).
func (d *deadlineWriter) setBound(t time.Time) {
	d.mu.Lock()
	d.bound = t
	d.mu.Unlock()
}

// arm sets the deadline of the write about to start.
func (d *deadlineWriter) arm() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.aborted {
		return errAborted
	}
	t := time.Now().Add(d.timeout)
	if !d.bound.IsZero() && d.bound.Before(t) {
		t = d.bound
	}
	if err := d.rc.SetWriteDeadline(t); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return err
	}
	return nil
}

// abort fails the write in progress, if any, and every later one.
func (d *deadlineWriter) abort() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.aborted = true
	d.rc.SetWriteDeadline(time.Now())
}

// timedResponse is a ResponseWriter whose writes and flushes each get a
// deadline.
type timedResponse struct {
	http.ResponseWriter
	dw *deadlineWriter
}

func (t *timedResponse) Write(p []byte) (int, error) { return t.dw.Write(p) }

// FlushError is what http.ResponseController.Flush calls.
func (t *timedResponse) FlushError() error { return t.dw.Flush() }

// Unwrap lets http.ResponseController reach the server's ResponseWriter.
func (t *timedResponse) Unwrap() http.ResponseWriter { return t.ResponseWriter }
