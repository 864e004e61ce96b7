package tests

import (
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/litefs-project/litefs/internal/testutil"
)

var journalModes = []string{"DELETE", "TRUNCATE", "PERSIST", "WAL"}

// checkDB verifies what a user would check: the database is intact, its
// position matches its content, and replaying its changeset log from empty
// produces the same checksum and the same rows.
func checkDB(t *testing.T, n *testutil.Node, name string, conn *sql.DB) {
	t.Helper()
	testutil.IntegrityCheck(t, conn)
	pos := n.Pos(t, name)
	replayPath, replayPos := testutil.ReplayLog(t, n.LogDir(name))
	if replayPos != pos {
		t.Fatalf("replayed log ends at %s, database is at %s", replayPos, pos)
	}
	replay := testutil.OpenDB(t, replayPath, "DELETE")
	testutil.IntegrityCheck(t, replay)
	if got, want := testutil.Digest(t, replay), testutil.Digest(t, conn); got != want {
		t.Fatalf("replayed rows differ from the mounted database:\nreplay: %s\nmount:  %s", got, want)
	}
}

func TestJournalModes(t *testing.T) {
	for _, mode := range journalModes {
		t.Run(mode, func(t *testing.T) {
			n := testutil.StartNode(t, testutil.NodeConfig{})
			path := n.Path("app.db")
			conn := testutil.OpenDB(t, path, mode)
			testutil.Exec(t, conn, "CREATE TABLE t (id INTEGER PRIMARY KEY, writer TEXT, v BLOB)")
			start := n.Pos(t, "app.db").TXID

			// A deterministic part: commits count, rollbacks do not.
			const commits = 20
			for i := 0; i < commits; i++ {
				testutil.Exec(t, conn, "INSERT INTO t (writer, v) VALUES ('seq', randomblob(100))")
				tx, err := conn.Begin()
				if err != nil {
					t.Fatal(err)
				}
				if _, err := tx.Exec("INSERT INTO t (writer, v) VALUES ('rolled-back', randomblob(5000))"); err != nil {
					t.Fatal(err)
				}
				if err := tx.Rollback(); err != nil {
					t.Fatal(err)
				}
			}
			if got := n.Pos(t, "app.db").TXID - start; got != commits {
				t.Fatalf("%d commits produced %d changesets", commits, got)
			}

			// Concurrent writers: connections in this process and sqlite3
			// processes, all in the same journal mode.
			var wg sync.WaitGroup
			errs := make(chan error, 16)
			for w := 0; w < 3; w++ {
				wg.Add(1)
				go func(w int) {
					defer wg.Done()
					c, err := sql.Open("sqlite3", fmt.Sprintf("file:%s?_busy_timeout=10000&_journal_mode=%s&_txlock=immediate", path, mode))
					if err != nil {
						errs <- err
						return
					}
					defer c.Close()
					for i := 0; i < 40; i++ {
						if _, err := c.Exec("INSERT INTO t (writer, v) VALUES (?, randomblob(abs(random()) % 3000))", fmt.Sprintf("conn%d", w)); err != nil {
							errs <- fmt.Errorf("conn %d: %w", w, err)
							return
						}
						if i%10 == 0 {
							if _, err := c.Exec("UPDATE t SET v = randomblob(200) WHERE id % 7 = ?", i%7); err != nil {
								errs <- err
								return
							}
						}
					}
				}(w)
			}
			for p := 0; p < 2; p++ {
				wg.Add(1)
				go func(p int) {
					defer wg.Done()
					var script strings.Builder
					fmt.Fprintf(&script, ".timeout 10000\nPRAGMA journal_mode=%s;\n", mode)
					for i := 0; i < 30; i++ {
						fmt.Fprintf(&script, "INSERT INTO t (writer, v) VALUES ('proc%d', randomblob(%d));\n", p, 100+i*50)
					}
					cmd := exec.Command("sqlite3", path)
					cmd.Stdin = strings.NewReader(script.String())
					if out, err := cmd.CombinedOutput(); err != nil || strings.Contains(string(out), "Error") {
						errs <- fmt.Errorf("sqlite3 process %d: %v: %s", p, err, out)
					}
				}(p)
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}

			var rows int
			if err := conn.QueryRow("SELECT count(*) FROM t").Scan(&rows); err != nil {
				t.Fatal(err)
			}
			if want := commits + 3*40 + 2*30; rows != want {
				t.Fatalf("%d rows, want %d", rows, want)
			}
			checkDB(t, n, "app.db", conn)

			// After a restart the position and content are unchanged.
			pos := n.Pos(t, "app.db")
			conn.Close()
			n.Restart(t)
			if got := n.Pos(t, "app.db"); got != pos {
				t.Fatalf("after restart at %s, want %s", got, pos)
			}
			checkDB(t, n, "app.db", testutil.OpenDB(t, path, mode))
		})
	}
}

func TestPageSizes(t *testing.T) {
	n := testutil.StartNode(t, testutil.NodeConfig{})
	for _, size := range []int{512, 1024, 4096, 16384, 65536} {
		for _, mode := range []string{"DELETE", "WAL"} {
			name := fmt.Sprintf("p%d-%s.db", size, mode)
			conn := testutil.OpenDB(t, n.Path(name), "DELETE")
			testutil.Exec(t, conn, fmt.Sprintf("PRAGMA page_size=%d", size))
			testutil.Exec(t, conn, "PRAGMA journal_mode="+mode)
			testutil.Exec(t, conn, "CREATE TABLE t (v BLOB)")
			for i := 0; i < 10; i++ {
				testutil.Exec(t, conn, "INSERT INTO t WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 20) SELECT randomblob(700) FROM s")
			}
			var got int
			if err := conn.QueryRow("PRAGMA page_size").Scan(&got); err != nil || got != size {
				t.Fatalf("%s: page size %d (%v), want %d", name, got, err, size)
			}
			checkDB(t, n, name, conn)
		}
	}
}

// TestSchemaChanges covers what rewrites or shrinks a database: VACUUM,
// deleting most rows with auto_vacuum, switching journal modes back and
// forth, and a truncating checkpoint.
func TestSchemaChanges(t *testing.T) {
	n := testutil.StartNode(t, testutil.NodeConfig{})
	conn := testutil.OpenDB(t, n.Path("s.db"), "DELETE")
	conn.SetMaxOpenConns(1)
	steps := []string{
		"PRAGMA auto_vacuum=FULL",
		"CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)",
		"INSERT INTO t (v) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 300) SELECT randomblob(3000) FROM s",
		"DELETE FROM t WHERE id % 3 != 0",
		"VACUUM",
		"PRAGMA journal_mode=WAL",
		"INSERT INTO t (v) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 200) SELECT randomblob(2000) FROM s",
		"DELETE FROM t WHERE id < 100",
		"PRAGMA wal_checkpoint(TRUNCATE)",
		"UPDATE t SET v = randomblob(10)",
		"VACUUM",
		"PRAGMA journal_mode=DELETE",
		"CREATE INDEX t_v ON t (v)",
		"PRAGMA journal_mode=TRUNCATE",
		"DROP INDEX t_v",
		"PRAGMA journal_mode=PERSIST",
		"INSERT INTO t (v) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 50) SELECT randomblob(100) FROM s",
		"PRAGMA journal_mode=WAL",
		"VACUUM",
	}
	var sizes []int64
	for _, step := range steps {
		testutil.Exec(t, conn, step)
		checkDB(t, n, "s.db", conn)
		fi, err := os.Stat(n.Path("s.db"))
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, fi.Size())
	}
	if sizes[4] >= sizes[2] {
		t.Fatalf("VACUUM after deleting rows did not shrink the database (%d -> %d)", sizes[2], sizes[4])
	}
}

func TestRejectedOperations(t *testing.T) {
	n := testutil.StartNode(t, testutil.NodeConfig{})
	conn := testutil.OpenDB(t, n.Path("r.db"), "DELETE")
	testutil.Exec(t, conn, "CREATE TABLE t (v)")
	pos := n.Pos(t, "r.db")

	t.Run("unaligned write", func(t *testing.T) {
		f, err := os.OpenFile(n.Path("r.db"), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteAt([]byte("not a page"), 4096+17); !errors.Is(err, syscall.EINVAL) {
			t.Fatalf("unaligned write: got %v, want EINVAL", err)
		}
		if _, err := f.WriteAt(make([]byte, 100), 0); !errors.Is(err, syscall.EINVAL) {
			t.Fatalf("page 1 without a SQLite header: got %v, want EINVAL", err)
		}
	})
	t.Run("garbage new database", func(t *testing.T) {
		err := os.WriteFile(n.Path("junk.db"), []byte("hello, world"), 0o644)
		if !errors.Is(err, syscall.EINVAL) {
			t.Fatalf("writing a non-SQLite file: got %v, want EINVAL", err)
		}
	})
	t.Run("directory", func(t *testing.T) {
		if err := os.Mkdir(n.Path("sub"), 0o755); !errors.Is(err, syscall.EPERM) {
			t.Fatalf("mkdir: got %v, want EPERM", err)
		}
		if _, err := os.Stat(n.Path("sub")); !os.IsNotExist(err) {
			t.Fatalf("a refused directory exists: %v", err)
		}
		if err := os.WriteFile(n.Path(".hidden"), nil, 0o644); !errors.Is(err, syscall.EINVAL) {
			t.Fatalf("creating a hidden database name: got %v, want EINVAL", err)
		}
		if err := os.WriteFile(n.Path("x-lock"), nil, 0o644); err == nil {
			t.Fatal("creating a file named like a lock file of a missing database succeeded")
		}
	})
	t.Run("position file is read-only", func(t *testing.T) {
		if err := os.WriteFile(n.Path("r.db-pos"), []byte("x"), 0o644); !errors.Is(err, syscall.EACCES) {
			t.Fatalf("write to -pos: got %v, want EACCES", err)
		}
	})
	if got := n.Pos(t, "r.db"); got != pos {
		t.Fatalf("rejected operations moved the position from %s to %s", pos, got)
	}
	checkDB(t, n, "r.db", conn)
}

func TestCopyDatabaseIntoMount(t *testing.T) {
	n := testutil.StartNode(t, testutil.NodeConfig{})
	src := filepath.Join(t.TempDir(), "src.db")
	local := testutil.OpenDB(t, src, "DELETE")
	testutil.Exec(t, local, "CREATE TABLE t (v)")
	testutil.Exec(t, local, "INSERT INTO t WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 1000) SELECT randomblob(500) FROM s")
	local.Close()

	if out, err := exec.Command("cp", src, n.Path("copy.db")).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
	conn := testutil.OpenDB(t, n.Path("copy.db"), "DELETE")
	if pos := n.Pos(t, "copy.db"); pos.TXID != 1 {
		t.Fatalf("a copied-in database is at %s, want one snapshot changeset", pos)
	}
	checkDB(t, n, "copy.db", conn)
	if got, want := testutil.Digest(t, conn), testutil.Digest(t, testutil.OpenDB(t, src, "DELETE")); got != want {
		t.Fatalf("copy differs from source")
	}
}

func TestDeleteDatabase(t *testing.T) {
	n := testutil.StartNode(t, testutil.NodeConfig{})
	conn := testutil.OpenDB(t, n.Path("d.db"), "WAL")
	testutil.Exec(t, conn, "CREATE TABLE t (v)")
	conn.Close()
	if err := os.Remove(n.Path("d.db")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(n.Path("d.db-pos")); !os.IsNotExist(err) {
		t.Fatalf("-pos of a deleted database: %v", err)
	}
	if _, err := os.Stat(n.LogDir("d.db")); !os.IsNotExist(err) {
		t.Fatalf("changeset log of a deleted database: %v", err)
	}
	// A new database of the same name starts over.
	conn = testutil.OpenDB(t, n.Path("d.db"), "DELETE")
	testutil.Exec(t, conn, "CREATE TABLE u (v)")
	if pos := n.Pos(t, "d.db"); pos.TXID != 1 {
		t.Fatalf("recreated database at %s, want txid 1", pos)
	}
	checkDB(t, n, "d.db", conn)
}
