package main

import (
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/litefs-project/litefs"
	"github.com/litefs-project/litefs/internal/testutil"
)

// runFaultsBench measures how long a writer that follows .primary, as
// LiteFS applications do, cannot write after the primary is stopped or
// killed, then how long a primary cannot write after a replica that holds
// the HALT lock is killed.
func runFaultsBench(h *harness, runs int, ttl, lockDelay time.Duration) {
	bound := 2*ttl + lockDelay
	fmt.Printf("faults, consul lease (ttl %s, lock-delay %s), 2 candidates and a replica, %d runs each:\n", ttl, lockDelay, runs)
	agent := testutil.StartConsul(h)
	key := fmt.Sprintf("litefs/faults-%d", time.Now().UnixNano())
	byName := map[string]*testutil.Node{}
	var nodes []*testutil.Node
	for _, name := range []string{"a", "b", "c"} {
		n := testutil.NewNode(h, testutil.NodeConfig{Name: name, Production: true})
		n.WriteConfig(h, n.ConsulLease(agent, key, name != "c", ttl, lockDelay))
		n.Start(h)
		byName[name] = n
		nodes = append(nodes, n)
	}
	p := settle(h, nodes, 5*ttl+time.Minute)
	db := openDB(h, p.Path("faults.db"), "DELETE", "FULL")
	mustExec(h, db, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
	db.Close()

	acked := 0
	for _, graceful := range []bool{true, false} {
		target := bound
		if graceful {
			target = time.Second
		}
		var rec []time.Duration
		var notes []string
		late := 0
		for i := 0; i < runs; i++ {
			p := settle(h, nodes, 5*ttl+time.Minute)
			var survivors []*testutil.Node
			for _, n := range nodes {
				if n != p {
					survivors = append(survivors, n)
				}
			}
			// Alternate between the other candidate and the replica.
			w := startFollower(byName, survivors[i%2], "faults.db")
			w.wait(h, time.Now(), "", time.Minute)
			time.Sleep(500 * time.Millisecond) // the fault comes amid writes
			start := time.Now()
			exited := make(chan struct{})
			if graceful {
				// Stop waits for the exit; the writer is measured meanwhile.
				go func() { p.Stop(h); close(exited) }()
			} else {
				p.Kill(h)
				close(exited)
			}
			a := w.wait(h, start, p.Config.Name, bound+time.Minute)
			w.stop()
			rec = append(rec, a.at.Sub(start))
			if a.at.Sub(start) > target && a.before != nil {
				notes = append(notes, fmt.Sprintf("run %d, writer on %s, primary was %s: %s; the error before: %v",
					i+1, w.on.Config.Name, p.Config.Name, a.at.Sub(start).Round(time.Millisecond), a.before))
			}
			late += w.count(start, p.Config.Name)
			acked += len(w.oks)
			<-exited
			p.Start(h)
		}
		if graceful {
			fmt.Printf("  writer following .primary: recovery after SIGTERM of the primary: median %s (runs: %s), target < 1s (%s)\n",
				median(rec), fmtDurations(rec), verdict(median(rec) < target))
		} else {
			fmt.Printf("  writer following .primary: recovery after kill -9 of the primary: median %s (runs: %s), target within the lease bound (2 x ttl + lock-delay = %s) (%s)\n",
				median(rec), fmtDurations(rec), bound, verdict(median(rec) <= target))
		}
		for _, n := range notes {
			fmt.Printf("    %s\n", n)
		}
		if late > 0 {
			fmt.Printf("    (%d writes still succeeded on the old primary after the signal)\n", late)
		}
	}
	p = settle(h, nodes, 5*ttl+time.Minute)
	db = openDB(h, p.Path("faults.db"), "DELETE", "FULL")
	rows := testutil.Count(h, db, "t")
	db.Close()
	fmt.Printf("  rows the writer saw committed: %d, rows in the database afterwards: %d\n", acked, rows)
	for _, n := range nodes {
		n.Stop(h)
	}
	agent.Stop()

	runHaltKill(h, runs)
}

// runHaltKill measures, from a SIGKILL of a replica that holds the HALT
// lock, how long until the primary's own writer commits again.
func runHaltKill(h *harness, runs int) {
	cfg := func(name string) testutil.NodeConfig {
		return testutil.NodeConfig{Name: name, Production: true, Extra: "  halt-ttl: 5s\n"}
	}
	primary := testutil.StartNode(h, cfg("primary"))
	replica := testutil.StartReplica(h, primary, cfg("replica"))
	db := openDB(h, primary.Path("kill.db"), "WAL", "NORMAL")
	mustExec(h, db, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
	db.Close()
	self := map[string]*testutil.Node{"primary": primary}

	var rec []time.Duration
	for i := 0; i < runs; i++ {
		replica.WaitPos(h, "kill.db", primary.Pos(h, "kill.db"), time.Minute)
		f, err := litefs.Halt(replica.Path("kill.db"))
		if err != nil {
			h.Fatal(err)
		}
		w := startFollower(self, primary, "kill.db")
		held := time.Now()
		time.Sleep(300 * time.Millisecond)
		if n := w.count(held, "primary"); n > 0 {
			fmt.Printf("    odd: the primary committed %d rows while a replica held the HALT lock\n", n)
		}
		start := time.Now()
		replica.Kill(h)
		rec = append(rec, w.wait(h, start, "", time.Minute).at.Sub(start))
		w.stop()
		// The bench's descriptor outlives the daemon; closing it only now
		// keeps it out of the measurement.
		f.Close()
		replica.Start(h)
	}
	fmt.Printf("  primary's next write after kill -9 of a replica holding the HALT lock (halt-ttl 5s): median %s (runs: %s), target < 1s (%s)\n",
		median(rec), fmtDurations(rec), verdict(median(rec) < time.Second))
	replica.Stop(h)
	primary.Stop(h)
}

// settle waits until every running node agrees on one primary and has
// caught up with it, and returns the primary.
func settle(h *harness, nodes []*testutil.Node, limit time.Duration) *testutil.Node {
	deadline := time.Now().Add(limit)
	for {
		if p := agreedPrimary(nodes); p != nil {
			for _, n := range nodes {
				if n != p && n.Running() {
					if _, err := os.Stat(p.Path("faults.db")); err == nil {
						n.WaitPos(h, "faults.db", p.Pos(h, "faults.db"), time.Minute)
					}
				}
			}
			return p
		}
		if time.Now().After(deadline) {
			h.Fatalf("no agreed primary within %s", limit)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// agreedPrimary returns the primary if every running node agrees on it.
func agreedPrimary(nodes []*testutil.Node) *testutil.Node {
	c := http.Client{Timeout: time.Second}
	var p *testutil.Node
	named := map[string]bool{}
	for _, n := range nodes {
		if !n.Running() {
			continue
		}
		var info struct {
			IsPrimary bool   `json:"isPrimary"`
			Primary   string `json:"primary"`
		}
		resp, err := c.Get(n.URL() + "/info")
		if err != nil {
			return nil
		}
		err = json.NewDecoder(resp.Body).Decode(&info)
		resp.Body.Close()
		switch {
		case err != nil || info.IsPrimary && p != nil:
			return nil
		case info.IsPrimary:
			p = n
		default:
			named[info.Primary] = true
		}
	}
	if p == nil || len(named) > 1 || len(named) == 1 && !named[p.Config.Name] {
		return nil
	}
	return p
}

// follower writes one row per transaction as a LiteFS application does:
// it runs on node on, and sends each write to the node on's .primary names
// (on itself when there is no .primary), retrying errors after a pause.
type follower struct {
	nodes map[string]*testutil.Node
	on    *testutil.Node
	db    string
	quit  chan struct{}
	done  chan struct{}

	mu      sync.Mutex
	oks     []ack
	lastErr error // of the last attempt
}

type ack struct {
	at     time.Time
	node   string
	before error // the attempt's previous failure, if any
}

func startFollower(nodes map[string]*testutil.Node, on *testutil.Node, db string) *follower {
	w := &follower{nodes: nodes, on: on, db: db, quit: make(chan struct{}), done: make(chan struct{})}
	go w.run()
	return w
}

func (w *follower) run() {
	defer close(w.done)
	for {
		select {
		case <-w.quit:
			return
		default:
		}
		n, err := w.primary()
		if err == nil {
			err = writeOnce(n.Path(w.db))
		}
		w.mu.Lock()
		if err == nil {
			w.oks = append(w.oks, ack{time.Now(), n.Config.Name, w.lastErr})
		}
		w.lastErr = err
		w.mu.Unlock()
		if err != nil {
			time.Sleep(3 * time.Millisecond)
		}
	}
}

func (w *follower) primary() (*testutil.Node, error) {
	b, err := os.ReadFile(w.on.Path(".primary"))
	if errors.Is(err, os.ErrNotExist) {
		return w.on, nil
	} else if err != nil {
		return nil, err
	}
	n := w.nodes[strings.TrimSpace(string(b))]
	if n == nil {
		return nil, fmt.Errorf(".primary names an unknown node %q", b)
	}
	return n, nil
}

// writeOnce commits one row through a fresh connection: one that outlives
// a node's restart would keep failing. mode=rw keeps SQLite from creating
// a file in the mount point of a dead node.
func writeOnce(path string) error {
	db, err := sql.Open("sqlite3", "file:"+path+"?mode=rw&_busy_timeout=100")
	if err != nil {
		return err
	}
	defer db.Close()
	_, err = db.Exec("INSERT INTO t (v) VALUES ('follower row')")
	return err
}

// wait returns the first write after t on a node other than skip.
func (w *follower) wait(h *harness, t time.Time, skip string, limit time.Duration) ack {
	deadline := time.Now().Add(limit)
	for {
		w.mu.Lock()
		for _, a := range w.oks {
			if a.at.After(t) && a.node != skip {
				w.mu.Unlock()
				return a
			}
		}
		err := w.lastErr
		w.mu.Unlock()
		if time.Now().After(deadline) {
			h.Fatalf("writer on %s: no write within %s; last error: %v", w.on.Config.Name, limit, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// count returns how many writes after t went to node name.
func (w *follower) count(t time.Time, name string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, a := range w.oks {
		if a.at.After(t) && a.node == name {
			n++
		}
	}
	return n
}

func (w *follower) stop() {
	close(w.quit)
	<-w.done
}
