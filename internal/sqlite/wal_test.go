package sqlite

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// walFixture is a real WAL written by SQLite: five committed transactions
// on a database whose base file was copied before the first of them.
type walFixture struct {
	pageSize  uint32
	base      []byte   // database file before the transactions
	wal       []byte   // WAL after all transactions
	ends      []int64  // WAL size after each transaction
	commits   []uint32 // database size in pages after each transaction
	smallRoot uint32   // root page of table "small"
}

const walTxns = 5

// makeWAL runs SQLite to produce a WAL with walTxns committed transactions.
// Every transaction increments small.v, so the value SQLite reads back says
// how many transactions it recovered from a WAL. Transactions 1 and 4 touch
// only the page of "small"; the others add many pages.
func makeWAL(t *testing.T, pageSize uint32) walFixture {
	t.Helper()
	dir := t.TempDir()
	bump := "UPDATE small SET v=v+1;"
	grow := "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i<%d) INSERT INTO big(b) SELECT randomblob(%d) FROM c;"
	txns := []string{
		bump,
		"BEGIN;" + bump + fmt.Sprintf(grow, 20, pageSize-100) + "COMMIT;",
		"BEGIN;" + bump + "UPDATE big SET b=randomblob(50) WHERE id%3=0; COMMIT;",
		bump,
		"BEGIN;" + fmt.Sprintf(grow, 5, 2*pageSize) + bump + "COMMIT;",
	}
	var script strings.Builder
	fmt.Fprintf(&script, `PRAGMA page_size=%d;
CREATE TABLE small(v);
INSERT INTO small VALUES(0);
CREATE TABLE big(id INTEGER PRIMARY KEY, b BLOB);
PRAGMA journal_mode=WAL;
PRAGMA wal_autocheckpoint=0;
SELECT 'root=' || (SELECT rootpage FROM sqlite_schema WHERE name='small');
.shell cp db base.db
`, pageSize)
	for i, txn := range txns {
		fmt.Fprintf(&script, "%s\n.shell cp db-wal wal.%d\nSELECT 'pages%d=' || (SELECT page_count FROM pragma_page_count());\n", txn, i+1, i+1)
	}
	out := runSQL(t, dir, "db", script.String())

	f := walFixture{
		pageSize:  pageSize,
		base:      readFile(t, filepath.Join(dir, "base.db")),
		wal:       readFile(t, filepath.Join(dir, fmt.Sprintf("wal.%d", walTxns))),
		smallRoot: uint32(outputValue(t, out, "root")),
	}
	for i := 1; i <= walTxns; i++ {
		fi, err := os.Stat(filepath.Join(dir, fmt.Sprintf("wal.%d", i)))
		if err != nil {
			t.Fatal(err)
		}
		f.ends = append(f.ends, fi.Size())
		f.commits = append(f.commits, uint32(outputValue(t, out, fmt.Sprintf("pages%d", i))))
	}
	// Sanity: SQLite appended whole frames for each transaction.
	frame := int64(WALFrameHeaderSize + pageSize)
	prev := int64(WALHeaderSize)
	for i, end := range f.ends {
		if end <= prev || (end-prev)%frame != 0 {
			t.Fatalf("WAL size after txn %d is %d (previous %d): not whole frames", i+1, end, prev)
		}
		prev = end
	}
	return f
}

// frameCount returns the number of frames of transaction i (0-based).
func (f walFixture) frameCount(i int) int {
	start := int64(WALHeaderSize)
	if i > 0 {
		start = f.ends[i-1]
	}
	return int((f.ends[i] - start) / int64(WALFrameHeaderSize+f.pageSize))
}

func (f walFixture) frameOffset(txn, frame int) int64 {
	start := int64(WALHeaderSize)
	if txn > 0 {
		start = f.ends[txn-1]
	}
	return start + int64(frame)*int64(WALFrameHeaderSize+f.pageSize)
}

// sqliteRecovered opens a copy of the base database with wal as its WAL in
// the sqlite3 CLI and returns how many transactions SQLite recovered.
func sqliteRecovered(t *testing.T, base, wal []byte) int64 {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "db"), base, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "db-wal"), wal, 0o644); err != nil {
		t.Fatal(err)
	}
	return outputValue(t, runSQL(t, dir, "db", "SELECT 'v=' || v FROM small;\n"), "v")
}

func scanAll(t *testing.T, wal []byte) (WALScan, []WALTxn) {
	t.Helper()
	var txns []WALTxn
	scan, err := ScanWAL(bytes.NewReader(wal), int64(len(wal)), func(txn WALTxn) error {
		txn.Frames = append([]WALFrameRef(nil), txn.Frames...)
		txns = append(txns, txn)
		return nil
	})
	if err != nil {
		t.Fatalf("ScanWAL: %v", err)
	}
	return scan, txns
}

func TestParseWALHeaderReal(t *testing.T) {
	sqlite3CLI(t)
	for _, pageSize := range []uint32{512, 4096, 65536} {
		t.Run(fmt.Sprint(pageSize), func(t *testing.T) {
			dir := t.TempDir()
			runSQL(t, dir, "db", fmt.Sprintf(`PRAGMA page_size=%d;
PRAGMA journal_mode=WAL;
CREATE TABLE t(x);
.shell cp db-wal wal
`, pageSize))
			wal := readFile(t, filepath.Join(dir, "wal"))
			h, err := ParseWALHeader(wal)
			if err != nil {
				t.Fatal(err)
			}
			if h.Magic != binary.BigEndian.Uint32(wal[0:]) || (h.Magic != 0x377f0682 && h.Magic != 0x377f0683) {
				t.Errorf("Magic = %#x", h.Magic)
			}
			if h.BigEndianChecksum() != (wal[3] == 0x83) {
				t.Errorf("BigEndianChecksum() = %v with magic %#x", h.BigEndianChecksum(), h.Magic)
			}
			if h.PageSize != pageSize {
				t.Errorf("PageSize = %d, want %d", h.PageSize, pageSize)
			}
			// A fresh WAL has not been checkpointed, and SQLite's own
			// header checksum covers the fields before it.
			if h.CheckpointSeq != 0 {
				t.Errorf("CheckpointSeq = %d, want 0", h.CheckpointSeq)
			}
			if s1, s2 := WALChecksum(h.BigEndianChecksum(), 0, 0, wal[:24]); s1 != h.Checksum1 || s2 != h.Checksum2 {
				t.Errorf("header checksum %08x/%08x, SQLite wrote %08x/%08x", s1, s2, h.Checksum1, h.Checksum2)
			}
			if got := h.FrameSize(); got != int64(pageSize)+24 {
				t.Errorf("FrameSize() = %d, want %d", got, pageSize+24)
			}
			if got := h.FrameOffset(3); got != 32+3*(int64(pageSize)+24) {
				t.Errorf("FrameOffset(3) = %d", got)
			}
			// The file is one header plus whole frames, as FrameOffset says.
			if n := int64(len(wal)) - WALHeaderSize; n <= 0 || n%h.FrameSize() != 0 {
				t.Errorf("WAL size %d is not header plus whole frames of %d", len(wal), h.FrameSize())
			}
		})
	}
}

// withHeaderChecksum recomputes the header checksum of a modified header so
// that only the intended field is invalid. It uses the byte order the magic
// asks for.
func withHeaderChecksum(b []byte) []byte {
	be := b[3]&1 == 1
	s1, s2 := WALChecksum(be, 0, 0, b[:24])
	binary.BigEndian.PutUint32(b[24:], s1)
	binary.BigEndian.PutUint32(b[28:], s2)
	return b
}

func TestParseWALHeaderInvalid(t *testing.T) {
	sqlite3CLI(t)
	dir := t.TempDir()
	runSQL(t, dir, "db", "PRAGMA journal_mode=WAL;\nCREATE TABLE t(x);\n.shell cp db-wal wal\n")
	real := readFile(t, filepath.Join(dir, "wal"))[:WALHeaderSize]
	if _, err := ParseWALHeader(real); err != nil {
		t.Fatalf("real header rejected: %v", err)
	}
	mod := func(f func(b []byte) []byte) []byte {
		return f(append([]byte(nil), real...))
	}
	for _, tc := range []struct {
		name    string
		b       []byte
		wantErr string // "" means valid
	}{
		{"short", real[:31], "bytes"},
		{"empty", nil, "bytes"},
		{"bad magic", mod(func(b []byte) []byte { b[0] = 0x12; return withHeaderChecksum(b) }), "bad magic"},
		{"magic 0x377f0684", mod(func(b []byte) []byte { b[3] = 0x84; return withHeaderChecksum(b) }), "bad magic"},
		{"bad checksum 1", mod(func(b []byte) []byte { b[27] ^= 1; return b }), "checksum"},
		{"bad checksum 2", mod(func(b []byte) []byte { b[31] ^= 0x80; return b }), "checksum"},
		{"salt changed without checksum", mod(func(b []byte) []byte { b[17]++; return b }), "checksum"},
		{"checkpoint seq changed without checksum", mod(func(b []byte) []byte { b[15]++; return b }), "checksum"},
		{"salt changed with checksum", mod(func(b []byte) []byte { b[17]++; return withHeaderChecksum(b) }), ""},
		{"bad version", mod(func(b []byte) []byte { binary.BigEndian.PutUint32(b[4:], 3007001); return withHeaderChecksum(b) }), "version"},
		{"zero version", mod(func(b []byte) []byte { binary.BigEndian.PutUint32(b[4:], 0); return withHeaderChecksum(b) }), "version"},
		{"bad page size", mod(func(b []byte) []byte { binary.BigEndian.PutUint32(b[8:], 1000); return withHeaderChecksum(b) }), "page size"},
		{"page size 1 (not used in WAL headers)", mod(func(b []byte) []byte { binary.BigEndian.PutUint32(b[8:], 1); return withHeaderChecksum(b) }), "page size"},
		{"page size 65536", mod(func(b []byte) []byte { binary.BigEndian.PutUint32(b[8:], 65536); return withHeaderChecksum(b) }), ""},
		{"big-endian magic with matching checksum", mod(func(b []byte) []byte { b[3] = 0x83; return withHeaderChecksum(b) }), ""},
		{"big-endian magic with little-endian checksum", mod(func(b []byte) []byte {
			b[3] = 0x83
			s1, s2 := WALChecksum(false, 0, 0, b[:24])
			binary.BigEndian.PutUint32(b[24:], s1)
			binary.BigEndian.PutUint32(b[28:], s2)
			return b
		}), "checksum"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := ParseWALHeader(tc.b)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				if h.Magic != binary.BigEndian.Uint32(tc.b) {
					t.Fatalf("Magic = %#x", h.Magic)
				}
				return
			}
			if err == nil {
				t.Fatalf("ParseWALHeader = %+v, want error", h)
			}
			if !errors.Is(err, ErrInvalidWALHeader) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error = %v, want ErrInvalidWALHeader mentioning %q", err, tc.wantErr)
			}
		})
	}
}

func TestWALChecksumVectors(t *testing.T) {
	words := func(order binary.ByteOrder, ws ...uint32) []byte {
		b := make([]byte, 4*len(ws))
		for i, w := range ws {
			order.PutUint32(b[4*i:], w)
		}
		return b
	}
	var a, b, c, d uint32 = 0x11111111, 0x02020202, 0x00300030, 0xfffffff0 // sums wrap modulo 2^32
	for _, tc := range []struct {
		name         string
		bigEndian    bool
		in           []byte
		s1, s2       uint32
		want1, want2 uint32
	}{
		{"empty", true, nil, 5, 6, 5, 6},
		{"be one pair", true, []byte{0, 0, 0, 1, 0, 0, 0, 2}, 0, 0, 1, 3},
		{"le one pair", false, []byte{0, 0, 0, 1, 0, 0, 0, 2}, 0, 0, 0x01000000, 0x03000000},
		{"le one pair, le words", false, []byte{1, 0, 0, 0, 2, 0, 0, 0}, 0, 0, 1, 3},
		{"be with seed", true, []byte{0, 0, 0, 1, 0, 0, 0, 2}, 10, 100, 1 + 100 + 10, 2 + 1 + 100 + 10 + 100},
		// Two pairs: s1 = a + c + (a+b) = 2a+b+c; s2 = (a+b) + d + s1 = 3a+2b+c+d.
		{"be two pairs", true, words(binary.BigEndian, a, b, c, d), 0, 0, 2*a + b + c, 3*a + 2*b + c + d},
		{"le two pairs", false, words(binary.LittleEndian, a, b, c, d), 0, 0, 2*a + b + c, 3*a + 2*b + c + d},
		// Overflow wraps modulo 2^32: s1 = 0xffffffff, s2 = 2 + 0xffffffff = 1.
		{"wraps", true, words(binary.BigEndian, 0xffffffff, 2), 0, 0, 0xffffffff, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s1, s2 := WALChecksum(tc.bigEndian, tc.s1, tc.s2, tc.in)
			if s1 != tc.want1 || s2 != tc.want2 {
				t.Fatalf("WALChecksum = %#x, %#x; want %#x, %#x", s1, s2, tc.want1, tc.want2)
			}
		})
	}
}

func TestWALChecksumProperties(t *testing.T) {
	data := make([]byte, 4096)
	for i := range data {
		data[i] = byte(i*7 + i/13)
	}
	swapped := make([]byte, len(data))
	for i := 0; i < len(data); i += 4 {
		swapped[i], swapped[i+1], swapped[i+2], swapped[i+3] = data[i+3], data[i+2], data[i+1], data[i]
	}
	for _, be := range []bool{false, true} {
		// Continuing over two halves equals one pass over the whole.
		a1, a2 := WALChecksum(be, 3, 4, data)
		h1, h2 := WALChecksum(be, 3, 4, data[:1000])
		h1, h2 = WALChecksum(be, h1, h2, data[1000:])
		if a1 != h1 || a2 != h2 {
			t.Errorf("be=%v: checksum over halves differs from whole", be)
		}
		// Reading words in the other byte order of byte-swapped words is the
		// same computation.
		o1, o2 := WALChecksum(!be, 3, 4, swapped)
		if a1 != o1 || a2 != o2 {
			t.Errorf("be=%v: checksum of swapped words in the other order differs", be)
		}
	}
	// The two orders differ on ordinary data.
	l1, l2 := WALChecksum(false, 0, 0, data)
	b1, b2 := WALChecksum(true, 0, 0, data)
	if l1 == b1 && l2 == b2 {
		t.Error("little- and big-endian checksums are equal")
	}
}

// TestWALChecksumMatchesSQLite checks both byte orders against SQLite
// itself: the little-endian checksums SQLite wrote must verify, and a WAL
// rewritten with the big-endian magic and WALChecksum(true, ...) must be
// accepted by SQLite when it recovers the WAL.
func TestWALChecksumMatchesSQLite(t *testing.T) {
	sqlite3CLI(t)
	f := makeWAL(t, 1024)
	hb := f.wal[:WALHeaderSize]
	be := hb[3] == 0x83
	s1, s2 := WALChecksum(be, 0, 0, hb[:24])
	if s1 != binary.BigEndian.Uint32(hb[24:]) || s2 != binary.BigEndian.Uint32(hb[28:]) {
		t.Fatalf("WALChecksum of SQLite's header = %#x %#x, SQLite wrote %#x %#x", s1, s2, binary.BigEndian.Uint32(hb[24:]), binary.BigEndian.Uint32(hb[28:]))
	}
	for _, toBE := range []bool{false, true} {
		t.Run(fmt.Sprintf("bigEndian=%v", toBE), func(t *testing.T) {
			wal := rewriteWALChecksums(f.wal, f.pageSize, toBE)
			if got := sqliteRecovered(t, f.base, wal); got != walTxns {
				t.Fatalf("SQLite recovered %d transactions from the rewritten WAL, want %d", got, walTxns)
			}
			h, err := ParseWALHeader(wal)
			if err != nil {
				t.Fatal(err)
			}
			if h.BigEndianChecksum() != toBE {
				t.Fatalf("BigEndianChecksum() = %v, want %v", h.BigEndianChecksum(), toBE)
			}
			_, txns := scanAll(t, wal)
			if len(txns) != walTxns {
				t.Fatalf("ScanWAL found %d transactions in the rewritten WAL, want %d", len(txns), walTxns)
			}
		})
	}
	// Control: a rewrite with the wrong order makes SQLite ignore the frames,
	// so the check above can fail.
	bad := rewriteWALChecksums(f.wal, f.pageSize, true)
	bad[3] = 0x82
	withHeaderChecksum(bad[:WALHeaderSize])
	if got := sqliteRecovered(t, f.base, bad); got != 0 {
		t.Fatalf("SQLite recovered %d transactions from a WAL with wrong-order frame checksums", got)
	}
}

// rewriteWALChecksums returns a copy of wal whose magic and all checksums
// use the given byte order. Frame headers are re-encoded with
// EncodeWALFrameHeader.
func rewriteWALChecksums(wal []byte, pageSize uint32, bigEndian bool) []byte {
	out := append([]byte(nil), wal...)
	if bigEndian {
		out[3] = 0x83
	} else {
		out[3] = 0x82
	}
	withHeaderChecksum(out[:WALHeaderSize])
	hdr := WALHeader{
		Magic: binary.BigEndian.Uint32(out[0:]),
		Salt1: binary.BigEndian.Uint32(out[16:]), Salt2: binary.BigEndian.Uint32(out[20:]),
		PageSize: pageSize,
	}
	s1, s2 := binary.BigEndian.Uint32(out[24:]), binary.BigEndian.Uint32(out[28:])
	fs := int64(WALFrameHeaderSize + pageSize)
	for off := int64(WALHeaderSize); off+fs <= int64(len(out)); off += fs {
		fh := out[off : off+WALFrameHeaderSize]
		page := out[off+WALFrameHeaderSize : off+fs]
		s1, s2 = EncodeWALFrameHeader(fh, hdr, binary.BigEndian.Uint32(fh[0:]), binary.BigEndian.Uint32(fh[4:]), s1, s2, page)
	}
	return out
}

func TestScanWALReal(t *testing.T) {
	sqlite3CLI(t)
	for _, pageSize := range []uint32{1024, 4096} {
		t.Run(fmt.Sprint(pageSize), func(t *testing.T) {
			f := makeWAL(t, pageSize)
			if got := sqliteRecovered(t, f.base, f.wal); got != walTxns {
				t.Fatalf("SQLite itself recovered %d transactions, want %d", got, walTxns)
			}
			scan, txns := scanAll(t, f.wal)
			if !scan.Valid {
				t.Fatal("scan.Valid = false for a real WAL")
			}
			if len(txns) != walTxns {
				t.Fatalf("ScanWAL reported %d transactions, want %d", len(txns), walTxns)
			}
			frameSize := int64(WALFrameHeaderSize + pageSize)
			for i, txn := range txns {
				wantStart := int64(WALHeaderSize)
				if i > 0 {
					wantStart = f.ends[i-1]
				}
				if txn.Start != wantStart || txn.End != f.ends[i] {
					t.Errorf("txn %d: range [%d, %d), want [%d, %d)", i+1, txn.Start, txn.End, wantStart, f.ends[i])
				}
				if txn.Commit != f.commits[i] {
					t.Errorf("txn %d: Commit = %d, want %d (page_count)", i+1, txn.Commit, f.commits[i])
				}
				if len(txn.Frames) != f.frameCount(i) {
					t.Errorf("txn %d: %d frames, want %d", i+1, len(txn.Frames), f.frameCount(i))
				}
				for j, fr := range txn.Frames {
					if fr.Offset != wantStart+int64(j)*frameSize {
						t.Errorf("txn %d frame %d: Offset = %d, want %d", i+1, j, fr.Offset, wantStart+int64(j)*frameSize)
					}
					if fr.Pgno == 0 || fr.Pgno > txn.Commit {
						t.Errorf("txn %d frame %d: Pgno %d outside 1..%d", i+1, j, fr.Pgno, txn.Commit)
					}
					if got := binary.BigEndian.Uint32(f.wal[fr.Offset:]); got != fr.Pgno {
						t.Errorf("txn %d frame %d: Pgno = %d, frame header says %d", i+1, j, fr.Pgno, got)
					}
				}
			}
			// Transactions 1 and 4 only bumped the counter in "small".
			for _, i := range []int{0, 3} {
				want := []WALFrameRef{{Pgno: f.smallRoot, Offset: txns[i].Start}}
				if !reflect.DeepEqual(txns[i].Frames, want) {
					t.Errorf("txn %d frames = %+v, want %+v", i+1, txns[i].Frames, want)
				}
			}
			if txns[1].Commit <= txns[0].Commit || len(txns[1].Frames) < 20 {
				t.Errorf("txn 2 (20 new rows of a page each) has commit %d and %d frames", txns[1].Commit, len(txns[1].Frames))
			}

			last := f.ends[walTxns-1]
			if scan.CommitEnd != last || scan.Commit != f.commits[walTxns-1] {
				t.Errorf("scan CommitEnd=%d Commit=%d, want %d, %d", scan.CommitEnd, scan.Commit, last, f.commits[walTxns-1])
			}
			lastFrame := last - frameSize
			if scan.Checksum1 != binary.BigEndian.Uint32(f.wal[lastFrame+16:]) || scan.Checksum2 != binary.BigEndian.Uint32(f.wal[lastFrame+20:]) {
				t.Errorf("scan checksum %#x %#x differs from the last commit frame's", scan.Checksum1, scan.Checksum2)
			}
			if h, _ := ParseWALHeader(f.wal); scan.Header != h {
				t.Errorf("scan.Header = %+v, want %+v", scan.Header, h)
			}

			// A nil callback gives the same summary.
			scan2, err := ScanWAL(bytes.NewReader(f.wal), int64(len(f.wal)), nil)
			if err != nil || scan2 != scan {
				t.Errorf("ScanWAL(nil fn) = %+v, %v; want %+v", scan2, err, scan)
			}
		})
	}
}

func TestScanWALDamaged(t *testing.T) {
	sqlite3CLI(t)
	f := makeWAL(t, 1024)
	frameSize := int64(WALFrameHeaderSize + f.pageSize)
	if f.frameCount(walTxns-1) < 2 {
		t.Fatalf("last transaction has %d frames; the fixture needs at least 2", f.frameCount(walTxns-1))
	}
	lastFrame := f.ends[walTxns-1] - frameSize
	_, intact := scanAll(t, f.wal)

	type mutation func(w []byte) []byte
	flip := func(off int64) mutation {
		return func(w []byte) []byte { w[off] ^= 0x5a; return w }
	}
	for _, tc := range []struct {
		name      string
		mutate    mutation
		wantTxns  int
		wantValid bool
	}{
		{"intact", func(w []byte) []byte { return w }, 5, true},
		{"byte in last frame's page", flip(lastFrame + WALFrameHeaderSize + 100), 4, true},
		{"last byte of the file", flip(int64(len(f.wal)) - 1), 4, true},
		{"last frame's checksum", flip(lastFrame + 19), 4, true},
		{"last frame's commit field", func(w []byte) []byte {
			binary.BigEndian.PutUint32(w[lastFrame+4:], 0)
			return w
		}, 4, true},
		{"last frame's salt", flip(lastFrame + 9), 4, true},
		{"truncated mid-frame", func(w []byte) []byte { return w[:len(w)-100] }, 4, true},
		{"truncated mid-frame-header", func(w []byte) []byte { return w[:lastFrame+10] }, 4, true},
		{"commit frame missing", func(w []byte) []byte { return w[:lastFrame] }, 4, true},
		{"first frame of txn 4 damaged", flip(f.frameOffset(3, 0) + WALFrameHeaderSize + 7), 3, true},
		{"middle frame of txn 3 damaged", flip(f.frameOffset(2, f.frameCount(2)/2) + WALFrameHeaderSize + 500), 2, true},
		{"first frame's page number zeroed", func(w []byte) []byte {
			binary.BigEndian.PutUint32(w[WALHeaderSize:], 0)
			return w
		}, 0, true},
		{"first frame's page", flip(WALHeaderSize + WALFrameHeaderSize), 0, true},
		{"header only", func(w []byte) []byte { return w[:WALHeaderSize] }, 0, true},
		{"partial trailing frame", func(w []byte) []byte { return append(w, make([]byte, 700)...) }, 5, true},
		{"stale frame appended", func(w []byte) []byte {
			// A copy of an earlier frame: right salts, but it does not
			// continue the checksum chain.
			return append(w, w[WALHeaderSize:WALHeaderSize+frameSize]...)
		}, 5, true},
		{"header checksum", flip(25), 0, false},
		{"header magic", flip(1), 0, false},
		{"short header", func(w []byte) []byte { return w[:20] }, 0, false},
		{"empty", func(w []byte) []byte { return w[:0] }, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wal := tc.mutate(append([]byte(nil), f.wal...))
			scan, txns := scanAll(t, wal)
			if len(txns) != tc.wantTxns {
				t.Fatalf("ScanWAL reported %d transactions, want %d", len(txns), tc.wantTxns)
			}
			if scan.Valid != tc.wantValid {
				t.Fatalf("Valid = %v, want %v", scan.Valid, tc.wantValid)
			}
			// SQLite's own recovery agrees on how many transactions survive.
			if tc.name != "short header" && tc.name != "empty" {
				if got := sqliteRecovered(t, f.base, wal); got != int64(tc.wantTxns) {
					t.Errorf("SQLite recovered %d transactions, want %d", got, tc.wantTxns)
				}
			}
			// The surviving transactions are exactly the intact ones.
			if tc.wantTxns > 0 && !reflect.DeepEqual(txns, intact[:tc.wantTxns]) {
				t.Errorf("surviving transactions differ from the intact scan")
			}
			wantEnd, wantCommit := int64(0), uint32(0)
			switch {
			case !tc.wantValid:
			case tc.wantTxns == 0:
				wantEnd = WALHeaderSize
			default:
				wantEnd, wantCommit = f.ends[tc.wantTxns-1], f.commits[tc.wantTxns-1]
			}
			if scan.CommitEnd != wantEnd || scan.Commit != wantCommit {
				t.Errorf("CommitEnd=%d Commit=%d, want %d, %d", scan.CommitEnd, scan.Commit, wantEnd, wantCommit)
			}
			if tc.wantValid && tc.wantTxns == 0 {
				if scan.Checksum1 != scan.Header.Checksum1 || scan.Checksum2 != scan.Header.Checksum2 {
					t.Errorf("running checksum with no commits = %#x %#x, want the header's", scan.Checksum1, scan.Checksum2)
				}
			}
		})
	}
}

func TestScanWALCallbackError(t *testing.T) {
	sqlite3CLI(t)
	f := makeWAL(t, 1024)
	stop := errors.New("stop")
	calls := 0
	scan, err := ScanWAL(bytes.NewReader(f.wal), int64(len(f.wal)), func(txn WALTxn) error {
		calls++
		if calls == 2 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) {
		t.Fatalf("ScanWAL error = %v, want the callback's", err)
	}
	if calls != 2 {
		t.Fatalf("callback called %d times after returning an error, want 2", calls)
	}
	if !scan.Valid {
		t.Fatal("scan.Valid = false")
	}
}

// errReaderAt fails every read at or after offset failAt.
type errReaderAt struct {
	r      *bytes.Reader
	failAt int64
}

var errRead = errors.New("read failed")

func (e errReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > e.failAt {
		return 0, errRead
	}
	return e.r.ReadAt(p, off)
}

func TestScanWALReadError(t *testing.T) {
	sqlite3CLI(t)
	f := makeWAL(t, 1024)
	for _, failAt := range []int64{0, WALHeaderSize + 10, f.ends[1] + 5} {
		r := errReaderAt{bytes.NewReader(f.wal), failAt}
		if _, err := ScanWAL(r, int64(len(f.wal)), nil); !errors.Is(err, errRead) {
			t.Errorf("failAt %d: ScanWAL error = %v, want the read error", failAt, err)
		}
	}
}

// TestScanWALSynthetic builds WALs by hand in both byte orders, including
// uncommitted trailing frames and a restarted WAL whose old frames carry
// other salts.
func TestScanWALSynthetic(t *testing.T) {
	const pageSize = 512
	build := func(magic uint32, salt1, salt2 uint32, frames [][2]uint32) ([]byte, WALHeader) {
		b := make([]byte, WALHeaderSize)
		binary.BigEndian.PutUint32(b[0:], magic)
		binary.BigEndian.PutUint32(b[4:], 3007000)
		binary.BigEndian.PutUint32(b[8:], pageSize)
		binary.BigEndian.PutUint32(b[12:], 9)
		binary.BigEndian.PutUint32(b[16:], salt1)
		binary.BigEndian.PutUint32(b[20:], salt2)
		withHeaderChecksum(b)
		hdr := WALHeader{Magic: magic, PageSize: pageSize, Salt1: salt1, Salt2: salt2}
		s1, s2 := binary.BigEndian.Uint32(b[24:]), binary.BigEndian.Uint32(b[28:])
		for i, fr := range frames {
			fh := make([]byte, WALFrameHeaderSize)
			page := bytes.Repeat([]byte{byte(i + 1)}, pageSize)
			s1, s2 = EncodeWALFrameHeader(fh, hdr, fr[0], fr[1], s1, s2, page)
			b = append(append(b, fh...), page...)
		}
		return b, hdr
	}
	frameSize := int64(WALFrameHeaderSize + pageSize)
	for _, magic := range []uint32{0x377f0682, 0x377f0683} {
		t.Run(fmt.Sprintf("%#x", magic), func(t *testing.T) {
			// Txn A: pages 1,2 commit 2. Txn B: page 3 commit 3. Then two
			// uncommitted frames.
			wal, _ := build(magic, 111, 222, [][2]uint32{{1, 0}, {2, 2}, {3, 3}, {4, 0}, {5, 0}})
			scan, txns := scanAll(t, wal)
			want := []WALTxn{
				{Start: 32, End: 32 + 2*frameSize, Commit: 2, Frames: []WALFrameRef{{1, 32}, {2, 32 + frameSize}}},
				{Start: 32 + 2*frameSize, End: 32 + 3*frameSize, Commit: 3, Frames: []WALFrameRef{{3, 32 + 2*frameSize}}},
			}
			if !reflect.DeepEqual(txns, want) {
				t.Fatalf("txns = %+v, want %+v", txns, want)
			}
			if !scan.Valid || scan.CommitEnd != 32+3*frameSize || scan.Commit != 3 {
				t.Fatalf("scan = %+v", scan)
			}
			if scan.Header.BigEndianChecksum() != (magic == 0x377f0683) {
				t.Fatalf("BigEndianChecksum() = %v", scan.Header.BigEndianChecksum())
			}
			if scan.Header.CheckpointSeq != 9 || scan.Header.Salt1 != 111 || scan.Header.Salt2 != 222 {
				t.Fatalf("header = %+v", scan.Header)
			}

			// A restarted WAL: a new header and one new transaction written
			// over the start of the old file; the old frames that follow
			// carry the old salts and must be ignored.
			newer, _ := build(magic, 112, 223, [][2]uint32{{7, 7}})
			restarted := append(newer, wal[len(newer):]...)
			_, txns = scanAll(t, restarted)
			if len(txns) != 1 || txns[0].Commit != 7 || len(txns[0].Frames) != 1 || txns[0].Frames[0].Pgno != 7 {
				t.Fatalf("restarted WAL txns = %+v, want the single new transaction", txns)
			}

			// A frame for page 0 is invalid even with a correct checksum.
			zero, _ := build(magic, 111, 222, [][2]uint32{{1, 1}, {4, 0}, {0, 2}, {5, 5}})
			if scan, txns := scanAll(t, zero); len(txns) != 1 || scan.Commit != 1 || scan.CommitEnd != 32+frameSize {
				t.Fatalf("WAL with a page-0 frame: scan %+v, txns %+v; want only the first transaction", scan, txns)
			}

			// The same frames under the other byte order do not verify.
			other := append([]byte(nil), wal...)
			other[3] ^= 1
			withHeaderChecksum(other[:WALHeaderSize])
			if _, txns := scanAll(t, other); len(txns) != 0 {
				t.Fatalf("frames verified under the wrong byte order: %+v", txns)
			}
		})
	}
}
