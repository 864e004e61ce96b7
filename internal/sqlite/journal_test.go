package sqlite

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// journalFixture is a hot rollback journal copied from a live SQLite
// transaction, with the database before the transaction and the database
// file as it was (partly overwritten by cache spills) at the moment of the
// copy.
type journalFixture struct {
	pageSize  uint32
	orig      []byte // database before the transaction
	origPages int64  // page_count before the transaction
	mid       []byte // database file while the transaction was open
	hot       []byte // the journal while the transaction was open
	after     []byte // the journal after COMMIT (nil if deleted)
}

// makeHotJournal runs a large transaction with a one-page cache, so that
// SQLite spills modified pages to the database file (syncing the journal
// first, which starts a new journal header segment each time), and copies
// the journal while the transaction is still open.
func makeHotJournal(t *testing.T, pageSize uint32, mode string) journalFixture {
	t.Helper()
	dir := t.TempDir()
	out := runSQL(t, dir, "db", fmt.Sprintf(`PRAGMA page_size=%d;
PRAGMA journal_mode=%s;
CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);
WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i<300) INSERT INTO t SELECT i, randomblob(%d) FROM c;
SELECT 'pages=' || (SELECT page_count FROM pragma_page_count());
.shell cp db orig.db
PRAGMA cache_size=1;
BEGIN;
UPDATE t SET v=randomblob(%d);
WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i<50) INSERT INTO t(v) SELECT randomblob(%d) FROM c;
.shell cp db-journal hot.journal
.shell cp db mid.db
COMMIT;
.shell cp db-journal after.journal 2>/dev/null || true
`, pageSize, mode, pageSize/3, pageSize/3, pageSize/3))
	f := journalFixture{
		pageSize:  pageSize,
		orig:      readFile(t, filepath.Join(dir, "orig.db")),
		origPages: outputValue(t, out, "pages"),
		mid:       readFile(t, filepath.Join(dir, "mid.db")),
		hot:       readFile(t, filepath.Join(dir, "hot.journal")),
	}
	if b, err := os.ReadFile(filepath.Join(dir, "after.journal")); err == nil {
		f.after = b
	}
	if int64(len(f.orig)) != f.origPages*int64(pageSize) {
		t.Fatalf("orig.db is %d bytes, want %d pages of %d", len(f.orig), f.origPages, pageSize)
	}
	return f
}

type journalPage struct {
	pgno uint32
	data []byte
}

func readJournal(t *testing.T, j []byte) (JournalRollback, bool, []journalPage) {
	t.Helper()
	var pages []journalPage
	rb, ok, err := ReadHotJournal(bytes.NewReader(j), int64(len(j)), func(pgno uint32, data []byte) error {
		pages = append(pages, journalPage{pgno, append([]byte(nil), data...)})
		return nil
	})
	if err != nil {
		t.Fatalf("ReadHotJournal: %v", err)
	}
	return rb, ok, pages
}

// journalRecord locates one record of a journal, found by a walk written
// independently of ReadHotJournal from the file format description.
type journalRecord struct {
	off  int64
	pgno uint32
}

// walkJournal lists the records of every header segment that carries the
// magic, following the format: header (magic, nRec, cksum init, db size,
// sector size, page size) padded to a sector, nRec records of
// (pgno, page, checksum), next header at the next sector boundary.
func walkJournal(t *testing.T, j []byte) []journalRecord {
	t.Helper()
	sector := int64(binary.BigEndian.Uint32(j[20:]))
	pageSize := int64(binary.BigEndian.Uint32(j[24:]))
	var recs []journalRecord
	for off := int64(0); off+28 <= int64(len(j)) && bytes.Equal(j[off:off+8], JournalMagic); {
		n := int64(binary.BigEndian.Uint32(j[off+8:]))
		r := off + sector
		for i := int64(0); i < n; i++ {
			recs = append(recs, journalRecord{r, binary.BigEndian.Uint32(j[r:])})
			r += pageSize + 8
		}
		off = (r + sector - 1) / sector * sector
	}
	return recs
}

func page(db []byte, pageSize uint32, pgno uint32) []byte {
	off := int64(pgno-1) * int64(pageSize)
	if off+int64(pageSize) > int64(len(db)) {
		return nil
	}
	return db[off : off+int64(pageSize)]
}

func TestReadHotJournalReal(t *testing.T) {
	sqlite3CLI(t)
	for _, tc := range []struct {
		pageSize uint32
		mode     string
	}{
		{1024, "delete"},
		{1024, "persist"},
		{4096, "delete"},
		{4096, "truncate"},
	} {
		t.Run(fmt.Sprintf("%d_%s", tc.pageSize, tc.mode), func(t *testing.T) {
			f := makeHotJournal(t, tc.pageSize, tc.mode)
			if !IsHotJournalHeader(f.hot) {
				t.Fatalf("the open transaction's journal has no magic: % x", f.hot[:16])
			}
			rb, ok, pages := readJournal(t, f.hot)
			if !ok {
				t.Fatal("ReadHotJournal: ok = false for a hot journal")
			}
			if rb.PageSize != tc.pageSize {
				t.Errorf("PageSize = %d, want %d", rb.PageSize, tc.pageSize)
			}
			if int64(rb.PageN) != f.origPages {
				t.Errorf("PageN = %d, want the original page count %d", rb.PageN, f.origPages)
			}

			// Every page reported is the original content of that page.
			seen := make(map[uint32]bool)
			for _, p := range pages {
				if seen[p.pgno] {
					t.Errorf("page %d reported twice", p.pgno)
				}
				seen[p.pgno] = true
				want := page(f.orig, tc.pageSize, p.pgno)
				if want == nil {
					t.Errorf("page %d reported, beyond the original %d pages", p.pgno, f.origPages)
					continue
				}
				if !bytes.Equal(p.data, want) {
					t.Errorf("page %d: journal content differs from the original page", p.pgno)
				}
			}

			// Every original page SQLite has already overwritten in the
			// database file must be reported, or rollback would lose it.
			changed := 0
			for pgno := uint32(1); int64(pgno) <= f.origPages; pgno++ {
				if bytes.Equal(page(f.mid, tc.pageSize, pgno), page(f.orig, tc.pageSize, pgno)) {
					continue
				}
				changed++
				if !seen[pgno] {
					t.Errorf("page %d was overwritten in the database but is not reported", pgno)
				}
			}
			if changed < 10 {
				t.Fatalf("only %d pages were spilled to the database; the fixture does not exercise rollback", changed)
			}

			// Playing the journal back over the spilled database restores
			// the original file exactly.
			restored := append([]byte(nil), f.mid...)
			if int64(len(restored)) < int64(rb.PageN)*int64(rb.PageSize) {
				t.Fatalf("database shrank during the transaction")
			}
			restored = restored[:int64(rb.PageN)*int64(rb.PageSize)]
			for _, p := range pages {
				copy(restored[int64(p.pgno-1)*int64(rb.PageSize):], p.data)
			}
			if !bytes.Equal(restored, f.orig) {
				t.Error("database with the journal played back differs from the original")
			}

			// The records walked independently are the pages reported, in order.
			recs := walkJournal(t, f.hot)
			if len(recs) != len(pages) {
				t.Fatalf("journal walk found %d records, ReadHotJournal reported %d", len(recs), len(pages))
			}
			for i := range recs {
				if recs[i].pgno != pages[i].pgno {
					t.Fatalf("record %d: walk says page %d, ReadHotJournal %d", i, recs[i].pgno, pages[i].pgno)
				}
			}
			segments := countSegments(f.hot)
			if segments < 2 {
				t.Errorf("journal has %d header segments; the cache spills should have produced several", segments)
			}
			t.Logf("journal: %d bytes, %d segments, %d pages reported, %d pages spilled to the database", len(f.hot), segments, len(pages), changed)
		})
	}
}

// countSegments counts the sectors that start with the journal magic.
func countSegments(j []byte) int {
	sector := int(binary.BigEndian.Uint32(j[20:]))
	n := 0
	for off := 0; off+8 <= len(j); off += sector {
		if bytes.Equal(j[off:off+8], JournalMagic) {
			n++
		}
	}
	return n
}

func TestReadHotJournalAfterCommit(t *testing.T) {
	sqlite3CLI(t)
	for _, mode := range []string{"persist", "truncate", "delete"} {
		t.Run(mode, func(t *testing.T) {
			f := makeHotJournal(t, 1024, mode)
			switch mode {
			case "persist":
				if len(f.after) < 28 {
					t.Fatalf("PERSIST journal after commit is %d bytes, want a zeroed header", len(f.after))
				}
				if !bytes.Equal(f.after[:28], make([]byte, 28)) {
					t.Fatalf("PERSIST journal header after commit is not zeroed: % x", f.after[:28])
				}
			case "truncate":
				if len(f.after) != 0 {
					t.Fatalf("TRUNCATE journal after commit is %d bytes", len(f.after))
				}
			case "delete":
				if f.after != nil {
					t.Fatalf("DELETE journal still exists after commit")
				}
			}
			if IsHotJournalHeader(f.after) {
				t.Fatal("IsHotJournalHeader = true after commit")
			}
			rb, ok, pages := readJournal(t, f.after)
			if ok || len(pages) != 0 || rb != (JournalRollback{}) {
				t.Fatalf("committed journal: ok=%v rb=%+v, %d pages; want not hot", ok, rb, len(pages))
			}
		})
	}
}

func TestReadHotJournalCorrupted(t *testing.T) {
	sqlite3CLI(t)
	f := makeHotJournal(t, 1024, "delete")
	_, _, all := readJournal(t, f.hot)
	recs := walkJournal(t, f.hot)
	if len(recs) < 6 || len(recs) != len(all) {
		t.Fatalf("fixture has %d records (%d reported); need several", len(recs), len(all))
	}
	ps := int64(f.pageSize)
	mid := len(recs) / 2
	for _, tc := range []struct {
		name   string
		record int
		mutate func(j []byte, off int64)
		want   int // pages reported
	}{
		{"checksum of first record", 0, func(j []byte, off int64) { j[off+4+ps+3]++ }, 0},
		{"checksum of a middle record", mid, func(j []byte, off int64) { j[off+4+ps] ^= 0x10 }, mid},
		{"sampled page byte of a middle record", mid, func(j []byte, off int64) { j[off+4+ps-200]++ }, mid},
		{"checksum of the last record", len(recs) - 1, func(j []byte, off int64) { j[off+4+ps+1] ^= 0xff }, len(recs) - 1},
		{"page number zero", mid, func(j []byte, off int64) { binary.BigEndian.PutUint32(j[off:], 0) }, mid},
		{"lock page number", mid, func(j []byte, off int64) { binary.BigEndian.PutUint32(j[off:], LockPgno(uint32(ps))) }, mid},
		{"truncated inside a record", mid, func(j []byte, off int64) {}, mid}, // handled below
		// Byte 0 of a page is not covered by SQLite's sparse checksum, so
		// damage there goes unnoticed, exactly as in SQLite.
		{"unsampled page byte", mid, func(j []byte, off int64) { j[off+4]++ }, len(recs)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j := append([]byte(nil), f.hot...)
			off := recs[tc.record].off
			tc.mutate(j, off)
			if tc.name == "truncated inside a record" {
				j = j[:off+100]
			}
			rb, ok, pages := readJournal(t, j)
			if !ok || int64(rb.PageN) != f.origPages {
				t.Fatalf("ok=%v PageN=%d, want a hot journal of %d pages", ok, rb.PageN, f.origPages)
			}
			if len(pages) != tc.want {
				t.Fatalf("%d pages reported, want %d (playback stops at the damaged record)", len(pages), tc.want)
			}
			for i := range pages {
				if pages[i].pgno != all[i].pgno {
					t.Fatalf("page %d: pgno %d, want %d", i, pages[i].pgno, all[i].pgno)
				}
				if tc.name != "unsampled page byte" && !bytes.Equal(pages[i].data, all[i].data) {
					t.Fatalf("page %d content changed", i)
				}
			}
		})
	}
}

// --- hand-built journals ---

type jrec struct {
	pgno     uint32
	fill     byte
	badCksum bool
}

type jseg struct {
	nRec   uint32 // 0xffffffff allowed; if 0 and recs set, len(recs) is used
	zero   bool   // write a zeroed (not yet synced) header
	dbSize uint32
	recs   []jrec
}

// buildJournal writes a journal the way SQLite lays it out; the checksum is
// computed here from the format description (initial value plus every
// 200th byte counting back from the end of the page, excluding offset 0).
func buildJournal(sector, pageSize, cksumInit uint32, segs []jseg) []byte {
	var j []byte
	for si, s := range segs {
		if si > 0 {
			for len(j)%int(sector) != 0 {
				j = append(j, 0)
			}
		}
		hdr := make([]byte, max(sector, 28))
		if !s.zero {
			copy(hdr, JournalMagic)
		}
		n := s.nRec
		if n == 0 {
			n = uint32(len(s.recs))
		}
		binary.BigEndian.PutUint32(hdr[8:], n)
		binary.BigEndian.PutUint32(hdr[12:], cksumInit)
		binary.BigEndian.PutUint32(hdr[16:], s.dbSize)
		binary.BigEndian.PutUint32(hdr[20:], sector)
		binary.BigEndian.PutUint32(hdr[24:], pageSize)
		j = append(j, hdr...)
		for _, r := range s.recs {
			rec := make([]byte, 4+pageSize+4)
			binary.BigEndian.PutUint32(rec, r.pgno)
			data := rec[4 : 4+pageSize]
			for i := range data {
				data[i] = r.fill + byte(i%7)
			}
			sum := cksumInit
			for i := int(pageSize) - 200; i > 0; i -= 200 {
				sum += uint32(data[i])
			}
			if r.badCksum {
				sum++
			}
			binary.BigEndian.PutUint32(rec[4+pageSize:], sum)
			j = append(j, rec...)
		}
	}
	return j
}

func TestJournalPageChecksum(t *testing.T) {
	for _, tc := range []struct {
		pageSize int
		set      map[int]byte
		want     uint32
	}{
		// Sampled offsets for 512: 312, 112.
		{512, map[int]byte{312: 1, 112: 2, 0: 100, 511: 100, 12: 100}, 1000 + 3},
		// For 1024: 824, 624, 424, 224, 24.
		{1024, map[int]byte{824: 1, 624: 2, 424: 3, 224: 4, 24: 5, 1023: 50, 0: 50}, 1000 + 15},
		{4096, map[int]byte{3896: 255, 96: 255, 4095: 1}, 1000 + 510},
	} {
		data := make([]byte, tc.pageSize)
		for i, v := range tc.set {
			data[i] = v
		}
		if got := journalPageChecksum(1000, data); got != tc.want {
			t.Errorf("pageSize %d: checksum = %d, want %d", tc.pageSize, got, tc.want)
		}
	}
	// All ones over 65536 bytes: offsets 65336, 65136, ..., 136 = 327 bytes.
	ones := bytes.Repeat([]byte{1}, 65536)
	if got := journalPageChecksum(0xffffffff, ones); got != 326 {
		t.Errorf("65536 ones with init 0xffffffff = %d, want 326 (wrapping)", got)
	}
}

func TestReadHotJournalSynthetic(t *testing.T) {
	const ps = 512
	lock := LockPgno(ps) // 2097153
	for _, tc := range []struct {
		name      string
		j         []byte
		wantOK    bool
		wantRB    JournalRollback
		wantPages []uint32
		wantFills []byte // first byte of each reported page, if checked
	}{
		{
			name:      "one segment",
			j:         buildJournal(512, ps, 7, []jseg{{dbSize: 10, recs: []jrec{{3, 30, false}, {1, 10, false}, {10, 100, false}}}}),
			wantOK:    true,
			wantRB:    JournalRollback{PageSize: ps, PageN: 10},
			wantPages: []uint32{3, 1, 10},
			wantFills: []byte{30, 10, 100},
		},
		{
			name:   "no records (database only grew): hot, nothing to copy",
			j:      buildJournal(512, ps, 7, []jseg{{dbSize: 4}}),
			wantOK: true,
			wantRB: JournalRollback{PageSize: ps, PageN: 4},
		},
		{
			name: "three segments with larger sector",
			j: buildJournal(4096, ps, 1, []jseg{
				{dbSize: 20, recs: []jrec{{2, 2, false}}},
				{dbSize: 99, recs: []jrec{{5, 5, false}, {6, 6, false}}}, // later db sizes are ignored
				{dbSize: 1, recs: []jrec{{20, 20, false}}},
			}),
			wantOK:    true,
			wantRB:    JournalRollback{PageSize: ps, PageN: 20},
			wantPages: []uint32{2, 5, 6, 20},
		},
		{
			name: "unsynced last segment (zeroed magic) is ignored",
			j: buildJournal(512, ps, 1, []jseg{
				{dbSize: 20, recs: []jrec{{2, 2, false}}},
				{zero: true, recs: []jrec{{3, 3, false}}},
			}),
			wantOK:    true,
			wantRB:    JournalRollback{PageSize: ps, PageN: 20},
			wantPages: []uint32{2},
		},
		{
			name: "segment after a zeroed one is not read",
			j: buildJournal(512, ps, 1, []jseg{
				{dbSize: 20, recs: []jrec{{2, 2, false}}},
				{zero: true, recs: []jrec{{3, 3, false}}},
				{recs: []jrec{{4, 4, false}}},
			}),
			wantOK:    true,
			wantRB:    JournalRollback{PageSize: ps, PageN: 20},
			wantPages: []uint32{2},
		},
		{
			name:      "nRec 0xffffffff: records counted from the file size",
			j:         append(buildJournal(512, ps, 3, []jseg{{nRec: 0xffffffff, dbSize: 9, recs: []jrec{{1, 1, false}, {2, 2, false}, {3, 3, false}}}}), make([]byte, 100)...),
			wantOK:    true,
			wantRB:    JournalRollback{PageSize: ps, PageN: 9},
			wantPages: []uint32{1, 2, 3},
		},
		{
			name:      "nRec larger than the file: torn tail",
			j:         buildJournal(512, ps, 3, []jseg{{nRec: 5, dbSize: 9, recs: []jrec{{1, 1, false}, {2, 2, false}}}}),
			wantOK:    true,
			wantRB:    JournalRollback{PageSize: ps, PageN: 9},
			wantPages: []uint32{1, 2},
		},
		{
			name:      "nRec smaller than the records present",
			j:         buildJournal(512, ps, 3, []jseg{{nRec: 1, dbSize: 9, recs: []jrec{{1, 1, false}, {2, 2, false}}}}),
			wantOK:    true,
			wantRB:    JournalRollback{PageSize: ps, PageN: 9},
			wantPages: []uint32{1},
		},
		{
			name:      "bad checksum stops playback",
			j:         buildJournal(512, ps, 3, []jseg{{dbSize: 9, recs: []jrec{{1, 1, false}, {2, 2, true}, {3, 3, false}}}}),
			wantOK:    true,
			wantRB:    JournalRollback{PageSize: ps, PageN: 9},
			wantPages: []uint32{1},
		},
		{
			name: "bad checksum stops later segments too",
			j: buildJournal(512, ps, 3, []jseg{
				{dbSize: 9, recs: []jrec{{1, 1, false}, {2, 2, true}}},
				{recs: []jrec{{3, 3, false}}},
			}),
			wantOK:    true,
			wantRB:    JournalRollback{PageSize: ps, PageN: 9},
			wantPages: []uint32{1},
		},
		{
			name:      "page zero stops playback",
			j:         buildJournal(512, ps, 3, []jseg{{dbSize: 9, recs: []jrec{{1, 1, false}, {0, 2, false}, {3, 3, false}}}}),
			wantOK:    true,
			wantRB:    JournalRollback{PageSize: ps, PageN: 9},
			wantPages: []uint32{1},
		},
		{
			name:      "lock page stops playback",
			j:         buildJournal(512, ps, 3, []jseg{{dbSize: 3000000, recs: []jrec{{1, 1, false}, {lock, 2, false}, {3, 3, false}}}}),
			wantOK:    true,
			wantRB:    JournalRollback{PageSize: ps, PageN: 3000000},
			wantPages: []uint32{1},
		},
		{
			name:      "page beyond the original size is skipped, playback continues",
			j:         buildJournal(512, ps, 3, []jseg{{dbSize: 5, recs: []jrec{{1, 1, false}, {6, 6, false}, {5, 5, false}}}}),
			wantOK:    true,
			wantRB:    JournalRollback{PageSize: ps, PageN: 5},
			wantPages: []uint32{1, 5},
		},
		{
			name: "only the first copy of a page is reported",
			j: buildJournal(512, ps, 3, []jseg{
				{dbSize: 5, recs: []jrec{{2, 20, false}, {3, 30, false}}},
				{recs: []jrec{{2, 21, false}, {4, 40, false}}},
			}),
			wantOK:    true,
			wantRB:    JournalRollback{PageSize: ps, PageN: 5},
			wantPages: []uint32{2, 3, 4},
			wantFills: []byte{20, 30, 40},
		},
		{
			name:      "page size 65536",
			j:         buildJournal(512, 65536, 3, []jseg{{dbSize: 2, recs: []jrec{{2, 9, false}}}}),
			wantOK:    true,
			wantRB:    JournalRollback{PageSize: 65536, PageN: 2},
			wantPages: []uint32{2},
		},
		{name: "empty", j: nil},
		{name: "shorter than a header", j: buildJournal(512, ps, 3, []jseg{{dbSize: 1}})[:27]},
		{name: "zeroed header", j: buildJournal(512, ps, 3, []jseg{{zero: true, dbSize: 5, recs: []jrec{{1, 1, false}}}})},
		{name: "all zero", j: make([]byte, 4096)},
		{name: "sector size 16", j: buildJournal(16, ps, 3, []jseg{{dbSize: 5, recs: []jrec{{1, 1, false}}}})},
		{name: "sector size 1000", j: buildJournal(1000, ps, 3, []jseg{{dbSize: 5, recs: []jrec{{1, 1, false}}}})},
		{name: "sector size 128K", j: buildJournal(0x20000, ps, 3, []jseg{{dbSize: 5, recs: []jrec{{1, 1, false}}}})},
		{name: "page size 1000", j: func() []byte {
			j := buildJournal(512, ps, 3, []jseg{{dbSize: 5, recs: []jrec{{1, 1, false}}}})
			binary.BigEndian.PutUint32(j[24:], 1000)
			return j
		}()},
		{name: "page size 0", j: func() []byte {
			j := buildJournal(512, ps, 3, []jseg{{dbSize: 5, recs: []jrec{{1, 1, false}}}})
			binary.BigEndian.PutUint32(j[24:], 0)
			return j
		}()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rb, ok, pages := readJournal(t, tc.j)
			if ok != tc.wantOK || rb != tc.wantRB {
				t.Fatalf("ReadHotJournal = %+v, ok=%v; want %+v, ok=%v", rb, ok, tc.wantRB, tc.wantOK)
			}
			var got []uint32
			for _, p := range pages {
				got = append(got, p.pgno)
				if len(p.data) != int(rb.PageSize) {
					t.Errorf("page %d: %d bytes, want %d", p.pgno, len(p.data), rb.PageSize)
				}
			}
			if !reflect.DeepEqual(got, tc.wantPages) {
				t.Fatalf("pages = %v, want %v", got, tc.wantPages)
			}
			for i, fill := range tc.wantFills {
				if pages[i].data[0] != fill {
					t.Errorf("page %d starts with %d, want %d", pages[i].pgno, pages[i].data[0], fill)
				}
			}
			if IsHotJournalHeader(tc.j) != (len(tc.j) >= 8 && bytes.Equal(tc.j[:8], JournalMagic)) {
				t.Errorf("IsHotJournalHeader disagrees with the magic")
			}
		})
	}
}

func TestIsHotJournalHeader(t *testing.T) {
	magic := []byte{0xd9, 0xd5, 0x05, 0xf9, 0x20, 0xa1, 0x63, 0xd7}
	for _, tc := range []struct {
		name string
		b    []byte
		want bool
	}{
		{"magic", magic, true},
		{"magic and more", append(append([]byte(nil), magic...), 1, 2, 3), true},
		{"seven bytes", magic[:7], false},
		{"empty", nil, false},
		{"zeroed", make([]byte, 28), false},
		{"last byte differs", append(append([]byte(nil), magic[:7]...), 0xd6), false},
	} {
		if got := IsHotJournalHeader(tc.b); got != tc.want {
			t.Errorf("%s: IsHotJournalHeader = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestReadHotJournalCallbackError(t *testing.T) {
	j := buildJournal(512, 512, 3, []jseg{{dbSize: 9, recs: []jrec{{1, 1, false}, {2, 2, false}, {3, 3, false}}}})
	stop := errors.New("stop")
	calls := 0
	_, ok, err := ReadHotJournal(bytes.NewReader(j), int64(len(j)), func(pgno uint32, data []byte) error {
		calls++
		if pgno == 2 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || ok {
		t.Fatalf("ReadHotJournal = ok %v, err %v; want the callback's error", ok, err)
	}
	if calls != 2 {
		t.Fatalf("callback called %d times, want 2", calls)
	}
}

func TestReadHotJournalReadError(t *testing.T) {
	j := buildJournal(512, 512, 3, []jseg{{dbSize: 9, recs: []jrec{{1, 1, false}, {2, 2, false}}}})
	for _, failAt := range []int64{0, 600, 512 + 520 + 10} {
		r := errReaderAt{bytes.NewReader(j), failAt}
		if _, _, err := ReadHotJournal(r, int64(len(j)), func(uint32, []byte) error { return nil }); !errors.Is(err, errRead) {
			t.Errorf("failAt %d: error = %v, want the read error", failAt, err)
		}
	}
}
