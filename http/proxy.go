package http

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/url"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/litefs-project/litefs/ltx"
	"github.com/litefs-project/litefs/store"
)

// TXIDCookie carries the TXID of a client's last write, as LiteFS's proxy
// names it.
const TXIDCookie = "__txid"

// ProxyOptions configures a Proxy.
type ProxyOptions struct {
	Addr          string        // where the proxy listens
	Target        string        // host:port of the application
	DB            string        // database whose position is tracked
	MaxLag        time.Duration // reads wait at most this long for their TXID
	Passthrough   []string      // path patterns sent straight to the application
	AlwaysForward []string      // path patterns always sent to the primary
	// PrimaryTimeout is how long a write waits for a primary to be known.
	PrimaryTimeout time.Duration
	IsPrimary      func() bool
	// PrimaryProxy returns, on a replica, the API URL of a primary that
	// runs a proxy: writes are forwarded through its API, under ProxyPrefix,
	// with the cluster secret and TLS of the API.
	PrimaryProxy func(ctx context.Context) (string, error)
	// Forward carries forwarded writes; nil for http.DefaultTransport.
	Forward http.RoundTripper
	// Timeouts of the proxy's server, as net/http's; zero for none
	// (ReadHeaderTimeout: 10s).
	ReadTimeout, ReadHeaderTimeout, WriteTimeout, IdleTimeout time.Duration
	// Debug logs every request and what the proxy did with it.
	Debug  bool
	Lag    func() time.Duration
	Logger *slog.Logger
}

// Proxy sits in front of the application. On the primary it passes
// requests through and tells clients the TXID their writes reached; on a
// replica it forwards writes to the primary's proxy and holds reads until
// the replica has the client's last write.
type Proxy struct {
	store *store.Store
	opts  ProxyOptions
	app   *httputil.ReverseProxy
	listener
}

// NewProxy returns a proxy; call Listen, then Serve.
func NewProxy(st *store.Store, opts ProxyOptions) *Proxy {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.PrimaryTimeout <= 0 {
		opts.PrimaryTimeout = 5 * time.Second
	}
	p := &Proxy{store: st, opts: opts}
	target := &url.URL{Scheme: "http", Host: opts.Target}
	p.app = &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(target)
			r.Out.Host = r.In.Host
			r.SetXForwarded()
		},
		FlushInterval:  -1, // streaming responses pass through as they come
		ModifyResponse: p.setTXIDCookie,
		ErrorHandler:   p.badGateway,
	}
	if opts.ReadHeaderTimeout <= 0 {
		opts.ReadHeaderTimeout = 10 * time.Second
	}
	p.opts = opts
	p.listener = listener{name: "proxy", addr: opts.Addr, srv: &http.Server{
		Handler:           p,
		ReadTimeout:       opts.ReadTimeout,
		ReadHeaderTimeout: opts.ReadHeaderTimeout,
		WriteTimeout:      opts.WriteTimeout,
		IdleTimeout:       opts.IdleTimeout,
	}}
	return p
}

func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	route := "read"
	switch {
	case r.URL.Path == "/litefs/health":
		route = "health"
		p.health(w)
	case matchAny(p.opts.Passthrough, r.URL.Path):
		route = "passthrough"
		p.app.ServeHTTP(w, r)
	case p.opts.IsPrimary():
		route = "primary"
		p.app.ServeHTTP(w, r)
	case isWrite(r) || matchAny(p.opts.AlwaysForward, r.URL.Path):
		route = "forward"
		p.forward(w, r)
	default:
		p.read(w, r)
	}
	if p.opts.Debug {
		p.opts.Logger.Info("proxy request", "method", r.Method, "path", r.URL.Path, "route", route)
	}
}

// isWrite reports whether a request may change data: anything but GET,
// HEAD and OPTIONS.
func isWrite(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return false
	}
	return true
}

func matchAny(patterns []string, p string) bool {
	for _, pat := range patterns {
		if ok, _ := path.Match(pat, p); ok {
			return true
		}
		if strings.HasPrefix(pat, "*") && strings.HasSuffix(p, strings.TrimPrefix(pat, "*")) {
			return true // "*.png" matches in any directory
		}
	}
	return false
}

// read waits until this replica has the client's last write.
func (p *Proxy) read(w http.ResponseWriter, r *http.Request) {
	want, ok := clientTXID(r)
	if ok {
		ctx, cancel := context.WithTimeout(r.Context(), p.opts.MaxLag)
		defer cancel()
		if err := p.waitTXID(ctx, want); err != nil {
			cur := p.pos().TXID
			p.opts.Logger.Warn("proxy: read refused: replica behind the client's last write", "db", p.opts.DB, "want_txid", want.String(), "txid", cur.String())
			http.Error(w, fmt.Sprintf("litefs proxy: this replica has not caught up with your last write within %s (it is at transaction %s, you wrote %s); retry shortly",
				p.opts.MaxLag, cur, want), http.StatusGatewayTimeout)
			return
		}
	} else if lag := p.opts.Lag(); lag > p.opts.MaxLag {
		http.Error(w, fmt.Sprintf("litefs proxy: this replica is %s behind the primary, more than max-lag %s", lag.Round(time.Millisecond), p.opts.MaxLag),
			http.StatusServiceUnavailable)
		return
	}
	p.app.ServeHTTP(w, r)
}

func (p *Proxy) pos() ltx.Pos {
	if db := p.store.DB(p.opts.DB); db != nil {
		return db.Pos()
	}
	return ltx.Pos{}
}

func (p *Proxy) waitTXID(ctx context.Context, want ltx.TXID) error {
	for {
		changed := p.store.Changed()
		if p.pos().TXID >= want {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
	}
}

// clientTXID reads the TXID cookie.
func clientTXID(r *http.Request) (ltx.TXID, bool) {
	c, err := r.Cookie(TXIDCookie)
	if err != nil {
		return 0, false
	}
	v, err := strconv.ParseUint(c.Value, 16, 64)
	if err != nil {
		return 0, false
	}
	return ltx.TXID(v), true
}

// forward sends a write to the primary's proxy, through the primary's API
// (with its secret and TLS), and relays its answer, TXID cookie included.
func (p *Proxy) forward(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), p.opts.PrimaryTimeout)
	primary, err := p.primaryProxy(ctx)
	cancel()
	if err != nil {
		p.opts.Logger.Warn("proxy: write refused: no primary", "db", p.opts.DB, "err", err)
		http.Error(w, "litefs proxy: no primary to send this write to: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	target, err := url.Parse(strings.TrimSuffix(primary, "/") + ProxyPrefix)
	if err != nil {
		http.Error(w, "litefs proxy: bad primary proxy URL: "+err.Error(), http.StatusBadGateway)
		return
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = pr.In.Host
			pr.SetXForwarded()
		},
		FlushInterval: -1,
		ErrorHandler:  p.badGateway,
		Transport:     p.opts.Forward,
	}
	rp.ServeHTTP(w, r)
}

// ProxyPrefix is where a node's API takes the writes other nodes' proxies
// forward to its proxy.
const ProxyPrefix = "/proxy"

// ServeForwarded handles a write another node's proxy forwarded through
// this node's API: the request as the application's client sent it, under
// ProxyPrefix. It is handled as if it had come to this node's proxy.
func (p *Proxy) ServeForwarded(w http.ResponseWriter, r *http.Request) {
	r2 := r.Clone(r.Context())
	r2.URL.Path = strings.TrimPrefix(r.URL.Path, ProxyPrefix)
	r2.URL.RawPath = ""
	if r2.URL.Path == "" {
		r2.URL.Path = "/"
	}
	r2.RequestURI = r2.URL.RequestURI()
	r2.Header.Del(ForwardAuthHeader) // the application never sees the secret
	p.ServeHTTP(w, r2)
}

// primaryProxy waits, within ctx, until a primary's proxy is known.
func (p *Proxy) primaryProxy(ctx context.Context) (string, error) {
	for {
		u, err := p.opts.PrimaryProxy(ctx)
		if err == nil && u != "" {
			return u, nil
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = errors.New("none known")
			}
			return "", err
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// setTXIDCookie tells the client, after a write on the primary, the TXID
// that includes it.
func (p *Proxy) setTXIDCookie(resp *http.Response) error {
	if !isWrite(resp.Request) || !p.opts.IsPrimary() {
		return nil
	}
	c := &http.Cookie{Name: TXIDCookie, Value: p.pos().TXID.String(), Path: "/", HttpOnly: true, MaxAge: 300}
	resp.Header.Add("Set-Cookie", c.String())
	return nil
}

func (p *Proxy) badGateway(w http.ResponseWriter, r *http.Request, err error) {
	p.opts.Logger.Warn("proxy: upstream failed", "path", r.URL.Path, "err", err)
	http.Error(w, "litefs proxy: "+err.Error(), http.StatusBadGateway)
}

// health reports the node's lag against max-lag.
func (p *Proxy) health(w http.ResponseWriter) {
	lag := p.opts.Lag()
	code := http.StatusOK
	if lag > p.opts.MaxLag {
		code = http.StatusServiceUnavailable
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(struct {
		Healthy   bool    `json:"healthy"`
		IsPrimary bool    `json:"isPrimary"`
		Lag       float64 `json:"lagSeconds"`
		MaxLag    float64 `json:"maxLagSeconds"`
		TXID      string  `json:"txid"`
	}{code == http.StatusOK, p.opts.IsPrimary(), lag.Seconds(), p.opts.MaxLag.Seconds(), p.pos().TXID.String()})
}
