package lease

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/litefs-project/litefs/internal/testutil"
)

func newTestEtcd(t *testing.T, urls []string, host string, ttl time.Duration) *Etcd {
	t.Helper()
	l, err := NewEtcd(EtcdOptions{
		Endpoints: urls, Key: "litefs/" + regexp.MustCompile(`\W+`).ReplaceAllString(t.Name(), "-"), TTL: ttl,
		Hostname: host, AdvertiseURL: "http://" + host, Candidate: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func waitDone(t *testing.T, l Lease, within time.Duration, what string) {
	t.Helper()
	select {
	case <-l.Done():
	case <-time.After(within):
		t.Fatalf("%s: the lease did not end within %s", what, within)
	}
}

// TestEtcdLease runs the lease against a real etcd: one holder at a time,
// the value names it, renewal keeps it, epochs grow, a handoff leaves the
// key to the named node, and revocation from outside ends it at once.
func TestEtcdLease(t *testing.T) {
	e := testutil.StartEtcd(t, 1)
	ctx := context.Background()
	a := newTestEtcd(t, e.URLs(), "a", time.Second)
	b := newTestEtcd(t, e.URLs(), "b", time.Second)
	c := newTestEtcd(t, e.URLs(), "c", time.Second)

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
	if err != nil || info.Hostname != "a" || info.AdvertiseURL != "http://a" || info.Epoch != la.Epoch() || info.Epoch == 0 {
		t.Fatalf("PrimaryInfo = %+v, %v; lease epoch %d", info, err, la.Epoch())
	}
	// Renewal keeps the lease past several TTLs.
	select {
	case <-la.Done():
		t.Fatal("lease ended while being renewed")
	case <-time.After(3 * time.Second):
	}
	if r, _ := a.Stats(); r < 3 {
		t.Fatalf("%d renewals in 3 TTLs", r)
	}

	// Handoff to b: c may not take it, b may, in a new epoch.
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
	if lb.Epoch() <= la.Epoch() {
		t.Fatalf("epoch went from %d to %d", la.Epoch(), lb.Epoch())
	}

	// Revoking b's lease from outside ends it at once.
	admin, err := clientv3.New(clientv3.Config{Endpoints: e.URLs(), DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	resp, err := admin.Get(ctx, b.Key())
	if err != nil || len(resp.Kvs) == 0 {
		t.Fatalf("read key: %v", err)
	}
	if _, err := admin.Revoke(ctx, clientv3.LeaseID(resp.Kvs[0].Lease)); err != nil {
		t.Fatal(err)
	}
	waitDone(t, lb, 5*time.Second, "revoked")

	// The handoff note still reserves the key for b for a while.
	if _, err := c.Acquire(ctx); !errors.Is(err, ErrPrimaryExists) {
		t.Fatalf("c took the lease within b's handoff window: %v", err)
	}
	// A lease that is closed frees the key.
	lb2, err := b.Acquire(ctx)
	if err != nil {
		t.Fatalf("b after its lease was revoked: %v", err)
	}
	if err := lb2.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.PrimaryInfo(ctx); !errors.Is(err, ErrNoPrimary) {
		t.Fatalf("PrimaryInfo after the holder closed its lease: %v", err)
	}
}

// TestEtcdLeaseExpiresWithoutRenewal: a primary cut off from etcd stops
// before its lease can expire there, and another node gets it once it has.
func TestEtcdLeaseExpiresWithoutRenewal(t *testing.T) {
	e := testutil.StartEtcd(t, 3)
	ctx := context.Background()
	// a talks only to the first member; b to the others.
	a := newTestEtcd(t, e.URLs()[:1], "a", 2*time.Second)
	b := newTestEtcd(t, e.URLs()[1:], "b", 2*time.Second)
	la, err := a.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The member a talks to is partitioned away (stopped): a cannot renew.
	if err := e.Members[0].Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer e.Members[0].Signal(syscall.SIGCONT)
	// b tries all along; it must not succeed before a has stepped down.
	got := make(chan Lease, 1)
	var bAt time.Time
	go func() {
		for {
			l, err := b.Acquire(ctx)
			if err == nil {
				bAt = time.Now()
				got <- l
				return
			}
			if !errors.Is(err, ErrPrimaryExists) {
				t.Error(err)
				got <- nil
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	waitDone(t, la, 4*time.Second, "cut off from etcd")
	stepped := time.Now()
	var lb Lease
	select {
	case lb = <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("b did not get the lease after a's expired")
	}
	if lb == nil {
		return
	}
	if bAt.Before(stepped) {
		t.Fatalf("b held the lease %s before a stepped down", stepped.Sub(bAt))
	}
	if lb.Epoch() <= la.Epoch() {
		t.Fatalf("epoch went from %d to %d", la.Epoch(), lb.Epoch())
	}
	lb.Close()
}

// TestEtcdLeaseSurvivesRestart: etcd restarted (with its data) while the
// primary holds the lease, for less than the TTL: the lease is kept.
func TestEtcdLeaseSurvivesRestart(t *testing.T) {
	e := testutil.StartEtcd(t, 1)
	ctx := context.Background()
	a := newTestEtcd(t, e.URLs(), "a", 5*time.Second)
	la, err := a.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	before, _ := a.Stats()
	e.Stop()
	e.Start()
	// Renewals resume against the restarted server.
	deadline := time.Now().Add(10 * time.Second)
	for r, _ := a.Stats(); r <= before; r, _ = a.Stats() {
		if time.Now().After(deadline) {
			t.Fatal("no renewal after etcd restarted")
		}
		select {
		case <-la.Done():
			t.Fatal("the lease ended across a restart shorter than its TTL")
		case <-time.After(50 * time.Millisecond):
		}
	}
	info, err := a.PrimaryInfo(ctx)
	if err != nil || info.Hostname != "a" || info.Epoch != la.Epoch() {
		t.Fatalf("after the restart the lease names %+v (%v)", info, err)
	}
	la.Close()
}

// TestEtcdJoinCluster: the first node registers an ID, the next adopts it,
// and a data directory of another cluster is refused.
func TestEtcdJoinCluster(t *testing.T) {
	e := testutil.StartEtcd(t, 1)
	ctx := context.Background()
	l := newTestEtcd(t, e.URLs(), "a", time.Second)
	dir1, dir2, dir3 := t.TempDir(), t.TempDir(), t.TempDir()
	id1, err := l.JoinCluster(ctx, dir1)
	if err != nil {
		t.Fatal(err)
	}
	id2, err := l.JoinCluster(ctx, dir2)
	if err != nil || id2 != id1 {
		t.Fatalf("second node joined as %q (%v), want %q", id2, err, id1)
	}
	os.WriteFile(filepath.Join(dir3, ClusterIDFile), []byte("LFSC00000000000000AA\n"), 0o644)
	if _, err := l.JoinCluster(ctx, dir3); !errors.Is(err, ErrClusterIDMismatch) || !strings.Contains(err.Error(), id1) {
		t.Fatalf("foreign data dir: %v", err)
	}
}
