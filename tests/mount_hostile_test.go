package tests

import (
	"database/sql"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/litefs-project/litefs/internal/testutil"
)

// These tests do to a mount what no SQLite would: truncate a database from
// outside a transaction, create files with names that display as something
// else, change modes and owners. Each is refused, and nothing changes on
// the node or its replicas.

// pageCount returns PRAGMA page_count.
func pageCount(t *testing.T, conn *sql.DB) int {
	t.Helper()
	var n int
	if err := conn.QueryRow("PRAGMA page_count").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// fileSize returns the size of a file in the mount.
func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// TestTruncateOutsideTransactionRefused truncates a database in every way a
// program can while no SQLite transaction is running: each is refused with
// EINVAL, and the database, its position, its replica and its recovery
// after a crash are as they were.
func TestTruncateOutsideTransactionRefused(t *testing.T) {
	for _, mode := range []string{"DELETE", "WAL"} {
		t.Run(mode, func(t *testing.T) {
			primary := testutil.StartNode(t, testutil.NodeConfig{Name: "primary"})
			replica := testutil.StartReplica(t, primary, testutil.NodeConfig{Name: "replica"})
			const rows = 500
			path := primary.Path("t.db")
			conn := testutil.OpenDB(t, path, mode)
			testutil.Exec(t, conn, "CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
			testutil.Exec(t, conn, "INSERT INTO t (v) "+testutil.Series(rows-100)+" SELECT randomblob(1000) FROM s")
			// In WAL mode the database file holds the first rows and the
			// WAL the last ones: the connection stays open, so they are
			// not checkpointed.
			testutil.Exec(t, conn, "PRAGMA wal_checkpoint")
			testutil.Exec(t, conn, "INSERT INTO t (v) "+testutil.Series(100)+" SELECT randomblob(1000) FROM s")
			pos := primary.Pos(t, "t.db")
			size := fileSize(t, path)
			if size < 3*4096 {
				t.Fatalf("test bug: database file is only %d bytes", size)
			}

			truncations := []struct {
				name string
				do   func() error
				// harmless in WAL mode: it keeps every page only the
				// database file holds, as a checkpoint does
				walOK bool
			}{
				{name: "truncate(2) to one page", do: func() error { return os.Truncate(path, 4096) }},
				{name: "truncate(2) to zero", do: func() error { return os.Truncate(path, 0) }},
				{name: "truncate(2) larger", do: func() error { return os.Truncate(path, size+8192) }, walOK: true},
				{name: "ftruncate(2) through a handle", do: func() error {
					f, err := os.OpenFile(path, os.O_RDWR, 0)
					if err != nil {
						return err
					}
					defer f.Close()
					return f.Truncate(4096)
				}},
				{name: "open with O_TRUNC", do: func() error {
					f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
					if err == nil {
						f.Close()
					}
					return err
				}},
				{name: "truncate(2) while another process holds the write lock", do: func() error {
					// SQLite's RESERVED byte, locked as a writer would:
					// its lock explains only its own truncations.
					h := holdLock(t, path, true, 0x40000001, 1)
					defer h.release(t)
					return os.Truncate(path, 4096)
				}},
				{name: "truncate -s 4096", do: func() error {
					out, err := exec.Command("truncate", "-s", "4096", path).CombinedOutput()
					if err == nil {
						return nil
					}
					if strings.Contains(string(out), "Invalid argument") {
						return syscall.EINVAL
					}
					return errors.New(string(out))
				}},
			}
			for _, tr := range truncations {
				err := tr.do()
				switch {
				case mode == "WAL" && tr.walOK:
					if err != nil {
						t.Errorf("%s: %v", tr.name, err)
					}
					size = fileSize(t, path)
				case !errors.Is(err, syscall.EINVAL):
					t.Errorf("%s: got %v, want EINVAL", tr.name, err)
				}
				if got := fileSize(t, path); got != size {
					t.Fatalf("%s: the database file is %d bytes, was %d", tr.name, got, size)
				}
				if got := primary.Pos(t, "t.db"); got != pos {
					t.Fatalf("%s: position moved from %s to %s", tr.name, pos, got)
				}
			}
			if !primary.LogContains("refused a truncation of the database file") {
				t.Error("the refusals were not logged")
			}

			testutil.IntegrityCheck(t, conn)
			if n := testutil.Count(t, conn, "t"); n != rows {
				t.Fatalf("%d rows after the refused truncations, want %d", n, rows)
			}
			checkDB(t, primary, "t.db", conn)
			checkReplica(t, primary, replica, "t.db", mode)
			conn.Close()

			// A crash now: recovery finds the content the log describes
			// and writes nothing.
			primary.Kill(t)
			primary.Start(t)
			if got := primary.Pos(t, "t.db"); got != pos {
				t.Fatalf("after a restart the position is %s, was %s", got, pos)
			}
			if primary.LogContains("did not match the changeset log") {
				t.Fatal("recovery rewrote the database as a new changeset")
			}
			conn = testutil.OpenDB(t, path, mode)
			testutil.IntegrityCheck(t, conn)
			if n := testutil.Count(t, conn, "t"); n != rows {
				t.Fatalf("%d rows after the restart, want %d", n, rows)
			}
			checkReplica(t, primary, replica, "t.db", mode)
		})
	}
}

// TestVacuumShrinksAndReplicates shrinks databases the ways SQLite does, in
// every journal mode: VACUUM after deleting most rows, a rolled-back
// transaction that had grown the file, and in WAL mode a truncating
// checkpoint. The file shrinks on the primary, and the replica has the same
// content, page for page.
func TestVacuumShrinksAndReplicates(t *testing.T) {
	primary := testutil.StartNode(t, testutil.NodeConfig{Name: "primary"})
	replica := testutil.StartReplica(t, primary, testutil.NodeConfig{Name: "replica"})
	for _, mode := range []string{"DELETE", "TRUNCATE", "PERSIST", "MEMORY", "WAL"} {
		t.Run(mode, func(t *testing.T) {
			name := strings.ToLower(mode) + ".db"
			path := primary.Path(name)
			conn := testutil.OpenDB(t, path, mode)
			conn.SetMaxOpenConns(1)
			testutil.Exec(t, conn, "CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
			testutil.Exec(t, conn, "INSERT INTO t (v) "+testutil.Series(2000)+" SELECT randomblob(1000) FROM s")
			testutil.Exec(t, conn, "DELETE FROM t WHERE id % 10 != 0")
			before := pageCount(t, conn)

			// A transaction that grows the file, rolled back: SQLite cuts
			// the file back as it plays its journal back.
			tx, err := conn.Begin()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec("INSERT INTO t (v) " + testutil.Series(500) + " SELECT randomblob(2000) FROM s"); err != nil {
				t.Fatal(err)
			}
			if err := tx.Rollback(); err != nil {
				t.Fatal(err)
			}
			if got := pageCount(t, conn); got != before {
				t.Fatalf("page count %d after a rollback, was %d", got, before)
			}

			testutil.Exec(t, conn, "VACUUM")
			if mode == "WAL" {
				testutil.Exec(t, conn, "PRAGMA wal_checkpoint(TRUNCATE)")
			}
			after := pageCount(t, conn)
			if after*3 > before {
				t.Fatalf("VACUUM left %d pages of %d", after, before)
			}
			if got, want := fileSize(t, path), int64(after)*4096; got != want {
				t.Fatalf("database file is %d bytes after VACUUM, want %d (%d pages)", got, want, after)
			}
			testutil.IntegrityCheck(t, conn)
			if n := testutil.Count(t, conn, "t"); n != 200 {
				t.Fatalf("%d rows after VACUUM, want 200", n)
			}
			checkDB(t, primary, name, conn)

			pos := primary.Pos(t, name)
			replica.WaitPos(t, name, pos, syncTimeout)
			rconn := testutil.OpenDB(t, replica.Path(name), mode)
			if got := pageCount(t, rconn); got != after {
				t.Fatalf("replica has %d pages, primary %d", got, after)
			}
			rconn.Close()
			// A replica's WAL stays empty: its database file is the whole
			// content, and its checksum is the primary's position.
			if got := testutil.FileChecksum(t, replica.Path(name), 4096); got != pos.PostApplyChecksum {
				t.Fatalf("replica's file checksum %s, primary's position %s", got, pos)
			}
			checkReplica(t, primary, replica, name, mode)
		})
	}
}

// TestHostileNamesRefused creates files whose names would display as
// something else, inject lines into logs or drive a terminal: each create
// fails with EINVAL, and no database appears on the primary or its replica.
func TestHostileNamesRefused(t *testing.T) {
	primary := testutil.StartNode(t, testutil.NodeConfig{Name: "primary"})
	replica := testutil.StartReplica(t, primary, testutil.NodeConfig{Name: "replica"})
	names := []string{
		"a\nb.db",
		"evil\u202egpj.db",
		"\u200ex.db", "x\u200f.db",
		"x\u202a.db", "x\u202b.db", "x\u202c.db", "x\u202d.db",
		"x\u2066.db", "x\u2067.db", "x\u2068.db", "x\u2069.db",
		"tab\t.db", "esc\x1b[31m.db", "del\x7f.db", "nel\u0085.db", "csi\u009b.db",
		"bad\xff.db", "\xc3.db",
		" ", "   ", " lead.db", "trail.db ",
	}
	for _, name := range names {
		f, err := os.OpenFile(primary.Path(name), os.O_RDWR|os.O_CREATE, 0o644)
		if err == nil {
			f.Close()
		}
		if !errors.Is(err, syscall.EINVAL) {
			t.Errorf("create %q: got %v, want EINVAL", name, err)
		}
		if _, err := os.Stat(primary.Path(name)); !os.IsNotExist(err) {
			t.Errorf("%q exists after a refused create: %v", name, err)
		}
	}
	// SQLite creating one fails the same way.
	conn, err := sql.Open("sqlite3", "file:"+primary.Path("sql\u202e.db"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec("CREATE TABLE t (v)"); err == nil {
		t.Error("SQLite created a database named with a right-to-left override")
	}
	conn.Close()

	// A valid database replicates, so the replica is following: then
	// nothing else reached it.
	ok := testutil.OpenDB(t, primary.Path("ok.db"), "DELETE")
	testutil.Exec(t, ok, "CREATE TABLE t (v)")
	ok.Close()
	replica.WaitPos(t, "ok.db", primary.Pos(t, "ok.db"), syncTimeout)
	for _, n := range []*testutil.Node{primary, replica} {
		ents, err := os.ReadDir(filepath.Join(n.DataDir, "dbs"))
		if err != nil {
			t.Fatal(err)
		}
		var dbs []string
		for _, e := range ents {
			dbs = append(dbs, e.Name())
		}
		if !slices.Equal(dbs, []string{"ok.db"}) {
			t.Errorf("%s holds databases %q, want only ok.db", n.Config.Name, dbs)
		}
		ents, err = os.ReadDir(n.Mnt)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			if !strings.HasPrefix(e.Name(), "ok.db") && !strings.HasPrefix(e.Name(), ".") {
				t.Errorf("%s lists %q", n.Config.Name, e.Name())
			}
		}
	}
}

// TestChmodChownRefused changes the modes and owners of files in the mount,
// which it cannot keep: each change fails with EPERM and stat shows what it
// did before. Setting what is already there, and times, succeed, and SQLite
// (which, as root, sets the owner of every journal and WAL it creates to
// the database's) never asks for a change the mount refuses.
func TestChmodChownRefused(t *testing.T) {
	n := testutil.StartNode(t, testutil.NodeConfig{})
	for _, mode := range []string{"DELETE", "WAL"} {
		conn := testutil.OpenDB(t, n.Path(strings.ToLower(mode)+".db"), mode)
		testutil.Exec(t, conn, "CREATE TABLE t (v)")
		testutil.Exec(t, conn, "INSERT INTO t VALUES (1)")
		conn.Close()
	}
	// As root, SQLite sets the owner of each journal and WAL it creates.
	const refusal = "fuse: setattr failed"
	if c := logCount(t, n, refusal); c != 0 {
		t.Fatalf("SQLite (euid %d) had %d setattr requests refused", os.Geteuid(), c)
	}

	for _, name := range []string{"delete.db", "delete.db-pos", "wal.db"} {
		path := n.Path(name)
		before, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		st := before.Sys().(*syscall.Stat_t)
		other := st.Uid + 1000
		pos := n.Pos(t, strings.TrimSuffix(name, "-pos"))

		refused := []struct {
			what string
			do   func() error
		}{
			{"chmod 0600", func() error { return os.Chmod(path, 0o600) }},
			{"chmod 0777", func() error { return os.Chmod(path, 0o777) }},
			{"chmod setuid", func() error { return os.Chmod(path, before.Mode().Perm()|os.ModeSetuid) }},
			{"chown to another user", func() error { return os.Chown(path, int(other), -1) }},
			{"chown to another group", func() error { return os.Chown(path, -1, int(st.Gid+1000)) }},
			{"chown to another user and group", func() error { return os.Lchown(path, int(other), int(other)) }},
		}
		for _, r := range refused {
			if err := r.do(); !errors.Is(err, syscall.EPERM) {
				t.Errorf("%s: %s: got %v, want EPERM", name, r.what, err)
			}
		}
		if out, err := exec.Command("chmod", "go-r", path).CombinedOutput(); err == nil || !strings.Contains(string(out), "Operation not permitted") {
			t.Errorf("%s: chmod(1) go-r: %v: %s", name, err, out)
		}

		// What is already so may be set again, and times are accepted.
		if err := os.Chmod(path, before.Mode().Perm()); err != nil {
			t.Errorf("%s: chmod to its own mode: %v", name, err)
		}
		if err := os.Chown(path, int(st.Uid), int(st.Gid)); err != nil {
			t.Errorf("%s: chown to its own owner: %v", name, err)
		}
		if name != "delete.db-pos" {
			if out, err := exec.Command("touch", path).CombinedOutput(); err != nil {
				t.Errorf("%s: touch: %v: %s", name, err, out)
			}
		}

		after, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		ast := after.Sys().(*syscall.Stat_t)
		if after.Mode() != before.Mode() || ast.Uid != st.Uid || ast.Gid != st.Gid || after.Size() != before.Size() {
			t.Errorf("%s: stat changed from %v %d:%d %d bytes to %v %d:%d %d bytes", name,
				before.Mode(), st.Uid, st.Gid, before.Size(), after.Mode(), ast.Uid, ast.Gid, after.Size())
		}
		if got := n.Pos(t, strings.TrimSuffix(name, "-pos")); got != pos {
			t.Errorf("%s: position moved from %s to %s", name, pos, got)
		}
	}

	// SQLite still writes in both modes after all this, and asks for
	// nothing that is refused.
	refusals := logCount(t, n, refusal)
	for _, mode := range []string{"DELETE", "WAL"} {
		name := strings.ToLower(mode) + ".db"
		conn := testutil.OpenDB(t, n.Path(name), mode)
		testutil.Exec(t, conn, "INSERT INTO t VALUES (2)")
		if c := testutil.Count(t, conn, "t"); c != 2 {
			t.Fatalf("%s: %d rows, want 2", name, c)
		}
		checkDB(t, n, name, conn)
		conn.Close()
	}
	if c := logCount(t, n, refusal); c != refusals {
		t.Fatalf("SQLite had %d setattr requests refused", c-refusals)
	}
}

// logCount counts the lines of a node's log that contain s.
func logCount(t *testing.T, n *testutil.Node, s string) int {
	t.Helper()
	b, err := os.ReadFile(n.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), s)
}
