package tests

import (
	"bytes"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/litefs-project/litefs"
	lhttp "github.com/litefs-project/litefs/http"
	"github.com/litefs-project/litefs/internal/testutil"
	"github.com/litefs-project/litefs/ltx"
	"golang.org/x/sys/unix"
)

// haltCluster starts a primary and n replicas with a short HALT TTL.
func haltCluster(t *testing.T, n int) (*testutil.Node, []*testutil.Node) {
	t.Helper()
	return haltClusterTTL(t, n, 2*time.Second)
}

// haltClusterTTL starts a primary and n replicas with the given HALT TTL.
func haltClusterTTL(t *testing.T, n int, ttl time.Duration) (*testutil.Node, []*testutil.Node) {
	t.Helper()
	extra := fmt.Sprintf("  halt-ttl: %s\n", ttl)
	primary := testutil.NewNode(t, testutil.NodeConfig{Name: "primary"})
	primary.WriteConfig(t, "lease:\n  type: static\n  candidate: true\n  hostname: primary\n"+extra)
	primary.Start(t)
	var replicas []*testutil.Node
	for i := 0; i < n; i++ {
		r := testutil.NewNode(t, testutil.NodeConfig{Name: fmt.Sprintf("replica%d", i+1)})
		r.WriteConfig(t, r.ReplicaLease(primary)+extra)
		r.Start(t)
		replicas = append(replicas, r)
	}
	return primary, replicas
}

// TestHaltWritesFromReplica: a replica takes the HALT lock and writes
// many transactions, in each journal mode, while the primary's own writer
// keeps writing; nothing is lost or interleaved and all nodes agree.
func TestHaltWritesFromReplica(t *testing.T) {
	primary, replicas := haltCluster(t, 2)
	replica, other := replicas[0], replicas[1]
	for _, mode := range []string{"WAL", "DELETE"} {
		t.Run(mode, func(t *testing.T) {
			name := strings.ToLower(mode) + ".db"
			pconn := testutil.OpenDB(t, primary.Path(name), mode)
			testutil.Exec(t, pconn, "CREATE TABLE t (id INTEGER PRIMARY KEY, origin TEXT, seq INTEGER)")
			replica.WaitPos(t, name, primary.Pos(t, name), syncTimeout)

			// The primary's writer runs throughout.
			var stop atomic.Bool
			var wg sync.WaitGroup
			var primaryRows atomic.Int64
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; !stop.Load(); i++ {
					if _, err := pconn.Exec("INSERT INTO t (origin, seq) VALUES ('primary', ?)", i); err != nil {
						t.Errorf("primary write: %v", err)
						return
					}
					primaryRows.Add(1)
				}
			}()

			// primaryWrites waits until the primary's writer has committed
			// again, between and after the replica's turns.
			primaryWrites := func() {
				t.Helper()
				before := primaryRows.Load()
				waitUntil(t, syncTimeout, "the primary's writer committing", func() bool {
					return primaryRows.Load() > before || t.Failed()
				})
			}

			rconn := testutil.OpenDB(t, replica.Path(name), mode)
			const txns = 200
			for round := 0; round < 2; round++ {
				err := litefs.WithHalt(replica.Path(name), func() error {
					for i := 0; i < txns/2; i++ {
						if _, err := rconn.Exec("INSERT INTO t (origin, seq) VALUES ('replica', ?)", round*txns/2+i); err != nil {
							return err
						}
					}
					return nil
				})
				if err != nil {
					t.Fatalf("writes under HALT on the replica: %v", err)
				}
				primaryWrites()
			}
			// Without the lock, the replica refuses writes again.
			if _, err := rconn.Exec("INSERT INTO t (origin, seq) VALUES ('unlocked', 0)"); err == nil {
				t.Fatal("a write on the replica without the HALT lock succeeded")
			}
			primaryWrites()
			stop.Store(true)
			wg.Wait()

			for _, n := range []*testutil.Node{replica, other} {
				checkReplica(t, primary, n, name, mode)
			}
			var got int
			if err := pconn.QueryRow("SELECT count(*) FROM t WHERE origin = 'replica'").Scan(&got); err != nil {
				t.Fatal(err)
			}
			if got != txns {
				t.Fatalf("primary has %d of the replica's %d rows", got, txns)
			}
			if primaryRows.Load() == 0 {
				t.Fatal("the primary's writer committed nothing")
			}
			var total int
			pconn.QueryRow("SELECT count(*) FROM t").Scan(&total)
			if int64(total) != primaryRows.Load()+txns {
				t.Fatalf("primary has %d rows, want %d", total, primaryRows.Load()+txns)
			}
			rconn.Close()
		})
	}
}

// TestHaltTakesTurns: replicas competing for the HALT lock take turns, and
// every increment they make lands.
func TestHaltTakesTurns(t *testing.T) {
	primary, replicas := haltCluster(t, 2)
	pconn := testutil.OpenDB(t, primary.Path("c.db"), "WAL")
	testutil.Exec(t, pconn, "CREATE TABLE c (n INTEGER)")
	testutil.Exec(t, pconn, "INSERT INTO c VALUES (0)")
	for _, r := range replicas {
		r.WaitPos(t, "c.db", primary.Pos(t, "c.db"), syncTimeout)
	}
	const rounds = 20
	var wg sync.WaitGroup
	var holders atomic.Int32
	errs := make(chan error, len(replicas))
	for _, r := range replicas {
		wg.Add(1)
		go func(r *testutil.Node) {
			defer wg.Done()
			conn, err := sql.Open("sqlite3", "file:"+r.Path("c.db")+"?_busy_timeout=10000")
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close()
			for i := 0; i < rounds; i++ {
				err := litefs.WithHalt(r.Path("c.db"), func() error {
					if holders.Add(1) != 1 {
						return errors.New("two replicas hold the HALT lock at once")
					}
					defer holders.Add(-1)
					_, err := conn.Exec("UPDATE c SET n = n + 1")
					return err
				})
				if err != nil {
					errs <- fmt.Errorf("%s: %w", r.Config.Name, err)
					return
				}
			}
		}(r)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	var n int
	if err := pconn.QueryRow("SELECT n FROM c").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != rounds*len(replicas) {
		t.Fatalf("counter is %d, want %d", n, rounds*len(replicas))
	}
	for _, r := range replicas {
		checkReplica(t, primary, r, "c.db", "WAL")
	}
}

// haltTTLLong is a HALT TTL longer than the tests that use it wait.
const haltTTLLong = 60 * time.Second

// TestHaltHolderKilled: a replica killed while holding the HALT lock frees
// the primary at once, when its connection closes, not after the TTL.
func TestHaltHolderKilled(t *testing.T) {
	primary, replicas := haltClusterTTL(t, 1, haltTTLLong)
	replica := replicas[0]
	pconn := testutil.OpenDB(t, primary.Path("k.db"), "WAL")
	testutil.Exec(t, pconn, "CREATE TABLE t (v)")
	replica.WaitPos(t, "k.db", primary.Pos(t, "k.db"), syncTimeout)

	lock, err := litefs.Halt(replica.Path("k.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	// The primary's writers wait while the replica holds the lock.
	short, err := sql.Open("sqlite3", "file:"+primary.Path("k.db")+"?_busy_timeout=200")
	if err != nil {
		t.Fatal(err)
	}
	defer short.Close()
	if _, err := short.Exec("INSERT INTO t VALUES ('held')"); err == nil {
		t.Fatal("the primary wrote while a replica held the HALT lock")
	}
	replica.Kill(t)
	lock.Close()
	// The holder's connection closed: the grant ends then, not after the
	// TTL (which the test makes longer than the wait allows).
	waitMetric(t, primary, haltTTLLong/2, atLeast(1), "litefs_halt_grants_ended_total", "reason", "disconnected")
	if n := metricNow(t, primary, "litefs_halt_grants_ended_total", "reason", "expired"); n != 0 {
		t.Fatalf("%v grants expired; the dead holder's should have ended when it disconnected", n)
	}
	if _, err := short.Exec("INSERT INTO t VALUES ('after')"); err != nil {
		t.Fatalf("the primary's writer is still held out after the holder died: %v", err)
	}
}

// TestHaltMigrationWithRun: `litefs run -with-lock` runs a schema migration
// with the sqlite3 CLI on a replica while the primary serves writes.
func TestHaltMigrationWithRun(t *testing.T) {
	primary, replicas := haltCluster(t, 1)
	replica := replicas[0]
	pconn := testutil.OpenDB(t, primary.Path("m.db"), "WAL")
	testutil.Exec(t, pconn, "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
	replica.WaitPos(t, "m.db", primary.Pos(t, "m.db"), syncTimeout)

	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; !stop.Load(); i++ {
			if _, err := pconn.Exec("INSERT INTO users (name) VALUES (?)", fmt.Sprintf("u%d", i)); err != nil {
				t.Errorf("primary write: %v", err)
				return
			}
		}
	}()
	migration := "ALTER TABLE users ADD COLUMN email TEXT; CREATE INDEX users_email ON users (email); UPDATE users SET email = name || '@example.com';"
	out, code := runLiteFS(t, "run", "-with-halt-lock-on", replica.Path("m.db"), "--", "sqlite3", "-bail", "-cmd", ".timeout 10000", replica.Path("m.db"), migration)
	stop.Store(true)
	wg.Wait()
	if code != 0 {
		t.Fatalf("migration: exit %d\n%s", code, out)
	}
	checkReplica(t, primary, replica, "m.db", "WAL")
	var missing int
	if err := pconn.QueryRow("SELECT count(*) FROM pragma_table_info('users') WHERE name = 'email'").Scan(&missing); err != nil || missing != 1 {
		t.Fatalf("the primary does not have the migrated column (%v)", err)
	}
	// With nothing else writing: a write under the lock, then a new reader.
	// The CLI, the last connection, deleted the replica's WAL as it closed;
	// a reader must be able to open the database all the same.
	if out, code := runLiteFS(t, "run", "-with-lock", replica.Path("m.db"), "--", "sqlite3", replica.Path("m.db"), "INSERT INTO users (name) VALUES ('from-replica')"); code != 0 {
		t.Fatalf("write under the lock: exit %d\n%s", code, out)
	}
	if b, err := exec.Command("sqlite3", replica.Path("m.db"), "SELECT count(*) FROM users WHERE name = 'from-replica'").CombinedOutput(); err != nil || strings.TrimSpace(string(b)) != "1" {
		t.Fatalf("read on the replica after writing under the lock: %v: %s", err, b)
	}
	// A failing command's status comes back.
	if _, code := runLiteFS(t, "run", "-with-lock", replica.Path("m.db"), "--", "sh", "-c", "exit 7"); code != 7 {
		t.Fatalf("exit status %d, want 7", code)
	}
}

// haltGrant takes the HALT lock on db from the primary's API as a replica
// does; the lock lives as long as the returned body stays open.
func haltGrant(t *testing.T, primary *testutil.Node, db string, epoch uint64, wait bool) (string, io.ReadCloser) {
	t.Helper()
	body := fmt.Sprintf(`{"name":%q,"nodeID":"test","wait":%v,"epoch":%d}`, db, wait, epoch)
	resp, err := http.Post(primary.URL()+"/halt", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	var grant struct {
		ID string `json:"id"`
	}
	err = json.NewDecoder(resp.Body).Decode(&grant)
	if resp.StatusCode != http.StatusOK || err != nil {
		resp.Body.Close()
		t.Fatalf("halt: %s (%v)", resp.Status, err)
	}
	if len(grant.ID) != 32 {
		resp.Body.Close()
		t.Fatalf("lock ID %q: want 128 bits in hexadecimal", grant.ID)
	}
	return grant.ID, resp.Body
}

// forgedID is a well-formed lock ID that is nobody's.
const forgedID = "0123456789abcdef0123456789abcdef"

// postHalt posts body to one of the primary's HALT endpoints, with the
// lock ID in the header if id is set, and returns the status and the
// error it names.
func postHalt(t *testing.T, primary *testutil.Node, path, id string, body []byte) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, primary.URL()+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if strings.HasPrefix(path, "/halt/commit") {
		req.Header.Set("Content-Type", "application/octet-stream")
	}
	if id != "" {
		req.Header.Set(lhttp.HaltIDHeader, id)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e struct {
		Error string `json:"error"`
	}
	json.NewDecoder(resp.Body).Decode(&e)
	return resp.StatusCode, e.Error
}

// TestHaltRefusals: a forged lock ID, a request for another term, a
// changeset that does not fit, and a release by a non-holder are refused
// and change nothing.
func TestHaltRefusals(t *testing.T) {
	primary, replicas := haltCluster(t, 1)
	replica := replicas[0]
	pconn := testutil.OpenDB(t, primary.Path("r.db"), "WAL")
	testutil.Exec(t, pconn, "CREATE TABLE t (v)")
	testutil.Exec(t, pconn, "INSERT INTO t VALUES (1)")
	replica.WaitPos(t, "r.db", primary.Pos(t, "r.db"), syncTimeout)
	before := primary.Pos(t, "r.db")
	epoch := apiInfo(t, primary).Epoch
	if epoch == 0 {
		t.Fatal("the primary reports no epoch")
	}

	post := func(path string, body []byte) (int, string) { return postHalt(t, primary, path, "", body) }
	code, msg := postHalt(t, primary, fmt.Sprintf("/halt/commit?name=r.db&epoch=%d", epoch), forgedID, []byte("not an ltx file"))
	if code != http.StatusConflict || !strings.Contains(msg, "not the holder") {
		t.Fatalf("forged lock ID: %d %q", code, msg)
	}
	code, msg = post("/halt/release", []byte(fmt.Sprintf(`{"name":"r.db","id":%q,"epoch":%d}`, forgedID, epoch)))
	if code != http.StatusConflict || !strings.Contains(msg, "not the holder") {
		t.Fatalf("release by a non-holder: %d %q", code, msg)
	}
	// A request for another term names both epochs.
	code, msg = post("/halt", []byte(fmt.Sprintf(`{"name":"r.db","nodeID":"test","epoch":%d}`, epoch+1)))
	if code != http.StatusConflict || !strings.Contains(msg, fmt.Sprintf("epoch %d", epoch)) || !strings.Contains(msg, fmt.Sprintf("epoch %d", epoch+1)) {
		t.Fatalf("halt for another term: %d %q", code, msg)
	}

	// A holder whose changeset does not continue the database is refused.
	id, held := haltGrant(t, primary, "r.db", epoch, true)
	defer held.Close()
	if code, _ := post("/halt", []byte(fmt.Sprintf(`{"name":"r.db","nodeID":"test2","wait":false,"epoch":%d}`, epoch))); code != http.StatusConflict {
		t.Fatalf("a second holder was granted the lock: %d", code)
	}
	code, msg = postHalt(t, primary, fmt.Sprintf("/halt/commit?name=r.db&epoch=%d", epoch+1), id, []byte("x"))
	if code != http.StatusConflict || !strings.Contains(msg, "epoch") {
		t.Fatalf("commit for another term: %d %q", code, msg)
	}

	// A changeset that continues the position but whose post-apply
	// checksum is not what its pages give.
	var buf bytes.Buffer
	enc, err := ltx.NewEncoder(&buf)
	if err != nil {
		t.Fatal(err)
	}
	hdr := ltx.Header{Version: ltx.Version, PageSize: 4096, Commit: 2, MinTXID: before.TXID + 1, MaxTXID: before.TXID + 1,
		Timestamp: time.Now().UnixMilli(), PreApplyChecksum: before.PostApplyChecksum}
	if err := enc.EncodeHeader(hdr); err != nil {
		t.Fatal(err)
	}
	if err := enc.EncodePage(ltx.PageHeader{Pgno: 2}, bytes.Repeat([]byte{0xab}, 4096)); err != nil {
		t.Fatal(err)
	}
	enc.SetPostApplyChecksum(ltx.ChecksumFlag | 0x1234)
	if err := enc.Close(); err != nil {
		t.Fatal(err)
	}
	code, msg = postHalt(t, primary, fmt.Sprintf("/halt/commit?name=r.db&epoch=%d", epoch), id, buf.Bytes())
	if code != http.StatusUnprocessableEntity || !strings.Contains(msg, "checksum") {
		t.Fatalf("changeset with a wrong checksum: %d %q", code, msg)
	}
	if primary.Pos(t, "r.db") != before {
		t.Fatal("the primary moved after a refused changeset")
	}
	testutil.IntegrityCheck(t, pconn)
	// The holder releases; its connection ends, and the primary is
	// writable again at once.
	if code, msg := post("/halt/release", []byte(fmt.Sprintf(`{"name":"r.db","id":%q,"epoch":%d}`, id, epoch))); code != http.StatusOK {
		t.Fatalf("release by the holder: %d %q", code, msg)
	}
	if rest, err := io.ReadAll(held); err != nil || len(rest) != 0 {
		t.Fatalf("the released grant's connection: %q, %v", rest, err)
	}
	testutil.Exec(t, pconn, "INSERT INTO t VALUES (2)")

	// Non-blocking F_OFD_SETLK on a replica while the primary holds it.
	lock, err := litefs.Halt(primary.Path("r.db"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := litefs.TryHalt(replica.Path("r.db")); !errors.Is(err, unix.EAGAIN) {
		t.Fatalf("TryHalt while the primary holds the lock: %v, want EAGAIN", err)
	}
	litefs.Unhalt(lock)
	l2, err := litefs.TryHalt(replica.Path("r.db"))
	if err != nil {
		t.Fatalf("TryHalt once free: %v", err)
	}
	litefs.Unhalt(l2)
}

// TestHaltExpiresWhileHeld: a holder that goes quiet past the TTL loses the
// lock; its next commit fails and leaves nothing behind on any node.
func TestHaltExpiresWhileHeld(t *testing.T) {
	primary, replicas := haltCluster(t, 1)
	replica := replicas[0]
	pconn := testutil.OpenDB(t, primary.Path("e.db"), "WAL")
	testutil.Exec(t, pconn, "CREATE TABLE t (v TEXT)")
	replica.WaitPos(t, "e.db", primary.Pos(t, "e.db"), syncTimeout)

	rconn := testutil.OpenDB(t, replica.Path("e.db"), "WAL")
	lock, err := litefs.Halt(replica.Path("e.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	testutil.Exec(t, rconn, "INSERT INTO t VALUES ('under-lock')")

	// The replica's daemon stops answering; the primary frees the lock.
	if err := replica.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitMetric(t, primary, 10*time.Second, atLeast(1), "litefs_halt_grants_ended_total", "reason", "expired")
	testutil.Exec(t, pconn, "INSERT INTO t VALUES ('primary')")
	if err := replica.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}

	if _, err := rconn.Exec("INSERT INTO t VALUES ('after-expiry')"); err == nil {
		t.Fatal("a commit under an expired HALT lock succeeded")
	}
	litefs.Unhalt(lock)
	checkReplica(t, primary, replica, "e.db", "WAL")
	rows := rowValues(t, pconn)
	if !rows["under-lock"] || !rows["primary"] || rows["after-expiry"] || len(rows) != 2 {
		t.Fatalf("primary has rows %v", rows)
	}
}

func rowValues(t *testing.T, conn *sql.DB) map[string]bool {
	t.Helper()
	rows, err := conn.Query("SELECT v FROM t")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	m := map[string]bool{}
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			t.Fatal(err)
		}
		m[v] = true
	}
	return m
}

// TestHaltOwnCommitsVisibleAfterApply: in WAL mode a replica's commits
// under the HALT lock stay in its WAL until the next change from the
// primary is applied, which folds them into the database file; readers,
// whose kernel cache held the file's older pages, then still see them.
func TestHaltOwnCommitsVisibleAfterApply(t *testing.T) {
	primary, replicas := haltCluster(t, 1)
	replica := replicas[0]
	pconn := testutil.OpenDB(t, primary.Path("o.db"), "WAL")
	testutil.Exec(t, pconn, "CREATE TABLE seed (v)")
	replica.WaitPos(t, "o.db", primary.Pos(t, "o.db"), syncTimeout)
	rconn := testutil.OpenDB(t, replica.Path("o.db"), "WAL")
	// Read page 1 into the kernel's cache before the replica changes it.
	testutil.Count(t, rconn, "seed")
	if err := litefs.WithHalt(replica.Path("o.db"), func() error {
		_, err := rconn.Exec("CREATE TABLE t (v)")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	// A change from the primary that does not touch page 1.
	testutil.Exec(t, pconn, "INSERT INTO seed VALUES (1)")
	replica.WaitPos(t, "o.db", primary.Pos(t, "o.db"), syncTimeout)
	if n := testutil.Count(t, rconn, "t"); n != 0 {
		t.Fatalf("%d rows in t", n)
	}
	checkReplica(t, primary, replica, "o.db", "WAL")
}
