package http

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/litefs-project/litefs/store"
)

// TestProxyTimeouts: the proxy's server applies its configured timeouts: a
// client that opens a connection and sends nothing is disconnected after
// ReadHeaderTimeout.
func TestProxyTimeouts(t *testing.T) {
	st, err := store.Open(store.Options{Dir: t.TempDir(), Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	p := NewProxy(st, ProxyOptions{Addr: "127.0.0.1:0", Target: "127.0.0.1:1", DB: "db", ReadHeaderTimeout: 100 * time.Millisecond,
		IsPrimary: func() bool { return true }, Logger: quietLogger()})
	if err := p.Listen(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Serve() }()
	defer func() {
		p.srv.Close()
		<-done
	}()

	conn, err := net.Dial("tcp", p.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// The server must close the connection itself, well before this
	// deadline (and before the 10s it would without the option).
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(conn); err != nil {
		t.Fatalf("the proxy did not close a silent connection: %v", err)
	}
}
