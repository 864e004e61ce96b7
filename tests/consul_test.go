package tests

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/litefs-project/litefs/internal/testutil"
)

// Lease timings for tests: short, so that failover takes seconds.
const (
	testTTL       = 2 * time.Second
	testLockDelay = 500 * time.Millisecond
	// failoverLimit is what the lease allows: Consul frees an unrenewed
	// session after up to twice its TTL, then holds the lock for the lock
	// delay; the rest is margin for a loaded machine.
	failoverLimit = 2*testTTL + testLockDelay + 10*time.Second
)

type nodeInfo struct {
	Hostname  string `json:"hostname"`
	IsPrimary bool   `json:"isPrimary"`
	Candidate bool   `json:"candidate"`
	Primary   string `json:"primary"`
}

func getInfo(n *testutil.Node) (nodeInfo, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, n.URL()+"/info", nil)
	if err != nil {
		return nodeInfo{}, err
	}
	resp, err := n.Client().Do(req)
	if err != nil {
		return nodeInfo{}, err
	}
	defer resp.Body.Close()
	var info nodeInfo
	err = json.NewDecoder(resp.Body).Decode(&info)
	return info, err
}

// consulKey is a key of the test's own.
func consulKey(t *testing.T) string {
	return "litefs/" + regexp.MustCompile(`[^A-Za-z0-9]+`).ReplaceAllString(t.Name(), "-")
}

// startLeaseNode starts a node on the lease of ls.
func startLeaseNode(t *testing.T, ls leaseStore, name string, candidate bool) *testutil.Node {
	t.Helper()
	n := testutil.NewNode(t, testutil.NodeConfig{Name: name})
	n.WriteConfig(t, ls.leaseConfig(n, consulKey(t), candidate))
	n.Start(t)
	return n
}

// waitPrimary waits until exactly one of nodes says it is the primary, and
// every other running node names it.
func waitPrimary(t *testing.T, nodes []*testutil.Node, timeout time.Duration) *testutil.Node {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var primaries []*testutil.Node
		agreed := true
		infos := map[*testutil.Node]nodeInfo{}
		for _, n := range nodes {
			if !n.Running() {
				continue
			}
			info, err := getInfo(n)
			if err != nil {
				agreed = false
				continue
			}
			infos[n] = info
			if info.IsPrimary {
				primaries = append(primaries, n)
			}
		}
		if len(primaries) > 1 {
			t.Fatalf("%d nodes say they are primary", len(primaries))
		}
		if len(primaries) == 1 && agreed {
			for n, info := range infos {
				if n != primaries[0] && info.Primary != primaries[0].Config.Name {
					agreed = false
				}
			}
			if agreed {
				return primaries[0]
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no single primary within %s: %+v", timeout, infos)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// tryWrite inserts one row through a fresh connection and reports the error.
func tryWrite(n *testutil.Node, db, value string) error {
	conn, err := sql.Open("sqlite3", "file:"+n.Path(db)+"?_busy_timeout=200")
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = conn.Exec("INSERT INTO t (v) VALUES (?)", value)
	return err
}

func createTable(t *testing.T, n *testutil.Node, db string) {
	t.Helper()
	conn := testutil.OpenDB(t, n.Path(db), "WAL")
	testutil.Exec(t, conn, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)")
	conn.Close()
}

func rowSet(t *testing.T, n *testutil.Node, db string) map[string]bool {
	t.Helper()
	conn := testutil.OpenDB(t, n.Path(db), "")
	defer conn.Close()
	return rowValues(t, conn)
}

// startLeaseCluster starts candidate a, waits until it is the primary,
// then starts candidate b and non-candidate c.
func startLeaseCluster(t *testing.T, ls leaseStore) (a, b, n3 *testutil.Node) {
	t.Helper()
	a = startLeaseNode(t, ls, "a", true)
	if waitPrimary(t, []*testutil.Node{a}, failoverLimit) != a {
		t.Fatal("a is not primary")
	}
	return a, startLeaseNode(t, ls, "b", true), startLeaseNode(t, ls, "c", false)
}

// startConsulCluster is startLeaseCluster on the Consul lease.
func startConsulCluster(t *testing.T, c *testutil.Consul) (a, b, n3 *testutil.Node) {
	t.Helper()
	return startLeaseCluster(t, consulStore{c})
}

// TestLeaseElectionAndFailover: three nodes elect one primary; its writes
// reach the others; when it is killed a caught-up candidate takes over and
// the cluster converges; the old primary rejoins as a replica; the
// non-candidate never becomes primary, even when it is the last one left.
func TestLeaseElectionAndFailover(t *testing.T) { forEachLease(t, testElectionAndFailover) }

func testElectionAndFailover(t *testing.T, ls leaseStore) {
	a := startLeaseNode(t, ls, "a", true)
	b := startLeaseNode(t, ls, "b", true)
	n3 := startLeaseNode(t, ls, "c", false)
	nodes := []*testutil.Node{a, b, n3}

	p := waitPrimary(t, nodes, failoverLimit)
	if p == n3 {
		t.Fatal("the non-candidate became primary")
	}
	createTable(t, p, "db")
	for i := 0; i < 50; i++ {
		if err := tryWrite(p, "db", fmt.Sprintf("before-%d", i)); err != nil {
			t.Fatalf("write on primary %s: %v", p.Config.Name, err)
		}
	}
	for _, n := range nodes {
		if n != p {
			checkReplica(t, p, n, "db", "")
			if err := tryWrite(n, "db", "on-replica"); err == nil {
				t.Fatalf("a write on replica %s succeeded", n.Config.Name)
			}
		}
	}

	// Connections an application opened while its node was a replica.
	pools := map[*testutil.Node]*sql.DB{}
	for _, n := range nodes {
		if n != p {
			pool := testutil.OpenDB(t, n.Path("db"), "WAL")
			testutil.Count(t, pool, "t")
			pools[n] = pool
		}
	}

	p.Kill(t)
	var next *testutil.Node
	deadline := time.Now().Add(failoverLimit)
	for next == nil {
		for _, n := range nodes {
			if n != p && tryWrite(n, "db", "after-failover") == nil {
				next = n
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no node writable within %s of killing the primary", failoverLimit)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if next == n3 {
		t.Fatal("the non-candidate became primary")
	}
	if got := waitPrimary(t, nodes, failoverLimit); got != next {
		t.Fatalf("primary is %s, but %s took the write", got.Config.Name, next.Config.Name)
	}
	if _, err := pools[next].Exec("INSERT INTO t (v) VALUES ('old-connection')"); err != nil {
		t.Fatalf("a connection opened while %s was a replica cannot write now that it is primary: %v", next.Config.Name, err)
	}
	checkReplica(t, next, n3, "db", "")

	// The old primary comes back as a replica of the new one.
	p.Start(t)
	if got := waitPrimary(t, nodes, failoverLimit); got != next {
		t.Fatalf("after the old primary returned, the primary is %s", got.Config.Name)
	}
	checkReplica(t, next, p, "db", "")
	if rows := rowSet(t, p, "db"); !rows["after-failover"] || !rows["old-connection"] || len(rows) != 52 {
		t.Fatalf("old primary has %d rows after rejoining, want 52", len(rows))
	}

	// With both candidates gone, the non-candidate stays a replica: once
	// the lease store has freed the lease and it can be taken, it stays
	// free.
	p.Kill(t)
	next.Kill(t)
	ls.watchFree(t, n3)
	if apiInfo(t, n3).IsPrimary {
		t.Fatal("the non-candidate took the lease")
	}
	if err := tryWrite(n3, "db", "orphan"); err == nil {
		t.Fatal("a write on the non-candidate succeeded with no primary")
	}
	if terms := metricNow(t, n3, "litefs_terms_total"); terms != 0 {
		t.Fatalf("the non-candidate held %v terms as primary", terms)
	}
}

// leaseWatch is how long a free lease is watched for a node taking it
// that must not: many times the nodes' reconnect-delay (200ms), the
// interval at which a node without a primary looks at the lease again.
const leaseWatch = time.Second

// watchLeaseFree waits until Consul has freed the lease of the test's key
// (its holder's session invalidated) and its lock delay is over, which a
// session of the test's own proves by taking the key for a moment. Then it
// watches the key for leaseWatch, failing if any session takes it. A
// session of nonCandidate holding the key fails the test at once.
func watchLeaseFree(t *testing.T, c *testutil.Consul, nonCandidate *testutil.Node) {
	t.Helper()
	var probe struct{ ID string }
	consulDo(t, c, "PUT", "/v1/session/create", `{"Name":"test-probe","LockDelay":"0s","Behavior":"delete"}`, &probe)
	destroy := "/v1/session/destroy/" + probe.ID
	t.Cleanup(func() { // if the test fails first; a no-op otherwise
		if req, err := http.NewRequest("PUT", c.URL()+destroy, nil); err == nil {
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
		}
	})
	key := "/v1/kv/" + consulKey(t)
	checkHolder := func(session string) {
		t.Helper()
		var infos []struct{ Name string }
		consulDo(t, c, "GET", "/v1/session/info/"+session, "", &infos)
		if len(infos) > 0 && infos[0].Name == "litefs-"+nonCandidate.Config.Name {
			t.Fatalf("the non-candidate %s holds the lease", nonCandidate.Config.Name)
		}
	}
	waitUntil(t, failoverLimit, "the lease freed by Consul and past its lock delay", func() bool {
		if session, _ := leaseHolder(t, c, 0, 0); session != "" {
			checkHolder(session) // the dead primary's, until Consul invalidates it
			return false
		}
		var ok bool
		consulDo(t, c, "PUT", key+"?acquire="+probe.ID, "", &ok)
		return ok // false within the lock delay
	})
	// Ending the probe session deletes the key, as the lease's own do, and
	// leaves no lock delay (it has none).
	consulDo(t, c, "PUT", destroy, "", nil)
	_, index := leaseHolder(t, c, 0, 0)
	for end := time.Now().Add(leaseWatch); ; {
		wait := time.Until(end)
		if wait < time.Millisecond {
			return
		}
		var session string
		session, index = leaseHolder(t, c, index, wait)
		if session != "" {
			checkHolder(session)
			t.Fatalf("session %s took the lease with no candidate running", session)
		}
	}
}

// leaseHolder reads the test's lease key from Consul: the session holding
// it ("" when free) and the index of the answer. With index > 0 it is a
// blocking query: it answers when the key changes, or after wait.
func leaseHolder(t *testing.T, c *testutil.Consul, index uint64, wait time.Duration) (string, uint64) {
	t.Helper()
	url := c.URL() + "/v1/kv/" + consulKey(t)
	if index > 0 {
		url += fmt.Sprintf("?index=%d&wait=%dms", index, wait.Milliseconds())
	}
	client := http.Client{Timeout: wait + 10*time.Second}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	next, err := strconv.ParseUint(resp.Header.Get("X-Consul-Index"), 10, 64)
	if err != nil {
		t.Fatalf("consul answered %s without an index: %v", url, err)
	}
	switch resp.StatusCode {
	case http.StatusNotFound:
		return "", next
	case http.StatusOK:
		var pairs []struct{ Session string }
		if err := json.NewDecoder(resp.Body).Decode(&pairs); err != nil {
			t.Fatal(err)
		}
		if len(pairs) == 0 {
			return "", next
		}
		return pairs[0].Session, next
	}
	t.Fatalf("GET %s: %s", url, resp.Status)
	return "", 0
}

// consulDo sends a request to Consul's HTTP API and decodes its JSON
// answer into out, unless out is nil.
func consulDo(t *testing.T, c *testutil.Consul, method, path, body string, out any) {
	t.Helper()
	req, err := http.NewRequest(method, c.URL()+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	client := http.Client{Timeout: 10 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("%s %s: %s %s", method, path, resp.Status, b)
	}
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
	}
}

// TestLeaseDivergedPrimaryRejoins: a transaction the primary committed
// but never replicated is discarded, and counted, when it rejoins a cluster
// that moved on without it.
func TestLeaseDivergedPrimaryRejoins(t *testing.T) { forEachLease(t, testDivergedPrimaryRejoins) }

func testDivergedPrimaryRejoins(t *testing.T, ls leaseStore) {
	a, b, n3 := startLeaseCluster(t, ls)
	createTable(t, a, "db")
	for i := 0; i < 20; i++ {
		if err := tryWrite(a, "db", fmt.Sprintf("shared-%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	checkReplica(t, a, b, "db", "")
	checkReplica(t, a, n3, "db", "")

	// The replicas go away; the primary commits alone, then dies.
	b.Stop(t)
	n3.Stop(t)
	sharedPos := a.Pos(t, "db")
	if err := tryWrite(a, "db", "lost"); err != nil {
		t.Fatal(err)
	}
	lostPos := a.Pos(t, "db")
	a.Kill(t)

	b.Start(t)
	n3.Start(t)
	if p := waitPrimary(t, []*testutil.Node{b, n3}, failoverLimit); p != b {
		t.Fatalf("primary is %s, want b", p.Config.Name)
	}
	if err := tryWrite(b, "db", "new-primary"); err != nil {
		t.Fatal(err)
	}

	a.Start(t)
	if p := waitPrimary(t, []*testutil.Node{a, b, n3}, failoverLimit); p != b {
		t.Fatalf("primary is %s after a returned, want b", p.Config.Name)
	}
	checkReplica(t, b, a, "db", "")
	checkReplica(t, b, n3, "db", "")
	rows := rowSet(t, a, "db")
	if rows["lost"] || !rows["new-primary"] || len(rows) != 21 {
		t.Fatalf("rejoined node has rows %v", rows)
	}
	// The snapshot that replaced a's database counted the transactions it
	// discarded: those after the shared position, up to the lost one.
	waitUntil(t, 10*time.Second, "a counting the snapshot it installed on rejoining", func() bool {
		return dbCounter(t, a, "litefs_replica_snapshots_applied_total", "db") >= 1
	})
	want := float64(lostPos.TXID - sharedPos.TXID)
	if got := dbCounter(t, a, "litefs_replica_discarded_transactions_total", "db"); got != want {
		t.Fatalf("the rejoined node counts %v discarded transactions, want %v (%s-%s)", got, want, sharedPos.TXID+1, lostPos.TXID)
	}
}

// TestLeaseHandoffUnderLoad: `litefs run -promote` moves the lease to a
// candidate while a writer keeps writing to the primary; every write the
// writer saw succeed is on the new primary. `litefs demote` moves it back.
func TestLeaseHandoffUnderLoad(t *testing.T) { forEachLease(t, testHandoffUnderLoad) }

func testHandoffUnderLoad(t *testing.T, ls leaseStore) {
	a, b, n3 := startLeaseCluster(t, ls)
	nodes := []*testutil.Node{a, b, n3}
	createTable(t, a, "db")
	checkReplica(t, a, b, "db", "")

	handoff := func(from, to *testutil.Node, args ...string) {
		var (
			stop  atomic.Bool
			wg    sync.WaitGroup
			mu    sync.Mutex
			acked []string
		)
		var attempts atomic.Int64 // writes tried and answered, either way
		wg.Add(1)
		defer func() { // on every way out, failures included
			stop.Store(true)
			wg.Wait()
		}()
		go func() {
			defer wg.Done()
			conn, err := sql.Open("sqlite3", "file:"+from.Path("db")+"?_busy_timeout=5000")
			if err != nil {
				t.Error(err)
				return
			}
			defer conn.Close()
			conn.SetMaxOpenConns(1)
			for i := 0; !stop.Load(); i++ {
				v := fmt.Sprintf("%s-%d", from.Config.Name, i)
				if _, err := conn.Exec("INSERT INTO t (v) VALUES (?)", v); err == nil {
					mu.Lock()
					acked = append(acked, v)
					mu.Unlock()
				}
				attempts.Add(1)
			}
		}()
		// The handoff starts with the writer under way.
		waitUntil(t, syncTimeout, "the writer's first writes on "+from.Config.Name, func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(acked) >= 20
		})
		out, code := runLiteFS(t, args...)
		if code != 0 {
			t.Fatalf("litefs %s: exit %d\n%s", strings.Join(args, " "), code, out)
		}
		// The writer keeps trying until a write of its own began and
		// ended after the handoff.
		tried := attempts.Load()
		waitUntil(t, syncTimeout, "a write tried on "+from.Config.Name+" after the handoff", func() bool {
			return attempts.Load() >= tried+2
		})
		stop.Store(true)
		wg.Wait()
		if p := waitPrimary(t, nodes, failoverLimit); p != to {
			t.Fatalf("after handoff the primary is %s, want %s", p.Config.Name, to.Config.Name)
		}
		if err := tryWrite(from, "db", "after-handoff-"+from.Config.Name); err == nil {
			t.Fatalf("%s still accepts writes after handing off", from.Config.Name)
		}
		rows := rowSet(t, to, "db")
		mu.Lock()
		defer mu.Unlock()
		if len(acked) == 0 {
			t.Fatal("the writer committed nothing before the handoff")
		}
		for _, v := range acked {
			if !rows[v] {
				t.Fatalf("write %s, acknowledged by %s, is missing on %s", v, from.Config.Name, to.Config.Name)
			}
		}
		t.Logf("%d writes acknowledged on %s before the handoff, all present on %s", len(acked), from.Config.Name, to.Config.Name)
		for _, n := range nodes {
			if n != to {
				checkReplica(t, to, n, "db", "")
			}
		}
	}
	handoff(a, b, "run", "-url", b.URL(), "-promote")
	handoff(b, a, "demote", "-url", b.URL())
}

// TestLeaseOutage: with the lease store stopped past the TTL the primary steps
// down; while writes are tried on every node throughout, no two nodes
// accept one in the same round, and every accepted write survives.
func TestLeaseOutage(t *testing.T) { forEachLease(t, testOutage) }

func testOutage(t *testing.T, ls leaseStore) {
	a := startLeaseNode(t, ls, "a", true)
	b := startLeaseNode(t, ls, "b", true)
	n3 := startLeaseNode(t, ls, "c", false)
	nodes := []*testutil.Node{a, b, n3}
	p := waitPrimary(t, nodes, failoverLimit)
	createTable(t, p, "db")
	for _, n := range nodes {
		if n != p {
			checkReplica(t, p, n, "db", "")
		}
	}

	var (
		stop     atomic.Bool
		wg       sync.WaitGroup
		mu       sync.Mutex
		accepted []string
		zeroSeen atomic.Bool
		rounds   atomic.Int64
		probeErr error
	)
	wg.Add(1)
	defer func() { // on every way out, failures included
		stop.Store(true)
		wg.Wait()
	}()
	go func() {
		defer wg.Done()
		for round := 0; !stop.Load(); round++ {
			var ok []string
			for _, n := range nodes {
				v := fmt.Sprintf("r%d-%s", round, n.Config.Name)
				if tryWrite(n, "db", v) == nil {
					ok = append(ok, v)
				}
			}
			mu.Lock()
			accepted = append(accepted, ok...)
			if len(ok) > 1 && probeErr == nil {
				probeErr = fmt.Errorf("round %d: %d nodes accepted a write: %v", round, len(ok), ok)
			}
			mu.Unlock()
			if len(ok) == 0 {
				zeroSeen.Store(true)
			}
			rounds.Add(1)
			time.Sleep(10 * time.Millisecond)
		}
	}()

	// The outage begins once the probe has seen the primary accept writes.
	waitUntil(t, syncTimeout, "the probe's first accepted writes", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(accepted) >= 5
	})
	ls.stop()
	// The primary must step down once its TTL runs out without renewal.
	waitUntil(t, testTTL+5*time.Second, "the primary stepping down with the lease store gone past the TTL", func() bool {
		info, err := getInfo(p)
		return err == nil && !info.IsPrimary
	})
	// The probe goes through rounds with the primary stepped down.
	waitRounds := func() {
		t.Helper()
		from := rounds.Load()
		waitUntil(t, syncTimeout, "two more probe rounds", func() bool { return rounds.Load() >= from+2 })
	}
	waitRounds()
	for _, n := range nodes {
		if err := tryWrite(n, "db", "during-outage-"+n.Config.Name); err == nil {
			t.Fatalf("%s accepts writes with the lease store down past the TTL", n.Config.Name)
		}
	}

	ls.start()
	np := waitPrimary(t, nodes, failoverLimit)
	deadline := time.Now().Add(failoverLimit)
	for tryWrite(np, "db", "after-outage") != nil {
		if time.Now().After(deadline) {
			t.Fatal("the new primary does not accept writes")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The probe goes on until the new primary has accepted its writes too.
	mu.Lock()
	before := len(accepted)
	mu.Unlock()
	waitUntil(t, syncTimeout, "the probe's writes accepted after the outage", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(accepted) > before
	})
	waitRounds()
	stop.Store(true)
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if probeErr != nil {
		t.Fatal(probeErr)
	}
	if !zeroSeen.Load() {
		t.Fatal("the probe never saw the cluster without a writable node")
	}
	for _, n := range nodes {
		if n != np {
			checkReplica(t, np, n, "db", "")
		}
	}
	rows := rowSet(t, np, "db")
	for _, v := range accepted {
		if !rows[v] {
			t.Fatalf("accepted write %s is missing after the outage", v)
		}
	}
	t.Logf("%d probe rounds, %d writes accepted, all kept", rounds.Load(), len(accepted))
}

// TestLeaseClusterIDMismatch: a node whose data directory belongs to
// another cluster refuses to join.
func TestLeaseClusterIDMismatch(t *testing.T) { forEachLease(t, testClusterIDMismatch) }

func testClusterIDMismatch(t *testing.T, ls leaseStore) {
	a := startLeaseNode(t, ls, "a", true)
	waitPrimary(t, []*testutil.Node{a}, failoverLimit)
	id, err := os.ReadFile(filepath.Join(a.DataDir, "clusterid"))
	if err != nil {
		t.Fatalf("the node kept no cluster ID: %v", err)
	}

	b := testutil.NewNode(t, testutil.NodeConfig{Name: "b"})
	b.WriteConfig(t, ls.leaseConfig(b, consulKey(t), true))
	if err := os.MkdirAll(b.DataDir, 0o755); err != nil {
		t.Fatal(err)
	}
	other := "LFSC0123456789ABCDEF"
	if err := os.WriteFile(filepath.Join(b.DataDir, "clusterid"), []byte(other+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(testutil.Binary(t), "mount", "-config", b.CfgPath)
	done := make(chan struct{})
	var out []byte
	go func() {
		out, _ = cmd.CombinedOutput()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatal("a node with another cluster's data did not exit")
	}
	if cmd.ProcessState.ExitCode() == 0 {
		t.Fatalf("a node with another cluster's data exited 0:\n%s", out)
	}
	msg := string(out)
	if !strings.Contains(msg, "cluster ID mismatch") || !strings.Contains(msg, other) || !strings.Contains(msg, strings.TrimSpace(string(id))) {
		t.Fatalf("error does not explain the mismatch:\n%s", msg)
	}
}
