package http

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
)

// listener is an HTTP server on one address: the node's API or the proxy.
type listener struct {
	name   string // names the server in errors
	addr   string
	ln     net.Listener
	srv    *http.Server
	cancel context.CancelFunc // ends the requests' base context, if set
}

// Listen opens the listening socket.
func (l *listener) Listen() error {
	ln, err := net.Listen("tcp", l.addr)
	if err != nil {
		return fmt.Errorf("%s: listen on %s: %w", l.name, l.addr, err)
	}
	l.ln = ln
	return nil
}

// Addr returns the address the server listens on.
func (l *listener) Addr() net.Addr { return l.ln.Addr() }

// Serve serves requests until Shutdown.
func (l *listener) Serve() error {
	if err := l.srv.Serve(l.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
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
