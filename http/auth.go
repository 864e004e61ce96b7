package http

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Tokens is the cluster secret: the bearer token every inter-node and admin
// request carries. During a rotation the previous token is accepted too,
// and tried by this node's clients against peers that do not yet know the
// new one, until PreviousUntil.
type Tokens struct {
	current  [sha256.Size]byte
	previous [sha256.Size]byte
	token    string // sent first
	prev     string // sent to a peer that refused token, during the overlap
	until    time.Time
	now      func() time.Time
}

// NewTokens returns the secret current, with previous also accepted until
// previousUntil. An empty current means no secret: every request is let in.
func NewTokens(current, previous string, previousUntil time.Time) *Tokens {
	t := &Tokens{token: current, current: sha256.Sum256([]byte(current)), now: time.Now}
	if previous != "" && previous != current {
		t.prev, t.previous, t.until = previous, sha256.Sum256([]byte(previous)), previousUntil
	}
	return t
}

// Enabled reports whether requests must carry a token.
func (t *Tokens) Enabled() bool { return t != nil && t.token != "" }

// String never shows the secret.
func (t *Tokens) String() string { return "[redacted]" }

// inOverlap reports whether the previous token is still accepted.
func (t *Tokens) inOverlap() bool { return t.prev != "" && t.now().Before(t.until) }

// Check reports whether an Authorization header carries an accepted token.
// Tokens are compared as SHA-256 digests in constant time, so that neither
// their contents nor their lengths leak through timing.
func (t *Tokens) Check(authorization string) bool {
	got, ok := strings.CutPrefix(authorization, "Bearer ")
	if !ok || got == "" {
		return false
	}
	sum := sha256.Sum256([]byte(got))
	ok = subtle.ConstantTimeCompare(sum[:], t.current[:]) == 1
	if t.prev != "" {
		okPrev := subtle.ConstantTimeCompare(sum[:], t.previous[:]) == 1
		ok = ok || (okPrev && t.inOverlap())
	}
	return ok
}

// Public endpoints a node may serve without the secret.
const (
	PathMetrics = "/metrics"
	PathHealth  = "/health"
)

// DefaultPublicPaths are served without the secret unless configured
// otherwise: they reveal no data and are what monitoring polls.
var DefaultPublicPaths = []string{PathMetrics, PathHealth}

// Guard is what every request must pass before it reaches an endpoint.
type Guard struct {
	Tokens *Tokens
	// Public are the paths served without a token (from PathMetrics and
	// PathHealth).
	Public []string
	// Hosts are the Host header values accepted besides IP literals and
	// localhost: the names this node is reached by. A "*" accepts any.
	Hosts []string
}

// errRefused is the reason a request is refused, with its status code.
type errRefused struct {
	code int
	msg  string
}

func (e *errRefused) Error() string { return e.msg }

// check returns why r must be refused, or nil. The order matters: a
// request a browser sent is refused whatever it carries, so that no web page
// can reach the API even on a node without a secret. Writes forwarded by a
// proxy are the exception: they are the application's requests, checked
// only for the secret.
func (g *Guard) check(r *http.Request) *errRefused {
	if strings.HasPrefix(r.URL.Path, ProxyPrefix+"/") {
		return g.checkForwarded(r)
	}
	if origin := r.Header.Get("Origin"); origin != "" {
		return &errRefused{http.StatusForbidden, fmt.Sprintf("requests from web pages are refused (Origin %q)", origin)}
	}
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "none" {
		return &errRefused{http.StatusForbidden, fmt.Sprintf("requests from web pages are refused (Sec-Fetch-Site %q)", site)}
	}
	if !g.hostAllowed(r.Host) {
		return &errRefused{http.StatusMisdirectedRequest, fmt.Sprintf("host %q is not one this node is reached by (http.allowed-hosts)", r.Host)}
	}
	if g.Tokens.Enabled() && !g.isPublic(r.URL.Path) && !g.Tokens.Check(r.Header.Get("Authorization")) {
		if r.Header.Get("Authorization") == "" {
			return &errRefused{http.StatusUnauthorized, "this node requires the cluster secret (Authorization: Bearer)"}
		}
		return &errRefused{http.StatusUnauthorized, "wrong cluster secret"}
	}
	if r.Method == http.MethodPost || r.Method == http.MethodPut {
		// A web page can send a "simple" cross-origin request without
		// asking first; no endpoint takes one of those types.
		ct := strings.ToLower(strings.TrimSpace(strings.Split(r.Header.Get("Content-Type"), ";")[0]))
		switch ct {
		case ContentTypeJSON, ContentTypeBinary, ContentTypeSQLite:
		default:
			return &errRefused{http.StatusUnsupportedMediaType, fmt.Sprintf("content type %q is not accepted: send %s or %s", ct, ContentTypeJSON, ContentTypeBinary)}
		}
	}
	return nil
}

// ForwardAuthHeader carries the cluster secret on a write a proxy forwards
// to the primary, whose Authorization header is the application's.
const ForwardAuthHeader = "Litefs-Authorization"

// checkForwarded checks a write another node's proxy forwarded. It is the
// application's request, from the application's clients: browsers' headers,
// its Host and its content types are the application's business. Only the
// secret is checked, in its own header.
func (g *Guard) checkForwarded(r *http.Request) *errRefused {
	if g.Tokens.Enabled() && !g.Tokens.Check(r.Header.Get(ForwardAuthHeader)) {
		return &errRefused{http.StatusUnauthorized, "a forwarded write needs the cluster secret (" + ForwardAuthHeader + ")"}
	}
	return nil
}

// Content types the API accepts in request bodies.
const (
	ContentTypeJSON   = "application/json"
	ContentTypeBinary = "application/octet-stream"
	ContentTypeSQLite = "application/vnd.sqlite3" // a database file, for /import
)

func (g *Guard) isPublic(path string) bool {
	for _, p := range g.Public {
		if path == p {
			return true
		}
	}
	return false
}

// hostAllowed accepts IP literals, localhost and the configured names, so
// that a name an attacker points at this node (DNS rebinding) is refused.
func (g *Guard) hostAllowed(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.ToLower(strings.Trim(host, "[]")), ".")
	if host == "" || host == "localhost" || net.ParseIP(host) != nil {
		return true
	}
	for _, h := range g.Hosts {
		if h == "*" || strings.EqualFold(h, host) {
			return true
		}
	}
	return false
}

// authTransport adds the cluster secret to every request a client sends.
// Against a peer that refuses the current token while the previous one is
// still accepted (a rotation in progress), it retries with the previous one
// and remembers, per host, which one that peer takes.
type authTransport struct {
	base   http.RoundTripper
	tokens *Tokens
	header string // Authorization, or ForwardAuthHeader for the proxy

	mu       sync.Mutex
	previous map[string]bool // hosts that take only the previous token
}

func (t *authTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if !t.tokens.Enabled() || (t.header == "Authorization" && req.Header.Get("Authorization") != "") {
		return t.base.RoundTrip(req)
	}
	usePrev := t.tokens.inOverlap() && t.usesPrevious(req.URL.Host)
	resp, err := t.base.RoundTrip(t.with(req, usePrev))
	if err != nil || resp.StatusCode != http.StatusUnauthorized || !t.tokens.inOverlap() {
		return resp, err
	}
	retry := req
	if req.Body != nil && req.Body != http.NoBody {
		if req.GetBody == nil {
			return resp, nil // the body is gone; the next request learns
		}
		body, err := req.GetBody()
		if err != nil {
			return resp, nil
		}
		retry = req.Clone(req.Context())
		retry.Body = body
	}
	second, err := t.base.RoundTrip(t.with(retry, !usePrev))
	if err != nil {
		return resp, nil
	}
	resp.Body.Close()
	if second.StatusCode != http.StatusUnauthorized {
		t.mu.Lock()
		t.previous[req.URL.Host] = !usePrev
		t.mu.Unlock()
	}
	return second, nil
}

func (t *authTransport) usesPrevious(host string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.previous[host]
}

// with returns a copy of req carrying a token; RoundTrip must not change
// the caller's request.
func (t *authTransport) with(req *http.Request, previous bool) *http.Request {
	r := req.Clone(req.Context())
	r.Body = req.Body
	token := t.tokens.token
	if previous {
		token = t.tokens.prev
	}
	r.Header.Set(t.header, "Bearer "+token)
	return r
}

// Security is how a node proves itself to others and checks them: the
// cluster secret and TLS. A nil *Security is an open API over plain HTTP.
type Security struct {
	Tokens    *Tokens
	ServerTLS *TLS // nil: plain HTTP
	ClientTLS *TLS // how peers are verified and this node presents itself; nil: system roots
}

// Client returns tr, set up to present this node's credentials.
func (s *Security) Client(tr *http.Transport) http.RoundTripper {
	return s.client(tr, "Authorization")
}

// ProxyClient is Client for the writes a proxy forwards to the primary:
// the secret goes in ForwardAuthHeader, replacing any the application's
// client sent, and the application's own Authorization passes untouched.
func (s *Security) ProxyClient(tr *http.Transport) http.RoundTripper {
	return s.client(tr, ForwardAuthHeader)
}

func (s *Security) client(tr *http.Transport, header string) http.RoundTripper {
	if s == nil {
		return tr
	}
	if s.ClientTLS != nil {
		tr.TLSClientConfig = s.ClientTLS.client()
	}
	if !s.Tokens.Enabled() {
		return describeErrors{tr, tr.TLSClientConfig}
	}
	return describeErrors{&authTransport{base: tr, tokens: s.Tokens, header: header, previous: make(map[string]bool)}, tr.TLSClientConfig}
}

// Open reports whether the API accepts requests without the secret.
func (s *Security) Open() bool { return s == nil || !s.Tokens.Enabled() }

// errNotTLS and friends explain the transport errors an operator meets
// when the two ends of a connection disagree on TLS.
var (
	errPeerIsTLS    = errors.New("the node speaks HTTPS: use an https:// URL (lease.advertise-url)")
	errPeerNotTLS   = errors.New("the node does not speak TLS: use an http:// URL, or set http.tls on that node")
	errUnknownCA    = errors.New("its certificate is not signed by a CA this node trusts (http.tls.ca-file)")
	errCertRejected = errors.New("the node refused this node's client certificate (http.tls.cert-file, or that node's http.tls.client-ca-file)")
)
