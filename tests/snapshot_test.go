package tests

import (
	"sync"
	"sync/atomic"
	"testing"

	"github.com/litefs-project/litefs/internal/testutil"
)

// TestSnapshotWhileWriting: a new replica gets a database by snapshot
// while a writer keeps committing on the primary in WAL mode, with a
// checkpoint every few commits overwriting pages all over the database
// file while the snapshot reads them. The replica ends up with the
// primary's database, intact.
func TestSnapshotWhileWriting(t *testing.T) {
	// Without strict verification, which would checksum the whole
	// database after every commit.
	primary := testutil.StartNode(t, testutil.NodeConfig{Name: "primary", Production: true})
	conn := testutil.OpenDB(t, primary.Path("w.db"), "WAL")
	conn.SetMaxOpenConns(1)
	testutil.Exec(t, conn, "PRAGMA wal_autocheckpoint=16")
	testutil.Exec(t, conn, "CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
	const rows = 4000 // about 16 MiB: many read batches
	testutil.Exec(t, conn, "INSERT INTO t (v) "+testutil.Series(rows)+" SELECT randomblob(3500) FROM s")

	// Rows all over the file change while the replica copies it.
	var stop atomic.Bool
	var commits atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; !stop.Load(); i++ {
			id := 1 + (i*997)%rows
			if _, err := conn.Exec("UPDATE t SET v = randomblob(3500) WHERE id = ?", id); err != nil {
				errs <- err
				return
			}
			commits.Add(1)
		}
	}()
	t.Cleanup(func() { stop.Store(true); wg.Wait() })

	// Past the first 256 transactions a new replica gets a snapshot rather
	// than the whole log.
	waitUntil(t, syncTimeout, "the writer under way", func() bool { return commits.Load() >= 300 })
	before := commits.Load()
	replica := testutil.StartReplica(t, primary, testutil.NodeConfig{Name: "replica", Production: true})
	waitUntil(t, syncTimeout, "the replica having installed a snapshot", func() bool {
		return dbCounter(t, replica, "litefs_replica_snapshots_applied_total", "w.db") >= 1
	})
	during := commits.Load()
	// And a few more after it, which the replica follows by changesets.
	waitUntil(t, syncTimeout, "more commits after the snapshot", func() bool { return commits.Load() >= during+20 })
	stop.Store(true)
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatalf("writer: %v", err)
	default:
	}
	if during == before {
		t.Fatal("no commit while the replica got its snapshot")
	}
	checkReplica(t, primary, replica, "w.db", "WAL")
	// The first snapshot was right: the replica refused nothing and the
	// primary did not have to send another.
	if n := dbCounter(t, replica, "litefs_replica_frames_refused_total", "w.db"); n != 0 {
		t.Fatalf("the replica refused %v frames", n)
	}
	if n := dbCounter(t, primary, "litefs_snapshots_total", "w.db"); n != 1 {
		t.Fatalf("the primary sent %v snapshots, want 1", n)
	}
}
