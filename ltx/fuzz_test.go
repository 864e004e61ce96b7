package ltx_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/litefs-project/litefs/internal/fuzzutil"
	"github.com/litefs-project/litefs/ltx"
)

// Fuzz targets for the changeset decoder and verifier (ltx.Verify,
// ltx.NewDecoder, ltx.ApplyTo) and for opening a log from whatever a
// segment file holds. Their seeds are real LTX files from the encoder,
// truncated and bit-flipped; crashers found by `go test -fuzz` are kept in
// testdata/fuzz.

// allocLimit is what decoding an input of n bytes may allocate: buffers of
// a few maximal (64 KiB) pages, the decoder's tables, and a small multiple
// of the input.
func allocLimit(n int) uint64 { return 4<<20 + 8*uint64(n) }

// validLTX returns LTX files as litefs writes them: a snapshot, a
// changeset in the middle of a log, one that empties the database, and
// pages of the largest size.
func validLTX(tb testing.TB) [][]byte {
	enc := func(hdr ltx.Header, pgnos ...uint32) []byte {
		pages := make(map[uint32][]byte)
		var sum ltx.Checksum
		for _, pgno := range pgnos {
			pages[pgno] = fuzzutil.Page(hdr.PageSize, pgno, int64(hdr.MaxTXID))
			sum ^= ltx.ChecksumPage(pgno, pages[pgno])
		}
		return fuzzutil.EncodeLTX(tb, hdr, pages, pgnos, ltx.ChecksumFlag|sum)
	}
	pre := ltx.ChecksumFlag | 0x1234
	return [][]byte{
		enc(ltx.Header{Version: ltx.Version, PageSize: 512, Commit: 3, MinTXID: 1, MaxTXID: 1, Timestamp: 1000}, 1, 2, 3),
		enc(ltx.Header{Version: ltx.Version, PageSize: 512, Commit: 8, MinTXID: 5, MaxTXID: 5, Timestamp: 2000, PreApplyChecksum: pre,
			WALOffset: 32, WALSize: 1056, WALSalt1: 7, WALSalt2: 9, NodeID: 42}, 2, 7),
		enc(ltx.Header{Version: ltx.Version, PageSize: 1024, Commit: 0, MinTXID: 6, MaxTXID: 6, PreApplyChecksum: pre}),
		enc(ltx.Header{Version: ltx.Version, PageSize: 65536, Commit: 2, MinTXID: 1, MaxTXID: 9}, 1, 2),
	}
}

// decodedFile is an LTX file's content as the decoder gives it.
type decodedFile struct {
	hdr     ltx.Header
	trailer ltx.Trailer
	pgnos   []uint32
	pages   map[uint32][]byte
}

// decode decodes b fully, each page into a new buffer if fresh, else into
// one buffer reused from page to page (as the store and Replay do).
func decode(b []byte, fresh bool) (decodedFile, error) {
	dec := ltx.NewDecoder(bytes.NewReader(b))
	if err := dec.DecodeHeader(); err != nil {
		return decodedFile{}, err
	}
	d := decodedFile{hdr: dec.Header(), pages: make(map[uint32][]byte)}
	buf := make([]byte, d.hdr.PageSize)
	for {
		if fresh {
			buf = make([]byte, d.hdr.PageSize)
		}
		var ph ltx.PageHeader
		if err := dec.DecodePage(&ph, buf); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return d, err
		}
		d.pgnos = append(d.pgnos, ph.Pgno)
		d.pages[ph.Pgno] = bytes.Clone(buf)
	}
	if err := dec.Close(); err != nil {
		return d, err
	}
	d.trailer = dec.Trailer()
	return d, nil
}

// memFile is a database file in memory, for ApplyTo. Like a file on
// disk, it is sparse: a truncation that extends it allocates nothing.
type memFile struct {
	b    []byte // the bytes written, up to size
	size int64
}

func (m *memFile) WriteAt(p []byte, off int64) (int, error) {
	if end := int(off) + len(p); end > len(m.b) {
		m.b = append(m.b, make([]byte, end-len(m.b))...)
	}
	m.size = max(m.size, off+int64(len(p)))
	return copy(m.b[off:], p), nil
}

func (m *memFile) Truncate(n int64) error {
	m.b = m.b[:min(int64(len(m.b)), n)]
	m.size = n
	return nil
}

func FuzzDecode(f *testing.F) {
	for _, b := range validLTX(f) {
		f.Add(b, false)
		for _, v := range fuzzutil.Variants(b) {
			f.Add(v, false)
			f.Add(v, true)
		}
	}
	huge := fuzzutil.HugeBlock(validLTX(f)[1])
	f.Add(huge, false)
	f.Add(huge, true)

	f.Fuzz(func(t *testing.T, data []byte, fix bool) {
		if fix {
			data = fuzzutil.FixChecksum(data)
		}
		var (
			hdr     ltx.Header
			trailer ltx.Trailer
			err     error
		)
		if n := fuzzutil.Allocated(func() { hdr, trailer, err = ltx.Verify(bytes.NewReader(data)) }); n > allocLimit(len(data)) {
			t.Fatalf("verifying %d bytes allocated %d bytes (verdict: %v)", len(data), n, err)
		}
		var mf memFile
		var applyErr error
		if n := fuzzutil.Allocated(func() { _, _, applyErr = ltx.ApplyTo(&mf, bytes.NewReader(data)) }); n > allocLimit(len(data))+uint64(cap(mf.b)) {
			t.Fatalf("applying %d bytes allocated %d bytes (verdict: %v)", len(data), n, applyErr)
		}
		if (err == nil) != (applyErr == nil) {
			t.Fatalf("Verify says %v, ApplyTo says %v", err, applyErr)
		}
		if err != nil {
			return
		}

		// Accepted: decoding gives the same pages whatever buffer a page
		// is decoded into.
		got, err := decode(data, true)
		if err != nil {
			t.Fatalf("Verify accepted what the decoder refuses: %v", err)
		}
		reused, err := decode(data, false)
		if err != nil {
			t.Fatalf("decoding into a reused buffer: %v", err)
		}
		if got.hdr != hdr || got.trailer != trailer {
			t.Fatalf("decoded header %+v / trailer %+v, Verify said %+v / %+v", got.hdr, got.trailer, hdr, trailer)
		}
		if !samePages(got, reused) {
			t.Fatalf("pages decoded into a reused buffer differ from those decoded into new ones")
		}

		// ApplyTo wrote exactly those pages and sized the file to the commit.
		if size := int64(hdr.Commit) * int64(hdr.PageSize); mf.size != size {
			t.Fatalf("ApplyTo left a file of %d bytes, the commit is %d bytes", mf.size, size)
		}
		want := make([]byte, len(mf.b))
		for _, pgno := range got.pgnos {
			if off := int(pgno-1) * int(hdr.PageSize); off < len(want) {
				copy(want[off:], got.pages[pgno])
			}
		}
		if !bytes.Equal(mf.b, want) {
			t.Fatalf("ApplyTo wrote other bytes than the decoded pages")
		}

		// It round-trips: encoding the pages again gives a file that
		// verifies and decodes to the same pages.
		var buf bytes.Buffer
		enc, err := ltx.NewEncoder(&buf)
		if err != nil {
			t.Fatal(err)
		}
		if err := enc.EncodeHeader(hdr); err != nil {
			t.Fatalf("accepted header %+v does not encode: %v", hdr, err)
		}
		for _, pgno := range got.pgnos {
			if err := enc.EncodePage(ltx.PageHeader{Pgno: pgno}, got.pages[pgno]); err != nil {
				t.Fatalf("accepted page %d (header %+v) does not encode: %v", pgno, hdr, err)
			}
		}
		enc.SetPostApplyChecksum(trailer.PostApplyChecksum)
		if err := enc.Close(); err != nil {
			t.Fatalf("accepted file (header %+v, trailer %+v) does not encode: %v", hdr, trailer, err)
		}
		again, err := decode(buf.Bytes(), true)
		if err != nil {
			t.Fatalf("re-encoded file does not decode: %v", err)
		}
		if again.hdr != hdr || again.trailer.PostApplyChecksum != trailer.PostApplyChecksum || !samePages(got, again) {
			t.Fatalf("re-encoded file decodes differently")
		}
	})
}

func samePages(a, b decodedFile) bool {
	if len(a.pgnos) != len(b.pgnos) {
		return false
	}
	for i, pgno := range a.pgnos {
		if b.pgnos[i] != pgno || !bytes.Equal(a.pages[pgno], b.pages[pgno]) {
			return false
		}
	}
	return true
}

// segmentOf frames LTX files as a log segment's records: an 8-byte header
// (length, CRC-32C) before each.
func segmentOf(files ...[]byte) []byte {
	var seg []byte
	for _, b := range files {
		seg = binary.BigEndian.AppendUint32(seg, uint32(len(b)))
		seg = binary.BigEndian.AppendUint32(seg, crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli)))
		seg = append(seg, b...)
	}
	return seg
}

// fixFrames rewrites the CRC of every record of a segment whose length is
// backed, so that the fuzzer's mutations of records reach the checks
// behind the CRC.
func fixFrames(seg []byte) []byte {
	c := bytes.Clone(seg)
	for off := 0; off+8 <= len(c); {
		n := int(binary.BigEndian.Uint32(c[off:]))
		if n < 0 || off+8+n > len(c) {
			break
		}
		binary.BigEndian.PutUint32(c[off+4:], crc32.Checksum(c[off+8:off+8+n], crc32.MakeTable(crc32.Castagnoli)))
		off += 8 + n
	}
	return c
}

// logSeeds returns segments as litefs writes them: a log of a few
// transactions, from the first or from the middle of a history.
func logSeeds(tb testing.TB) [][]byte {
	dir := tb.TempDir()
	var segs [][]byte
	for i, first := range []int{0, 4} {
		l, err := ltx.OpenLog(filepath.Join(dir, fmt.Sprint(i)), ltx.Options{})
		if err != nil {
			tb.Fatal(err)
		}
		if first > 0 {
			if err := l.Reset(ltx.Pos{TXID: ltx.TXID(first), PostApplyChecksum: ltx.ChecksumFlag | 0x99}); err != nil {
				tb.Fatal(err)
			}
		}
		d := &seedDB{pages: make(map[uint32][]byte), pos: l.Pos(), rnd: rand.New(rand.NewSource(int64(i)))}
		for k := 0; k < 3; k++ {
			d.append(tb, l)
		}
		if err := l.Close(); err != nil {
			tb.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(dir, fmt.Sprint(i), fmt.Sprintf("%016x.ltxs", first+1)))
		if err != nil {
			tb.Fatal(err)
		}
		segs = append(segs, b)
	}
	return segs
}

// seedDB writes transactions of a small database to a log.
type seedDB struct {
	pages map[uint32][]byte
	pos   ltx.Pos
	rnd   *rand.Rand
}

func (d *seedDB) append(tb testing.TB, l *ltx.Log) {
	tb.Helper()
	pgnos := []uint32{1, 2, 3}
	if d.pos.TXID > 0 {
		pgnos = []uint32{uint32(1 + d.rnd.Intn(3))}
	}
	for _, p := range pgnos {
		d.pages[p] = fuzzutil.Page(512, p, int64(d.pos.TXID)+d.rnd.Int63())
	}
	// The log checks only that checksums chain; after a reset the model
	// does not know the other pages, so the post-apply checksum is just
	// that of the pages it has.
	var sum ltx.Checksum
	for p, b := range d.pages {
		sum ^= ltx.ChecksumPage(p, b)
	}
	hdr := ltx.Header{Version: ltx.Version, PageSize: 512, Commit: 3, MinTXID: d.pos.TXID + 1, MaxTXID: d.pos.TXID + 1, Timestamp: int64(1000 + d.pos.TXID)}
	if hdr.MinTXID > 1 {
		hdr.PreApplyChecksum = d.pos.PostApplyChecksum
	}
	pos, err := l.Append(hdr, ltx.ChecksumFlag|sum, func(enc *ltx.Encoder) error {
		for _, p := range pgnos {
			if err := enc.EncodePage(ltx.PageHeader{Pgno: p}, d.pages[p]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatalf("append: %v", err)
	}
	d.pos = pos
}

// FuzzOpenLog opens a log whose active segment holds arbitrary bytes, as
// after a torn write or damage: opening keeps the complete records that
// chain and cuts the rest, and never fails on the segment's content.
func FuzzOpenLog(f *testing.F) {
	for _, seg := range logSeeds(f) {
		f.Add(seg, false)
		for _, v := range fuzzutil.Variants(seg) {
			f.Add(v, false)
			f.Add(v, true)
		}
	}
	valid := validLTX(f)
	f.Add(segmentOf(valid[0]), false)
	f.Add(segmentOf(valid[0], valid[1]), false)
	f.Add(segmentOf(fuzzutil.HugeBlock(valid[1])), false)

	f.Fuzz(func(t *testing.T, seg []byte, fix bool) {
		if fix {
			seg = fixFrames(seg)
		}
		dir := t.TempDir()
		// The file name says which TXID the segment starts with; the
		// fuzzer's records say what they hold.
		first := uint64(1)
		if len(seg) >= 8+ltx.HeaderSize {
			first = max(1, binary.BigEndian.Uint64(seg[8+24:]))
		}
		path := filepath.Join(dir, fmt.Sprintf("%016x.ltxs", first))
		if err := os.WriteFile(path, seg, 0o644); err != nil {
			t.Fatal(err)
		}
		l, err := ltx.OpenLog(dir, ltx.Options{})
		if err != nil {
			t.Fatalf("open a log with a damaged segment: %v", err)
		}
		defer l.Close()
		base, pos := l.Base(), l.Pos()
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() > int64(len(seg)) || !bytes.Equal(seg[:fi.Size()], mustRead(t, path)) {
			t.Fatalf("opening rewrote the segment rather than cutting its tail")
		}
		if pos.TXID < base.TXID {
			t.Fatalf("log position %s is before its base %s", pos, base)
		}
		if pos == base {
			if fi.Size() != 0 {
				t.Fatalf("a log with no records kept %d bytes of its segment", fi.Size())
			}
			return
		}
		if base.TXID+1 != ltx.TXID(first) {
			t.Fatalf("the log's records start at %s, its base is %s", ltx.TXID(first), base)
		}
		// Every record kept can be read, and they chain from base to pos.
		r := l.NewReader()
		defer r.Close()
		prev := base
		for txid := base.TXID + 1; txid <= pos.TXID; txid++ {
			info, _, err := r.Read(txid)
			if err != nil {
				t.Fatalf("read record %s of %s..%s: %v", txid, base.TXID+1, pos.TXID, err)
			}
			if h := info.Header; h.MinTXID != txid || h.MaxTXID != txid || (txid > 1 && h.PreApplyChecksum != prev.PostApplyChecksum) {
				t.Fatalf("record %s has header %+v after %s", txid, h, prev)
			}
			prev = info.Pos()
		}
		if prev != pos {
			t.Fatalf("records end at %s, the log says %s", prev, pos)
		}
		// Opening again finds the same log.
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		l2, err := ltx.OpenLog(dir, ltx.Options{})
		if err != nil {
			t.Fatalf("reopen: %v", err)
		}
		defer l2.Close()
		if l2.Base() != base || l2.Pos() != pos {
			t.Fatalf("reopened log is %s..%s, was %s..%s", l2.Base(), l2.Pos(), base, pos)
		}
	})
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// FuzzParsePos parses positions as the log's base file and the mount's
// "-pos" files hold them: what parses is what FormatPos writes.
func FuzzParsePos(f *testing.F) {
	for _, p := range []ltx.Pos{{}, {TXID: 1, PostApplyChecksum: ltx.ChecksumFlag | 0xabc}, {TXID: 1<<64 - 1, PostApplyChecksum: 1<<64 - 1}} {
		s := strings.TrimSpace(ltx.FormatPos(p))
		f.Add(s)
		f.Add(strings.ToUpper(s))
		f.Add(s[:16] + "-" + s[17:])
		f.Add(s[:len(s)-1])
		f.Add("+" + s[1:])
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ltx.ParsePos(s)
		if err != nil {
			return
		}
		if got := strings.TrimSpace(ltx.FormatPos(p)); got != strings.ToLower(s) {
			t.Fatalf("ParsePos(%q) = %s, which formats as %q", s, p, got)
		}
	})
}
