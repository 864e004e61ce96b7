package http

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
)

// TestAPIClientReusesConnections: calls whose answer the caller does not
// decode still read it to the end, so the connection goes back to the pool;
// otherwise every forwarded commit or keepalive would dial (and, over TLS,
// handshake) anew.
func TestAPIClientReusesConnections(t *testing.T) {
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		WriteJSON(w, http.StatusOK, map[string]string{"pos": "0000000000000001/8000000000000000"})
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()

	c := NewAPIClient(nil)
	for i := 0; i < 20; i++ {
		if err := c.call(context.Background(), http.MethodPost, srv.URL+"/halt/keepalive", struct{}{}, nil); err != nil {
			t.Fatal(err)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("20 calls opened %d connections, want 1", n)
	}
}
