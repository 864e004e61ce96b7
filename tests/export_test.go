package tests

import (
	"bytes"
	"crypto/rand"
	"database/sql"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/litefs-project/litefs/internal/testutil"
)

// TestExport: a copy exported from a replica is the primary's database,
// byte for byte once the primary's WAL is checkpointed.
func TestExport(t *testing.T) {
	primary := testutil.StartNode(t, testutil.NodeConfig{Name: "primary"})
	replica := testutil.StartReplica(t, primary, testutil.NodeConfig{Name: "replica"})
	conn := testutil.OpenDB(t, primary.Path("x.db"), "WAL")
	testutil.Exec(t, conn, "CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
	for i := 0; i < 50; i++ {
		testutil.Exec(t, conn, "INSERT INTO t (v) VALUES (randomblob(500))")
	}
	testutil.Exec(t, conn, "PRAGMA wal_checkpoint(TRUNCATE)")
	replica.WaitPos(t, "x.db", primary.Pos(t, "x.db"), syncTimeout)

	out := filepath.Join(t.TempDir(), "x-export.db")
	if msg, code := runLiteFS(t, "export", "-url", replica.URL(), "-name", "x.db", out); code != 0 {
		t.Fatalf("export: %s", msg)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(primary.Path("x.db"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("export (%d bytes) differs from the primary's checkpointed database (%d bytes)", len(got), len(want))
	}
	exported := testutil.OpenDB(t, out, "")
	testutil.IntegrityCheck(t, exported)
	if a, b := testutil.Digest(t, exported), testutil.Digest(t, conn); a != b {
		t.Fatalf("exported rows differ:\n%s\n%s", a, b)
	}

	if msg, code := runLiteFS(t, "export", "-url", replica.URL(), "-name", "missing.db", out); code == 0 || !strings.Contains(msg, "no database") {
		t.Fatalf("export of a missing database: exit %d: %s", code, msg)
	}
}

// TestImport: a valid file replaces or creates a database everywhere as one
// transaction; garbage and corrupt files are refused and change nothing.
func TestImport(t *testing.T) {
	primary := testutil.StartNode(t, testutil.NodeConfig{Name: "primary"})
	replicas := []*testutil.Node{
		testutil.StartReplica(t, primary, testutil.NodeConfig{Name: "replica1"}),
		testutil.StartReplica(t, primary, testutil.NodeConfig{Name: "replica2"}),
	}
	conn := testutil.OpenDB(t, primary.Path("app.db"), "WAL")
	testutil.Exec(t, conn, "CREATE TABLE old (v)")
	testutil.Exec(t, conn, "INSERT INTO old VALUES (1)")

	dir := t.TempDir()
	src := filepath.Join(dir, "src.db")
	sconn, err := sql.Open("sqlite3", src)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		"CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)",
		"CREATE INDEX users_name ON users (name)",
		"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500) INSERT INTO users (name) SELECT 'user' || i FROM n",
	} {
		if _, err := sconn.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	want := testutil.Digest(t, sconn)
	sconn.Close()

	for _, name := range []string{"app.db", "new.db"} {
		var beforeTXID uint64 // zero for a new database
		if _, err := os.Stat(primary.Path(name)); err == nil {
			beforeTXID = uint64(primary.Pos(t, name).TXID)
		}
		if msg, code := runLiteFS(t, "import", "-url", primary.URL(), "-name", name, src); code != 0 {
			t.Fatalf("import %s: %s", name, msg)
		}
		pos := primary.Pos(t, name)
		if uint64(pos.TXID) != beforeTXID+1 {
			t.Fatalf("import of %s moved from txid %d to %s, want one transaction", name, beforeTXID, pos)
		}
		for _, n := range append([]*testutil.Node{primary}, replicas...) {
			n.WaitPos(t, name, pos, syncTimeout)
			c := testutil.OpenDB(t, n.Path(name), "")
			testutil.IntegrityCheck(t, c)
			if got := testutil.Digest(t, c); got != want {
				t.Fatalf("%s on %s differs from the imported file", name, n.Config.Name)
			}
			c.Close()
		}
	}

	// Refusals change nothing.
	garbage := filepath.Join(dir, "garbage.db")
	junk := make([]byte, 8192)
	rand.Read(junk)
	os.WriteFile(garbage, junk, 0o644)

	corrupt := filepath.Join(dir, "corrupt.db")
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	pageSize := int(b[16])<<8 | int(b[17])
	for off := len(b) - 2*pageSize + 8; off < len(b)-pageSize; off++ {
		b[off] = 0x5a // scribble over a b-tree page past its header
	}
	os.WriteFile(corrupt, b, 0o644)

	before := primary.Pos(t, "app.db")
	for _, tc := range []struct {
		file, url, want string
	}{
		{garbage, primary.URL(), "not a SQLite database"},
		{corrupt, primary.URL(), "integrity"},
		{src, replicas[0].URL(), "not the primary"},
	} {
		msg, code := runLiteFS(t, "import", "-url", tc.url, "-name", "app.db", tc.file)
		if code == 0 || !strings.Contains(msg, tc.want) {
			t.Fatalf("import %s via %s: exit %d, %q; want a refusal mentioning %q", filepath.Base(tc.file), tc.url, code, msg, tc.want)
		}
	}
	if got := primary.Pos(t, "app.db"); got != before {
		t.Fatalf("a refused import moved the primary from %s to %s", before, got)
	}
	checkReplica(t, primary, replicas[0], "app.db", "")
}
