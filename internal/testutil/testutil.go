// Package testutil holds helpers shared by litefs's integration tests:
// running litefs nodes as real processes with real FUSE mounts, opening
// databases through a mount with a real SQLite driver, and checking a
// database against its changeset log.
//
// Nodes always run in their own process. A FUSE daemon and a SQLite client
// in one process can deadlock in the kernel: unmapping SQLite's shared
// memory file writes its dirty pages back through the daemon while holding
// the address-space lock the daemon's own memory allocation needs.
package testutil

import (
	"crypto/sha256"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	_ "github.com/mattn/go-sqlite3" // the SQLite driver every test uses

	"github.com/litefs-project/litefs/ltx"
)

// RequireFUSE fails the test when FUSE mounts are impossible here. It does
// not skip: a suite that silently skips its real-mount tests proves nothing.
func RequireFUSE(t T) {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Fatalf("FUSE is unavailable (%v); the integration tests need /dev/fuse", err)
	}
	if _, err := exec.LookPath("fusermount3"); err != nil {
		t.Fatalf("fusermount3 not found; install fuse3 (make deps)")
	}
}

// OpenDB opens a database with a real SQLite driver. mode is a journal
// mode (DELETE, TRUNCATE, PERSIST, WAL); the connection waits up to 10 s
// for locks.
func OpenDB(t T, path, mode string) *sql.DB {
	t.Helper()
	dsn := fmt.Sprintf("file:%s?_busy_timeout=10000&_journal_mode=%s&_txlock=immediate", path, mode)
	db, err := sql.Open("sqlite3", dsn)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Ping(); err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// Exec runs a statement on db, failing the test on error.
func Exec(t T, db *sql.DB, query string, args ...any) {
	t.Helper()
	if _, err := db.Exec(query, args...); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
}

// Series returns a SQL table expression with n rows numbered i = 1..n,
// for "INSERT ... " + Series(n) + " SELECT ... FROM s".
func Series(n int) string {
	return fmt.Sprintf("WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < %d)", n)
}

// IntegrityCheck fails the test unless PRAGMA integrity_check says ok.
func IntegrityCheck(t T, db *sql.DB) {
	t.Helper()
	var res string
	if err := db.QueryRow("PRAGMA integrity_check").Scan(&res); err != nil {
		t.Fatal(err)
	}
	if res != "ok" {
		t.Fatalf("integrity_check: %s", res)
	}
}

// Count returns the number of rows in table.
func Count(t T, db *sql.DB, table string) int {
	t.Helper()
	var n int
	if err := db.QueryRow(fmt.Sprintf("SELECT count(*) FROM %q", table)).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// Digest returns a summary of every table's rows (name, count, and a hash
// of the ordered contents), for comparing two copies of a database.
func Digest(t T, db *sql.DB) string {
	t.Helper()
	rows, err := db.Query("SELECT name FROM sqlite_schema WHERE type='table' ORDER BY name")
	if err != nil {
		t.Fatal(err)
	}
	var tables []string
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			t.Fatal(err)
		}
		tables = append(tables, name)
	}
	rows.Close()

	var b strings.Builder
	for _, name := range tables {
		rows, err := db.Query(fmt.Sprintf("SELECT * FROM %q ORDER BY 1", name))
		if err != nil {
			t.Fatalf("digest %s: %v", name, err)
		}
		cols, _ := rows.Columns()
		vals := make([]sql.RawBytes, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		h := sha256.New()
		n := 0
		for rows.Next() {
			if err := rows.Scan(ptrs...); err != nil {
				t.Fatal(err)
			}
			for _, v := range vals {
				fmt.Fprintf(h, "%d:%s,", len(v), v)
			}
			h.Write([]byte{'\n'})
			n++
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		rows.Close()
		fmt.Fprintf(&b, "%s:%d:%x;", name, n, h.Sum(nil)[:8])
	}
	return b.String()
}

// FileChecksum returns the LTX checksum of a plain database file.
func FileChecksum(t T, path string, pageSize int) ltx.Checksum {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sum, err := ltx.ChecksumReader(f, pageSize)
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

// ReplayLog rebuilds a database from the changeset log in logDir into a
// new file, verifying every changeset (see ltx.Log.Replay), and returns
// the file's path and the position reached. The log is opened read-only,
// so a running node may be appending to it.
func ReplayLog(t T, logDir string) (string, ltx.Pos) {
	t.Helper()
	l, err := ltx.OpenLog(logDir, ltx.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	path := filepath.Join(t.TempDir(), "replay.db")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	pos, err := l.Replay(f, 0)
	if err != nil {
		t.Fatalf("replay %s: %v", logDir, err)
	}
	if pos != l.Pos() {
		t.Fatalf("replay of %s stopped at %s, log ends at %s", logDir, pos, l.Pos())
	}
	return path, pos
}
