package http

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/litefs-project/litefs/ltx"
	"github.com/litefs-project/litefs/store"
)

// Defaults for ServerOptions.
const (
	DefaultHeartbeatInterval = time.Second
	DefaultWriteTimeout      = 30 * time.Second
)

// ServerOptions configures a Server.
type ServerOptions struct {
	Addr              string
	HeartbeatInterval time.Duration // how often an idle stream carries a heartbeat
	// WriteTimeout bounds each write to a client: of a stream's frames,
	// and of every answer but exports'.
	WriteTimeout    time.Duration
	SnapshotTimeout time.Duration // how long a snapshot or changeset frame may take to send in all

	// Limits of requests and connections; zero for the Default* value
	// of the same name (limits.go).
	MaxImportSize      int64         // bytes of a database uploaded to POST /import
	MaxRequestBody     int64         // bytes of the body of a JSON endpoint
	MaxConnections     int           // open connections (at most half the open-file limit)
	ConnectionWait     time.Duration // how long a connection beyond the limit waits for a slot
	ReadHeaderTimeout  time.Duration // how long a request's header may take to arrive
	IdleTimeout        time.Duration // how long a keep-alive connection may wait for its next request
	BodyReadTimeout    time.Duration // a request body's grace period, before MinBodyRate applies
	MinBodyRate        int64         // bytes a second a request body must average after its grace period
	ExportWriteTimeout time.Duration // how long each write of GET /export may take
	// ValidateImport, if set, checks an uploaded database file before
	// POST /import takes it in.
	ValidateImport func(path string) error
	// Security is the cluster secret and TLS; nil for an open API over
	// plain HTTP.
	Security *Security
	// PublicPaths are served without the secret (PathMetrics,
	// PathHealth); nil for DefaultPublicPaths.
	PublicPaths []string
	// AllowedHosts are the names, besides IP literals and localhost,
	// that requests may address this node by.
	AllowedHosts []string
	// Pprof serves Go's profiler under /debug/pprof/, behind the secret.
	Pprof  bool
	Logger *slog.Logger
}

// Server is a node's HTTP API.
type Server struct {
	store  *store.Store
	opts   ServerOptions
	logger *slog.Logger
	listener
	mux *http.ServeMux

	mu      sync.Mutex
	streams map[*stream]struct{}

	roles   roleHub // this node's role, for /events
	metrics *metrics
	guard   Guard
}

// NewServer returns a server of st's API; call Listen, then Serve. Every
// request's context derives from ctx, and is cancelled when Shutdown
// begins, so that long-lived answers (the event stream, a HALT grant's
// connection) end with the server.
func NewServer(ctx context.Context, st *store.Store, opts ServerOptions) *Server {
	if opts.HeartbeatInterval <= 0 {
		opts.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = DefaultWriteTimeout
	}
	if opts.SnapshotTimeout <= 0 {
		opts.SnapshotTimeout = 10 * time.Minute
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	opts.setLimitDefaults()
	if opts.PublicPaths == nil {
		opts.PublicPaths = DefaultPublicPaths
	}
	s := &Server{store: st, opts: opts, logger: opts.Logger, mux: http.NewServeMux(), streams: make(map[*stream]struct{}), metrics: newMetrics()}
	s.guard = Guard{Public: opts.PublicPaths, Hosts: opts.AllowedHosts}
	if opts.Security != nil {
		s.guard.Tokens = opts.Security.Tokens
	}
	s.mux.HandleFunc("GET "+PathHealth, s.handleHealth)
	s.mux.HandleFunc("POST /stream", s.handleStream)
	s.registerHalt()
	s.mux.HandleFunc("GET /events", s.handleEvents)
	s.mux.HandleFunc("GET /export", s.handleExport)
	s.mux.HandleFunc("POST /import", s.handleImport)
	if opts.Pprof {
		s.mux.HandleFunc("/debug/pprof/", pprof.Index)
		s.mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		s.mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		s.mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		s.mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	base, cancel := context.WithCancel(ctx)
	s.listener = listener{name: "http", addr: opts.Addr, cancel: cancel, limit: newConnLimiter(opts)}
	s.srv = &http.Server{
		Handler:           s.withLimits(s),
		ReadHeaderTimeout: opts.ReadHeaderTimeout,
		IdleTimeout:       opts.IdleTimeout,
		ConnState:         s.limit.track,
		ConnContext:       withConn,
		ErrorLog:          slog.NewLogLogger(opts.Logger.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return base },
	}
	if sec := opts.Security; sec != nil && sec.ServerTLS.Serves() {
		s.srv.TLSConfig = sec.ServerTLS.server()
	}
	return s
}

// Handle registers another endpoint.
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// ServeHTTP refuses what the guard refuses, before any endpoint reads the
// request, and adds the node's identity to every response.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Litefs-Id", fmt.Sprintf("%016X", s.store.NodeID()))
	if err := s.guard.check(r); err != nil {
		if err.code == http.StatusUnauthorized {
			w.Header().Set("WWW-Authenticate", `Bearer realm="litefs"`)
		}
		s.metrics.refused(err.code)
		// A small body is read and dropped first, so that a client still
		// sending it sees the answer rather than a broken pipe; a large
		// one is not read at all (the connection is closed after the
		// answer). Nothing of it reaches an endpoint.
		if r.ContentLength > 0 && r.ContentLength <= refusedBodyDrain {
			io.Copy(io.Discard, io.LimitReader(r.Body, refusedBodyDrain))
		}
		writeError(w, err.code, "%s", err.msg)
		return
	}
	s.mux.ServeHTTP(w, r)
}

// refusedBodyDrain is the largest body of a refused request that is read
// before the answer.
const refusedBodyDrain = 64 << 10

// handleHealth answers GET /health: the node is up and serving. It says
// nothing else, so that it can stay open to monitoring without the secret.
func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) {
	WriteJSON(w, http.StatusOK, struct {
		OK bool `json:"ok"`
	}{true})
}

// StreamRequest is the body of POST /stream: who is asking and what it has.
type StreamRequest struct {
	NodeID    string             `json:"nodeID"`
	Positions map[string]ltx.Pos `json:"positions"`
	// Recent lists each database's latest positions on the replica,
	// newest first, to find where a diverged replica parted ways.
	Recent       map[string][]ltx.Pos `json:"recent,omitempty"`
	Databases    []string             `json:"databases,omitempty"` // replicate only these; empty for all
	Hostname     string               `json:"hostname,omitempty"`
	AdvertiseURL string               `json:"advertiseURL,omitempty"`
	Candidate    bool                 `json:"candidate,omitempty"`
	// Epoch is the term the replica expects the primary to be in, as the
	// lease told it; the primary refuses a stream for any other.
	Epoch uint64 `json:"epoch"`
}

// EpochHeader carries the primary's epoch on the answer to POST /stream.
const EpochHeader = "Litefs-Epoch"

// ReplicaInfo describes a replica streaming from this node.
type ReplicaInfo struct {
	NodeID       string
	Hostname     string
	AdvertiseURL string
	Candidate    bool
	Positions    map[string]ltx.Pos // what the replica has been sent
}

// Replicas lists the replicas streaming from this node.
func (s *Server) Replicas() []ReplicaInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []ReplicaInfo
	for st := range s.streams {
		out = append(out, st.info())
	}
	return out
}

// Error is the body of an error response.
type Error struct {
	Error string `json:"error"`
}

func writeError(w http.ResponseWriter, code int, format string, args ...any) {
	WriteJSON(w, code, Error{Error: fmt.Sprintf(format, args...)})
}

// WriteJSON writes v as the JSON body of a response with status code.
func WriteJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// StatusError is a non-200 answer from a litefs node.
type StatusError struct {
	Code    int
	Message string // the node's explanation, from the Error body
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("%d %s: %s", e.Code, http.StatusText(e.Code), e.Message)
}

// CheckResponse returns nil for a 200 answer and otherwise a *StatusError
// carrying the node's message.
func CheckResponse(resp *http.Response) error {
	if resp.StatusCode == http.StatusOK {
		return nil
	}
	var e Error
	json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&e)
	return &StatusError{Code: resp.StatusCode, Message: e.Error}
}

func (s *Server) handleStream(w http.ResponseWriter, r *http.Request) {
	var req StreamRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 16<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "invalid stream request: %v", err)
		return
	}
	if err := validateStreamNames(req); err != nil {
		writeError(w, http.StatusBadRequest, "invalid stream request: %v", err)
		return
	}
	term := s.currentTerm(w)
	if term == nil {
		return
	}
	if err := term.Admit(req.Epoch); err != nil {
		writeError(w, termStatus(err), "stream: %v", err)
		return
	}

	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	rc := http.NewResponseController(w)
	st := &stream{
		server: s,
		term:   term,
		w:      w,
		rc:     rc,
		dw:     newDeadlineWriter(w, rc, s.opts.WriteTimeout),
		peer:   peerName(req.NodeID, r.RemoteAddr),
		sent:   req.Positions,
		only:   req.Databases,
		req:    req,
		finish: make(chan struct{}),
	}
	if st.sent == nil {
		st.sent = make(map[string]ltx.Pos)
	}
	// The stream belongs to the term: when it ends, the stream sends what
	// the log has and closes (abort, if that takes too long, closes it
	// at once).
	leave, err := term.Join(st.stop, func() {
		cancel()
		st.dw.abort()
	})
	if err != nil {
		writeError(w, termStatus(err), "stream: %v", err)
		return
	}
	defer leave()

	w.Header().Set("Content-Type", "application/x-litefs-stream")
	w.Header().Set(EpochHeader, strconv.FormatUint(term.Epoch(), 10))
	w.WriteHeader(http.StatusOK)
	st.fw = NewFrameWriter(st.dw) // every write to the replica under a deadline
	s.logger.Info("replica connected", "peer", st.peer, "epoch", term.Epoch())
	st.publish()
	s.mu.Lock()
	s.streams[st] = struct{}{}
	s.mu.Unlock()
	err = st.run(ctx)
	s.mu.Lock()
	delete(s.streams, st)
	s.mu.Unlock()
	if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, errStepDown) {
		s.logger.Warn("replication stream ended", "peer", st.peer, "err", err)
	} else {
		s.logger.Info("replica disconnected", "peer", st.peer, "reason", err)
	}
}

func peerName(nodeID, addr string) string {
	if nodeID == "" {
		return addr
	}
	return strings.ToUpper(nodeID) + "@" + addr
}
