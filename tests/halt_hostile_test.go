package tests

import (
	"bufio"
	"bytes"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/litefs-project/litefs"
	lhttp "github.com/litefs-project/litefs/http"
	"github.com/litefs-project/litefs/internal/sqlite"
	"github.com/litefs-project/litefs/internal/testutil"
	"github.com/litefs-project/litefs/ltx"
	"github.com/litefs-project/litefs/store"
)

// Tests of the HALT protocol against clients that do not follow it:
// forged lock IDs, floods of lock requests, holders that never let go,
// oversized commits, and changesets with correct checksums whose pages
// would corrupt the database. And the other way round: every legitimate
// commit of a broad workload still goes through.

// TestHaltForgedIDsChangeNothing: keepalives, releases and commits naming
// a lock ID that is not the holder's, or that is malformed, are refused
// (409 and 400) and the real holder keeps its lock and commits.
func TestHaltForgedIDsChangeNothing(t *testing.T) {
	primary, replicas := haltCluster(t, 1)
	replica := replicas[0]
	pconn := testutil.OpenDB(t, primary.Path("f.db"), "WAL")
	testutil.Exec(t, pconn, "CREATE TABLE t (v TEXT)")
	testutil.Exec(t, pconn, "INSERT INTO t VALUES ('before')")
	replica.WaitPos(t, "f.db", primary.Pos(t, "f.db"), syncTimeout)
	epoch := apiInfo(t, primary).Epoch

	rconn := testutil.OpenDB(t, replica.Path("f.db"), "WAL")
	lock, err := litefs.Halt(replica.Path("f.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	testutil.Exec(t, rconn, "INSERT INTO t VALUES ('held')")

	for _, tc := range []struct {
		name string
		id   string
		code int
		want string
	}{
		{"another holder's ID", forgedID, http.StatusConflict, "not the holder"},
		{"a 64-bit decimal ID", "12345", http.StatusBadRequest, "malformed HALT lock ID"},
		{"64 bits in hexadecimal", "0123456789abcdef", http.StatusBadRequest, "malformed HALT lock ID"},
		{"not hexadecimal", strings.Repeat("z", 32), http.StatusBadRequest, "malformed HALT lock ID"},
		{"zero", strings.Repeat("0", 32), http.StatusBadRequest, "malformed HALT lock ID"},
		{"none", "", http.StatusBadRequest, "lock ID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := []byte(fmt.Sprintf(`{"name":"f.db","id":%q,"epoch":%d}`, tc.id, epoch))
			if tc.id == "" {
				body = []byte(fmt.Sprintf(`{"name":"f.db","epoch":%d}`, epoch))
			}
			for _, path := range []string{"/halt/keepalive", "/halt/release"} {
				if code, msg := postHalt(t, primary, path, "", body); code != tc.code || !strings.Contains(msg, tc.want) {
					t.Errorf("%s: %d %q, want %d %q", path, code, msg, tc.code, tc.want)
				}
			}
			path := fmt.Sprintf("/halt/commit?name=f.db&epoch=%d", epoch)
			if code, msg := postHalt(t, primary, path, tc.id, []byte("not an LTX file")); code != tc.code || !strings.Contains(msg, tc.want) {
				t.Errorf("/halt/commit: %d %q, want %d %q", code, msg, tc.code, tc.want)
			}
		})
	}

	// The holder still holds the lock: it commits, and releases it.
	testutil.Exec(t, rconn, "INSERT INTO t VALUES ('after forgeries')")
	if err := litefs.Unhalt(lock); err != nil {
		t.Fatal(err)
	}
	checkReplica(t, primary, replica, "f.db", "WAL")
	rows := rowValues(t, pconn)
	if !rows["before"] || !rows["held"] || !rows["after forgeries"] || len(rows) != 3 {
		t.Fatalf("primary has rows %v", rows)
	}
	waitMetric(t, primary, syncTimeout, atLeast(1), "litefs_halt_grants_ended_total", "reason", "released")
	for _, why := range []string{"expired", "disconnected", "preempted"} {
		if n := metricNow(t, primary, "litefs_halt_grants_ended_total", "reason", why); n != 0 {
			t.Fatalf("%v grants ended %s; the forged requests must not touch the holder's", n, why)
		}
	}
}

// haltRequest posts a request for the lock as a replica does and returns
// the response, whose body is the grant's connection.
func haltRequest(t *testing.T, primary *testutil.Node, db, node string, epoch uint64) (*http.Response, error) {
	body := fmt.Sprintf(`{"name":%q,"nodeID":%q,"wait":true,"epoch":%d}`, db, node, epoch)
	return http.Post(primary.URL()+"/halt", "application/json", strings.NewReader(body))
}

// keepAlive sends keepalives for a lock, as a holder that never commits
// does, until stop is closed or the primary refuses one.
func keepAlive(primary *testutil.Node, db, id string, epoch uint64, stop chan struct{}, wg *sync.WaitGroup) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(300 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			body := fmt.Sprintf(`{"name":%q,"id":%q,"epoch":%d}`, db, id, epoch)
			resp, err := http.Post(primary.URL()+"/halt/keepalive", "application/json", strings.NewReader(body))
			if err != nil {
				return
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return
			}
		}
	}()
}

// longWriter opens a connection on the primary whose writes wait up to a
// minute for the lock: the bound within which a local writer must get in.
func longWriter(t *testing.T, path string) *sql.DB {
	t.Helper()
	conn, err := sql.Open("sqlite3", "file:"+path+"?_busy_timeout=60000&_journal_mode=WAL&_txlock=immediate")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// TestHaltQueueBounded: a holder that keeps its lock alive without
// committing, with requests queued behind it, cannot keep the primary's
// writers out: at most store.DefaultHaltQueue requests wait (the metric
// counts them, one more is refused at once with 429), and a local writer
// gets in once the grant is HaltMaxHold old; the queued requests are then
// served in turn.
func TestHaltQueueBounded(t *testing.T) {
	primary, replicas := haltCluster(t, 1)
	replica := replicas[0]
	pconn := testutil.OpenDB(t, primary.Path("q.db"), "WAL")
	testutil.Exec(t, pconn, "CREATE TABLE t (v TEXT)")
	epoch := apiInfo(t, primary).Epoch

	id, held := haltGrant(t, primary, "q.db", epoch, true)
	defer held.Close()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	defer wg.Wait()
	defer close(stop)
	keepAlive(primary, "q.db", id, epoch, stop, &wg)

	// Requests queue behind the holder; each lets go as soon as it has
	// the lock.
	served := make(chan error, store.DefaultHaltQueue)
	for i := 0; i < store.DefaultHaltQueue; i++ {
		go func(i int) {
			resp, err := haltRequest(t, primary, "q.db", fmt.Sprintf("queued%d", i), epoch)
			if err != nil {
				served <- err
				return
			}
			defer resp.Body.Close()
			var grant lhttp.HaltResponse
			if err := json.NewDecoder(resp.Body).Decode(&grant); err != nil || resp.StatusCode != http.StatusOK {
				served <- fmt.Errorf("queued request %d: %s (%v)", i, resp.Status, err)
				return
			}
			served <- nil
		}(i)
	}
	waitMetric(t, primary, syncTimeout, atLeast(store.DefaultHaltQueue), "litefs_db_halt_requests_waiting", "db", "q.db")
	if n := metricNow(t, primary, "litefs_halt_lock_waiting"); n < store.DefaultHaltQueue {
		t.Fatalf("litefs_halt_lock_waiting is %v with %d requests waiting", n, store.DefaultHaltQueue)
	}
	body := []byte(fmt.Sprintf(`{"name":"q.db","nodeID":"one-too-many","wait":true,"epoch":%d}`, epoch))
	if code, msg := postHalt(t, primary, "/halt", "", body); code != http.StatusTooManyRequests || !strings.Contains(msg, "already wait") {
		t.Fatalf("a request beyond the queue: %d %q, want 429", code, msg)
	}

	// A local writer gets in within its busy timeout, although the holder
	// keeps its grant alive.
	writer := longWriter(t, primary.Path("q.db"))
	if _, err := writer.Exec("INSERT INTO t VALUES ('local')"); err != nil {
		t.Fatalf("a local writer on the primary behind a HALT holder that never lets go: %v", err)
	}
	for i := 0; i < store.DefaultHaltQueue; i++ {
		if err := <-served; err != nil {
			t.Fatal(err)
		}
	}
	if n := metricNow(t, primary, "litefs_halt_grants_ended_total", "reason", "preempted"); n < 1 {
		t.Fatalf("%v grants preempted", n)
	}
	if n := metricNow(t, primary, "litefs_halt_grants_ended_total", "reason", "expired"); n != 0 {
		t.Fatalf("%v grants expired; the holder kept its grant alive", n)
	}
	waitMetric(t, primary, syncTimeout, func(v float64) bool { return v == 0 }, "litefs_db_halt_requests_waiting", "db", "q.db")
	checkReplica(t, primary, replica, "q.db", "WAL")
	if n := testutil.Count(t, pconn, "t"); n != 1 {
		t.Fatalf("%d rows, want the local writer's", n)
	}
}

// TestHaltIdleHolderGivesWay: a replica that holds the HALT lock and keeps
// it alive without committing does not keep the primary's local writers
// out for longer than HaltMaxHold; it then learns the lock is gone, and
// takes it again to write.
func TestHaltIdleHolderGivesWay(t *testing.T) {
	primary, replicas := haltCluster(t, 1)
	replica := replicas[0]
	pconn := testutil.OpenDB(t, primary.Path("i.db"), "WAL")
	testutil.Exec(t, pconn, "CREATE TABLE t (v TEXT)")
	replica.WaitPos(t, "i.db", primary.Pos(t, "i.db"), syncTimeout)

	rconn := testutil.OpenDB(t, replica.Path("i.db"), "WAL")
	lock, err := litefs.Halt(replica.Path("i.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	testutil.Exec(t, rconn, "INSERT INTO t VALUES ('replica')")

	writer := longWriter(t, primary.Path("i.db"))
	if _, err := writer.Exec("INSERT INTO t VALUES ('primary')"); err != nil {
		t.Fatalf("a local writer on the primary behind an idle HALT holder: %v", err)
	}
	if n := metricNow(t, primary, "litefs_halt_grants_ended_total", "reason", "preempted"); n != 1 {
		t.Fatalf("%v grants preempted, want the idle holder's", n)
	}
	replica.WaitPos(t, "i.db", primary.Pos(t, "i.db"), syncTimeout)
	if _, err := rconn.Exec("INSERT INTO t VALUES ('lost')"); err == nil {
		t.Fatal("a write under a preempted HALT lock succeeded")
	}
	litefs.Unhalt(lock)
	if err := litefs.WithHalt(replica.Path("i.db"), func() error {
		_, err := rconn.Exec("INSERT INTO t VALUES ('again')")
		return err
	}); err != nil {
		t.Fatalf("writing under the lock taken again: %v", err)
	}
	checkReplica(t, primary, replica, "i.db", "WAL")
	rows := rowValues(t, pconn)
	if !rows["replica"] || !rows["primary"] || !rows["again"] || len(rows) != 3 {
		t.Fatalf("primary has rows %v", rows)
	}
}

// rawCommit sends the header of a forwarded commit declaring size bytes,
// and a little of the body, on a connection of its own, and reads the
// answer without sending the rest: the primary must answer having read
// almost nothing.
func rawCommit(t *testing.T, primary *testutil.Node, db, id string, epoch uint64, size int64) (int, string) {
	t.Helper()
	conn, err := net.Dial("tcp", primary.HTTPAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /halt/commit?name=%s&epoch=%d HTTP/1.1\r\nHost: %s\r\nContent-Type: application/octet-stream\r\n%s: %s\r\nContent-Length: %d\r\n\r\n",
		db, epoch, primary.HTTPAddr, lhttp.HaltIDHeader, id, size)
	if _, err := conn.Write(make([]byte, 64<<10)); err != nil {
		t.Fatal(err)
	}
	// The deadline only turns a primary that waits for the rest of the
	// body into a failure.
	conn.SetReadDeadline(time.Now().Add(syncTimeout))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer before the body was sent: %v", err)
	}
	defer resp.Body.Close()
	var e struct {
		Error string `json:"error"`
	}
	json.NewDecoder(resp.Body).Decode(&e)
	return resp.StatusCode, e.Error
}

// TestHaltCommitRefusedUnread: a forwarded commit naming a lock ID that is
// not the holder's, or declaring more than the largest changeset the
// primary takes, is answered before its body is sent, and changes
// nothing; the holder keeps its lock.
func TestHaltCommitRefusedUnread(t *testing.T) {
	primary, replicas := haltClusterTTL(t, 1, haltTTLLong)
	replica := replicas[0]
	pconn := testutil.OpenDB(t, primary.Path("u.db"), "WAL")
	testutil.Exec(t, pconn, "CREATE TABLE t (v TEXT)")
	epoch := apiInfo(t, primary).Epoch
	id, held := haltGrant(t, primary, "u.db", epoch, true)
	defer held.Close()
	before := primary.Pos(t, "u.db")

	huge := int64(store.DefaultMaxHaltCommit) + 1
	for _, tc := range []struct {
		name string
		db   string
		id   string
		size int64
		code int
		want string
	}{
		{"over the size limit", "u.db", id, huge, http.StatusRequestEntityTooLarge, "too large"},
		{"another holder's ID", "u.db", forgedID, huge, http.StatusConflict, "not the holder"},
		{"another database", "nope.db", id, 1 << 20, http.StatusConflict, "not the holder"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, msg := rawCommit(t, primary, tc.db, tc.id, epoch, tc.size)
			if code != tc.code || !strings.Contains(msg, tc.want) {
				t.Fatalf("%d %q, want %d %q", code, msg, tc.code, tc.want)
			}
		})
	}
	if pos := primary.Pos(t, "u.db"); pos != before {
		t.Fatalf("the primary moved from %s to %s", before, pos)
	}
	body := []byte(fmt.Sprintf(`{"name":"u.db","id":%q,"epoch":%d}`, id, epoch))
	if code, msg := postHalt(t, primary, "/halt/keepalive", "", body); code != http.StatusOK {
		t.Fatalf("the holder's keepalive after the refusals: %d %q", code, msg)
	}
	if code, msg := postHalt(t, primary, "/halt/release", "", body); code != http.StatusOK {
		t.Fatalf("the holder's release: %d %q", code, msg)
	}
	testutil.Exec(t, pconn, "INSERT INTO t VALUES ('after')")
	checkReplica(t, primary, replica, "u.db", "WAL")
}

// craftChangeset encodes a changeset that takes the database whose file
// is base (at pos) to base with pages replaced, resized to commit pages
// of pageSize bytes, with every checksum correct.
func craftChangeset(t *testing.T, base []byte, pos ltx.Pos, pageSize, commit uint32, pages map[uint32][]byte) []byte {
	t.Helper()
	page := func(pgno uint32) []byte {
		if p, ok := pages[pgno]; ok {
			return p
		}
		if off := int(pgno-1) * int(pageSize); off+int(pageSize) <= len(base) {
			return base[off : off+int(pageSize)]
		}
		return make([]byte, pageSize)
	}
	var sum ltx.Checksum
	for pgno := uint32(1); pgno <= commit; pgno++ {
		if pgno != sqlite.LockPgno(pageSize) {
			sum ^= ltx.ChecksumPage(pgno, page(pgno))
		}
	}
	var buf bytes.Buffer
	enc, err := ltx.NewEncoder(&buf)
	if err != nil {
		t.Fatal(err)
	}
	hdr := ltx.Header{Version: ltx.Version, PageSize: pageSize, Commit: commit, MinTXID: pos.TXID + 1, MaxTXID: pos.TXID + 1,
		Timestamp: time.Now().UnixMilli(), PreApplyChecksum: pos.PostApplyChecksum}
	if err := enc.EncodeHeader(hdr); err != nil {
		t.Fatal(err)
	}
	for pgno := uint32(1); pgno <= commit; pgno++ {
		if p, ok := pages[pgno]; ok {
			if err := enc.EncodePage(ltx.PageHeader{Pgno: pgno}, p); err != nil {
				t.Fatal(err)
			}
		}
	}
	enc.SetPostApplyChecksum(ltx.ChecksumFlag | sum)
	if err := enc.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestHaltCorruptChangesetRefused: a client takes the HALT lock, reads the
// database through /export and forwards changesets with correct checksums
// whose pages would corrupt it: junk over page 2, a broken database
// header, the whole database at another page size. Each is refused with
// 422 naming the page; primary and replica stay readable and intact, and
// replicas write through the lock afterwards.
func TestHaltCorruptChangesetRefused(t *testing.T) {
	primary, replicas := haltClusterTTL(t, 1, haltTTLLong)
	replica := replicas[0]
	pconn := testutil.OpenDB(t, primary.Path("x.db"), "WAL")
	testutil.Exec(t, pconn, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
	testutil.Exec(t, pconn, "INSERT INTO t (v) "+testutil.Series(500)+" SELECT hex(randomblob(50)) FROM s")
	testutil.Exec(t, pconn, "CREATE INDEX t_v ON t (v)")
	replica.WaitPos(t, "x.db", primary.Pos(t, "x.db"), syncTimeout)
	epoch := apiInfo(t, primary).Epoch

	resp, err := haltRequest(t, primary, "x.db", "attacker", epoch)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var grant lhttp.HaltResponse
	if err := json.NewDecoder(resp.Body).Decode(&grant); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("halt: %s (%v)", resp.Status, err)
	}
	exp, err := http.Get(primary.URL() + "/export?name=x.db")
	if err != nil {
		t.Fatal(err)
	}
	base, err := io.ReadAll(exp.Body)
	exp.Body.Close()
	if err != nil || exp.StatusCode != http.StatusOK {
		t.Fatalf("export: %s (%v)", exp.Status, err)
	}
	const ps = 4096
	n := uint32(len(base) / ps)
	if n < 4 {
		t.Fatalf("test bug: %d pages", n)
	}
	page1 := append([]byte(nil), base[:ps]...)
	copy(page1, "SQLite format 4\x00")

	// The database at twice the page size, made by SQLite.
	other := filepath.Join(t.TempDir(), "other.db")
	if err := os.WriteFile(other, base, 0o644); err != nil {
		t.Fatal(err)
	}
	oconn, err := sql.Open("sqlite3", other)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"PRAGMA journal_mode = DELETE", "PRAGMA page_size = 8192", "VACUUM"} {
		if _, err := oconn.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	oconn.Close()
	big, err := os.ReadFile(other)
	if err != nil {
		t.Fatal(err)
	}
	bigPages := make(map[uint32][]byte)
	for pgno := uint32(1); pgno <= uint32(len(big)/8192); pgno++ {
		bigPages[pgno] = big[(pgno-1)*8192 : pgno*8192]
	}

	before := primary.Pos(t, "x.db")
	commit := fmt.Sprintf("/halt/commit?name=x.db&epoch=%d", epoch)
	for _, tc := range []struct {
		name string
		cs   []byte
		want []string
	}{
		{"junk page 2", craftChangeset(t, base, grant.Pos, ps, n, map[uint32][]byte{2: bytes.Repeat([]byte{0xab}, ps)}), []string{"page 2:", "b-tree"}},
		{"zeroed page 2", craftChangeset(t, base, grant.Pos, ps, n, map[uint32][]byte{2: make([]byte, ps)}), []string{"page 2:", "b-tree"}},
		{"bad database header", craftChangeset(t, base, grant.Pos, ps, n, map[uint32][]byte{1: page1}), []string{"page 1:", "magic"}},
		{"page size change", craftChangeset(t, base, grant.Pos, 8192, uint32(len(big)/8192), bigPages), []string{"page 1:", "page size"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, msg := postHalt(t, primary, commit, grant.ID.String(), tc.cs)
			if code != http.StatusUnprocessableEntity || !strings.Contains(msg, "would corrupt the database") {
				t.Fatalf("%d %q, want 422 refusing the changeset", code, msg)
			}
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Fatalf("%q does not say %q", msg, w)
				}
			}
			if pos := primary.Pos(t, "x.db"); pos != before {
				t.Fatalf("the primary moved from %s to %s", before, pos)
			}
		})
	}
	body := []byte(fmt.Sprintf(`{"name":"x.db","id":%q,"epoch":%d}`, grant.ID, epoch))
	if code, msg := postHalt(t, primary, "/halt/release", "", body); code != http.StatusOK {
		t.Fatalf("release: %d %q", code, msg)
	}

	testutil.IntegrityCheck(t, pconn)
	if n := testutil.Count(t, pconn, "t"); n != 500 {
		t.Fatalf("%d rows on the primary, want 500", n)
	}
	rconn := testutil.OpenDB(t, replica.Path("x.db"), "WAL")
	if err := litefs.WithHalt(replica.Path("x.db"), func() error {
		_, err := rconn.Exec("INSERT INTO t (v) VALUES ('from the replica')")
		return err
	}); err != nil {
		t.Fatalf("a replica writing after the refusals: %v", err)
	}
	checkReplica(t, primary, replica, "x.db", "WAL")
}

// forwardedWorkload is what applications do through the HALT lock: each
// statement a transaction of its own. It covers overflow pages in tables
// and indexes, WITHOUT ROWID tables, savepoints, tables and indexes made
// and dropped, secure_delete, both auto-vacuum modes and VACUUM.
var forwardedWorkload = []string{
	"CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT, v BLOB)",
	"CREATE INDEX t_k ON t (k)",
	"INSERT INTO t (k, v) " + testutil.Series(400) + " SELECT hex(randomblob(8)), randomblob(60) FROM s",
	"INSERT INTO t (k, v) " + testutil.Series(20) + " SELECT hex(randomblob(1500)), randomblob(30000) FROM s",
	"CREATE TABLE w (k TEXT PRIMARY KEY, v TEXT) WITHOUT ROWID",
	"INSERT INTO w " + testutil.Series(300) + " SELECT hex(randomblob(4)) || i, hex(randomblob(abs(random()) % 3000)) FROM s",
	"UPDATE t SET v = randomblob(abs(random()) % 9000) WHERE id % 3 = 0",
	"DELETE FROM t WHERE id % 4 = 1",
	"INSERT INTO t (k, v) VALUES ('big', randomblob(2000000))",
	"UPDATE t SET v = randomblob(500000) WHERE k = 'big'",
	"SAVEPOINT a; INSERT INTO t (k, v) VALUES ('sp', randomblob(5000)); SAVEPOINT b; DELETE FROM t WHERE id < 100; ROLLBACK TO b; DELETE FROM t WHERE k = 'big'; RELEASE a",
	"PRAGMA secure_delete = ON",
	"DELETE FROM w WHERE length(v) > 2000",
	"DROP INDEX t_k",
	"CREATE INDEX t_kv ON t (k, v)",
	"PRAGMA auto_vacuum = FULL",
	"VACUUM",
	"DELETE FROM t WHERE id % 2 = 0",
	"DROP TABLE w",
	"PRAGMA auto_vacuum = INCREMENTAL",
	"VACUUM",
	"INSERT INTO t (k, v) SELECT k || 'x', v FROM t",
	"DELETE FROM t WHERE id % 3 = 0",
	"PRAGMA incremental_vacuum(10)",
	"PRAGMA incremental_vacuum",
	"PRAGMA secure_delete = OFF",
	"PRAGMA auto_vacuum = NONE",
	"VACUUM",
	"CREATE TABLE z (v)",
	"INSERT INTO z SELECT v FROM t",
	"DROP TABLE z",
}

// TestHaltForwardedWorkloadAccepted: the structure check refuses none of a
// broad workload forwarded through the HALT lock, in WAL and rollback
// mode, and every node ends with the same content.
func TestHaltForwardedWorkloadAccepted(t *testing.T) {
	primary, replicas := haltCluster(t, 1)
	replica := replicas[0]
	for _, mode := range []string{"WAL", "DELETE"} {
		t.Run(mode, func(t *testing.T) {
			name := "work-" + strings.ToLower(mode) + ".db"
			pconn := testutil.OpenDB(t, primary.Path(name), mode)
			testutil.Exec(t, pconn, "CREATE TABLE seed (v)")
			replica.WaitPos(t, name, primary.Pos(t, name), syncTimeout)
			rconn := testutil.OpenDB(t, replica.Path(name), mode)
			rconn.SetMaxOpenConns(1) // the pragmas are the connection's
			// In a few turns of the lock, the primary writing between them.
			for i := 0; i < len(forwardedWorkload); i += 8 {
				steps := forwardedWorkload[i:min(i+8, len(forwardedWorkload))]
				if err := litefs.WithHalt(replica.Path(name), func() error {
					for _, q := range steps {
						if _, err := rconn.Exec(q); err != nil {
							return fmt.Errorf("%s: %w", q, err)
						}
					}
					return nil
				}); err != nil {
					t.Fatalf("forwarded through the HALT lock: %v", err)
				}
				testutil.Exec(t, pconn, "INSERT INTO seed VALUES (?)", i)
				replica.WaitPos(t, name, primary.Pos(t, name), syncTimeout)
			}
			checkReplica(t, primary, replica, name, mode)
			testutil.IntegrityCheck(t, pconn)
			if primary.Pos(t, name) != replica.Pos(t, name) {
				t.Fatal("primary and replica are at different positions")
			}
		})
	}
	if primary.LogContains("changeset from the HALT holder refused") {
		t.Fatal("the primary refused a changeset of the workload")
	}
}
