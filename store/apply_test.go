package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/litefs-project/litefs/internal/sqlite"
	"github.com/litefs-project/litefs/ltx"
)

// testDB models a database as the primary has it: its pages, size and
// position. Its methods build the LTX files that take a replica from one
// state to the next.
type testDB struct {
	pageSize uint32
	commit   uint32
	pages    map[uint32][]byte
	pos      ltx.Pos
	rnd      *rand.Rand
}

func newTestDB(pageSize uint32, seed int64) *testDB {
	return &testDB{pageSize: pageSize, pages: make(map[uint32][]byte), rnd: rand.New(rand.NewSource(seed))}
}

func (m *testDB) clone() *testDB {
	c := *m
	c.pages = make(map[uint32][]byte, len(m.pages))
	for pgno, b := range m.pages {
		c.pages[pgno] = b
	}
	return &c
}

// randomPage returns new content for pgno; page 1 starts with a SQLite
// header in rollback-journal mode.
func (m *testDB) randomPage(pgno uint32) []byte {
	b := make([]byte, m.pageSize)
	m.rnd.Read(b)
	if pgno == 1 {
		clear(b[:sqlite.HeaderSize])
		copy(b, "SQLite format 3\x00")
		ps := uint16(m.pageSize)
		if m.pageSize == 65536 {
			ps = 1
		}
		binary.BigEndian.PutUint16(b[16:], ps)
		b[18], b[19] = 1, 1 // rollback journal
		b[21], b[22], b[23] = 64, 32, 32
		// Change counter, in-header size and version-valid-for left zero:
		// the in-header size is not trusted and the file size is.
	}
	return b
}

// checksum is the post-apply checksum of the model's content.
func (m *testDB) checksum() ltx.Checksum {
	var xor ltx.Checksum
	for pgno := uint32(1); pgno <= m.commit; pgno++ {
		if pgno == sqlite.LockPgno(m.pageSize) {
			continue
		}
		xor ^= ltx.ChecksumPage(pgno, m.pages[pgno])
	}
	return ltx.ChecksumFlag | xor
}

// file is the database file the model's content makes.
func (m *testDB) file() []byte {
	b := make([]byte, 0, int(m.commit)*int(m.pageSize))
	for pgno := uint32(1); pgno <= m.commit; pgno++ {
		b = append(b, m.pages[pgno]...)
	}
	return b
}

// change returns the model after a transaction that resizes the database
// to commit pages and writes new content to pgnos, and the encoded
// changeset of that transaction. Pages added by growing are written too;
// the first transaction writes every page, as a snapshot.
func (m *testDB) change(t *testing.T, commit uint32, pgnos ...uint32) (*testDB, []byte) {
	t.Helper()
	next := m.clone()
	next.commit = commit
	for pgno := range next.pages {
		if pgno > commit {
			delete(next.pages, pgno)
		}
	}
	set := make(map[uint32]bool)
	for _, pgno := range pgnos {
		if pgno > commit {
			t.Fatalf("test bug: page %d beyond commit %d", pgno, commit)
		}
		set[pgno] = true
	}
	for pgno := m.commit + 1; pgno <= commit; pgno++ {
		set[pgno] = true
	}
	if m.pos.TXID == 0 {
		for pgno := uint32(1); pgno <= commit; pgno++ {
			set[pgno] = true
		}
	}
	var changed []uint32
	for pgno := range set {
		changed = append(changed, pgno)
	}
	// In page order, so that a seed always gives the same content.
	sort.Slice(changed, func(i, j int) bool { return changed[i] < changed[j] })
	for _, pgno := range changed {
		next.pages[pgno] = next.randomPage(pgno)
	}

	next.pos = ltx.Pos{TXID: m.pos.TXID + 1, PostApplyChecksum: next.checksum()}
	hdr := ltx.Header{
		Version:   ltx.Version,
		PageSize:  next.pageSize,
		Commit:    commit,
		MinTXID:   next.pos.TXID,
		MaxTXID:   next.pos.TXID,
		Timestamp: time.Now().UnixMilli(),
	}
	if next.pos.TXID > 1 {
		hdr.PreApplyChecksum = m.pos.PostApplyChecksum
	}
	return next, encodeLTX(t, hdr, next.pages, changed, next.pos.PostApplyChecksum)
}

// snapshot encodes the model's whole content as a snapshot at its position.
func (m *testDB) snapshot(t *testing.T) []byte {
	t.Helper()
	var pgnos []uint32
	for pgno := uint32(1); pgno <= m.commit; pgno++ {
		if pgno != sqlite.LockPgno(m.pageSize) {
			pgnos = append(pgnos, pgno)
		}
	}
	return encodeLTX(t, ltx.Header{
		Version:   ltx.Version,
		PageSize:  m.pageSize,
		Commit:    m.commit,
		MinTXID:   1,
		MaxTXID:   m.pos.TXID,
		Timestamp: time.Now().UnixMilli(),
	}, m.pages, pgnos, m.pos.PostApplyChecksum)
}

// encodeLTX encodes an LTX file holding pgnos (ascending) from pages,
// with the given post-apply checksum, right or wrong.
func encodeLTX(t *testing.T, hdr ltx.Header, pages map[uint32][]byte, pgnos []uint32, post ltx.Checksum) []byte {
	t.Helper()
	var buf bytes.Buffer
	enc, err := ltx.NewEncoder(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if err := enc.EncodeHeader(hdr); err != nil {
		t.Fatalf("encode header %+v: %v", hdr, err)
	}
	for _, pgno := range pgnos {
		if err := enc.EncodePage(ltx.PageHeader{Pgno: pgno}, pages[pgno]); err != nil {
			t.Fatalf("encode page %d: %v", pgno, err)
		}
	}
	enc.SetPostApplyChecksum(post)
	if err := enc.Close(); err != nil {
		t.Fatalf("close encoder: %v", err)
	}
	return buf.Bytes()
}

// recordingInvalidator records the invalidations the store asks for.
type recordingInvalidator struct {
	mu      sync.Mutex
	data    []string
	entries []string
}

func (r *recordingInvalidator) InvalidateData(name string, off, size int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.data = append(r.data, invKey(name, off, size))
}

func (r *recordingInvalidator) InvalidateEntry(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.entries = append(r.entries, name)
}

// take returns and forgets what was recorded.
func (r *recordingInvalidator) take() (data, entries []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	data, entries = r.data, r.entries
	r.data, r.entries = nil, nil
	return data, entries
}

func invKey(name string, off, size int64) string {
	return name + "@" + itoa(off) + "+" + itoa(size)
}

func itoa(n int64) string {
	if n < 0 {
		return "-" + itoa(-n)
	}
	if n < 10 {
		return string(rune('0' + n))
	}
	return itoa(n/10) + string(rune('0'+n%10))
}

func openReplica(t *testing.T, dir string) *Store {
	t.Helper()
	st, err := Open(Options{Dir: dir, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	st.SetWritable(false)
	t.Cleanup(func() { st.Close() })
	return st
}

// replica is a store under test with the changesets applied to one database.
type replica struct {
	t    *testing.T
	st   *Store
	name string
	ltxs map[ltx.TXID][]byte // encoded changesets applied, by TXID
}

func newReplica(t *testing.T, name string) *replica {
	return &replica{t: t, st: openReplica(t, t.TempDir()), name: name, ltxs: make(map[ltx.TXID][]byte)}
}

func (r *replica) apply(m *testDB, b []byte) {
	r.t.Helper()
	pos, err := r.st.ApplyChangeset(context.Background(), r.name, bytes.NewReader(b), int64(len(b)))
	if err != nil {
		r.t.Fatalf("apply changeset %s: %v", m.pos.TXID, err)
	}
	if pos != m.pos {
		r.t.Fatalf("ApplyChangeset returned %s, want %s", pos, m.pos)
	}
	r.ltxs[m.pos.TXID] = b
	r.check(m)
}

func (r *replica) dbPath() string {
	return filepath.Join(r.st.Dir(), "dbs", r.name, databaseFile)
}

// check asserts that the replica holds exactly the model's database.
func (r *replica) check(m *testDB) {
	r.t.Helper()
	db := r.st.DB(r.name)
	if db == nil {
		r.t.Fatalf("database %q does not exist", r.name)
	}
	got, err := os.ReadFile(r.dbPath())
	if err != nil {
		r.t.Fatal(err)
	}
	if want := m.file(); !bytes.Equal(got, want) {
		r.t.Fatalf("txid %s: database file of %d bytes differs from the model's %d bytes (first difference at %d)",
			m.pos.TXID, len(got), len(want), firstDiff(got, want))
	}
	if pos := db.Pos(); pos != m.pos {
		r.t.Fatalf("Pos() = %s, want %s", pos, m.pos)
	}
	if pos := db.Log().Pos(); pos != m.pos {
		r.t.Fatalf("Log().Pos() = %s, want %s", pos, m.pos)
	}
	if ps := db.PageSize(); ps != m.pageSize {
		r.t.Fatalf("PageSize() = %d, want %d", ps, m.pageSize)
	}
	db.mu.Lock()
	sum, n := db.chk.Sum(), db.chk.PageN()
	db.mu.Unlock()
	if sum != m.pos.PostApplyChecksum || n != m.commit {
		r.t.Fatalf("page checksums: sum %s over %d pages, want %s over %d", sum, n, m.pos.PostApplyChecksum, m.commit)
	}
}

// checkLog asserts that the log holds the changesets from..to, byte for byte.
func (r *replica) checkLog(from, to ltx.TXID) {
	r.t.Helper()
	rd := r.st.DB(r.name).Log().NewReader()
	defer rd.Close()
	for txid := from; txid <= to; txid++ {
		info, sr, err := rd.Read(txid)
		if err != nil {
			r.t.Fatalf("read txid %s from the log: %v", txid, err)
		}
		b, err := io.ReadAll(sr)
		if err != nil {
			r.t.Fatal(err)
		}
		if want := r.ltxs[txid]; !bytes.Equal(b, want) {
			r.t.Fatalf("log record %s: %d bytes differ from the %d applied", txid, len(b), len(want))
		}
		if info.Header.MinTXID != txid || info.Pos().TXID != txid {
			r.t.Fatalf("log record %s has header %+v", txid, info.Header)
		}
	}
}

func firstDiff(a, b []byte) int {
	for i := 0; i < min(len(a), len(b)); i++ {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// step is one transaction of a scripted history.
type step struct {
	commit uint32
	pgnos  []uint32
}

var history = []step{
	{5, nil}, // txid 1: every page
	{5, []uint32{2, 4}},
	{5, []uint32{1}},
	{8, []uint32{1, 3}}, // grow
	{8, []uint32{8}},
	{3, []uint32{1, 2}}, // shrink
	{3, []uint32{3}},
	{12, nil}, // grow without touching old pages
	{1, []uint32{1}},
	{1, nil}, // nothing changes but the TXID
	{6, []uint32{1, 5}},
	{6, []uint32{2, 3, 4, 5, 6}},
	{4, nil}, // shrink only
}

func TestApplyChangesetSequence(t *testing.T) {
	r := newReplica(t, "seq.db")
	inv := &recordingInvalidator{}
	r.st.SetInvalidator(inv)
	m := newTestDB(4096, 1)
	for i, s := range history {
		next, b := m.change(t, s.commit, s.pgnos...)
		r.apply(next, b)
		r.checkLog(1, next.pos.TXID)
		if i == 0 {
			inv.take()
		} else {
			// Only the pages written are invalidated, then the size.
			data, _ := inv.take()
			var want []string
			for pgno := uint32(1); pgno <= s.commit; pgno++ {
				if bytes.Equal(next.pages[pgno], m.pages[pgno]) {
					continue
				}
				want = append(want, invKey(r.name, int64(pgno-1)*4096, 4096))
			}
			want = append(want, invKey(r.name, -1, 0))
			if len(want) == 1 && strings.Join(data, " ") == invKey(r.name, 0, -1) {
				// No page written: dropping the whole file is as good.
			} else if strings.Join(data, " ") != strings.Join(want, " ") {
				t.Fatalf("txid %s: invalidated %v, want %v", next.pos.TXID, data, want)
			}
		}
		m = next
	}

	// Random transactions on top.
	rnd := rand.New(rand.NewSource(2))
	for i := 0; i < 20; i++ {
		commit := uint32(1 + rnd.Intn(20))
		var pgnos []uint32
		for k := rnd.Intn(4); k > 0; k-- {
			pgnos = append(pgnos, uint32(1+rnd.Intn(int(commit))))
		}
		next, b := m.change(t, commit, pgnos...)
		r.apply(next, b)
		m = next
	}
	r.checkLog(1, m.pos.TXID)
	if base := r.st.DB(r.name).Log().Base(); base != (ltx.Pos{}) {
		t.Fatalf("Log().Base() = %s, want zero", base)
	}
	if got := r.st.Positions()[r.name]; got != m.pos {
		t.Fatalf("Positions()[%q] = %s, want %s", r.name, got, m.pos)
	}

	// The database and its log survive a restart.
	dir := r.st.Dir()
	if err := r.st.Close(); err != nil {
		t.Fatal(err)
	}
	r.st = openReplica(t, dir)
	r.check(m)
	r.checkLog(1, m.pos.TXID)
	next, b := m.change(t, m.commit+1, 1)
	r.apply(next, b)
}

// A changeset that does not fit is refused and changes nothing.
func TestApplyChangesetRefused(t *testing.T) {
	ctx := context.Background()
	r := newReplica(t, "refuse.db")
	m := newTestDB(4096, 3)
	var m3 *testDB // the state at txid 3
	for _, s := range history[:4] {
		m3 = m
		next, b := m.change(t, s.commit, s.pgnos...)
		r.apply(next, b)
		m = next
	}
	if m3.pos.TXID != 3 || m.pos.TXID != 4 || m.commit != 8 {
		t.Fatalf("test bug: positions %s, %s", m3.pos, m.pos)
	}

	good, goodLTX := m.change(t, 10, 2, 7) // the valid txid 5
	_, skipLTX := good.change(t, 10, 3)    // a valid txid 6, which skips 5
	_, otherTXID1 := newTestDB(4096, 9).change(t, 8)
	_, repeatOther := m3.change(t, 8, 1)

	hdr := func(txid ltx.TXID, pre ltx.Checksum, commit uint32) ltx.Header {
		return ltx.Header{Version: ltx.Version, PageSize: 4096, Commit: commit, MinTXID: txid, MaxTXID: txid,
			Timestamp: time.Now().UnixMilli(), PreApplyChecksum: pre}
	}
	changed := []uint32{2, 7, 9, 10}

	tests := []struct {
		name     string
		data     []byte
		mismatch bool // errors.Is(err, ErrMismatch)
	}{
		{"skips a txid", skipLTX, true},
		{"skips a txid (crafted)", encodeLTX(t, hdr(6, m.pos.PostApplyChecksum, 10), good.pages, changed, good.pos.PostApplyChecksum), true},
		{"repeats the current txid", r.ltxs[4], true},
		{"repeats the current txid with other content", repeatOther, true},
		{"txid 1 again", otherTXID1, true},
		{"older txid", r.ltxs[2], true},
		{"wrong pre-apply checksum", encodeLTX(t, hdr(5, m.pos.PostApplyChecksum^0x1234, 10), good.pages, changed, good.pos.PostApplyChecksum), true},
		{"pre-apply checksum of the previous state", encodeLTX(t, hdr(5, m3.pos.PostApplyChecksum, 10), good.pages, changed, good.pos.PostApplyChecksum), true},
		{"wrong post-apply checksum", encodeLTX(t, hdr(5, m.pos.PostApplyChecksum, 10), good.pages, changed, good.pos.PostApplyChecksum^0x10), true},
		{"post-apply checksum of the pre-apply state", encodeLTX(t, hdr(5, m.pos.PostApplyChecksum, 10), good.pages, changed, m.pos.PostApplyChecksum), true},
		{"post-apply checksum ignoring the shrink", encodeLTX(t, hdr(5, m.pos.PostApplyChecksum, 3), good.pages, []uint32{2}, func() ltx.Checksum {
			c := m.clone()
			c.pages[2] = good.pages[2]
			return c.checksum() // as if pages 4..8 were still there
		}()), true},
		{"missing a grown page", encodeLTX(t, hdr(5, m.pos.PostApplyChecksum, 10), good.pages, []uint32{2, 7, 9}, good.pos.PostApplyChecksum), true},
		{"page size change without every page", encodeLTX(t, ltx.Header{Version: ltx.Version, PageSize: 8192, Commit: 2, MinTXID: 5, MaxTXID: 5,
			Timestamp: 1, PreApplyChecksum: m.pos.PostApplyChecksum}, map[uint32][]byte{2: make([]byte, 8192)}, []uint32{2},
			ltx.ChecksumFlag|ltx.ChecksumPage(2, make([]byte, 8192))), true},
		{"empty", nil, false},
		{"header only", goodLTX[:ltx.HeaderSize], false},
		{"truncated by one byte", goodLTX[:len(goodLTX)-1], false},
		{"truncated in the middle", goodLTX[:len(goodLTX)/2], false},
		{"truncated in the trailer", goodLTX[:len(goodLTX)-ltx.TrailerSize/2], false},
		{"extra byte", append(append([]byte(nil), goodLTX...), 0), false},
		{"flipped byte in the middle", flip(goodLTX, len(goodLTX)/2), false},
		{"flipped byte in the first page", flip(goodLTX, ltx.HeaderSize+100), false},
		{"flipped byte in the header timestamp", flip(goodLTX, 39), false},
		{"flipped byte in the header pre-apply checksum", flip(goodLTX, 47), false},
		{"flipped byte in the header node id", flip(goodLTX, 79), false},
		{"flipped byte in the header's reserved bytes", flip(goodLTX, 90), false},
		{"flipped byte in the file checksum", flip(goodLTX, len(goodLTX)-1), false},
		{"flipped byte in the post-apply checksum", flip(goodLTX, len(goodLTX)-ltx.TrailerSize+3), false},
	}

	before, err := os.ReadFile(r.dbPath())
	if err != nil {
		t.Fatal(err)
	}
	db := r.st.DB(r.name)
	unchanged := func(t *testing.T, what string) {
		t.Helper()
		if got := db.Pos(); got != m.pos {
			t.Fatalf("%s: Pos() = %s, want %s", what, got, m.pos)
		}
		if got := db.Log().Pos(); got != m.pos {
			t.Fatalf("%s: Log().Pos() = %s, want %s", what, got, m.pos)
		}
		if r.st.DB(r.name) != db {
			t.Fatalf("%s: the database was replaced", what)
		}
	}
	unchangedFile := func(t *testing.T, what string) {
		t.Helper()
		after, err := os.ReadFile(r.dbPath())
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(after, before) {
			t.Fatalf("%s: database file changed (%d bytes, was %d)", what, len(after), len(before))
		}
		r.checkLog(1, 4)
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pos, err := r.st.ApplyChangeset(ctx, r.name, bytes.NewReader(tt.data), int64(len(tt.data)))
			if err == nil {
				t.Fatalf("applied, now at %s", pos)
			}
			if tt.mismatch && !errors.Is(err, ErrMismatch) {
				t.Fatalf("err = %v, want ErrMismatch", err)
			}
			unchanged(t, tt.name)
			unchangedFile(t, tt.name)
		})
	}

	// A size shorter than the data is a truncation, too.
	if _, err := r.st.ApplyChangeset(ctx, r.name, bytes.NewReader(goodLTX), int64(len(goodLTX)-10)); err == nil {
		t.Fatal("applied a changeset with a short size")
	}
	unchanged(t, "short size")

	// A flipped bit anywhere in the changeset is caught.
	t.Run("every offset", func(t *testing.T) {
		for off := 0; off < len(goodLTX); off++ {
			if off > 200 && off < len(goodLTX)-300 && off%97 != 0 {
				continue // all of the header and trailer, a sample of the pages
			}
			bad := append([]byte(nil), goodLTX...)
			bad[off] ^= 1 << (off % 8)
			if pos, err := r.st.ApplyChangeset(ctx, r.name, bytes.NewReader(bad), int64(len(bad))); err == nil {
				t.Fatalf("flipped bit at offset %d of %d applied, now at %s", off, len(bad), pos)
			}
			unchanged(t, "flipped bit")
		}
		unchangedFile(t, "flipped bits")
	})

	// After all that, the right changeset still applies.
	r.apply(good, goodLTX)
	r.checkLog(1, 5)
}

// flip returns a copy of b with the byte at off inverted.
func flip(b []byte, off int) []byte {
	c := append([]byte(nil), b...)
	c[off] ^= 0xff
	return c
}

// onlyReader hides everything but Read, as a network stream would.
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

func TestApplySnapshot(t *testing.T) {
	ctx := context.Background()
	r := newReplica(t, "snap.db")
	inv := &recordingInvalidator{}
	r.st.SetInvalidator(inv)
	m := newTestDB(4096, 4)
	for _, s := range history[:6] {
		next, b := m.change(t, s.commit, s.pgnos...)
		r.apply(next, b)
		m = next
	}
	inv.take()

	// The primary's database: another page size, another history.
	p := newTestDB(8192, 5)
	for _, s := range []step{{4, nil}, {9, []uint32{1}}, {7, []uint32{2, 3}}, {7, []uint32{6}}, {5, nil}, {5, []uint32{1}}, {6, nil}, {6, []uint32{4}}, {6, []uint32{5}}} {
		p, _ = p.change(t, s.commit, s.pgnos...)
	}
	snap := p.snapshot(t)

	checkBase := func(t *testing.T, want ltx.Pos) {
		t.Helper()
		l := r.st.DB(r.name).Log()
		if l.Base() != want || l.Pos() != want {
			t.Fatalf("log base %s, pos %s; want both %s", l.Base(), l.Pos(), want)
		}
		if _, err := os.Stat(filepath.Join(r.st.Dir(), "dbs", r.name, databaseFile+".snapshot")); !os.IsNotExist(err) {
			t.Fatalf("temporary snapshot file left behind: %v", err)
		}
	}

	t.Run("corrupt", func(t *testing.T) {
		before := m.file()
		cases := map[string][]byte{
			"empty":                  nil,
			"header only":            snap[:ltx.HeaderSize],
			"truncated by one byte":  snap[:len(snap)-1],
			"truncated in a page":    snap[:ltx.HeaderSize+5000],
			"truncated in the index": snap[:len(snap)-ltx.TrailerSize-3],
			"extra byte":             append(append([]byte(nil), snap...), 1),
			"flipped in the middle":  flip(snap, len(snap)/2),
			"flipped in page 1":      flip(snap, ltx.HeaderSize+200),
			"flipped in the header":  flip(snap, 39),
			"flipped in the trailer": flip(snap, len(snap)-ltx.TrailerSize+4),
			"flipped file checksum":  flip(snap, len(snap)-1),
			"wrong post-apply checksum": encodeLTX(t, ltx.Header{Version: ltx.Version, PageSize: p.pageSize, Commit: p.commit, MinTXID: 1, MaxTXID: p.pos.TXID, Timestamp: 1},
				p.pages, []uint32{1, 2, 3, 4, 5, 6}, p.pos.PostApplyChecksum^0x100),
		}
		for off := 0; off < len(snap); off += 211 {
			cases["flipped at "+itoa(int64(off))] = flip(snap, off)
		}
		for name, data := range cases {
			pos, err := r.st.ApplySnapshot(ctx, r.name, onlyReader{bytes.NewReader(data)})
			if err == nil {
				t.Fatalf("%s: applied, now at %s", name, pos)
			}
			got, err := os.ReadFile(r.dbPath())
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, before) {
				t.Fatalf("%s: database file changed", name)
			}
			if db := r.st.DB(r.name); db.Pos() != m.pos || db.Log().Pos() != m.pos || db.PageSize() != 4096 {
				t.Fatalf("%s: now at %s, log at %s, page size %d", name, db.Pos(), db.Log().Pos(), db.PageSize())
			}
			if base := r.st.DB(r.name).Log().Base(); base != (ltx.Pos{}) {
				t.Fatalf("%s: log base moved to %s", name, base)
			}
			if _, err := os.Stat(filepath.Join(r.st.Dir(), "dbs", r.name, databaseFile+".snapshot")); !os.IsNotExist(err) {
				t.Fatalf("%s: temporary snapshot file left behind: %v", name, err)
			}
		}
		r.checkLog(1, m.pos.TXID)
		if data, _ := inv.take(); len(data) != 0 {
			t.Fatalf("refused snapshots invalidated %v", data)
		}
		// A changeset is not a snapshot.
		if _, err := r.st.ApplySnapshot(ctx, r.name, bytes.NewReader(r.ltxs[3])); !errors.Is(err, ErrMismatch) {
			t.Fatalf("changeset as a snapshot: %v, want ErrMismatch", err)
		}
	})

	t.Run("replace", func(t *testing.T) {
		pos, err := r.st.ApplySnapshot(ctx, r.name, onlyReader{bytes.NewReader(snap)})
		if err != nil {
			t.Fatal(err)
		}
		if pos != p.pos {
			t.Fatalf("ApplySnapshot returned %s, want %s", pos, p.pos)
		}
		r.check(p)
		checkBase(t, p.pos)
		if data, _ := inv.take(); strings.Join(data, " ") != invKey(r.name, 0, -1) {
			t.Fatalf("snapshot invalidated %v, want the whole file", data)
		}

		// Changesets continue from the snapshot.
		next, b := p.change(t, 8, 1, 3)
		r.apply(next, b)
		r.checkLog(next.pos.TXID, next.pos.TXID)
		if base := r.st.DB(r.name).Log().Base(); base != p.pos {
			t.Fatalf("log base %s, want %s", base, p.pos)
		}
		// The records before the snapshot are gone.
		if _, err := r.st.DB(r.name).Log().Info(p.pos.TXID); err == nil {
			t.Fatalf("txid %s still in the log after the snapshot", p.pos.TXID)
		}
		p = next
	})

	t.Run("back in time and page size", func(t *testing.T) {
		// A snapshot at a lower TXID, with the first page size again.
		q := newTestDB(4096, 6)
		q, _ = q.change(t, 3)
		q, _ = q.change(t, 2, 1)
		pos, err := r.st.ApplySnapshot(ctx, r.name, bytes.NewReader(q.snapshot(t)))
		if err != nil {
			t.Fatal(err)
		}
		if pos != q.pos {
			t.Fatalf("ApplySnapshot returned %s, want %s", pos, q.pos)
		}
		r.check(q)
		checkBase(t, q.pos)

		// The same snapshot again is harmless.
		if _, err := r.st.ApplySnapshot(ctx, r.name, bytes.NewReader(q.snapshot(t))); err != nil {
			t.Fatal(err)
		}
		r.check(q)
		checkBase(t, q.pos)
	})

	t.Run("restart", func(t *testing.T) {
		dir := r.st.Dir()
		want := r.st.DB(r.name).Pos()
		if err := r.st.Close(); err != nil {
			t.Fatal(err)
		}
		r.st = openReplica(t, dir)
		db := r.st.DB(r.name)
		if db == nil || db.Pos() != want || db.Log().Base() != want {
			t.Fatalf("after restart: %v", db)
		}
	})

	t.Run("new database", func(t *testing.T) {
		pos, err := r.st.ApplySnapshot(ctx, "fresh.db", onlyReader{bytes.NewReader(snap)})
		if err != nil {
			t.Fatal(err)
		}
		if pos.TXID != 9 {
			t.Fatalf("pos %s", pos)
		}
		got, err := os.ReadFile(filepath.Join(r.st.Dir(), "dbs", "fresh.db", databaseFile))
		if err != nil {
			t.Fatal(err)
		}
		q := newTestDB(8192, 5)
		for _, s := range []step{{4, nil}, {9, []uint32{1}}, {7, []uint32{2, 3}}, {7, []uint32{6}}, {5, nil}, {5, []uint32{1}}, {6, nil}, {6, []uint32{4}}, {6, []uint32{5}}} {
			q, _ = q.change(t, s.commit, s.pgnos...)
		}
		if !bytes.Equal(got, q.file()) || pos != q.pos {
			t.Fatalf("new database from a snapshot differs")
		}
	})
}

func TestDropDB(t *testing.T) {
	ctx := context.Background()
	r := newReplica(t, "drop.db")
	inv := &recordingInvalidator{}
	r.st.SetInvalidator(inv)
	m := newTestDB(4096, 7)
	for _, s := range history[:3] {
		next, b := m.change(t, s.commit, s.pgnos...)
		r.apply(next, b)
		m = next
	}
	other := &replica{t: t, st: r.st, name: "other.db", ltxs: make(map[ltx.TXID][]byte)}
	o, b := newTestDB(4096, 8).change(t, 2)
	other.apply(o, b)

	old := r.st.DB(r.name)
	dir := filepath.Join(r.st.Dir(), "dbs", r.name)
	inv.take()
	if err := r.st.DropDB(r.name); err != nil {
		t.Fatal(err)
	}
	if db := r.st.DB(r.name); db != nil {
		t.Fatalf("DB(%q) = %v after DropDB", r.name, db)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("database directory still there: %v", err)
	}
	ents, err := os.ReadDir(filepath.Join(r.st.Dir(), "dbs"))
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 || ents[0].Name() != "other.db" {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Fatalf("dbs directory holds %v, want only other.db", names)
	}
	if _, ok := r.st.Positions()[r.name]; ok {
		t.Fatal("dropped database still has a position")
	}
	_, entries := inv.take()
	for _, want := range []string{r.name, r.name + "-journal", r.name + "-wal", r.name + "-shm", r.name + "-pos"} {
		found := false
		for _, e := range entries {
			found = found || e == want
		}
		if !found {
			t.Errorf("entry %q not invalidated (got %v)", want, entries)
		}
	}

	// The old handle is dead.
	_, b4 := m.change(t, 5, 2)
	if _, err := old.applyChangeset(ctx, bytes.NewReader(b4), int64(len(b4))); !errors.Is(err, ErrNotExist) {
		t.Fatalf("apply through the dropped handle: %v, want ErrNotExist", err)
	}
	if _, err := old.OpenSnapshot(); !errors.Is(err, ErrNotExist) {
		t.Fatalf("snapshot of the dropped handle: %v, want ErrNotExist", err)
	}

	// The other database is untouched.
	other.check(o)

	// Dropping what does not exist is not an error.
	if err := r.st.DropDB(r.name); err != nil {
		t.Fatalf("second DropDB: %v", err)
	}
	if err := r.st.DropDB("never.db"); err != nil {
		t.Fatalf("DropDB of an unknown database: %v", err)
	}

	// The database can come back from txid 1; a continuation of the
	// dropped one cannot start it.
	if _, err := r.st.ApplyChangeset(ctx, r.name, bytes.NewReader(b4), int64(len(b4))); !errors.Is(err, ErrMismatch) {
		t.Fatalf("txid 4 on a new database: %v, want ErrMismatch", err)
	}
	r.ltxs = make(map[ltx.TXID][]byte)
	n, b1 := newTestDB(4096, 10).change(t, 3)
	r.apply(n, b1)
	r.checkLog(1, 1)

	// Survives a restart: the dropped database does not come back.
	st := r.st
	if err := st.DropDB(r.name); err != nil {
		t.Fatal(err)
	}
	dataDir := st.Dir()
	st.Close()
	st2 := openReplica(t, dataDir)
	if st2.DB(r.name) != nil || st2.DB("other.db") == nil {
		t.Fatalf("after restart: dbs %v", st2.Positions())
	}
}

// A snapshot read out of one replica installs the same database on another.
func TestSnapshotRoundTrip(t *testing.T) {
	ctx := context.Background()
	src := newReplica(t, "rt.db")
	m := newTestDB(4096, 11)
	for _, s := range history {
		next, b := m.change(t, s.commit, s.pgnos...)
		src.apply(next, b)
		m = next
	}
	// Large enough for several read batches.
	next, b := m.change(t, 150, 1, 2)
	src.apply(next, b)
	m = next

	readOut := func(t *testing.T, snap *Snapshot) []byte {
		t.Helper()
		var buf bytes.Buffer
		n, err := snap.WriteTo(&buf)
		if err != nil {
			t.Fatalf("WriteTo: %v", err)
		}
		if n != int64(buf.Len()) {
			t.Fatalf("WriteTo returned %d, wrote %d", n, buf.Len())
		}
		if err := snap.Close(); err != nil {
			t.Fatal(err)
		}
		hdr, trailer, err := ltx.Verify(bytes.NewReader(buf.Bytes()))
		if err != nil {
			t.Fatalf("snapshot does not verify: %v", err)
		}
		if hdr.MinTXID != 1 || hdr.MaxTXID != snap.Pos().TXID || trailer.PostApplyChecksum != snap.Pos().PostApplyChecksum {
			t.Fatalf("snapshot header %+v, trailer %+v; pos %s", hdr, trailer, snap.Pos())
		}
		return buf.Bytes()
	}
	install := func(t *testing.T, want *testDB, data []byte) *replica {
		t.Helper()
		dst := newReplica(t, "rt.db")
		pos, err := dst.st.ApplySnapshot(ctx, dst.name, onlyReader{bytes.NewReader(data)})
		if err != nil {
			t.Fatal(err)
		}
		if pos != want.pos {
			t.Fatalf("ApplySnapshot returned %s, want %s", pos, want.pos)
		}
		dst.check(want)
		if l := dst.st.DB(dst.name).Log(); l.Base() != want.pos || l.Pos() != want.pos {
			t.Fatalf("log base %s, pos %s", l.Base(), l.Pos())
		}
		return dst
	}

	t.Run("idle", func(t *testing.T) {
		snap, err := src.st.DB(src.name).OpenSnapshot()
		if err != nil {
			t.Fatal(err)
		}
		if snap.Pos() != m.pos {
			t.Fatalf("snapshot at %s, want %s", snap.Pos(), m.pos)
		}
		data := readOut(t, snap)
		dst := install(t, m, data)
		srcFile, _ := os.ReadFile(src.dbPath())
		dstFile, _ := os.ReadFile(dst.dbPath())
		if !bytes.Equal(srcFile, dstFile) {
			t.Fatal("database files differ")
		}
		// Both continue with the same changeset.
		next, b := m.change(t, 140, 3)
		src.apply(next, b)
		dst.apply(next, b)
		m = next
	})

	// Changesets applied while a snapshot is open do not show in it.
	t.Run("applies while open", func(t *testing.T) {
		at := m
		snap, err := src.st.DB(src.name).OpenSnapshot()
		if err != nil {
			t.Fatal(err)
		}
		n1, b1 := m.change(t, 140, 1, 2, 70, 130) // overwrite pages
		src.apply(n1, b1)
		n2, b2 := n1.change(t, 20, 5) // shrink
		src.apply(n2, b2)
		n3, b3 := n2.change(t, 200, 1) // grow
		src.apply(n3, b3)
		m = n3
		install(t, at, readOut(t, snap))
	})

	t.Run("snapshot replaced while open", func(t *testing.T) {
		at := m
		snap, err := src.st.DB(src.name).OpenSnapshot()
		if err != nil {
			t.Fatal(err)
		}
		q := newTestDB(1024, 12)
		q, _ = q.change(t, 10)
		if _, err := src.st.ApplySnapshot(ctx, src.name, bytes.NewReader(q.snapshot(t))); err != nil {
			t.Fatal(err)
		}
		src.check(q)
		install(t, at, readOut(t, snap))
		m = q
	})

	t.Run("empty database", func(t *testing.T) {
		st := openReplica(t, t.TempDir())
		st.SetWritable(true)
		db, err := st.CreateDB("empty.db")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := db.OpenSnapshot(); !errors.Is(err, ErrEmpty) {
			t.Fatalf("snapshot of an empty database: %v, want ErrEmpty", err)
		}
	})
}

// Concurrent applies of one changeset: exactly one succeeds.
func TestApplyChangesetConcurrent(t *testing.T) {
	ctx := context.Background()
	r := newReplica(t, "conc.db")
	m := newTestDB(4096, 13)
	for _, s := range history[:3] {
		next, b := m.change(t, s.commit, s.pgnos...)
		r.apply(next, b)
		m = next
	}
	for round := 0; round < 5; round++ {
		next, b := m.change(t, m.commit+1, 1, 2)
		var wg sync.WaitGroup
		errs := make([]error, 8)
		for i := range errs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = r.st.ApplyChangeset(ctx, r.name, bytes.NewReader(b), int64(len(b)))
			}()
		}
		wg.Wait()
		ok := 0
		for _, err := range errs {
			if err == nil {
				ok++
			} else if !errors.Is(err, ErrMismatch) {
				t.Fatalf("round %d: %v, want ErrMismatch", round, err)
			}
		}
		if ok != 1 {
			t.Fatalf("round %d: %d applies succeeded, want 1", round, ok)
		}
		r.ltxs[next.pos.TXID] = b
		r.check(next)
		m = next
	}
	r.checkLog(1, m.pos.TXID)
}

// A snapshot must hold every page up to its commit size; one that leaves
// out the last pages would install a database whose position checksum
// does not match its content.
func TestApplySnapshotMissingPages(t *testing.T) {
	ctx := context.Background()
	p := newTestDB(4096, 14)
	p, _ = p.change(t, 6)
	short := p.clone()
	short.commit = 5 // the checksum the truncated page list adds up to
	data := encodeLTX(t, ltx.Header{Version: ltx.Version, PageSize: 4096, Commit: 6, MinTXID: 1, MaxTXID: 1, Timestamp: 1},
		p.pages, []uint32{1, 2, 3, 4, 5}, short.checksum())

	// As the first changeset, it is refused.
	r := newReplica(t, "as-changeset.db")
	if _, err := r.st.ApplyChangeset(ctx, r.name, bytes.NewReader(data), int64(len(data))); !errors.Is(err, ErrMismatch) {
		t.Fatalf("ApplyChangeset of a snapshot missing page 6: %v, want ErrMismatch", err)
	}

	// As a snapshot over an existing database, it must be refused too.
	r.name = "as-snapshot.db"
	m, b := newTestDB(4096, 15).change(t, 3)
	r.apply(m, b)
	pos, err := r.st.ApplySnapshot(ctx, r.name, bytes.NewReader(data))
	if err == nil {
		t.Fatalf("ApplySnapshot of a snapshot missing page 6 succeeded at %s", pos)
	}
	if !errors.Is(err, ErrMismatch) {
		t.Fatalf("ApplySnapshot of a snapshot missing page 6: %v, want ErrMismatch", err)
	}
	r.check(m)
	r.checkLog(1, 1)
}
