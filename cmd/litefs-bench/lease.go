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

// runLeaseBench measures, with the Consul lease, how long the cluster has
// no writable primary: after the primary is killed (failover), and during
// a handoff asked for with POST /promote.
func runLeaseBench(h *harness, runs int, ttl, lockDelay time.Duration) {
	fmt.Printf("consul lease (ttl %s, lock-delay %s), %d runs each:\n", ttl, lockDelay, runs)
	agent := testutil.StartConsul(h)
	key := fmt.Sprintf("litefs/bench-%d", time.Now().UnixNano())
	var nodes []*testutil.Node
	for _, name := range []string{"a", "b"} {
		n := testutil.NewNode(h, testutil.NodeConfig{Name: name, Production: true})
		n.WriteConfig(h, n.ConsulLease(agent, key, true, ttl, lockDelay))
		n.Start(h)
		nodes = append(nodes, n)
	}
	primary := func() (*testutil.Node, *testutil.Node) {
		deadline := time.Now().Add(5*ttl + time.Minute)
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

	var failovers, handoffs []time.Duration
	for i := 0; i < runs; i++ {
		p, other := primary()
		other.WaitPos(h, "lease.db", p.Pos(h, "lease.db"), time.Minute)
		p.Kill(h)
		start := time.Now()
		waitWritable(h, other, 5*ttl+time.Minute)
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
	fmt.Printf("  failover, primary killed to first write on the new one: median %s (runs: %s)\n", median(failovers), fmtDurations(failovers))
	fmt.Printf("  handoff, promote asked to first write on the new primary: median %s (runs: %s)\n", median(handoffs), fmtDurations(handoffs))
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
