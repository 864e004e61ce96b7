package http

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"time"
)

// TLSFiles names the PEM files of a node's TLS setup.
type TLSFiles struct {
	CertFile     string // this node's certificate, served and presented to peers
	KeyFile      string
	CAFile       string // CAs that sign the peers' certificates; empty for the system's
	ClientCAFile string // if set, clients must present a certificate signed by one of these
}

// TLS is a loaded TLS setup.
type TLS struct {
	cert     *tls.Certificate
	roots    *x509.CertPool // nil: system roots
	clientCA *x509.CertPool // nil: no client certificate asked for
}

// LoadTLS reads the files f names. Each error names the file and what is
// wrong with it.
func LoadTLS(f TLSFiles) (*TLS, error) {
	t := &TLS{}
	if f.CertFile != "" || f.KeyFile != "" {
		if f.CertFile == "" || f.KeyFile == "" {
			return nil, errors.New("http.tls.cert-file and http.tls.key-file go together")
		}
		cert, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("http.tls: load certificate %s and key %s: %w", f.CertFile, f.KeyFile, err)
		}
		t.cert = &cert
	}
	var err error
	if t.roots, err = loadPool("http.tls.ca-file", f.CAFile); err != nil {
		return nil, err
	}
	if t.clientCA, err = loadPool("http.tls.client-ca-file", f.ClientCAFile); err != nil {
		return nil, err
	}
	if t.clientCA != nil && t.cert == nil {
		return nil, errors.New("http.tls.client-ca-file needs http.tls.cert-file and http.tls.key-file: client certificates are asked for only over TLS")
	}
	return t, nil
}

func loadPool(key, path string) (*x509.CertPool, error) {
	if path == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s %s: no PEM certificate in it", key, path)
	}
	return pool, nil
}

// Serves reports whether the node serves TLS.
func (t *TLS) Serves() bool { return t != nil && t.cert != nil }

// server returns the listener's configuration. HTTP/2 is not offered: the
// replication stream and a HALT grant's connection rely on HTTP/1.1's
// one-request-per-connection flow control and deadlines.
func (t *TLS) server() *tls.Config {
	c := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{*t.cert},
		NextProtos:   []string{"http/1.1"},
	}
	if t.clientCA != nil {
		c.ClientCAs = t.clientCA
		c.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return c
}

// client returns the configuration this node's clients use: peers are
// verified against the CA file, and this node's certificate is presented
// to peers that ask for one.
func (t *TLS) client() *tls.Config {
	c := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: t.roots}
	if t.cert != nil {
		c.Certificates = []tls.Certificate{*t.cert}
	}
	return c
}

// describeErrors turns the transport errors of a TLS mismatch into ones
// that say what to change.
type describeErrors struct {
	base http.RoundTripper
	tls  *tls.Config // the client's, or nil
}

// plainToTLS is what Go's HTTPS server answers a plain-HTTP request with.
const plainToTLS = "Client sent an HTTP request to an HTTPS server"

func (d describeErrors) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := d.base.RoundTrip(req)
	if err != nil {
		return nil, explainTLS(req, d.diagnose(req, err))
	}
	if resp.StatusCode == http.StatusBadRequest && resp.Header.Get("Litefs-Id") == "" {
		br := bufio.NewReader(resp.Body)
		head, _ := br.Peek(len(plainToTLS))
		if bytes.Equal(head, []byte(plainToTLS)) {
			resp.Body.Close()
			return nil, fmt.Errorf("%s %s: %w", req.Method, req.URL.Redacted(), errPeerIsTLS)
		}
		resp.Body = struct {
			io.Reader
			io.Closer
		}{br, resp.Body}
	}
	return resp, nil
}

// diagnose finds why a TLS connection broke while a request was sent. With
// TLS 1.3 a server checks the client's certificate after the handshake, so
// a client sending a body may see only a broken pipe; a fresh handshake
// followed by a read receives the server's alert, which says what it
// refused.
//
// A plain-HTTP client sending a body to a TLS node sees a reset too; a
// bodiless request on a fresh connection gets the node's own explanation.
func (d describeErrors) diagnose(req *http.Request, err error) error {
	if !(errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, net.ErrClosed)) {
		return err
	}
	if req.URL.Scheme == "http" {
		conn, derr := (&net.Dialer{Timeout: 2 * time.Second}).DialContext(req.Context(), "tcp", req.URL.Host)
		if derr != nil {
			return err
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(2 * time.Second))
		fmt.Fprintf(conn, "HEAD %s HTTP/1.0\r\nHost: %s\r\n\r\n", PathHealth, req.URL.Host)
		answer, _ := io.ReadAll(io.LimitReader(conn, 1024))
		if bytes.Contains(answer, []byte(plainToTLS)) {
			return fmt.Errorf("%w (%v)", errPeerIsTLS, err)
		}
		return err
	}
	if req.URL.Scheme != "https" {
		return err
	}
	cfg := &tls.Config{}
	if d.tls != nil {
		cfg = d.tls.Clone()
	}
	cfg.ServerName = req.URL.Hostname()
	dialer := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 2 * time.Second}, Config: cfg}
	ctx, cancel := context.WithTimeout(req.Context(), 2*time.Second)
	defer cancel()
	conn, derr := dialer.DialContext(ctx, "tcp", req.URL.Host)
	if derr != nil {
		return fmt.Errorf("%w (%v)", derr, err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(time.Second))
	if _, rerr := conn.Read(make([]byte, 1)); rerr != nil && strings.Contains(rerr.Error(), "remote error: tls: ") {
		return fmt.Errorf("%w (%v)", rerr, err)
	}
	return err
}

func explainTLS(req *http.Request, err error) error {
	var (
		record   tls.RecordHeaderError
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		alert    tls.AlertError
	)
	var why error
	switch {
	case errors.As(err, &record):
		why = errPeerNotTLS
	case errors.As(err, &unknown):
		why = errUnknownCA
	case errors.As(err, &hostname):
		why = fmt.Errorf("its certificate is not for %s: %w", req.URL.Hostname(), err)
	case errors.As(err, &alert) || strings.Contains(err.Error(), "remote error: tls: "):
		why = fmt.Errorf("%w: %v", errCertRejected, err)
	default:
		return err
	}
	return fmt.Errorf("%s %s: %w", req.Method, req.URL.Redacted(), why)
}
