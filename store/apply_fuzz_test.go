package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/litefs-project/litefs/internal/fuzzutil"
	"github.com/litefs-project/litefs/internal/sqlite"
	"github.com/litefs-project/litefs/ltx"
)

// FuzzApplyChangeset feeds a replica's store changesets for a database at
// TXID 1, as they arrive from the primary: the store's verification
// (verifyChangeset) must refuse anything that does not continue the
// database, and then leave it exactly as it was; what it accepts must be
// applied exactly, with the position describing the content.

// fuzzBase is the database every input is applied to: 4 pages of 512
// bytes at TXID 1.
type fuzzBase struct {
	pageSize uint32
	pages    map[uint32][]byte
	pos      ltx.Pos
	ltx      []byte // the snapshot that creates it
}

func newFuzzBase(tb testing.TB) *fuzzBase {
	b := &fuzzBase{pageSize: 512, pages: make(map[uint32][]byte)}
	for pgno := uint32(1); pgno <= 4; pgno++ {
		b.pages[pgno] = fuzzutil.Page(b.pageSize, pgno, 1)
	}
	copy(b.pages[1], sqliteHeader(b.pageSize))
	b.pos = ltx.Pos{TXID: 1, PostApplyChecksum: pagesChecksum(b.pageSize, b.pages)}
	b.ltx = fuzzutil.EncodeLTX(tb, ltx.Header{Version: ltx.Version, PageSize: b.pageSize, Commit: 4, MinTXID: 1, MaxTXID: 1, Timestamp: 1},
		b.pages, []uint32{1, 2, 3, 4}, b.pos.PostApplyChecksum)
	return b
}

// sqliteHeader is the start of page 1 of a rollback-journal database.
func sqliteHeader(pageSize uint32) []byte {
	b := make([]byte, sqlite.HeaderSize)
	copy(b, "SQLite format 3\x00")
	ps := uint16(pageSize)
	if pageSize == 65536 {
		ps = 1
	}
	b[16], b[17] = byte(ps>>8), byte(ps)
	b[18], b[19] = 1, 1
	b[21], b[22], b[23] = 64, 32, 32
	return b
}

func pagesChecksum(pageSize uint32, pages map[uint32][]byte) ltx.Checksum {
	var x ltx.Checksum
	for pgno, data := range pages {
		if pgno != sqlite.LockPgno(pageSize) {
			x ^= ltx.ChecksumPage(pgno, data)
		}
	}
	return ltx.ChecksumFlag | x
}

// next returns the changeset of TXID 2 that resizes the database to
// commit pages of pageSize bytes and writes pgnos (with pages new to the
// database, and every page if the page size changes).
func (b *fuzzBase) next(tb testing.TB, pageSize, commit uint32, pgnos ...uint32) []byte {
	pages := make(map[uint32][]byte)
	if pageSize == b.pageSize {
		for pgno, data := range b.pages {
			if pgno <= commit {
				pages[pgno] = data
			}
		}
	}
	for _, pgno := range pgnos {
		pages[pgno] = fuzzutil.Page(pageSize, pgno, 2)
	}
	if pageSize != b.pageSize && commit > 0 {
		copy(pages[1], sqliteHeader(pageSize))
	}
	var all []uint32
	for pgno := uint32(1); pgno <= commit; pgno++ {
		if pages[pgno] != nil {
			all = append(all, pgno)
		}
	}
	post := pagesChecksum(pageSize, pages)
	return fuzzutil.EncodeLTX(tb, ltx.Header{Version: ltx.Version, PageSize: pageSize, Commit: commit, MinTXID: 2, MaxTXID: 2,
		Timestamp: 2, PreApplyChecksum: b.pos.PostApplyChecksum}, pages, pgnosOf(all, pgnos, pageSize != b.pageSize), post)
}

// pgnosOf is the pages a changeset holds: those written, or all of them.
func pgnosOf(all, written []uint32, full bool) []uint32 {
	if full {
		return all
	}
	return written
}

func FuzzApplyChangeset(f *testing.F) {
	base := newFuzzBase(f)
	seeds := [][]byte{
		base.next(f, 512, 4, 2, 3),       // change pages
		base.next(f, 512, 6, 1, 5, 6),    // grow
		base.next(f, 512, 2, 1),          // shrink
		base.next(f, 512, 4),             // nothing but the TXID
		base.next(f, 1024, 3, 1, 2, 3),   // change the page size
		base.next(f, 512, 0),             // empty the database
		base.next(f, 512, 5, 4, 5),       // grow by one page
		base.next(f, 512, 4, 1, 2, 3, 4), // every page
		fuzzutil.HugeBlock(base.next(f, 512, 4, 2)),
	}
	for _, s := range seeds {
		f.Add(s, false)
		for _, v := range fuzzutil.Variants(s) {
			f.Add(v, false)
			f.Add(v, true)
		}
	}

	st, err := Open(Options{Dir: f.TempDir(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		f.Fatal(err)
	}
	defer st.Close()
	st.SetWritable(false)
	ctx := context.Background()
	n := 0

	f.Fuzz(func(t *testing.T, data []byte, fix bool) {
		if fix {
			data = fuzzutil.FixChecksum(data)
		}
		// A database of its own for every input.
		n++
		name := fmt.Sprintf("db%d", n)
		if _, err := st.ApplyChangeset(ctx, name, bytes.NewReader(base.ltx), int64(len(base.ltx))); err != nil {
			t.Fatalf("apply the base: %v", err)
		}
		defer func() {
			if err := st.DropDB(name); err != nil {
				t.Fatalf("drop %s: %v", name, err)
			}
		}()
		db := st.DB(name)
		path := filepath.Join(st.Dir(), "dbs", name, databaseFile)
		before := readFile(t, path)

		var pos ltx.Pos
		if a := fuzzutil.Allocated(func() {
			pos, err = st.ApplyChangeset(ctx, name, bytes.NewReader(data), int64(len(data)))
		}); a > 16<<20+16*uint64(len(data)) {
			t.Fatalf("applying a changeset of %d bytes allocated %d bytes (verdict: %v)", len(data), a, err)
		}
		if err != nil {
			// Refused: nothing changed.
			if got := readFile(t, path); !bytes.Equal(got, before) {
				t.Fatalf("a refused changeset (%v) changed the database file", err)
			}
			if db.Pos() != base.pos || db.Log().Pos() != base.pos {
				t.Fatalf("a refused changeset (%v) moved the position to %s, the log to %s", err, db.Pos(), db.Log().Pos())
			}
			return
		}

		// Accepted: it continues the database, and the position describes
		// the content.
		hdr, pages := decodePages(t, data)
		if pos.TXID != 2 || db.Pos() != pos || db.Log().Pos() != pos {
			t.Fatalf("applied at %s; the database is at %s, its log at %s", pos, db.Pos(), db.Log().Pos())
		}
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if want := int64(hdr.Commit) * int64(hdr.PageSize); fi.Size() != want {
			t.Fatalf("the database file is %d bytes, the changeset's commit %d bytes", fi.Size(), want)
		}
		if limit := int64(4+len(pages)) * int64(hdr.PageSize); fi.Size() > limit {
			t.Fatalf("a changeset of %d pages grew a database of 4 pages to %d bytes", len(pages), fi.Size())
		}
		got := readFile(t, path)
		want := make([]byte, len(got))
		if hdr.PageSize == base.pageSize {
			copy(want, bytes.Join([][]byte{base.pages[1], base.pages[2], base.pages[3], base.pages[4]}, nil))
		}
		for pgno, data := range pages {
			copy(want[int64(pgno-1)*int64(hdr.PageSize):], data)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("the database file is not the base with the changeset's pages")
		}
		sum, err := ltx.ChecksumReader(bytes.NewReader(got), int(hdr.PageSize))
		if err != nil {
			t.Fatal(err)
		}
		// (ChecksumReader gives 0 for no pages; an empty database's
		// checksum is the flag alone.)
		if sum |= ltx.ChecksumFlag; sum != pos.PostApplyChecksum {
			t.Fatalf("accepted changeset says post-apply checksum %s, the content has %s", pos.PostApplyChecksum, sum)
		}
		rd := db.Log().NewReader()
		defer rd.Close()
		_, sr, err := rd.Read(2)
		if err != nil {
			t.Fatalf("read the applied changeset from the log: %v", err)
		}
		if rec, _ := io.ReadAll(sr); !bytes.Equal(rec, data) {
			t.Fatalf("the log holds %d bytes, not the %d bytes applied", len(rec), len(data))
		}
	})
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// decodePages decodes an accepted changeset.
func decodePages(t *testing.T, data []byte) (ltx.Header, map[uint32][]byte) {
	t.Helper()
	dec := ltx.NewDecoder(bytes.NewReader(data))
	if err := dec.DecodeHeader(); err != nil {
		t.Fatalf("accepted changeset does not decode: %v", err)
	}
	pages := make(map[uint32][]byte)
	for {
		buf := make([]byte, dec.Header().PageSize)
		var ph ltx.PageHeader
		if err := dec.DecodePage(&ph, buf); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("accepted changeset does not decode: %v", err)
		}
		pages[ph.Pgno] = buf
	}
	return dec.Header(), pages
}
