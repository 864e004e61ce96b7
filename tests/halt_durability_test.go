package tests

import (
	"database/sql"
	"fmt"
	"sync"
	"testing"

	"github.com/litefs-project/litefs"
	"github.com/litefs-project/litefs/internal/testutil"
)

// TestHaltForwardedCommitsSurvivePrimaryCrash: a replica commits under the
// HALT lock, one row per transaction, while the primary is killed with
// SIGKILL right after one of its commits returned. After the primary
// restarts, every row whose commit returned is there, the database is
// intact, its position is what its log replays to, and the replica
// converges to it. With synchronous=FULL the primary made each commit
// durable before it answered; with NORMAL it did not (a power failure may
// lose the last ones, as SQLite's NORMAL allows), but it must still
// recover to a consistent state; the switch from NORMAL to FULL on the
// same connection makes the replica's fsync ask the primary for
// durability after the commit was sent without it.
func TestHaltForwardedCommitsSurvivePrimaryCrash(t *testing.T) {
	for _, tc := range []struct {
		name, mode, sync string
		switchToFull     bool // PRAGMA synchronous=FULL half way
	}{
		{"WAL-FULL", "WAL", "FULL", false},
		{"DELETE-FULL", "DELETE", "FULL", false},
		{"WAL-NORMAL", "WAL", "NORMAL", false},
		{"WAL-NORMAL-then-FULL", "WAL", "NORMAL", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			primary, replicas := haltCluster(t, 1)
			replica := replicas[0]
			const name = "crash.db"
			pconn := testutil.OpenDB(t, primary.Path(name), tc.mode)
			testutil.Exec(t, pconn, "CREATE TABLE t (seq INTEGER PRIMARY KEY, v BLOB)")
			pconn.Close()
			replica.WaitPos(t, name, primary.Pos(t, name), syncTimeout)

			rconn, err := sql.Open("sqlite3", fmt.Sprintf("file:%s?_busy_timeout=5000&_journal_mode=%s&_synchronous=%s", replica.Path(name), tc.mode, tc.sync))
			if err != nil {
				t.Fatal(err)
			}
			defer rconn.Close()
			rconn.SetMaxOpenConns(1)

			// The writer commits until the primary is gone. Each row's seq
			// is recorded once its commit returned.
			const killAfter = 200
			var mu sync.Mutex
			var acked []int
			reached := make(chan struct{})
			done := make(chan error, 1)
			go func() {
				done <- litefs.WithHalt(replica.Path(name), func() error {
					for seq := 1; ; seq++ {
						if tc.switchToFull && seq == killAfter/2 {
							if _, err := rconn.Exec("PRAGMA synchronous=FULL"); err != nil {
								return err
							}
						}
						if _, err := rconn.Exec("INSERT INTO t (seq, v) VALUES (?, randomblob(200))", seq); err != nil {
							return err // expected once the primary is killed
						}
						mu.Lock()
						acked = append(acked, seq)
						mu.Unlock()
						if seq == killAfter {
							close(reached)
						}
					}
				})
			}()
			select {
			case <-reached:
			case err := <-done:
				t.Fatalf("the writer stopped after %d commits, before the crash: %v", len(acked), err)
			}
			primary.Kill(t)
			err = <-done
			mu.Lock()
			got := append([]int(nil), acked...)
			mu.Unlock()
			t.Logf("%d commits returned before the crash; the next failed with: %v", len(got), err)

			primary.Start(t)
			pconn = testutil.OpenDB(t, primary.Path(name), tc.mode)
			present := make(map[int]bool)
			rows, err := pconn.Query("SELECT seq FROM t")
			if err != nil {
				t.Fatal(err)
			}
			for rows.Next() {
				var seq int
				if err := rows.Scan(&seq); err != nil {
					t.Fatal(err)
				}
				present[seq] = true
			}
			if err := rows.Err(); err != nil {
				t.Fatal(err)
			}
			rows.Close()
			for _, seq := range got {
				if !present[seq] {
					t.Fatalf("row %d, whose commit returned on the replica, is missing on the primary after its crash (%d rows there, %d acknowledged)", seq, len(present), len(got))
				}
			}
			// The commit in flight when the primary died may have landed.
			if len(present) > len(got)+1 {
				t.Fatalf("%d rows on the primary, but only %d commits returned and one was in flight", len(present), len(got))
			}
			checkDB(t, primary, name, pconn)
			pconn.Close()

			// The replica follows the restarted primary to the same content.
			checkReplica(t, primary, replica, name, tc.mode)
		})
	}
}

// TestHaltForwardedCommitsVisibleOnPrimary: a connection on the primary
// that stays open sees each commit forwarded from a replica as soon as it
// returns (the primary's WAL index learns of it), through checkpoints and
// a WAL that outgrows what one grant keeps in it, and writes on after the
// lock is given back; every node ends with the same intact database.
func TestHaltForwardedCommitsVisibleOnPrimary(t *testing.T) {
	primary, replicas := haltCluster(t, 1)
	replica := replicas[0]
	const name = "seen.db"
	pconn := testutil.OpenDB(t, primary.Path(name), "WAL")
	pconn.SetMaxOpenConns(1)
	testutil.Exec(t, pconn, "CREATE TABLE t (seq INTEGER PRIMARY KEY, v BLOB)")
	replica.WaitPos(t, name, primary.Pos(t, name), syncTimeout)
	rconn := testutil.OpenDB(t, replica.Path(name), "WAL")
	rconn.SetMaxOpenConns(1)

	// Rows of 3 KiB take a page each: 45 commits of 100 rows go past the
	// 4,062 frames of the WAL index's first block.
	const commits, perCommit = 45, 100
	const rows = commits * perCommit
	err := litefs.WithHalt(replica.Path(name), func() error {
		for i := 1; i <= commits; i++ {
			q := fmt.Sprintf("INSERT INTO t (seq, v) %s SELECT %d + i, randomblob(3000) FROM s", testutil.Series(perCommit), (i-1)*perCommit)
			if _, err := rconn.Exec(q); err != nil {
				return err
			}
			if got := testutil.Count(t, pconn, "t"); got != i*perCommit {
				return fmt.Errorf("after commit %d the primary's open connection sees %d rows, want %d", i, got, i*perCommit)
			}
			if i%15 == 0 {
				testutil.Exec(t, pconn, "PRAGMA wal_checkpoint(PASSIVE)")
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	testutil.IntegrityCheck(t, pconn)
	testutil.Exec(t, pconn, "INSERT INTO t (seq, v) VALUES (?, 'from the primary')", rows+1)
	if got := testutil.Count(t, pconn, "t"); got != rows+1 {
		t.Fatalf("%d rows on the primary, want %d", got, rows+1)
	}
	checkDB(t, primary, name, pconn)
	checkReplica(t, primary, replica, name, "WAL")
}
