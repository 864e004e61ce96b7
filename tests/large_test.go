package tests

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/litefs-project/litefs/internal/testutil"
)

// TestDatabaseOverOneGiB grows a database past 1 GiB, where SQLite skips
// the page holding its lock bytes, and changes pages on both sides of it in
// both journal modes. The lock page must never appear in a changeset (the
// LTX encoder refuses it) and the log must still replay to the database.
func TestDatabaseOverOneGiB(t *testing.T) {
	if testing.Short() {
		t.Skip("writes more than 2 GiB; skipped with -short")
	}
	// Strict verification would checksum the whole database after every
	// commit; the replay below checks every changeset instead. The volume
	// of data calls for a binary without the race detector.
	n := testutil.StartNode(t, testutil.NodeConfig{Production: true, Fast: true})
	conn := testutil.OpenDB(t, n.Path("big.db"), "DELETE")
	conn.SetMaxOpenConns(1)
	testutil.Exec(t, conn, "PRAGMA page_size=65536")
	testutil.Exec(t, conn, "CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
	// 1100 MiB in 1 MiB rows, a few transactions.
	for i := 0; i < 4; i++ {
		testutil.Exec(t, conn, "INSERT INTO t (v) "+testutil.Series(275)+" SELECT zeroblob(1048576) FROM s")
	}
	var pages int
	if err := conn.QueryRow("PRAGMA page_count").Scan(&pages); err != nil {
		t.Fatal(err)
	}
	if lockPage := 1<<30/65536 + 1; pages <= lockPage {
		t.Fatalf("database has %d pages; it must extend past the lock page %d", pages, lockPage)
	}
	// Rows on both sides of the lock page, in rollback and WAL mode.
	testutil.Exec(t, conn, "UPDATE t SET v = randomblob(1048576) WHERE id IN (1, 500, 1000, 1099)")
	testutil.Exec(t, conn, "PRAGMA journal_mode=WAL")
	testutil.Exec(t, conn, "UPDATE t SET v = randomblob(1048576) WHERE id IN (2, 1001, 1098)")
	testutil.Exec(t, conn, "DELETE FROM t WHERE id > 1090")
	testutil.Exec(t, conn, "PRAGMA wal_checkpoint(TRUNCATE)")
	testutil.IntegrityCheck(t, conn)

	// Rebuild the database from its log and compare it byte for byte with
	// the mounted one, whose WAL is checkpointed.
	replay := filepath.Join(t.TempDir(), "replay.db")
	out, err := exec.Command(testutil.FastBinary(t), "log", "-data-dir", n.DataDir, "-name", "big.db", "-replay", replay).CombinedOutput()
	if err != nil {
		t.Fatalf("replay: %v: %s", err, out)
	}
	if pos := n.Pos(t, "big.db"); !strings.Contains(string(out), pos.String()) {
		t.Fatalf("replay ended elsewhere than %s: %s", pos, out)
	}
	if out, err := exec.Command("cmp", replay, n.Path("big.db")).CombinedOutput(); err != nil {
		t.Fatalf("replayed database differs from the mounted one: %v: %s", err, out)
	}

	// A restart checksums the whole database again and must agree.
	pos := n.Pos(t, "big.db")
	conn.Close()
	n.Restart(t)
	if got := n.Pos(t, "big.db"); got != pos {
		t.Fatalf("after restart at %s, want %s", got, pos)
	}
}

// TestLargeDatabaseReplicates replicates a database of more than 1 GiB to a
// replica that starts after it was written, by snapshot (its log is too
// long to send), and then by changesets, on both sides of the lock page.
func TestLargeDatabaseReplicates(t *testing.T) {
	if testing.Short() {
		t.Skip("writes more than 3 GiB; skipped with -short")
	}
	primary := testutil.StartNode(t, testutil.NodeConfig{Name: "primary", Production: true, Fast: true})
	conn := testutil.OpenDB(t, primary.Path("big.db"), "DELETE")
	conn.SetMaxOpenConns(1)
	testutil.Exec(t, conn, "PRAGMA page_size=65536")
	testutil.Exec(t, conn, "CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
	for i := 0; i < 4; i++ {
		testutil.Exec(t, conn, "INSERT INTO t (v) "+testutil.Series(275)+" SELECT zeroblob(1048576) FROM s")
	}
	testutil.Exec(t, conn, "CREATE TABLE small (v)")
	for i := 0; i < 300; i++ {
		testutil.Exec(t, conn, "INSERT INTO small VALUES (?)", i)
	}

	replica := testutil.StartReplica(t, primary, testutil.NodeConfig{Name: "replica", Production: true, Fast: true})
	replica.WaitPos(t, "big.db", primary.Pos(t, "big.db"), 2*time.Minute)
	// The replica counts a snapshot just after installing it.
	waitUntil(t, syncTimeout, "the replica having got the database by snapshot", func() bool {
		return dbCounter(t, replica, "litefs_replica_snapshots_applied_total", "big.db") >= 1
	})
	testutil.Exec(t, conn, "UPDATE t SET v = randomblob(1048576) WHERE id IN (3, 1050)")
	testutil.Exec(t, conn, "DELETE FROM t WHERE id > 1095")
	pos := primary.Pos(t, "big.db")
	replica.WaitPos(t, "big.db", pos, 2*time.Minute)

	rconn := testutil.OpenDB(t, replica.Path("big.db"), "DELETE")
	testutil.IntegrityCheck(t, rconn)
	if out, err := exec.Command("cmp", primary.Path("big.db"), replica.Path("big.db")).CombinedOutput(); err != nil {
		t.Fatalf("the replica's database differs from the primary's: %v: %s", err, out)
	}
}
