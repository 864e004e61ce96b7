package tests

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/litefs-project/litefs"
	lhttp "github.com/litefs-project/litefs/http"
	"github.com/litefs-project/litefs/internal/testutil"
	"github.com/litefs-project/litefs/lease"
)

// Terms across nodes: what a primary grants ends with its term, and
// nothing acknowledged under the HALT lock is lost when the primary
// changes.

// haltAck is a row a HALT writer saw committed, and the epoch its node
// followed once it held the lock.
type haltAck struct {
	v     string
	epoch uint64
	at    time.Time
}

// haltWriter inserts rows on a replica under the HALT lock, perLock
// transactions each time it takes the lock, until stopped.
type haltWriter struct {
	node *testutil.Node
	stop atomic.Bool
	wg   sync.WaitGroup

	mu    sync.Mutex
	acked []haltAck
	fails int
}

func startHaltWriter(t *testing.T, n *testutil.Node, db string, perLock int) *haltWriter {
	t.Helper()
	w := &haltWriter{node: n}
	conn, err := sql.Open("sqlite3", "file:"+n.Path(db)+"?_busy_timeout=5000&_journal_mode=WAL")
	if err != nil {
		t.Fatal(err)
	}
	conn.SetMaxOpenConns(1)
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		defer conn.Close()
		for i := 0; !w.stop.Load(); {
			err := litefs.WithHalt(n.Path(db), func() error {
				// The lock is granted in the term the node follows now; a
				// later change of term makes the commits below fail.
				info, err := lhttpInfo(n)
				if err != nil {
					return err
				}
				for j := 0; j < perLock && !w.stop.Load(); j++ {
					v := fmt.Sprintf("%s-halt-%d", n.Config.Name, i)
					i++
					if _, err := conn.Exec("INSERT INTO t (v) VALUES (?)", v); err != nil {
						return err
					}
					w.mu.Lock()
					w.acked = append(w.acked, haltAck{v: v, epoch: info.Epoch, at: time.Now()})
					w.mu.Unlock()
				}
				return nil
			})
			if err != nil {
				w.mu.Lock()
				w.fails++
				w.mu.Unlock()
				time.Sleep(20 * time.Millisecond) // no primary yet: do not spin
			}
		}
	}()
	return w
}

func (w *haltWriter) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acked)
}

// waitMore waits until the writer has n more acknowledged rows.
func (w *haltWriter) waitMore(t *testing.T, n int) {
	t.Helper()
	want := w.count() + n
	waitUntil(t, failoverLimit, fmt.Sprintf("%d rows acknowledged under HALT on %s", want, w.node.Config.Name), func() bool { return w.count() >= want })
}

func (w *haltWriter) finish() []haltAck {
	w.stop.Store(true)
	w.wg.Wait()
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]haltAck(nil), w.acked...)
}

// lhttpInfo is apiInfo for a goroutine that must not fail the test.
func lhttpInfo(n *testutil.Node) (lhttp.Info, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return n.API().Info(ctx, n.URL())
}

// command is a started process; done is closed once it exited, with err.
type command struct {
	done chan struct{}
	err  error
}

// startedCommand waits for cmd in the background; the test's cleanup kills
// it if it is still running.
func startedCommand(t *testing.T, cmd *exec.Cmd) *command {
	c := &command{done: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-c.done
	})
	return c
}

// requireAcked fails unless every acknowledged row is on every node.
func requireAcked(t *testing.T, acked []haltAck, nodes ...*testutil.Node) {
	t.Helper()
	for _, n := range nodes {
		rows := rowSet(t, n, "db")
		for _, a := range acked {
			if !rows[a.v] {
				t.Fatalf("row %s, acknowledged under HALT in epoch %d, is missing on %s", a.v, a.epoch, n.Config.Name)
			}
		}
	}
}

// TestHaltWriterDuringHandoff: a replica writes under the HALT lock
// continuously while the primary hands the lease over (litefs demote),
// there and back. The handoff waits for the holder to let the lock go;
// every row it saw committed is on every node.
func TestHaltWriterDuringHandoff(t *testing.T) {
	c := testutil.StartConsul(t)
	a, b, n3 := startConsulCluster(t, c)
	nodes := []*testutil.Node{a, b, n3}
	createTable(t, a, "db")
	for _, n := range []*testutil.Node{b, n3} {
		checkReplica(t, a, n, "db", "")
	}
	// Each lock is held for a few hundred commits, so that every handoff
	// is asked for while the replica holds the lock and keeps committing.
	w := startHaltWriter(t, n3, "db", 300)
	w.waitMore(t, 20)
	for _, hop := range []struct{ from, to *testutil.Node }{{a, b}, {b, a}} {
		before := apiInfo(t, hop.from).Epoch
		if out, code := runLiteFS(t, "demote", "-url", hop.from.URL()); code != 0 {
			w.finish()
			t.Fatalf("demote %s: exit %d\n%s", hop.from.Config.Name, code, out)
		}
		if p := waitPrimary(t, nodes, failoverLimit); p != hop.to {
			w.finish()
			t.Fatalf("primary after demote is %s, want %s", p.Config.Name, hop.to.Config.Name)
		}
		if after := apiInfo(t, hop.to).Epoch; after <= before {
			t.Fatalf("epoch went from %d to %d across a handoff", before, after)
		}
		w.waitMore(t, 20) // through the new primary
	}
	acked := w.finish()
	p := waitPrimary(t, nodes, failoverLimit)
	for _, n := range nodes {
		if n != p {
			checkReplica(t, p, n, "db", "")
		}
	}
	requireAcked(t, acked, nodes...)
	t.Logf("%d rows acknowledged under HALT across two handoffs (%d attempts failed), all on every node", len(acked), w.fails)
}

// TestHaltWriterDuringPrimaryKill: a replica writes under the HALT lock
// while the primary is killed. The cluster converges; every row
// acknowledged in the new term is on every node; no row is acknowledged
// while there is no primary.
func TestHaltWriterDuringPrimaryKill(t *testing.T) {
	c := testutil.StartConsul(t)
	a, b, n3 := startConsulCluster(t, c)
	createTable(t, a, "db")
	for _, n := range []*testutil.Node{b, n3} {
		checkReplica(t, a, n, "db", "")
	}
	oldEpoch := apiInfo(t, a).Epoch
	w := startHaltWriter(t, n3, "db", 10)
	w.waitMore(t, 20)
	a.Kill(t)
	killed := time.Now()
	if p := waitPrimary(t, []*testutil.Node{b, n3}, failoverLimit); p != b {
		t.Fatalf("primary after the kill is %s", p.Config.Name)
	}
	elected := time.Now()
	newEpoch := apiInfo(t, b).Epoch
	if newEpoch <= oldEpoch {
		t.Fatalf("new term's epoch %d is not above the old %d", newEpoch, oldEpoch)
	}
	w.waitMore(t, 20)
	acked := w.finish()

	// The old primary comes back as a replica of the new one.
	a.Start(t)
	nodes := []*testutil.Node{a, b, n3}
	if p := waitPrimary(t, nodes, failoverLimit); p != b {
		t.Fatalf("primary after a rejoined is %s", p.Config.Name)
	}
	for _, n := range []*testutil.Node{a, n3} {
		checkReplica(t, b, n, "db", "")
	}
	var newTerm, lost []haltAck
	rows := rowSet(t, b, "db")
	for _, ack := range acked {
		switch {
		case ack.epoch == newEpoch:
			newTerm = append(newTerm, ack)
		case !rows[ack.v]:
			lost = append(lost, ack)
		}
		// A dead primary cannot acknowledge anything, and nobody does on
		// its behalf: an answer still in flight when it died arrives
		// within milliseconds, not after the election.
		if ack.epoch != newEpoch && ack.at.After(killed.Add(time.Second)) && ack.at.After(elected) {
			t.Fatalf("row %s was acknowledged in the dead primary's term %d, %s after it died", ack.v, ack.epoch, ack.at.Sub(killed))
		}
	}
	if len(newTerm) == 0 {
		t.Fatal("no row was acknowledged in the new term")
	}
	requireAcked(t, newTerm, nodes...)
	t.Logf("%d rows acknowledged under HALT; %d in the new term, all on every node; %d acknowledged by the killed primary were not replicated before it died (asynchronous replication)",
		len(acked), len(newTerm), len(lost))
}

// TestRestartedPrimaryRefusesOldTerm: a primary killed and restarted while
// the lease still names it (its Consul session is alive) holds no term: it
// refuses HALT requests, commits and streams for its old epoch, and the
// replica's HALT writer gets nothing acknowledged until the new primary
// is elected.
func TestRestartedPrimaryRefusesOldTerm(t *testing.T) {
	c := testutil.StartConsul(t)
	// A TTL long enough that the old session outlives the restart: Consul
	// keeps it at least a TTL after its last renewal.
	const ttl = 4 * time.Second
	start := func(name string, candidate bool) *testutil.Node {
		n := testutil.NewNode(t, testutil.NodeConfig{Name: name})
		n.WriteConfig(t, n.ConsulLease(c, consulKey(t), candidate, ttl, testLockDelay))
		n.Start(t)
		return n
	}
	a := start("a", true)
	if waitPrimary(t, []*testutil.Node{a}, failoverLimit) != a {
		t.Fatal("a is not primary")
	}
	b, n3 := start("b", true), start("c", false)
	createTable(t, a, "db")
	checkReplica(t, a, n3, "db", "")
	oldEpoch := apiInfo(t, a).Epoch
	w := startHaltWriter(t, n3, "db", 10)
	w.waitMore(t, 10)

	a.Kill(t)
	a.Start(t)
	probe, err := lease.NewConsul(lease.ConsulOptions{URL: c.URL(), Key: consulKey(t), Hostname: "probe"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	info, err := probe.PrimaryInfo(ctx)
	cancel()
	if err != nil || info.Hostname != "a" || info.Epoch != oldEpoch {
		t.Fatalf("the lease does not name a's old session right after the restart (lease: %+v, %v)", info, err)
	}
	if got := apiInfo(t, a); got.IsPrimary {
		t.Fatal("the restarted primary claims the lease of its old session")
	}
	const id = "0123456789abcdef0123456789abcdef" // well formed, never granted
	for _, req := range []struct{ path, body string }{
		{"/halt", fmt.Sprintf(`{"name":"db","nodeID":"x","epoch":%d}`, oldEpoch)},
		{fmt.Sprintf("/halt/commit?name=db&epoch=%d", oldEpoch), "ltx"},
		{"/halt/keepalive", fmt.Sprintf(`{"name":"db","id":%q,"epoch":%d}`, id, oldEpoch)},
		{"/stream", fmt.Sprintf(`{"nodeID":"x","positions":{},"epoch":%d}`, oldEpoch)},
		{fmt.Sprintf("/import?name=db&epoch=%d", oldEpoch), "SQLite format 3\x00"},
		{"/handoff", fmt.Sprintf(`{"hostname":"b","epoch":%d}`, oldEpoch)},
	} {
		hreq, err := http.NewRequest(http.MethodPost, a.URL()+req.path, bytes.NewReader([]byte(req.body)))
		if err != nil {
			t.Fatal(err)
		}
		hreq.Header.Set("Content-Type", "application/json")
		hreq.Header.Set(lhttp.HaltIDHeader, id)
		resp, err := http.DefaultClient.Do(hreq)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("%s on the restarted old primary: %s, want 503", req.path, resp.Status)
		}
	}

	// Either candidate may win once the old session is gone, a too (its
	// restarted process, in a new term).
	p := waitPrimary(t, []*testutil.Node{a, b, n3}, failoverLimit)
	w.waitMore(t, 10)
	acked := w.finish()
	newEpoch := apiInfo(t, p).Epoch
	if newEpoch <= oldEpoch {
		t.Fatalf("the new term's epoch %d is not above the old %d", newEpoch, oldEpoch)
	}
	var newTerm []haltAck
	for _, ack := range acked {
		if ack.epoch == newEpoch {
			newTerm = append(newTerm, ack)
		}
	}
	for _, n := range []*testutil.Node{a, b, n3} {
		if n != p {
			checkReplica(t, p, n, "db", "")
		}
	}
	requireAcked(t, newTerm, a, b, n3)
}

// TestHandoffWaitsForHalt: a handoff started while a replica holds the
// HALT lock waits for it: the holder's commits still go through, and are
// on the new primary.
func TestHandoffWaitsForHalt(t *testing.T) {
	c := testutil.StartConsul(t)
	a, b, n3 := startConsulCluster(t, c)
	createTable(t, a, "db")
	checkReplica(t, a, n3, "db", "")
	conn := testutil.OpenDB(t, n3.Path("db"), "WAL")
	lock, err := litefs.Halt(n3.Path("db"))
	if err != nil {
		t.Fatal(err)
	}
	testutil.Exec(t, conn, "INSERT INTO t (v) VALUES ('before-handoff')")

	demote := exec.Command(testutil.Binary(t), "demote", "-url", a.URL())
	var out bytes.Buffer
	demote.Stdout, demote.Stderr = &out, &out
	if err := demote.Start(); err != nil {
		t.Fatal(err)
	}
	exited := startedCommand(t, demote)
	// The handoff is under way, waiting for the HALT holder.
	waitMetric(t, a, 10*time.Second, atLeast(1), "litefs_handoff_in_progress")
	waitMetric(t, a, 10*time.Second, atLeast(1), "litefs_write_holds_waiting")
	testutil.Exec(t, conn, "INSERT INTO t (v) VALUES ('during-handoff')")
	if !apiInfo(t, a).IsPrimary {
		t.Fatal("the primary handed off while a replica held the HALT lock")
	}
	if err := litefs.Unhalt(lock); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited.done:
		if exited.err != nil {
			t.Fatalf("demote: %v\n%s", exited.err, out.String())
		}
	case <-time.After(failoverLimit):
		t.Fatalf("demote did not finish once the HALT lock was released\n%s", out.String())
	}
	nodes := []*testutil.Node{a, b, n3}
	if p := waitPrimary(t, nodes, failoverLimit); p != b {
		t.Fatalf("primary is %s, want b", p.Config.Name)
	}
	for _, n := range []*testutil.Node{a, n3} {
		checkReplica(t, b, n, "db", "")
	}
	rows := rowSet(t, b, "db")
	if !rows["before-handoff"] || !rows["during-handoff"] {
		t.Fatalf("rows committed under HALT around the handoff are missing on the new primary: %v", rows)
	}
}

// TestImportWaitsForHalt: an import started while a replica holds the HALT
// lock waits for it, then replaces the database everywhere.
func TestImportWaitsForHalt(t *testing.T) {
	primary, replicas := haltClusterTTL(t, 1, haltTTLLong)
	replica := replicas[0]
	pconn := testutil.OpenDB(t, primary.Path("db"), "WAL")
	testutil.Exec(t, pconn, "CREATE TABLE t (v TEXT)")
	replica.WaitPos(t, "db", primary.Pos(t, "db"), syncTimeout)

	src := filepath.Join(t.TempDir(), "import.db")
	sconn := testutil.OpenDB(t, src, "DELETE")
	testutil.Exec(t, sconn, "CREATE TABLE t (v TEXT)")
	testutil.Exec(t, sconn, "INSERT INTO t VALUES ('imported')")
	sconn.Close()

	rconn := testutil.OpenDB(t, replica.Path("db"), "WAL")
	lock, err := litefs.Halt(replica.Path("db"))
	if err != nil {
		t.Fatal(err)
	}
	imp := exec.Command(testutil.Binary(t), "import", "-url", primary.URL(), "-name", "db", src)
	var out bytes.Buffer
	imp.Stdout, imp.Stderr = &out, &out
	if err := imp.Start(); err != nil {
		t.Fatal(err)
	}
	exited := startedCommand(t, imp)
	waitMetric(t, primary, 10*time.Second, atLeast(1), "litefs_write_holds_waiting")
	testutil.Exec(t, rconn, "INSERT INTO t VALUES ('under-halt')")
	if rows := rowValues(t, pconn); !rows["under-halt"] || rows["imported"] {
		t.Fatalf("primary rows while the import waits: %v", rows)
	}
	if err := litefs.Unhalt(lock); err != nil {
		t.Fatal(err)
	}
	<-exited.done
	if exited.err != nil {
		t.Fatalf("import: %v\n%s", exited.err, out.String())
	}
	checkReplica(t, primary, replica, "db", "")
	if rows := rowValues(t, pconn); !rows["imported"] || len(rows) != 1 {
		t.Fatalf("primary rows after the import: %v", rows)
	}
	os.Remove(src)
}

// TestHaltCommitDoesNotStallMount: a replica's commit under HALT that
// waits for a stalled primary holds up nothing else on the mount: another
// database is read, and the status files answer, while the commit waits.
// (Readers of the very pages being written wait in the kernel, which
// locks a page while a write to it is in flight.)
func TestHaltCommitDoesNotStallMount(t *testing.T) {
	primary, replicas := haltClusterTTL(t, 1, haltTTLLong)
	replica := replicas[0]
	for _, name := range []string{"a.db", "b.db"} {
		conn := testutil.OpenDB(t, primary.Path(name), "WAL")
		testutil.Exec(t, conn, "CREATE TABLE t (v TEXT)")
		testutil.Exec(t, conn, "INSERT INTO t VALUES ('x')")
		replica.WaitPos(t, name, primary.Pos(t, name), syncTimeout)
	}
	aconn := testutil.OpenDB(t, replica.Path("a.db"), "WAL")
	bconn := testutil.OpenDB(t, replica.Path("b.db"), "WAL")
	lock, err := litefs.Halt(replica.Path("a.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer litefs.Unhalt(lock)
	testutil.Exec(t, aconn, "INSERT INTO t VALUES ('before-stall')")

	if err := primary.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			primary.Signal(syscall.SIGCONT)
		}
	}
	defer resume()
	committed := make(chan error, 1)
	go func() {
		_, err := aconn.Exec("INSERT INTO t VALUES ('during-stall')")
		committed <- err
	}()
	// The commit cannot finish while the primary is stopped; reads of the
	// other database, and of the status files, must.
	for i := 0; i < 100; i++ {
		if n := testutil.Count(t, bconn, "t"); n != 1 {
			t.Fatalf("b.db has %d rows", n)
		}
	}
	if got := readPrimaryFile(t, replica); got != "primary" {
		t.Fatalf(".primary reads %q", got)
	}
	if _, err := os.ReadFile(replica.Path("a.db-pos")); err != nil {
		t.Fatalf("a.db-pos during the commit: %v", err)
	}
	select {
	case err := <-committed:
		t.Fatalf("the commit returned (%v) while the primary was stopped", err)
	default:
	}
	resume()
	if err := <-committed; err != nil {
		t.Fatalf("the commit after the primary resumed: %v", err)
	}
	checkReplica(t, primary, replica, "a.db", "")
	if rows := rowSet(t, primary, "a.db"); !rows["during-stall"] {
		t.Fatalf("primary rows %v", rows)
	}
}
