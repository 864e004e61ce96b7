package http

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestTokensCheck(t *testing.T) {
	now := time.Unix(1000, 0)
	tok := NewTokens("new-secret", "old-secret", now.Add(time.Minute))
	tok.now = func() time.Time { return now }
	tests := []struct {
		header string
		want   bool
	}{
		{"Bearer new-secret", true},
		{"Bearer old-secret", true},
		{"Bearer new-secre", false},
		{"Bearer new-secret ", false},
		{"bearer new-secret", false},
		{"new-secret", false},
		{"Basic bmV3LXNlY3JldA==", false},
		{"Bearer ", false},
		{"", false},
	}
	for _, tt := range tests {
		if got := tok.Check(tt.header); got != tt.want {
			t.Errorf("Check(%q) = %v, want %v", tt.header, got, tt.want)
		}
	}
	now = now.Add(time.Minute)
	if tok.Check("Bearer old-secret") {
		t.Error("previous secret accepted after the overlap")
	}
	if !tok.Check("Bearer new-secret") {
		t.Error("current secret refused after the overlap")
	}
	if NewTokens("", "", time.Time{}).Enabled() {
		t.Error("no secret, but Enabled")
	}
	if s := tok.String(); strings.Contains(s, "secret") {
		t.Errorf("String() = %q shows the secret", s)
	}
}

func TestGuard(t *testing.T) {
	g := Guard{Tokens: NewTokens("s3cret", "", time.Time{}), Public: DefaultPublicPaths, Hosts: []string{"node-1.internal"}}
	open := Guard{Tokens: NewTokens("", "", time.Time{}), Public: DefaultPublicPaths}
	tests := []struct {
		name   string
		guard  *Guard
		method string
		target string
		header map[string]string
		want   int // 0: let through
	}{
		{"token", &g, "GET", "http://127.0.0.1/info", map[string]string{"Authorization": "Bearer s3cret"}, 0},
		{"no token", &g, "GET", "http://127.0.0.1/info", nil, 401},
		{"wrong token", &g, "GET", "http://127.0.0.1/export?name=x", map[string]string{"Authorization": "Bearer s3cre"}, 401},
		{"metrics open", &g, "GET", "http://127.0.0.1/metrics", nil, 0},
		{"health open", &g, "GET", "http://127.0.0.1/health", nil, 0},
		{"open API", &open, "POST", "http://127.0.0.1/import", map[string]string{"Content-Type": "application/vnd.sqlite3"}, 0},
		{"origin with token", &g, "POST", "http://127.0.0.1/promote", map[string]string{"Authorization": "Bearer s3cret", "Content-Type": "application/json", "Origin": "http://evil.example"}, 403},
		{"origin, open API", &open, "GET", "http://127.0.0.1/export?name=x", map[string]string{"Origin": "null"}, 403},
		{"same-origin fetch", &open, "GET", "http://127.0.0.1/info", map[string]string{"Sec-Fetch-Site": "same-origin"}, 403},
		{"typed in the address bar", &open, "GET", "http://127.0.0.1/metrics", map[string]string{"Sec-Fetch-Site": "none"}, 0},
		{"rebound host", &open, "GET", "http://evil.example:20202/info", nil, 421},
		{"configured host", &g, "GET", "http://node-1.internal:20202/info", map[string]string{"Authorization": "Bearer s3cret"}, 0},
		{"localhost", &open, "GET", "http://localhost:20202/info", nil, 0},
		{"ipv6", &open, "GET", "http://[::1]:20202/info", nil, 0},
		{"text/plain", &open, "POST", "http://127.0.0.1/import", map[string]string{"Content-Type": "text/plain"}, 415},
		{"form", &open, "POST", "http://127.0.0.1/demote", map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, 415},
		{"no type", &open, "POST", "http://127.0.0.1/demote", nil, 415},
		{"json", &open, "POST", "http://127.0.0.1/demote", map[string]string{"Content-Type": "application/json; charset=utf-8"}, 0},
		{"forwarded write", &g, "POST", "http://app.example/proxy/items", map[string]string{"Litefs-Authorization": "Bearer s3cret", "Origin": "http://app.example", "Content-Type": "text/plain"}, 0},
		{"forwarded write, no secret", &g, "POST", "http://127.0.0.1/proxy/items", map[string]string{"Authorization": "Bearer s3cret"}, 401},
		{"forwarded write, open API", &open, "POST", "http://app.example/proxy/items", map[string]string{"Origin": "http://app.example"}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(tt.method, tt.target, nil)
			for k, v := range tt.header {
				r.Header.Set(k, v)
			}
			err := tt.guard.check(r)
			switch {
			case tt.want == 0 && err != nil:
				t.Fatalf("refused (%d %s), want let through", err.code, err.msg)
			case tt.want != 0 && err == nil:
				t.Fatalf("let through, want %d", tt.want)
			case tt.want != 0 && err.code != tt.want:
				t.Fatalf("refused with %d (%s), want %d", err.code, err.msg, tt.want)
			}
			if err != nil && strings.Contains(err.msg, "s3cret") {
				t.Fatalf("error %q shows the secret", err.msg)
			}
		})
	}
}

// TestRotation: a node on the new secret reaches a peer that knows only
// the previous one during the overlap, and remembers which one it takes;
// after the overlap it sends only the new one.
func TestRotation(t *testing.T) {
	var seen []string
	var requests atomic.Int64
	peer := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		body, _ := io.ReadAll(r.Body)
		seen = append(seen, r.Header.Get("Authorization")+" "+string(body))
		if r.Header.Get("Authorization") != "Bearer old" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	defer peer.Close()

	now := time.Unix(1000, 0)
	tokens := NewTokens("new", "old", now.Add(time.Hour))
	tokens.now = func() time.Time { return now }
	sec := &Security{Tokens: tokens}
	c := &http.Client{Transport: sec.Client(&http.Transport{})}
	post := func() int {
		resp, err := c.Post(peer.URL+"/x", ContentTypeJSON, strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := post(); code != http.StatusOK {
		t.Fatalf("first request: %d", code)
	}
	if got := strings.Join(seen, ","); got != "Bearer new {},Bearer old {}" {
		t.Fatalf("sent %s, want the new secret, then the old one with the same body", got)
	}
	seen = nil
	if code := post(); code != http.StatusOK || len(seen) != 1 {
		t.Fatalf("second request: %d after %d tries, want 200 at the first (the peer's secret is remembered)", code, len(seen))
	}
	now = now.Add(time.Hour)
	seen = nil
	if code := post(); code != http.StatusUnauthorized || strings.Join(seen, ",") != "Bearer new {}" {
		t.Fatalf("after the overlap: %d, sent %v; want 401 with only the new secret", code, seen)
	}
}
