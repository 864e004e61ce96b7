package tests

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/litefs-project/litefs/internal/sqlite"
	"github.com/litefs-project/litefs/internal/testutil"
	"github.com/litefs-project/litefs/ltx"
)

// TestKillDaemonMidLoad kills the daemon with SIGKILL while writers are
// committing, restarts it, and checks that every acknowledged transaction
// is there, the database is intact, and the log still replays to it.
func TestKillDaemonMidLoad(t *testing.T) {
	for _, mode := range journalModes {
		t.Run(mode, func(t *testing.T) {
			n := testutil.StartNode(t, testutil.NodeConfig{})
			path := n.Path("load.db")
			setup := testutil.OpenDB(t, path, mode)
			testutil.Exec(t, setup, "CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
			setup.Close()

			var acked atomic.Int64
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan struct{})
			var writeErr error // set by the writer before done closes
			go func() {
				defer close(done)
				db, err := sql.Open("sqlite3", fmt.Sprintf("file:%s?_busy_timeout=2000&_journal_mode=%s", path, mode))
				if err != nil {
					writeErr = err
					return
				}
				defer db.Close()
				db.SetMaxOpenConns(1)
				for ctx.Err() == nil {
					if _, err := db.Exec("INSERT INTO t (v) VALUES (randomblob(abs(random()) % 6000))"); err != nil {
						writeErr = err // expected once the daemon is killed
						return
					}
					acked.Add(1)
				}
			}()

			// Let the load run, then crash the daemon under it.
			for acked.Load() < 200 {
				select {
				case <-done:
					t.Fatalf("the writer stopped after %d transactions, before the crash: %v", acked.Load(), writeErr)
				case <-time.After(10 * time.Millisecond):
				}
			}
			n.Kill(t)
			cancel()
			<-done
			t.Logf("%d transactions acknowledged before the crash", acked.Load())

			n.Start(t)
			conn := testutil.OpenDB(t, path, mode)
			rows := int64(testutil.Count(t, conn, "t"))
			if rows < acked.Load() || rows > acked.Load()+1 {
				t.Fatalf("%d rows after restart, but %d inserts were acknowledged", rows, acked.Load())
			}
			checkDB(t, n, "load.db", conn)

			// The database keeps working.
			testutil.Exec(t, conn, "INSERT INTO t (v) VALUES (x'00')")
			checkDB(t, n, "load.db", conn)
		})
	}
}

// TestKillApplicationMidTransaction kills a sqlite3 process in the middle
// of a large transaction that has already written to the database file or
// the WAL. Nothing of it may be committed, on this node or after a restart.
func TestKillApplicationMidTransaction(t *testing.T) {
	for _, mode := range journalModes {
		t.Run(mode, func(t *testing.T) {
			n := testutil.StartNode(t, testutil.NodeConfig{})
			path := n.Path("app.db")
			conn := testutil.OpenDB(t, path, mode)
			testutil.Exec(t, conn, "CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
			testutil.Exec(t, conn, "INSERT INTO t (v) "+testutil.Series(200)+" SELECT randomblob(1000) FROM s")
			conn.Close()
			before := n.Pos(t, "app.db")

			// A small cache forces SQLite to write pages before COMMIT.
			cmd := exec.Command("sqlite3", path)
			stdin, err := cmd.StdinPipe()
			if err != nil {
				t.Fatal(err)
			}
			cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(stdin, ".timeout 5000\nPRAGMA journal_mode=%s;\nPRAGMA cache_size=5;\nBEGIN;\n", mode)
			fmt.Fprintf(stdin, "UPDATE t SET v = randomblob(1200);\nINSERT INTO t (v) %s SELECT randomblob(3000) FROM s;\n", testutil.Series(500))

			// Wait until the transaction has written uncommitted pages.
			spilled := func() bool {
				if mode == "WAL" {
					fi, err := os.Stat(filepath.Join(n.DataDir, "dbs", "app.db", "wal"))
					return err == nil && fi.Size() > 200*1024
				}
				fi, err := os.Stat(path + "-journal")
				return err == nil && fi.Size() > 100*1024
			}
			deadline := time.Now().Add(20 * time.Second)
			for !spilled() {
				if time.Now().After(deadline) {
					t.Fatal("the transaction never spilled pages")
				}
				time.Sleep(5 * time.Millisecond)
			}
			cmd.Process.Kill()
			cmd.Wait()

			conn = testutil.OpenDB(t, path, mode)
			if got := testutil.Count(t, conn, "t"); got != 200 {
				t.Fatalf("%d rows after the killed transaction, want 200", got)
			}
			checkDB(t, n, "app.db", conn)
			if got := n.Pos(t, "app.db"); got != before {
				t.Fatalf("the killed transaction moved the position from %s to %s", before, got)
			}

			// Crash the daemon too while the leftovers may still be there.
			conn.Close()
			n.Kill(t)
			n.Start(t)
			conn = testutil.OpenDB(t, path, mode)
			if got := testutil.Count(t, conn, "t"); got != 200 {
				t.Fatalf("%d rows after restart, want 200", got)
			}
			if got := n.Pos(t, "app.db"); got != before {
				t.Fatalf("after restart at %s, want %s", got, before)
			}
			checkDB(t, n, "app.db", conn)
		})
	}
}

// crashWithOpenWAL commits transactions in WAL mode with checkpoints off,
// keeps the connection open so the frames stay in the WAL, and kills the
// daemon. It returns the position before the crash.
func crashWithOpenWAL(t *testing.T, n *testutil.Node, name string, txns int) ltx.Pos {
	t.Helper()
	conn := testutil.OpenDB(t, n.Path(name), "WAL")
	conn.SetMaxOpenConns(1)
	testutil.Exec(t, conn, "PRAGMA wal_autocheckpoint=0")
	testutil.Exec(t, conn, "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v BLOB)")
	for i := 0; i < txns; i++ {
		testutil.Exec(t, conn, "INSERT INTO t (v) VALUES (randomblob(1500))")
	}
	pos := n.Pos(t, name)
	n.Kill(t)
	conn.Close()
	return pos
}

// TestRecoveryRebuildsChangesetsFromWAL loses the log's newest records, as
// a power failure can before the log is synced, and checks that recovery
// rebuilds them from the WAL: same TXIDs, same checksums.
func TestRecoveryRebuildsChangesetsFromWAL(t *testing.T) {
	n := testutil.StartNode(t, testutil.NodeConfig{})
	pos := crashWithOpenWAL(t, n, "w.db", 30)

	l, err := ltx.OpenLog(n.LogDir("w.db"), ltx.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.TruncateAfter(pos.TXID - 10); err != nil {
		t.Fatal(err)
	}
	l.Close()

	n.Start(t)
	if got := n.Pos(t, "w.db"); got != pos {
		t.Fatalf("recovered to %s, want %s", got, pos)
	}
	if !n.LogContains("rebuilt changesets from the WAL") {
		t.Fatal("recovery did not report rebuilding changesets")
	}
	conn := testutil.OpenDB(t, n.Path("w.db"), "WAL")
	if got := testutil.Count(t, conn, "t"); got != 30 {
		t.Fatalf("%d rows, want 30", got)
	}
	checkDB(t, n, "w.db", conn)
}

// TestRecoveryDropsChangesetsTheDatabaseLacks loses the newest commits from
// the WAL while the log kept them (the log is written before SQLite syncs
// the WAL), and checks that recovery drops the extra changesets.
func TestRecoveryDropsChangesetsTheDatabaseLacks(t *testing.T) {
	n := testutil.StartNode(t, testutil.NodeConfig{})
	pos := crashWithOpenWAL(t, n, "w.db", 20)

	// Cut the WAL back by five commits.
	walPath := filepath.Join(n.DataDir, "dbs", "w.db", "wal")
	f, err := os.Open(walPath)
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := f.Stat()
	var txns []sqlite.WALTxn
	if _, err := sqlite.ScanWAL(f, fi.Size(), func(txn sqlite.WALTxn) error {
		txns = append(txns, txn)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if len(txns) < 20 {
		t.Fatalf("the WAL holds %d transactions, want at least 20", len(txns))
	}
	if err := os.Truncate(walPath, txns[len(txns)-5].Start); err != nil {
		t.Fatal(err)
	}

	n.Start(t)
	if got := n.Pos(t, "w.db"); got.TXID != pos.TXID-5 {
		t.Fatalf("recovered to %s, want txid %s", got, pos.TXID-5)
	}
	if !n.LogContains("dropped changesets the database does not have") {
		t.Fatal("recovery did not report dropping changesets")
	}
	conn := testutil.OpenDB(t, n.Path("w.db"), "WAL")
	if got := testutil.Count(t, conn, "t"); got != 15 {
		t.Fatalf("%d rows, want 15", got)
	}
	checkDB(t, n, "w.db", conn)
	testutil.Exec(t, conn, "INSERT INTO t (v) VALUES (x'01')")
	checkDB(t, n, "w.db", conn)
}

// TestRecoveryOfForeignChanges changes a database behind litefs's back
// while it is down; recovery must bring the log to the new content with one
// changeset holding every page.
func TestRecoveryOfForeignChanges(t *testing.T) {
	n := testutil.StartNode(t, testutil.NodeConfig{})
	conn := testutil.OpenDB(t, n.Path("f.db"), "DELETE")
	testutil.Exec(t, conn, "CREATE TABLE t (v)")
	testutil.Exec(t, conn, "INSERT INTO t VALUES (1), (2)")
	conn.Close()
	pos := n.Pos(t, "f.db")
	n.Stop(t)

	backing := filepath.Join(n.DataDir, "dbs", "f.db", "database")
	if out, err := exec.Command("sqlite3", backing, "INSERT INTO t VALUES (3)").CombinedOutput(); err != nil {
		t.Fatalf("sqlite3: %v: %s", err, out)
	}
	os.Remove(backing + "-journal")

	n.Start(t)
	got := n.Pos(t, "f.db")
	if got.TXID != pos.TXID+1 {
		t.Fatalf("recovered to %s, want txid %s", got, pos.TXID+1)
	}
	if !n.LogContains("wrote a changeset with every page") {
		t.Fatal("recovery did not report the full changeset")
	}
	conn = testutil.OpenDB(t, n.Path("f.db"), "DELETE")
	if c := testutil.Count(t, conn, "t"); c != 3 {
		t.Fatalf("%d rows, want 3", c)
	}
	checkDB(t, n, "f.db", conn)
}

// TestExistingDatabaseFile starts litefs on a data directory whose database
// was never seen by litefs: the first changeset is a snapshot of it.
func TestExistingDatabaseFile(t *testing.T) {
	n := testutil.NewNode(t, testutil.NodeConfig{})
	dir := filepath.Join(n.DataDir, "dbs", "old.db")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src := testutil.OpenDB(t, filepath.Join(dir, "database"), "DELETE")
	testutil.Exec(t, src, "CREATE TABLE t (v)")
	testutil.Exec(t, src, "INSERT INTO t "+testutil.Series(100)+" SELECT i FROM s")
	src.Close()

	n.WriteConfig(t, "lease:\n  type: static\n  candidate: true\n")
	n.Start(t)
	if pos := n.Pos(t, "old.db"); pos.TXID != 1 {
		t.Fatalf("existing database at %s, want a snapshot at txid 1", pos)
	}
	conn := testutil.OpenDB(t, n.Path("old.db"), "DELETE")
	if c := testutil.Count(t, conn, "t"); c != 100 {
		t.Fatalf("%d rows, want 100", c)
	}
	checkDB(t, n, "old.db", conn)
	if !strings.Contains(testutil.Digest(t, conn), "t:100:") {
		t.Fatal("digest does not describe the table")
	}
}
