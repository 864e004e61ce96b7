package tests

import (
	"database/sql"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/litefs-project/litefs/internal/testutil"
	"github.com/litefs-project/litefs/ltx"
)

const syncTimeout = 30 * time.Second

// checkReplica waits for the replica to reach the primary's position for
// db and compares what a user would: rows, integrity, position file.
func checkReplica(t *testing.T, primary, replica *testutil.Node, db, mode string) {
	t.Helper()
	pos := primary.Pos(t, db)
	replica.WaitPos(t, db, pos, syncTimeout)
	pconn := testutil.OpenDB(t, primary.Path(db), mode)
	rconn := testutil.OpenDB(t, replica.Path(db), mode)
	testutil.IntegrityCheck(t, rconn)
	if got, want := testutil.Digest(t, rconn), testutil.Digest(t, pconn); got != want {
		t.Fatalf("%s on %s differs from the primary:\nreplica: %s\nprimary: %s", db, replica.Config.Name, got, want)
	}
	pconn.Close()
	rconn.Close()
}

// mixedWorkload runs inserts, updates and deletes from several connections.
func mixedWorkload(t *testing.T, path, mode string, writers, txns int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			db, err := sql.Open("sqlite3", fmt.Sprintf("file:%s?_busy_timeout=10000&_journal_mode=%s&_txlock=immediate", path, mode))
			if err != nil {
				errs <- err
				return
			}
			defer db.Close()
			for i := 0; i < txns; i++ {
				var q string
				switch i % 5 {
				case 3:
					q = fmt.Sprintf("UPDATE t SET v = randomblob(300) WHERE id %% 11 = %d", i%11)
				case 4:
					q = fmt.Sprintf("DELETE FROM t WHERE id %% 13 = %d AND writer = 'w%d'", i%13, w)
				default:
					q = fmt.Sprintf("INSERT INTO t (writer, v) VALUES ('w%d', randomblob(abs(random()) %% 4000))", w)
				}
				if _, err := db.Exec(q); err != nil {
					errs <- fmt.Errorf("writer %d: %s: %w", w, q, err)
					return
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestReplication(t *testing.T) {
	for _, mode := range journalModes {
		t.Run(mode, func(t *testing.T) {
			primary := testutil.StartNode(t, testutil.NodeConfig{Name: "primary"})
			r1 := testutil.StartReplica(t, primary, testutil.NodeConfig{Name: "replica1"})
			r2 := testutil.StartReplica(t, primary, testutil.NodeConfig{Name: "replica2"})

			conn := testutil.OpenDB(t, primary.Path("app.db"), mode)
			testutil.Exec(t, conn, "CREATE TABLE t (id INTEGER PRIMARY KEY, writer TEXT, v BLOB)")
			conn.Close()
			mixedWorkload(t, primary.Path("app.db"), mode, 3, 60)

			for _, r := range []*testutil.Node{r1, r2} {
				checkReplica(t, primary, r, "app.db", mode)
				// The replica's own log holds the same changesets.
				_, pos := testutil.ReplayLog(t, r.LogDir("app.db"))
				if want := primary.Pos(t, "app.db"); pos != want {
					t.Fatalf("%s's log replays to %s, want %s", r.Config.Name, pos, want)
				}
			}

			// Status files.
			if b, err := os.ReadFile(r1.Path(".primary")); err != nil || string(b) != "primary\n" {
				t.Fatalf(".primary on a replica = %q (%v), want \"primary\\n\"", b, err)
			}
			if _, err := os.Stat(primary.Path(".primary")); !os.IsNotExist(err) {
				t.Fatalf(".primary on the primary: %v, want it absent", err)
			}
			deadline := time.Now().Add(5 * time.Second)
			for {
				b, err := os.ReadFile(r1.Path(".lag"))
				if err != nil {
					t.Fatal(err)
				}
				if string(b) == "+000000000\n" {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf(".lag on a caught-up replica = %q", b)
				}
				time.Sleep(50 * time.Millisecond)
			}
		})
	}
}

// TestDatabasesAppearAndDisappear creates and deletes databases on the
// primary while replicas are connected.
func TestDatabasesAppearAndDisappear(t *testing.T) {
	primary := testutil.StartNode(t, testutil.NodeConfig{Name: "primary"})
	replica := testutil.StartReplica(t, primary, testutil.NodeConfig{Name: "replica"})

	for i := 0; i < 3; i++ {
		conn := testutil.OpenDB(t, primary.Path(fmt.Sprintf("db%d.db", i)), "WAL")
		testutil.Exec(t, conn, "CREATE TABLE t (v)")
		testutil.Exec(t, conn, "INSERT INTO t VALUES (?)", i)
		conn.Close()
	}
	for i := 0; i < 3; i++ {
		checkReplica(t, primary, replica, fmt.Sprintf("db%d.db", i), "WAL")
	}
	if err := os.Remove(primary.Path("db1.db")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(syncTimeout)
	for {
		if _, err := os.Stat(replica.Path("db1.db")); os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a database deleted on the primary still exists on the replica")
		}
		time.Sleep(20 * time.Millisecond)
	}
	checkReplica(t, primary, replica, "db2.db", "WAL")
}

// TestReplicaIsReadOnly writes through a replica's mount: every attempt
// fails at once with a read-only error and nothing changes anywhere.
func TestReplicaIsReadOnly(t *testing.T) {
	primary := testutil.StartNode(t, testutil.NodeConfig{Name: "primary"})
	replica := testutil.StartReplica(t, primary, testutil.NodeConfig{Name: "replica"})
	for _, mode := range []string{"DELETE", "WAL"} {
		name := strings.ToLower(mode) + ".db"
		conn := testutil.OpenDB(t, primary.Path(name), mode)
		testutil.Exec(t, conn, "CREATE TABLE t (v)")
		testutil.Exec(t, conn, "INSERT INTO t VALUES (1)")
		conn.Close()
		pos := primary.Pos(t, name)
		replica.WaitPos(t, name, pos, syncTimeout)

		rconn, err := sql.Open("sqlite3", "file:"+replica.Path(name)+"?_busy_timeout=100")
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		_, err = rconn.Exec("INSERT INTO t VALUES (2)")
		// In rollback mode the journal cannot be opened for writing, which
		// SQLite reports as a read-only database. In WAL mode the WAL is
		// writable to open (a connection keeps it, and must be able to write
		// once the node is promoted), so the refused write is an I/O error.
		want := map[string]string{"DELETE": "attempt to write a readonly database", "WAL": "disk I/O error"}[mode]
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("%s: write on a replica: got %v, want %q", mode, err, want)
		}
		if time.Since(start) > 5*time.Second {
			t.Fatalf("%s: the refused write took %s; it must fail at once", mode, time.Since(start))
		}
		if n := testutil.Count(t, rconn, "t"); n != 1 {
			t.Fatalf("%s: %d rows on the replica after a refused write", mode, n)
		}
		rconn.Close()
		if got := replica.Pos(t, name); got != pos {
			t.Fatalf("%s: replica moved to %s", mode, got)
		}
		if got := primary.Pos(t, name); got != pos {
			t.Fatalf("%s: primary moved to %s", mode, got)
		}
	}
	if err := os.WriteFile(replica.Path("new.db"), nil, 0o644); err == nil {
		t.Fatal("creating a database on a replica succeeded")
	}
	if err := os.Remove(replica.Path("wal.db")); err == nil {
		t.Fatal("deleting a database on a replica succeeded")
	}
}

// TestReplicaCatchesUpFromLog stops a replica while the primary writes and
// restarts it: it continues from the primary's log, without a snapshot.
func TestReplicaCatchesUpFromLog(t *testing.T) {
	primary := testutil.StartNode(t, testutil.NodeConfig{Name: "primary"})
	replica := testutil.StartReplica(t, primary, testutil.NodeConfig{Name: "replica"})
	conn := testutil.OpenDB(t, primary.Path("c.db"), "WAL")
	testutil.Exec(t, conn, "CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
	for i := 0; i < 300; i++ { // beyond what a new database gets from the log
		testutil.Exec(t, conn, "INSERT INTO t (v) VALUES (randomblob(100))")
	}
	checkReplica(t, primary, replica, "c.db", "WAL")

	replica.Stop(t)
	for i := 0; i < 50; i++ {
		testutil.Exec(t, conn, "INSERT INTO t (v) VALUES (randomblob(200))")
	}
	replica.Start(t)
	checkReplica(t, primary, replica, "c.db", "WAL")
	// The primary, which ran throughout, never sent one; the replica
	// installed none since its restart.
	if n := dbCounter(t, primary, "litefs_snapshots_total", "c.db"); n != 0 {
		t.Fatalf("the primary sent %v snapshots although the log covered the replica's position", n)
	}
	if n := dbCounter(t, replica, "litefs_replica_snapshots_applied_total", "c.db"); n != 0 {
		t.Fatalf("the replica installed %v snapshots although the log covered its position", n)
	}
}

// TestReplicaCatchesUpBySnapshot stops a replica until the primary has
// pruned the changesets it would need; it must catch up by snapshot.
func TestReplicaCatchesUpBySnapshot(t *testing.T) {
	primary := testutil.StartNode(t, testutil.NodeConfig{Name: "primary", Retention: time.Second, RetentionMonitorInterval: 100 * time.Millisecond})
	replica := testutil.StartReplica(t, primary, testutil.NodeConfig{Name: "replica"})
	conn := testutil.OpenDB(t, primary.Path("s.db"), "DELETE")
	testutil.Exec(t, conn, "CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
	testutil.Exec(t, conn, "INSERT INTO t (v) VALUES (randomblob(100))")
	checkReplica(t, primary, replica, "s.db", "DELETE")
	stoppedAt := replica.Pos(t, "s.db")
	replica.Stop(t)

	// Write, spread over time (segments are sealed and pruned by age),
	// until the changeset the replica needs next is pruned.
	deadline := time.Now().Add(syncTimeout)
	for !pruned(t, primary, "s.db", stoppedAt.TXID) {
		if time.Now().After(deadline) {
			t.Fatalf("s.db: changesets after %s were never pruned", stoppedAt.TXID)
		}
		testutil.Exec(t, conn, "INSERT INTO t (v) VALUES (randomblob(1000))")
		time.Sleep(100 * time.Millisecond)
	}

	replica.Start(t)
	checkReplica(t, primary, replica, "s.db", "DELETE")
	// The replica counts a snapshot just after installing it.
	waitUntil(t, syncTimeout, "the replica having installed a snapshot (its changesets were pruned)", func() bool {
		return dbCounter(t, replica, "litefs_replica_snapshots_applied_total", "s.db") >= 1
	})
	// It keeps following after the snapshot.
	testutil.Exec(t, conn, "INSERT INTO t (v) VALUES (x'01')")
	checkReplica(t, primary, replica, "s.db", "DELETE")
}

// TestPrimaryRestart restarts the primary while replicas stream from it.
func TestPrimaryRestart(t *testing.T) {
	primary := testutil.StartNode(t, testutil.NodeConfig{Name: "primary"})
	replicas := []*testutil.Node{
		testutil.StartReplica(t, primary, testutil.NodeConfig{Name: "replica1"}),
		testutil.StartReplica(t, primary, testutil.NodeConfig{Name: "replica2"}),
	}
	conn := testutil.OpenDB(t, primary.Path("p.db"), "WAL")
	testutil.Exec(t, conn, "CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
	for i := 0; i < 100; i++ {
		testutil.Exec(t, conn, "INSERT INTO t (v) VALUES (randomblob(500))")
	}
	conn.Close()
	primary.Restart(t)
	conn = testutil.OpenDB(t, primary.Path("p.db"), "WAL")
	for i := 0; i < 100; i++ {
		testutil.Exec(t, conn, "INSERT INTO t (v) VALUES (randomblob(500))")
	}
	conn.Close()
	for _, r := range replicas {
		checkReplica(t, primary, r, "p.db", "WAL")
	}
}

// pruned reports whether n's log of db no longer holds the changeset
// after txid.
func pruned(t *testing.T, n *testutil.Node, db string, txid ltx.TXID) bool {
	t.Helper()
	l, err := ltx.OpenLog(n.LogDir(db), ltx.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Base().TXID > txid
}
