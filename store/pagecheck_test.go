package store

import (
	"bytes"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	_ "github.com/mattn/go-sqlite3"

	"github.com/litefs-project/litefs/internal/sqlite"
	"github.com/litefs-project/litefs/ltx"
)

// Tests of the structure check of forwarded changesets, against database
// files that real SQLite writes: every transaction of a broad workload
// passes, and damaged pages are refused with the page named.

// fileContent is a database file's content as the check's oldContent.
func fileContent(b []byte, pageSize uint32) oldContent {
	return oldContent{
		pageSize: pageSize,
		pageN:    uint32(len(b) / int(pageSize)),
		read: func(pgno uint32, buf []byte) error {
			off := int(pgno-1) * int(pageSize)
			if off+len(buf) > len(b) {
				return fmt.Errorf("page %d beyond the file", pgno)
			}
			copy(buf, b[off:])
			return nil
		},
	}
}

// changesetOf encodes the pages of after that differ from before (and
// every page beyond before's end) as a changeset, as a commit would.
func changesetOf(t testing.TB, before, after []byte, pageSize uint32) []byte {
	t.Helper()
	n := uint32(len(after) / int(pageSize))
	pages := make(map[uint32][]byte)
	var pgnos []uint32
	for pgno := uint32(1); pgno <= n; pgno++ {
		if pgno == sqlite.LockPgno(pageSize) {
			continue
		}
		off := int(pgno-1) * int(pageSize)
		p := after[off : off+int(pageSize)]
		if off+int(pageSize) <= len(before) && bytes.Equal(p, before[off:off+int(pageSize)]) {
			continue
		}
		pages[pgno] = p
		pgnos = append(pgnos, pgno)
	}
	return encodeChangeset(t, pageSize, n, pages, pgnos)
}

func encodeChangeset(t testing.TB, pageSize, commit uint32, pages map[uint32][]byte, pgnos []uint32) []byte {
	t.Helper()
	hdr := ltx.Header{Version: ltx.Version, PageSize: pageSize, Commit: commit, MinTXID: 2, MaxTXID: 2,
		Timestamp: time.Now().UnixMilli(), PreApplyChecksum: ltx.ChecksumFlag | 1}
	return encodeLTXUnchecked(t, hdr, pages, pgnos)
}

// sqliteFile is a database file written by real SQLite, in rollback mode
// so that the file holds each committed state.
type sqliteFile struct {
	t        testing.TB
	path     string
	conn     *sql.DB
	pageSize uint32
}

func newSQLiteFile(t testing.TB, pageSize uint32, pragmas ...string) *sqliteFile {
	t.Helper()
	path := filepath.Join(t.TempDir(), "db")
	conn, err := sql.Open("sqlite3", "file:"+path+"?_journal_mode=DELETE")
	if err != nil {
		t.Fatal(err)
	}
	conn.SetMaxOpenConns(1)
	t.Cleanup(func() { conn.Close() })
	f := &sqliteFile{t: t, path: path, conn: conn, pageSize: pageSize}
	f.exec(fmt.Sprintf("PRAGMA page_size = %d", pageSize))
	for _, p := range pragmas {
		f.exec(p)
	}
	return f
}

func (f *sqliteFile) exec(q string) {
	f.t.Helper()
	if _, err := f.conn.Exec(q); err != nil {
		f.t.Fatalf("%s: %v", q, err)
	}
}

func (f *sqliteFile) content() []byte {
	f.t.Helper()
	b, err := os.ReadFile(f.path)
	if err != nil {
		f.t.Fatal(err)
	}
	return b
}

// workload is a broad mix of what applications do, each statement its own
// transaction: tables and indexes made and dropped, rows of every size
// (overflow pages in tables and indexes), updates, deletes, savepoints,
// vacuums.
var pageCheckWorkload = []string{
	"CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT, v BLOB)",
	"CREATE INDEX t_k ON t (k)",
	"CREATE TABLE w (k TEXT PRIMARY KEY, v TEXT) WITHOUT ROWID",
	"INSERT INTO t (k, v) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 300) SELECT hex(randomblob(8)), randomblob(50) FROM s",
	"INSERT INTO t (k, v) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 20) SELECT hex(randomblob(1500)), randomblob(20000) FROM s",
	"INSERT INTO w WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 200) SELECT hex(randomblob(4)) || i, hex(randomblob(abs(random()) % 3000)) FROM s",
	"UPDATE t SET v = randomblob(abs(random()) % 9000) WHERE id % 3 = 0",
	"DELETE FROM t WHERE id % 4 = 1",
	"UPDATE w SET v = 'short' WHERE length(k) % 2 = 0",
	"DELETE FROM w WHERE length(v) > 2000",
	"CREATE TABLE big (b BLOB)",
	"INSERT INTO big VALUES (randomblob(300000))",
	"UPDATE big SET b = randomblob(100000)",
	"SAVEPOINT a; INSERT INTO t (k, v) VALUES ('sp', randomblob(5000)); SAVEPOINT b; DELETE FROM t WHERE id < 100; ROLLBACK TO b; DELETE FROM big; RELEASE a",
	"DROP INDEX t_k",
	"CREATE INDEX t_kv ON t (k, v)",
	"DROP TABLE big",
	"PRAGMA incremental_vacuum(5)",
	"DELETE FROM t WHERE id % 2 = 0",
	"PRAGMA incremental_vacuum",
	"VACUUM",
	"INSERT INTO t (k, v) SELECT k || 'x', v FROM t",
	"DROP TABLE w",
	"DELETE FROM t",
	"VACUUM",
}

// TestPageCheckAcceptsSQLite: every transaction of the workload, in every
// auto-vacuum mode, with and without secure_delete, at the smallest,
// usual and largest page sizes, passes the check.
func TestPageCheckAcceptsSQLite(t *testing.T) {
	for _, pageSize := range []uint32{512, 4096, 65536} {
		for _, vacuum := range []string{"NONE", "FULL", "INCREMENTAL"} {
			for _, secure := range []string{"OFF", "ON"} {
				t.Run(fmt.Sprintf("%d/%s/secure_delete=%s", pageSize, vacuum, secure), func(t *testing.T) {
					f := newSQLiteFile(t, pageSize, "PRAGMA auto_vacuum = "+vacuum, "PRAGMA secure_delete = "+secure)
					steps := append([]string{}, pageCheckWorkload...)
					// Switching auto-vacuum on or off takes a VACUUM, which
					// rewrites every page.
					steps = append(steps, "PRAGMA auto_vacuum = FULL", "CREATE TABLE again (v)", "INSERT INTO again VALUES (randomblob(7000))", "VACUUM",
						"PRAGMA auto_vacuum = NONE", "VACUUM", "PRAGMA auto_vacuum = INCREMENTAL", "VACUUM", "DELETE FROM again")
					for _, q := range steps {
						before := f.content()
						f.exec(q)
						after := f.content()
						if len(after) == 0 {
							continue
						}
						cs := changesetOf(t, before, after, pageSize)
						if err := checkChangeset(bytes.NewReader(cs), fileContent(before, pageSize)); err != nil {
							t.Fatalf("%s: refused: %v", q, err)
						}
					}
				})
			}
		}
	}
}

// TestPageCheckRefusesDamage: changesets that would corrupt a real
// database are refused, naming the page.
func TestPageCheckRefusesDamage(t *testing.T) {
	f := newSQLiteFile(t, 4096)
	for _, q := range pageCheckWorkload[:6] {
		f.exec(q)
	}
	f.exec("PRAGMA journal_mode = WAL") // write version 2
	f.exec("PRAGMA journal_mode = DELETE")
	base := f.content()
	const ps = 4096
	n := uint32(len(base) / ps)
	page := func(pgno uint32) []byte { return append([]byte(nil), base[(pgno-1)*ps:pgno*ps]...) }
	// A page of the first table that is not its root: the schema names
	// page 2, so look for another b-tree page.
	var interior uint32
	for pgno := uint32(3); pgno <= n; pgno++ {
		if p := page(pgno); p[0] == btreeLeafTable || p[0] == btreeInteriorIndex || p[0] == btreeLeafIndex {
			interior = pgno
			break
		}
	}
	if interior == 0 {
		t.Fatal("test bug: no b-tree page beyond page 2")
	}
	bumped := func() []byte { // page 1 as a commit rewrites it
		p := page(1)
		binary.BigEndian.PutUint32(p[24:], binary.BigEndian.Uint32(p[24:])+1)
		binary.BigEndian.PutUint32(p[92:], binary.BigEndian.Uint32(p[24:]))
		return p
	}
	type change map[uint32][]byte
	for _, tc := range []struct {
		name   string
		commit uint32
		pages  func() change
		page   uint32
		want   string
	}{
		{"junk page 2", n, func() change { return change{2: bytes.Repeat([]byte{0xab}, ps)} }, 2, "b-tree"},
		{"junk page 2 and page 1", n, func() change { return change{1: bumped(), 2: bytes.Repeat([]byte{0xab}, ps)} }, 2, "b-tree"},
		{"zeroed table root", n, func() change { return change{1: bumped(), 2: make([]byte, ps)} }, 2, "b-tree"},
		{"zeroed b-tree page", n, func() change { return change{1: bumped(), interior: make([]byte, ps)} }, interior, "b-tree"},
		{"bad magic", n, func() change { p := bumped(); copy(p, "SQLite format 4\x00"); return change{1: p} }, 1, "magic"},
		{"page size field", n, func() change { p := bumped(); binary.BigEndian.PutUint16(p[16:], 8192); return change{1: p} }, 1, "page size"},
		{"write version", n, func() change { p := bumped(); p[18] = 7; return change{1: p} }, 1, "version"},
		{"reserved bytes", n, func() change { p := bumped(); p[20] = 8; return change{1: p} }, 1, "reserved"},
		{"payload fractions", n, func() change { p := bumped(); p[21] = 65; return change{1: p} }, 1, "payload fractions"},
		{"in-header size", n, func() change { p := bumped(); binary.BigEndian.PutUint32(p[28:], n+5); return change{1: p} }, 1, "size"},
		{"size without page 1", n + 1, func() change { return change{n + 1: make([]byte, ps)} }, 1, "size"},
		{"schema format", n, func() change { p := bumped(); binary.BigEndian.PutUint32(p[44:], 9); return change{1: p} }, 1, "schema format"},
		{"freelist trunk", n, func() change { p := bumped(); binary.BigEndian.PutUint32(p[32:], n+10); return change{1: p} }, 1, "freelist"},
		{"schema b-tree type", n, func() change { p := bumped(); p[100] = btreeLeafIndex; return change{1: p} }, 1, "table b-tree"},
		{"cell pointer out of the page", n, func() change {
			p := page(2)
			binary.BigEndian.PutUint16(p[p0(p)+8+4*btreeExtra(p):], 4095)
			return change{1: bumped(), 2: p}
		}, 2, "cell 0"},
		{"cell content area", n, func() change {
			p := page(2)
			binary.BigEndian.PutUint16(p[p0(p)+5:], 3)
			return change{1: bumped(), 2: p}
		}, 2, "content area"},
		{"cell count", n, func() change {
			p := page(2)
			binary.BigEndian.PutUint16(p[p0(p)+3:], 2000)
			return change{1: bumped(), 2: p}
		}, 2, "cells"},
		{"freeblock beyond the page", n, func() change {
			p := page(2)
			binary.BigEndian.PutUint16(p[p0(p)+1:], 4094)
			return change{1: bumped(), 2: p}
		}, 2, "freeblock"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pages := tc.pages()
			var pgnos []uint32
			for pgno := uint32(1); pgno <= tc.commit+1; pgno++ {
				if _, ok := pages[pgno]; ok {
					pgnos = append(pgnos, pgno)
				}
			}
			hdr := ltx.Header{Version: ltx.Version, PageSize: ps, Commit: tc.commit, MinTXID: 2, MaxTXID: 2, Timestamp: 1, PreApplyChecksum: ltx.ChecksumFlag | 1}
			cs := encodeLTXUnchecked(t, hdr, pages, pgnos)
			err := checkChangeset(bytes.NewReader(cs), fileContent(base, ps))
			if !errors.Is(err, ErrCorruptChangeset) || !strings.Contains(err.Error(), fmt.Sprintf("page %d:", tc.page)) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want a refusal naming page %d and %q", err, tc.page, tc.want)
			}
		})
	}

	// A page size change, with every page of a valid database at the new
	// size, is refused: the page size is the primary's to change.
	g := newSQLiteFile(t, 8192)
	g.exec("CREATE TABLE t (v)")
	other := g.content()
	cs := changesetOf(t, nil, other, 8192)
	if err := checkChangeset(bytes.NewReader(cs), fileContent(base, ps)); !errors.Is(err, ErrCorruptChangeset) || !strings.Contains(err.Error(), "page size") {
		t.Fatalf("page size change: %v", err)
	}
	// The same database is accepted as the first content of an empty one.
	if err := checkChangeset(bytes.NewReader(cs), oldContent{}); err != nil {
		t.Fatalf("first content of an empty database: %v", err)
	}
}

// p0 is the offset of a page's b-tree header (page 1's follows the
// database header).
func p0(p []byte) int {
	if string(p[:len(sqlite.Magic)]) == sqlite.Magic {
		return sqlite.HeaderSize
	}
	return 0
}

// btreeExtra is 1 for an interior page, whose header has a right child.
func btreeExtra(p []byte) int {
	if t := p[p0(p)]; t == btreeInteriorIndex || t == btreeInteriorTable {
		return 1
	}
	return 0
}

// encodeLTXUnchecked encodes pages as a changeset whatever they hold.
func encodeLTXUnchecked(t testing.TB, hdr ltx.Header, pages map[uint32][]byte, pgnos []uint32) []byte {
	t.Helper()
	var buf bytes.Buffer
	enc, err := ltx.NewEncoder(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if err := enc.EncodeHeader(hdr); err != nil {
		t.Fatal(err)
	}
	for _, pgno := range pgnos {
		if err := enc.EncodePage(ltx.PageHeader{Pgno: pgno}, pages[pgno]); err != nil {
			t.Fatalf("encode page %d: %v", pgno, err)
		}
	}
	enc.SetPostApplyChecksum(ltx.ChecksumFlag | 2)
	if err := enc.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// BenchmarkPageCheck: the check of a one-row insert's changeset, as the
// primary runs it for each forwarded commit.
func BenchmarkPageCheck(b *testing.B) {
	f := newSQLiteFile(b, 4096)
	f.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
	for i := 0; i < 2000; i++ {
		f.exec("INSERT INTO t (v) VALUES ('forwarded row')")
	}
	before := f.content()
	f.exec("INSERT INTO t (v) VALUES ('forwarded row')")
	cs := changesetOf(b, before, f.content(), 4096)
	old := fileContent(before, 4096)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := checkChangeset(bytes.NewReader(cs), old); err != nil {
			b.Fatal(err)
		}
	}
}
