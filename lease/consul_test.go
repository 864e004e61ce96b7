package lease

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/litefs-project/litefs/internal/testutil"
)

func TestConsulConfigURL(t *testing.T) {
	tests := []struct {
		url, addr, scheme, token, err string
	}{
		{url: "http://127.0.0.1:8500", addr: "127.0.0.1:8500", scheme: "http"},
		{url: "https://secret@consul.internal:8501", addr: "consul.internal:8501", scheme: "https", token: "secret"},
		{url: "http://user:secret@127.0.0.1:8500", addr: "127.0.0.1:8500", scheme: "http", token: "secret"},
		{url: "http://127.0.0.1:8500?token=abc", addr: "127.0.0.1:8500", scheme: "http", token: "abc"},
		{url: "127.0.0.1:8500", err: "invalid url"},
		{url: "http://", err: "invalid url"},
	}
	for _, tc := range tests {
		t.Run(tc.url, func(t *testing.T) {
			cfg, err := consulConfig(tc.url)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v, want an error containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Address != tc.addr || cfg.Scheme != tc.scheme || cfg.Token != tc.token {
				t.Fatalf("got address %q scheme %q token %q", cfg.Address, cfg.Scheme, cfg.Token)
			}
		})
	}
}

func TestValidateClusterID(t *testing.T) {
	for i := 0; i < 10; i++ {
		if id := NewClusterID(); ValidateClusterID(id) != nil {
			t.Fatalf("generated ID %q is invalid", id)
		}
	}
	for _, bad := range []string{"", "LFSC", "LFSC0123456789abcdef", "XFSC0123456789ABCDEF", "LFSC0123456789ABCDEF0"} {
		if ValidateClusterID(bad) == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func newTestConsul(t *testing.T, c *testutil.Consul, host string, ttl time.Duration) *Consul {
	t.Helper()
	l, err := NewConsul(ConsulOptions{
		URL: c.URL(), Key: "litefs/" + t.Name(), TTL: ttl, LockDelay: 100 * time.Millisecond,
		Hostname: host, AdvertiseURL: "http://" + host, Candidate: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestConsulLease runs the lease against a real agent: one holder at a
// time, the value names it, renewal keeps it, invalidation ends it at
// once, and a handoff leaves the key to the named node.
func TestConsulLease(t *testing.T) {
	agent := testutil.StartConsul(t)
	ctx := context.Background()
	a := newTestConsul(t, agent, "a", time.Second)
	b := newTestConsul(t, agent, "b", time.Second)
	c := newTestConsul(t, agent, "c", time.Second)

	if _, err := b.PrimaryInfo(ctx); !errors.Is(err, ErrNoPrimary) {
		t.Fatalf("PrimaryInfo before any lease: %v", err)
	}
	la, err := a.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Acquire(ctx); !errors.Is(err, ErrPrimaryExists) {
		t.Fatalf("second Acquire: %v", err)
	}
	info, err := b.PrimaryInfo(ctx)
	if err != nil || info.Hostname != "a" || info.AdvertiseURL != "http://a" {
		t.Fatalf("PrimaryInfo = %+v, %v", info, err)
	}
	// Renewal keeps the lease past several TTLs.
	select {
	case <-la.Done():
		t.Fatal("lease ended while being renewed")
	case <-time.After(3 * time.Second):
	}

	// Handoff to b: c may not take it, b may.
	changed := make(chan error, 1)
	go func() { changed <- c.WaitChange(ctx, info) }()
	if err := la.Handoff(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-changed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("WaitChange did not see the handoff")
	}
	if _, err := c.Acquire(ctx); !errors.Is(err, ErrPrimaryExists) {
		t.Fatalf("another candidate took a lease handed to b: %v", err)
	}
	lb, err := b.Acquire(ctx)
	if err != nil {
		t.Fatalf("b could not take the lease handed to it: %v", err)
	}

	// Invalidating b's session from outside ends its lease.
	pair, _, err := adminClient(t, agent).KV().Get(b.Key(), nil)
	if err != nil || pair == nil {
		t.Fatalf("read key: %v", err)
	}
	if _, err := adminClient(t, agent).Session().Destroy(pair.Session, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-lb.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("lease did not end after its session was destroyed")
	}
}

func adminClient(t *testing.T, agent *testutil.Consul) *api.Client {
	cfg := api.DefaultConfig()
	cfg.Address = strings.TrimPrefix(agent.URL(), "http://")
	client, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return client
}

// TestJoinCluster: the first node registers an ID, the next adopts it, and
// a data directory of another cluster is refused.
func TestJoinCluster(t *testing.T) {
	agent := testutil.StartConsul(t)
	ctx := context.Background()
	l := newTestConsul(t, agent, "a", time.Second)

	dir1, dir2, dir3 := t.TempDir(), t.TempDir(), t.TempDir()
	id1, err := l.JoinCluster(ctx, dir1)
	if err != nil {
		t.Fatal(err)
	}
	if err := ValidateClusterID(id1); err != nil {
		t.Fatal(err)
	}
	id2, err := l.JoinCluster(ctx, dir2)
	if err != nil || id2 != id1 {
		t.Fatalf("second node joined as %q (%v), want %q", id2, err, id1)
	}
	b, _ := os.ReadFile(filepath.Join(dir2, ClusterIDFile))
	if strings.TrimSpace(string(b)) != id1 {
		t.Fatalf("second node's data dir holds %q", b)
	}
	os.WriteFile(filepath.Join(dir3, ClusterIDFile), []byte("LFSC00000000000000AA\n"), 0o644)
	if _, err := l.JoinCluster(ctx, dir3); !errors.Is(err, ErrClusterIDMismatch) || !strings.Contains(err.Error(), id1) {
		t.Fatalf("foreign data dir: %v", err)
	}
}
