package main

import (
	"bytes"
	"database/sql"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/litefs-project/litefs/internal/testutil"
)

// leaseSetup is one lease configuration the lease benchmark measures.
type leaseSetup struct {
	store     string // "consul" or "etcd"
	ttl       time.Duration
	lockDelay time.Duration // Consul only
}

// bound is how long the lease allows a failover to take: Consul frees an
// unrenewed session after up to twice its TTL, then holds the lock for the
// lock delay; etcd revokes a lease once its TTL has passed, checking about
// every half second.
func (s leaseSetup) bound() time.Duration {
	if s.store == "etcd" {
		return s.ttl + time.Second
	}
	return 2*s.ttl + s.lockDelay
}

// runLeaseBench measures, for each lease configuration, how long the
// cluster has no writable primary: after the primary is killed (failover),
// and during a handoff asked for with POST /promote.
func runLeaseBench(h *harness, runs int, consulTTL, consulLockDelay time.Duration) {
	setups := []leaseSetup{
		{store: "consul", ttl: consulTTL, lockDelay: consulLockDelay},
		{store: "consul", ttl: 5 * time.Second, lockDelay: consulLockDelay},
		{store: "etcd", ttl: 2 * time.Second},
		{store: "etcd", ttl: 5 * time.Second},
	}
	fmt.Printf("leases, %d runs each (medians; targets: etcd failover < ttl + 1s, handoff < 100ms):\n", runs)
	for _, s := range setups {
		failovers, handoffs := runLeaseSetup(h, runs, s)
		name := fmt.Sprintf("%s ttl %s", s.store, s.ttl)
		if s.store == "consul" {
			name += fmt.Sprintf(" lock-delay %s", s.lockDelay)
		}
		fo, ho := median(failovers), median(handoffs)
		foVerdict := fmt.Sprintf("bound %s", s.bound())
		if s.store == "etcd" {
			foVerdict = fmt.Sprintf("target < %s: %s", s.bound(), verdict(fo < s.bound()))
		}
		fmt.Printf("  %-32s failover %8s (runs: %s; %s)\n", name, fo, fmtDurations(failovers), foVerdict)
		fmt.Printf("  %-32s handoff  %8s (runs: %s; target < 100ms: %s)\n", "", ho, fmtDurations(handoffs), verdict(ho < 100*time.Millisecond))
	}
}

// runLeaseSetup runs two candidates on one lease configuration and times
// failovers and handoffs.
func runLeaseSetup(h *harness, runs int, s leaseSetup) (failovers, handoffs []time.Duration) {
	key := fmt.Sprintf("litefs/bench-%d", time.Now().UnixNano())
	var leaseConfig func(n *testutil.Node) string
	var stop func()
	switch s.store {
	case "consul":
		agent := testutil.StartConsul(h)
		leaseConfig = func(n *testutil.Node) string { return n.ConsulLease(agent, key, true, s.ttl, s.lockDelay) }
		stop = agent.Stop
	case "etcd":
		e := testutil.StartEtcd(h, 1)
		leaseConfig = func(n *testutil.Node) string { return n.EtcdLease(e.URLs(), key, true, s.ttl) }
		stop = e.Stop
	}
	var nodes []*testutil.Node
	for _, name := range []string{"a", "b"} {
		n := testutil.NewNode(h, testutil.NodeConfig{Name: name, Production: true})
		n.WriteConfig(h, leaseConfig(n))
		n.Start(h)
		nodes = append(nodes, n)
	}
	defer func() {
		for _, n := range nodes {
			n.Stop(h)
		}
		stop()
	}()
	primary := func() (*testutil.Node, *testutil.Node) {
		deadline := time.Now().Add(5*s.ttl + time.Minute)
		for time.Now().Before(deadline) {
			for i, n := range nodes {
				if n.Running() && isPrimary(n) {
					return n, nodes[1-i]
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
		h.Fatal("no primary")
		return nil, nil
	}
	p, _ := primary()
	conn := openDB(h, p.Path("lease.db"), "WAL", "NORMAL")
	mustExec(h, conn, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
	conn.Close()

	for i := 0; i < runs; i++ {
		p, other := primary()
		other.WaitPos(h, "lease.db", p.Pos(h, "lease.db"), time.Minute)
		p.Kill(h)
		start := time.Now()
		waitWritable(h, other, 5*s.ttl+time.Minute)
		failovers = append(failovers, time.Since(start))
		p.Start(h)
		p.WaitPos(h, "lease.db", other.Pos(h, "lease.db"), time.Minute)
	}
	for i := 0; i < runs; i++ {
		p, other := primary()
		other.WaitPos(h, "lease.db", p.Pos(h, "lease.db"), time.Minute)
		start := time.Now()
		resp, err := http.Post(other.URL()+"/promote", "application/json", bytes.NewReader([]byte("{}")))
		if err != nil {
			h.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			h.Fatalf("promote: %s", resp.Status)
		}
		waitWritable(h, other, time.Minute)
		handoffs = append(handoffs, time.Since(start))
	}
	return failovers, handoffs
}

func isPrimary(n *testutil.Node) bool {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get(n.URL() + "/info")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var info struct {
		IsPrimary bool `json:"isPrimary"`
	}
	return json.NewDecoder(resp.Body).Decode(&info) == nil && info.IsPrimary
}

// waitWritable retries a one-row write on n until it succeeds.
func waitWritable(h *harness, n *testutil.Node, limit time.Duration) {
	db, err := sql.Open("sqlite3", "file:"+n.Path("lease.db")+"?_busy_timeout=100")
	if err != nil {
		h.Fatal(err)
	}
	defer db.Close()
	deadline := time.Now().Add(limit)
	for {
		if _, err := db.Exec("INSERT INTO t (v) VALUES ('x')"); err == nil {
			return
		}
		if time.Now().After(deadline) {
			h.Fatalf("%s not writable within %s", n.Config.Name, limit)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2].Round(time.Millisecond)
}

func fmtDurations(d []time.Duration) string {
	var b bytes.Buffer
	for i, x := range d {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(x.Round(time.Millisecond).String())
	}
	return b.String()
}
