package ltx_test

import (
	"bytes"
	"errors"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/litefs-project/litefs/ltx"
)

const pageSize = 512

// testDB models a database so that appended changesets carry real
// checksums: the log checks contiguity, the decoder checks the rest.
type testDB struct {
	pages map[uint32][]byte
	pos   ltx.Pos
	rnd   *rand.Rand
}

func newTestDB(seed int64) *testDB {
	return &testDB{pages: make(map[uint32][]byte), rnd: rand.New(rand.NewSource(seed))}
}

func (d *testDB) sum() ltx.Checksum {
	var x ltx.Checksum
	for pgno, data := range d.pages {
		x ^= ltx.ChecksumPage(pgno, data)
	}
	return ltx.ChecksumFlag | x
}

// appendTx writes one transaction touching n random pages (all pages for
// the first one, which must be a snapshot).
func (d *testDB) appendTx(t *testing.T, l *ltx.Log, n int) ltx.Pos {
	t.Helper()
	commit := uint32(len(d.pages))
	if commit == 0 {
		commit = uint32(n)
	}
	var pgnos []uint32
	if d.pos.TXID == 0 {
		for p := uint32(1); p <= commit; p++ {
			pgnos = append(pgnos, p)
		}
	} else {
		seen := map[uint32]bool{}
		for len(pgnos) < n {
			p := uint32(d.rnd.Intn(int(commit)+2)) + 1
			if !seen[p] {
				seen[p] = true
				pgnos = append(pgnos, p)
			}
		}
		sortU32(pgnos)
		commit = max(commit, pgnos[len(pgnos)-1])
	}
	for _, p := range pgnos {
		data := make([]byte, pageSize)
		d.rnd.Read(data)
		d.pages[p] = data
	}
	for p := uint32(1); p <= commit; p++ {
		if d.pages[p] == nil {
			d.pages[p] = make([]byte, pageSize)
			pgnos = append(pgnos, p)
		}
	}
	sortU32(pgnos)
	hdr := ltx.Header{
		Version: ltx.Version, PageSize: pageSize, Commit: commit,
		MinTXID: d.pos.TXID + 1, MaxTXID: d.pos.TXID + 1,
		Timestamp: time.Now().UnixMilli(),
	}
	if hdr.MinTXID > 1 {
		hdr.PreApplyChecksum = d.pos.PostApplyChecksum
	}
	pos, err := l.Append(hdr, d.sum(), func(enc *ltx.Encoder) error {
		for _, p := range pgnos {
			if err := enc.EncodePage(ltx.PageHeader{Pgno: p}, d.pages[p]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("append txid %d: %v", hdr.MinTXID, err)
	}
	if want := (ltx.Pos{TXID: hdr.MaxTXID, PostApplyChecksum: d.sum()}); pos != want {
		t.Fatalf("append returned %s, want %s", pos, want)
	}
	d.pos = pos
	return pos
}

func sortU32(a []uint32) {
	for i := 1; i < len(a); i++ {
		for j := i; j > 0 && a[j] < a[j-1]; j-- {
			a[j], a[j-1] = a[j-1], a[j]
		}
	}
}

func openLog(t *testing.T, dir string, segSize int64) *ltx.Log {
	t.Helper()
	l, err := ltx.OpenLog(dir, ltx.Options{SegmentSize: segSize})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// verifyAll reads every record back, decodes it fully and checks that the
// records chain from base to the log's position.
func verifyAll(t *testing.T, l *ltx.Log) int {
	t.Helper()
	r := l.NewReader()
	defer r.Close()
	prev := l.Base()
	n := 0
	for txid := prev.TXID + 1; txid <= l.Pos().TXID; txid++ {
		info, sr, err := r.Read(txid)
		if err != nil {
			t.Fatalf("read %d: %v", txid, err)
		}
		hdr, trailer, err := ltx.Verify(sr)
		if err != nil {
			t.Fatalf("verify %d: %v", txid, err)
		}
		if hdr != info.Header || trailer != info.Trailer {
			t.Fatalf("txid %d: info %+v does not match decoded %+v", txid, info, hdr)
		}
		if hdr.MinTXID != prev.TXID+1 || (hdr.MinTXID > 1 && hdr.PreApplyChecksum != prev.PostApplyChecksum) {
			t.Fatalf("txid %d does not chain from %s", txid, prev)
		}
		prev = info.Pos()
		n++
	}
	if prev != l.Pos() {
		t.Fatalf("chain ends at %s, log position is %s", prev, l.Pos())
	}
	return n
}

func TestLogAppendReopen(t *testing.T) {
	for _, segSize := range []int64{0, 4 << 10} { // default and tiny segments
		dir := t.TempDir()
		l := openLog(t, dir, segSize)
		d := newTestDB(1)
		for i := 0; i < 50; i++ {
			d.appendTx(t, l, 1+i%5)
		}
		if got := verifyAll(t, l); got != 50 {
			t.Fatalf("segSize %d: read %d records, want 50", segSize, got)
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}

		l2 := openLog(t, dir, segSize)
		if l2.Pos() != d.pos {
			t.Fatalf("segSize %d: reopened at %s, want %s", segSize, l2.Pos(), d.pos)
		}
		d.appendTx(t, l2, 3)
		if got := verifyAll(t, l2); got != 51 {
			t.Fatalf("segSize %d: read %d records after reopen, want 51", segSize, got)
		}
		segs, _ := filepath.Glob(filepath.Join(dir, "*.ltxs"))
		if segSize > 0 && len(segs) < 3 {
			t.Fatalf("expected several segments with a %d-byte limit, got %d", segSize, len(segs))
		}
	}
}

func TestLogRejectsNonContiguous(t *testing.T) {
	l := openLog(t, t.TempDir(), 0)
	d := newTestDB(2)
	d.appendTx(t, l, 2)

	tests := []struct {
		name string
		hdr  ltx.Header
	}{
		{"gap", ltx.Header{Version: ltx.Version, PageSize: pageSize, Commit: 2, MinTXID: 3, MaxTXID: 3, PreApplyChecksum: d.pos.PostApplyChecksum}},
		{"replay", ltx.Header{Version: ltx.Version, PageSize: pageSize, Commit: 2, MinTXID: 1, MaxTXID: 1}},
		{"wrong pre-apply checksum", ltx.Header{Version: ltx.Version, PageSize: pageSize, Commit: 2, MinTXID: 2, MaxTXID: 2, PreApplyChecksum: ltx.ChecksumFlag | 12345}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := l.Append(tt.hdr, d.pos.PostApplyChecksum, func(*ltx.Encoder) error { return nil })
			if !errors.Is(err, ltx.ErrNotContiguous) {
				t.Fatalf("got %v, want ErrNotContiguous", err)
			}
			if l.Pos() != d.pos {
				t.Fatalf("position moved to %s", l.Pos())
			}
		})
	}
}

func TestLogTornTail(t *testing.T) {
	tests := []struct {
		name   string
		damage func(t *testing.T, path string)
	}{
		{"truncated mid-record", func(t *testing.T, path string) {
			fi, _ := os.Stat(path)
			if err := os.Truncate(path, fi.Size()-7); err != nil {
				t.Fatal(err)
			}
		}},
		{"garbage appended", func(t *testing.T, path string) {
			f, _ := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
			f.Write(bytes.Repeat([]byte{0xAB}, 300))
			f.Close()
		}},
		{"last byte flipped", func(t *testing.T, path string) {
			b, _ := os.ReadFile(path)
			b[len(b)-1] ^= 0xFF
			os.WriteFile(path, b, 0o644)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			l := openLog(t, dir, 0)
			d := newTestDB(3)
			var positions []ltx.Pos
			for i := 0; i < 5; i++ {
				positions = append(positions, d.appendTx(t, l, 2))
			}
			l.Close()
			segs, _ := filepath.Glob(filepath.Join(dir, "*.ltxs"))
			tt.damage(t, segs[len(segs)-1])

			l2 := openLog(t, dir, 0)
			want := positions[4]
			if tt.name != "garbage appended" {
				want = positions[3]
			}
			if l2.Pos() != want {
				t.Fatalf("reopened at %s, want %s", l2.Pos(), want)
			}
			verifyAll(t, l2)
			// The log keeps working after the repair.
			d.pos = want
			d.appendTx(t, l2, 1)
			verifyAll(t, l2)
		})
	}
}

func TestLogTruncateAfterAndReset(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, dir, 2<<10)
	d := newTestDB(4)
	var positions []ltx.Pos
	for i := 0; i < 20; i++ {
		positions = append(positions, d.appendTx(t, l, 2))
	}
	if err := l.TruncateAfter(7); err != nil {
		t.Fatal(err)
	}
	if l.Pos() != positions[6] {
		t.Fatalf("after truncate at %s, want %s", l.Pos(), positions[6])
	}
	if n := verifyAll(t, l); n != 7 {
		t.Fatalf("%d records after truncate, want 7", n)
	}
	if _, err := l.Info(8); !errors.Is(err, ltx.ErrTXIDNotFound) {
		t.Fatalf("Info(8) after truncate: %v", err)
	}
	l.Close()
	l = openLog(t, dir, 2<<10)
	if l.Pos() != positions[6] {
		t.Fatalf("reopened at %s, want %s", l.Pos(), positions[6])
	}

	base := ltx.Pos{TXID: 100, PostApplyChecksum: ltx.ChecksumFlag | 42}
	if err := l.Reset(base); err != nil {
		t.Fatal(err)
	}
	if l.Pos() != base || l.Base() != base {
		t.Fatalf("after reset pos %s base %s, want %s", l.Pos(), l.Base(), base)
	}
	l.Close()
	l = openLog(t, dir, 2<<10)
	if l.Pos() != base {
		t.Fatalf("reopened after reset at %s, want %s", l.Pos(), base)
	}
}

func TestLogPrune(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, dir, 1<<10)
	d := newTestDB(5)
	for i := 0; i < 30; i++ {
		d.appendTx(t, l, 2)
	}
	segs, _ := filepath.Glob(filepath.Join(dir, "*.ltxs"))
	if len(segs) < 3 {
		t.Fatalf("want several segments, got %d", len(segs))
	}
	// Age every segment, the active one included: the newest changeset
	// must survive anyway.
	old := time.Now().Add(-time.Hour)
	for _, s := range segs {
		os.Chtimes(s, old, old)
	}
	n, err := l.Prune(time.Now().Add(-time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 || n >= 30 {
		t.Fatalf("pruned %d records, want some but not all", n)
	}
	if l.Pos() != d.pos {
		t.Fatalf("position changed to %s", l.Pos())
	}
	if l.Base().TXID != ltx.TXID(n) {
		t.Fatalf("base %s after pruning %d records", l.Base(), n)
	}
	if _, err := l.Info(1); !errors.Is(err, ltx.ErrTXIDNotFound) {
		t.Fatalf("pruned record still readable: %v", err)
	}
	verifyAll(t, l)
	l.Close()
	l = openLog(t, dir, 1<<10)
	if l.Base().TXID != ltx.TXID(n) || l.Pos() != d.pos {
		t.Fatalf("reopened with base %s pos %s", l.Base(), l.Pos())
	}
}

// TestEncoderReuse checks that records encoded with the log's reused
// encoder are byte for byte what a new encoder produces.
func TestEncoderReuse(t *testing.T) {
	l := openLog(t, t.TempDir(), 0)
	d := newTestDB(9)
	for i := 0; i < 20; i++ {
		d.appendTx(t, l, 1+i%4)
	}
	r := l.NewReader()
	defer r.Close()
	for txid := ltx.TXID(1); txid <= l.Pos().TXID; txid++ {
		info, sr, err := r.Read(txid)
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, info.Size)
		if _, err := sr.ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		// Re-encode the same header and pages with a new encoder.
		dec := ltx.NewDecoder(bytes.NewReader(got))
		if err := dec.DecodeHeader(); err != nil {
			t.Fatal(err)
		}
		var want bytes.Buffer
		enc, _ := ltx.NewEncoder(&want)
		if err := enc.EncodeHeader(dec.Header()); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, pageSize)
		for {
			var ph ltx.PageHeader
			if err := dec.DecodePage(&ph, buf); err == io.EOF {
				break
			} else if err != nil {
				t.Fatal(err)
			}
			if err := enc.EncodePage(ph, buf); err != nil {
				t.Fatal(err)
			}
		}
		if err := dec.Close(); err != nil {
			t.Fatal(err)
		}
		enc.SetPostApplyChecksum(dec.Trailer().PostApplyChecksum)
		if err := enc.Close(); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want.Bytes()) {
			t.Fatalf("txid %s: reused encoder's bytes differ from a new encoder's", txid)
		}
	}
}

// TestReaderAfterTruncate: a reader kept open across a truncation reads
// the record appended in place of the one removed, even when the new
// record lands in a segment file of the same name.
func TestReaderAfterTruncate(t *testing.T) {
	l := openLog(t, t.TempDir(), 1) // a segment per record
	d := newTestDB(5)
	for i := 0; i < 3; i++ {
		d.appendTx(t, l, 2)
	}
	r := l.NewReader()
	defer r.Close()
	old, _, err := r.Read(3)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.TruncateAfter(2); err != nil {
		t.Fatal(err)
	}
	d.pos = l.Pos()
	d.appendTx(t, l, 3) // another third transaction, in a file of the same name
	info, _, err := r.Read(3)
	if err != nil {
		t.Fatal(err)
	}
	if info.Pos() == old.Pos() || info.Pos() != l.Pos() {
		t.Fatalf("the kept reader read %s, the log has %s (the removed record was %s)", info.Pos(), l.Pos(), old.Pos())
	}
}
