package sqlcheck

import (
	"bytes"
	"crypto/rand"
	"database/sql"
	"os"
	"path/filepath"
	"strings"
	"testing"

	_ "github.com/mattn/go-sqlite3"
)

// makeDB writes a database with a table, an index and enough rows for
// several b-tree levels and overflow pages, in the given journal mode, and
// returns its bytes.
func makeDB(t *testing.T, mode string) []byte {
	t.Helper()
	path := filepath.Join(t.TempDir(), "src.db")
	db, err := sql.Open("sqlite3", "file:"+path+"?_journal_mode="+mode)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		"CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, v BLOB)",
		"CREATE INDEX t_name ON t (name)",
		"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000) INSERT INTO t (name, v) SELECT 'row' || i, randomblob(i % 7 * 1000) FROM n",
		"PRAGMA wal_checkpoint(TRUNCATE)",
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestCheck(t *testing.T) {
	valid := makeDB(t, "DELETE")
	pageSize := int(valid[16])<<8 | int(valid[17])
	scribbled := bytes.Clone(valid)
	// Over the cells of the first leaf page of the index, past its header.
	for pg := 1; ; pg++ {
		if pg*pageSize >= len(scribbled) {
			t.Fatal("no index leaf page")
		}
		if p := scribbled[pg*pageSize:]; p[0] == 0x0a {
			for off := 8; off < pageSize; off++ {
				p[off] = 0x5a
			}
			break
		}
	}
	junk := make([]byte, 8192)
	rand.Read(junk)

	tests := []struct {
		name string
		file []byte
		want string // "" for a sound database
	}{
		{"rollback journal mode", valid, ""},
		{"WAL mode", makeDB(t, "WAL"), ""},
		{"empty", nil, "not a SQLite database"},
		{"random bytes", junk, "not a SQLite database"},
		{"header only", valid[:100], "integrity_check"},
		{"b-tree page overwritten", scribbled, "integrity_check failed"},
		{"truncated to half", valid[:len(valid)/pageSize/2*pageSize], "integrity_check"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "upload.db")
			if err := os.WriteFile(path, tc.file, 0o600); err != nil {
				t.Fatal(err)
			}
			err := Check(path)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("a sound database was refused: %v", err)
			case tc.want != "" && err == nil:
				t.Fatalf("accepted; want an error mentioning %q", tc.want)
			case tc.want != "" && !strings.Contains(err.Error(), tc.want):
				t.Fatalf("error %q does not mention %q", err, tc.want)
			}
			// The check reads only: the file is as it was, and nothing
			// (journal, WAL, WAL index) appeared beside it.
			got, rerr := os.ReadFile(path)
			if rerr != nil {
				t.Fatal(rerr)
			}
			if !bytes.Equal(got, tc.file) {
				t.Fatal("the check changed the file")
			}
			if ents, _ := os.ReadDir(dir); len(ents) != 1 {
				t.Fatalf("the check left files beside the database: %v", ents)
			}
		})
	}
}
