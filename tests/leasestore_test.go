package tests

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/litefs-project/litefs/internal/testutil"
)

// leaseStore is a real lease store the lease tests run against: Consul or
// etcd, each on loopback ports of its own.
type leaseStore interface {
	// leaseConfig is the lease section of node n's config, on key.
	leaseConfig(n *testutil.Node, key string, candidate bool) string
	// stop and start take the store down and up again, its data kept
	// where the store keeps it (a Consul dev agent keeps none).
	stop()
	start()
	// watchFree waits until the store has freed the test's lease, then
	// watches it for leaseWatch, failing if any node takes it.
	watchFree(t *testing.T, nonCandidate *testutil.Node)
}

// forEachLease runs a lease test against Consul and against etcd.
func forEachLease(t *testing.T, test func(*testing.T, leaseStore)) {
	t.Run("consul", func(t *testing.T) { test(t, consulStore{testutil.StartConsul(t)}) })
	t.Run("etcd", func(t *testing.T) { test(t, etcdStore{testutil.StartEtcd(t, 1)}) })
}

type consulStore struct{ c *testutil.Consul }

func (s consulStore) leaseConfig(n *testutil.Node, key string, candidate bool) string {
	return n.ConsulLease(s.c, key, candidate, testTTL, testLockDelay)
}
func (s consulStore) stop()  { s.c.Stop() }
func (s consulStore) start() { s.c.Start() }
func (s consulStore) watchFree(t *testing.T, nonCandidate *testutil.Node) {
	watchLeaseFree(t, s.c, nonCandidate)
}

type etcdStore struct{ e *testutil.Etcd }

func (s etcdStore) leaseConfig(n *testutil.Node, key string, candidate bool) string {
	return n.EtcdLease(s.e.URLs(), key, candidate, testTTL)
}
func (s etcdStore) stop()  { s.e.Stop() }
func (s etcdStore) start() { s.e.Start() }

// watchFree waits until etcd has revoked the lease of the test's key (its
// holders are dead: their leases expire after the TTL), then watches the
// key for leaseWatch, failing if any node creates it. etcd has no lock
// delay: a free key can be taken at once.
func (s etcdStore) watchFree(t *testing.T, nonCandidate *testutil.Node) {
	t.Helper()
	client, err := clientv3.New(clientv3.Config{Endpoints: s.e.URLs(), DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	key := consulKey(t)
	holder := func(kvs []byte) string {
		var v struct {
			Hostname string `json:"hostname"`
		}
		json.Unmarshal(kvs, &v)
		return v.Hostname
	}
	var rev int64
	waitUntil(t, failoverLimit, "the lease freed by etcd", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := client.Get(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Kvs) > 0 && holder(resp.Kvs[0].Value) == nonCandidate.Config.Name {
			t.Fatalf("the non-candidate %s holds the lease", nonCandidate.Config.Name)
		}
		rev = resp.Header.Revision
		return len(resp.Kvs) == 0
	})
	ctx, cancel := context.WithTimeout(context.Background(), leaseWatch)
	defer cancel()
	for resp := range client.Watch(ctx, key, clientv3.WithRev(rev+1)) {
		for _, ev := range resp.Events {
			if ev.Type == clientv3.EventTypePut {
				t.Fatalf("%q took the lease with no candidate running", holder(ev.Kv.Value))
			}
		}
	}
}
