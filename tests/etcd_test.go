package tests

import (
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/litefs-project/litefs/internal/testutil"
)

// Faults of etcd itself, beyond what the lease tests run against both
// stores: etcd restarted under a primary, and the member a primary talks
// to partitioned away.

// writeProbe tries a write on every node, round after round, and records
// what was accepted, failing if two nodes accept one in the same round.
type writeProbe struct {
	nodes []*testutil.Node
	stop  atomic.Bool
	wg    sync.WaitGroup

	mu       sync.Mutex
	accepted []string
	rounds   int
	empty    int // rounds in which no node accepted a write
	err      error
}

func startProbe(nodes []*testutil.Node) *writeProbe {
	p := &writeProbe{nodes: nodes}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for round := 0; !p.stop.Load(); round++ {
			var ok []string
			for _, n := range nodes {
				if !n.Running() {
					continue
				}
				v := fmt.Sprintf("r%d-%s", round, n.Config.Name)
				if tryWrite(n, "db", v) == nil {
					ok = append(ok, v)
				}
			}
			p.mu.Lock()
			p.accepted = append(p.accepted, ok...)
			p.rounds++
			if len(ok) == 0 {
				p.empty++
			}
			if len(ok) > 1 && p.err == nil {
				p.err = fmt.Errorf("round %d: %d nodes accepted a write: %v", round, len(ok), ok)
			}
			p.mu.Unlock()
			time.Sleep(10 * time.Millisecond)
		}
	}()
	return p
}

func (p *writeProbe) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.accepted)
}

// waitMore waits for n more accepted writes.
func (p *writeProbe) waitMore(t *testing.T, n int) {
	t.Helper()
	want := p.count() + n
	waitUntil(t, failoverLimit, fmt.Sprintf("%d writes accepted by the probe", want), func() bool { return p.count() >= want })
}

// finish stops the probe and checks that every write it saw accepted is
// on the primary and no round had two writable nodes.
func (p *writeProbe) finish(t *testing.T, primary *testutil.Node) {
	t.Helper()
	p.stop.Store(true)
	p.wg.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		t.Fatal(p.err)
	}
	rows := rowSet(t, primary, "db")
	for _, v := range p.accepted {
		if !rows[v] {
			t.Fatalf("accepted write %s is missing on the primary %s", v, primary.Config.Name)
		}
	}
	t.Logf("%d probe rounds (%d without a writable node), %d writes accepted, all kept", p.rounds, p.empty, len(p.accepted))
}

// TestEtcdRestartKeepsPrimary: etcd restarted, with its data, for less
// than the lease's TTL while the primary holds it: the primary keeps its
// term, writes keep being accepted by it alone, none is lost.
func TestEtcdRestartKeepsPrimary(t *testing.T) {
	e := testutil.StartEtcd(t, 1)
	start := func(name string, candidate bool) *testutil.Node {
		n := testutil.NewNode(t, testutil.NodeConfig{Name: name})
		n.WriteConfig(t, n.EtcdLease(e.URLs(), consulKey(t), candidate, 5*time.Second))
		n.Start(t)
		return n
	}
	a := start("a", true)
	if waitPrimary(t, []*testutil.Node{a}, failoverLimit) != a {
		t.Fatal("a is not primary")
	}
	b, c := start("b", true), start("c", false)
	nodes := []*testutil.Node{a, b, c}
	createTable(t, a, "db")
	checkReplica(t, a, b, "db", "")
	epoch := apiInfo(t, a).Epoch

	probe := startProbe(nodes)
	probe.waitMore(t, 10)
	renewals := metricNow(t, a, "litefs_lease_renewals_total")
	e.Stop()
	e.Start()
	// A renewal went through the restarted etcd, and the primary wrote on.
	waitMetric(t, a, 10*time.Second, atLeast(renewals+1), "litefs_lease_renewals_total")
	probe.waitMore(t, 10)
	if p := waitPrimary(t, nodes, failoverLimit); p != a {
		t.Fatalf("primary after the restart is %s", p.Config.Name)
	}
	if got := apiInfo(t, a).Epoch; got != epoch {
		t.Fatalf("the primary's epoch went from %d to %d across a restart of etcd", epoch, got)
	}
	if terms := metricNow(t, a, "litefs_terms_total"); terms != 1 {
		t.Fatalf("the primary held %v terms; a restart of etcd within the TTL should not end its term", terms)
	}
	probe.finish(t, a)
	for _, n := range []*testutil.Node{b, c} {
		checkReplica(t, a, n, "db", "")
	}
}

// TestEtcdMemberPartitioned: the etcd member the primary talks to is cut
// off (stopped) while the others keep quorum. The primary stops accepting
// writes before its lease expires; a candidate on the other members takes
// over in a new term; never are two nodes writable, and no accepted write
// is lost. The old primary rejoins when the member comes back.
func TestEtcdMemberPartitioned(t *testing.T) {
	e := testutil.StartEtcd(t, 3)
	start := func(name string, candidate bool, urls []string) *testutil.Node {
		n := testutil.NewNode(t, testutil.NodeConfig{Name: name})
		n.WriteConfig(t, n.EtcdLease(urls, consulKey(t), candidate, testTTL))
		n.Start(t)
		return n
	}
	a := start("a", true, e.URLs()[:1])
	if waitPrimary(t, []*testutil.Node{a}, failoverLimit) != a {
		t.Fatal("a is not primary")
	}
	b := start("b", true, e.URLs()[1:])
	c := start("c", false, e.URLs()[1:])
	nodes := []*testutil.Node{a, b, c}
	createTable(t, a, "db")
	checkReplica(t, a, b, "db", "")
	oldEpoch := apiInfo(t, a).Epoch

	probe := startProbe(nodes)
	probe.waitMore(t, 10)
	if err := e.Members[0].Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	defer func() {
		if !resumed {
			e.Members[0].Signal(syscall.SIGCONT)
		}
	}()
	if p := waitPrimary(t, []*testutil.Node{b, c}, failoverLimit); p != b {
		t.Fatalf("primary on the majority side is %s", p.Config.Name)
	}
	if got := apiInfo(t, b).Epoch; got <= oldEpoch {
		t.Fatalf("the new term's epoch %d is not above the old %d", got, oldEpoch)
	}
	if apiInfo(t, a).IsPrimary {
		t.Fatal("the cut-off primary still says it is primary")
	}
	probe.waitMore(t, 10)

	e.Members[0].Signal(syscall.SIGCONT)
	resumed = true
	if p := waitPrimary(t, nodes, failoverLimit); p != b {
		t.Fatalf("primary after the member came back is %s", p.Config.Name)
	}
	probe.waitMore(t, 5)
	probe.finish(t, b)
	for _, n := range []*testutil.Node{a, c} {
		checkReplica(t, b, n, "db", "")
	}
}
