package store

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/litefs-project/litefs/internal/clock"
	"github.com/litefs-project/litefs/internal/rangelock"
	"github.com/litefs-project/litefs/internal/sqlite"
	"github.com/litefs-project/litefs/ltx"
)

// Tests of forwarded commits on the primary (forward.go) in a database in
// WAL mode: they go into the WAL as SQLite's own commits would, with the
// WAL index kept for the primary's readers.

// forwardPage returns new content for pgno that the structure check of
// forwarded changesets accepts: page 1's header says WAL mode, and no
// other page claims to be a b-tree page.
func (m *testDB) forwardPage(pgno uint32) []byte {
	b := m.randomPage(pgno)
	if pgno == 1 {
		b[18], b[19] = 2, 2
	} else {
		b[0] = 0
	}
	return b
}

// forwardChange is change with pages from forwardPage.
func (m *testDB) forwardChange(t *testing.T, commit uint32, pgnos ...uint32) (*testDB, []byte) {
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
	sort.Slice(changed, func(i, j int) bool { return changed[i] < changed[j] })
	for _, pgno := range changed {
		next.pages[pgno] = next.forwardPage(pgno)
	}
	next.pos = ltx.Pos{TXID: m.pos.TXID + 1, PostApplyChecksum: next.checksum()}
	hdr := ltx.Header{Version: ltx.Version, PageSize: next.pageSize, Commit: commit, MinTXID: next.pos.TXID, MaxTXID: next.pos.TXID, Timestamp: time.Now().UnixMilli()}
	if next.pos.TXID > 1 {
		hdr.PreApplyChecksum = m.pos.PostApplyChecksum
	}
	return next, encodeLTX(t, hdr, next.pages, changed, next.pos.PostApplyChecksum)
}

// newForwardFixture is a primary in a term with a database in WAL mode of
// commit pages, and a WAL index as SQLite's readers map it.
func newForwardFixture(t *testing.T, pageSize, commit uint32) *termFixture {
	t.Helper()
	r := newReplica(t, "db")
	m, b := newTestDB(pageSize, 1).forwardChange(t, commit)
	r.apply(m, b)
	db := r.st.DB("db")
	if err := db.Create(FileSHM); err != nil {
		t.Fatal(err)
	}
	if _, err := db.WriteAt(FileSHM, make([]byte, walIndexBlock), 0); err != nil {
		t.Fatal(err)
	}
	clk := clock.NewFake(time.Unix(1_700_000_000, 0))
	term, err := r.st.BeginTerm(context.Background(), TermOptions{Epoch: 7, HaltTTL: testHaltTTL, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { term.End(context.Background()) })
	return &termFixture{t: t, r: r, m: m, clk: clk, term: term, epoch: 7}
}

// commit forwards a changeset under grant g and checks the new position.
func (f *termFixture) commit(g HaltGrant, next *testDB, b []byte, sync bool) {
	f.t.Helper()
	pos, err := f.term.CommitHalted(context.Background(), f.epoch, "db", g.ID, bytes.NewReader(b), int64(len(b)), sync)
	if err != nil {
		f.t.Fatalf("forwarded commit %s: %v", next.pos.TXID, err)
	}
	if pos != next.pos || f.db().Pos() != next.pos {
		f.t.Fatalf("position %s (returned %s) after forwarded commit, want %s", f.db().Pos(), pos, next.pos)
	}
	f.m = next
}

func (f *termFixture) file(name string) []byte {
	f.t.Helper()
	b, err := os.ReadFile(filepath.Join(f.r.st.Dir(), "dbs", "db", name))
	if err != nil {
		f.t.Fatal(err)
	}
	return b
}

// checkWAL checks that the database file and the WAL together hold the
// model's content, as SQLite reads them: the WAL's frames are valid and
// its last commit is the model's size; the WAL index names, for every
// page, the WAL's latest frame of it. It returns the WAL's header.
func (f *termFixture) checkWAL(dbFile []byte) sqlite.WALHeader {
	f.t.Helper()
	wal := f.file(walFile)
	var frames []sqlite.WALFrameRef
	scan, err := sqlite.ScanWAL(bytes.NewReader(wal), int64(len(wal)), func(txn sqlite.WALTxn) error {
		frames = append(frames, txn.Frames...)
		return nil
	})
	if err != nil || !scan.Valid {
		f.t.Fatalf("WAL of %d bytes does not scan: %v (valid %v)", len(wal), err, scan.Valid)
	}
	if scan.CommitEnd != int64(len(wal)) || scan.Commit != f.m.commit {
		f.t.Fatalf("WAL commits up to %d of %d bytes, size %d pages; want all of it, %d pages", scan.CommitEnd, len(wal), scan.Commit, f.m.commit)
	}
	ps := int(f.m.pageSize)
	latest := make(map[uint32]int) // pgno -> 1-based frame
	for i, fr := range frames {
		latest[fr.Pgno] = i + 1
	}
	for pgno := uint32(1); pgno <= f.m.commit; pgno++ {
		var got []byte
		if i, ok := latest[pgno]; ok {
			off := frames[i-1].Offset + sqlite.WALFrameHeaderSize
			got = wal[off : off+int64(ps)]
		} else if int(pgno)*ps <= len(dbFile) {
			got = dbFile[int(pgno-1)*ps : int(pgno)*ps]
		}
		if !bytes.Equal(got, f.m.pages[pgno]) {
			f.t.Fatalf("page %d as SQLite would read it from the database file and WAL is not the model's", pgno)
		}
	}

	db := f.db()
	db.mu.Lock()
	shm := bytes.Clone(db.shm)
	db.mu.Unlock()
	h, ok := readWALIndexHeader(shm)
	if !ok {
		f.t.Fatal("the WAL index header is not one SQLite trusts")
	}
	want := walIndexHeader{change: h.change, bigEndian: scan.Header.BigEndianChecksum(), pageSize: f.m.pageSize, maxFrame: uint32(len(frames)), pageN: f.m.commit,
		frameSum1: scan.Checksum1, frameSum2: scan.Checksum2, salt1: scan.Header.Salt1, salt2: scan.Header.Salt2}
	if h != want {
		f.t.Fatalf("WAL index header %+v, want %+v", h, want)
	}
	for pgno := uint32(1); pgno <= f.m.commit; pgno++ {
		if got := findWALFrame(shm, pgno, h.maxFrame); got != uint32(latest[pgno]) {
			f.t.Fatalf("the WAL index finds page %d in frame %d, the WAL's latest is frame %d", pgno, got, latest[pgno])
		}
	}
	return scan.Header
}

// findWALFrame looks pgno up in the first block of the WAL index as
// SQLite's walFindFrame does: the latest frame up to maxFrame, 0 if none.
func findWALFrame(shm []byte, pgno, maxFrame uint32) uint32 {
	var best uint32
	key := pgno * walIndexHashMult % walIndexHashSlots
	for n := 0; n < walIndexHashSlots; n++ {
		frame := uint32(shmOrder.Uint16(shm[walIndexHashOffset+2*key:]))
		if frame == 0 {
			break
		}
		if frame <= maxFrame && frame > best && shmOrder.Uint32(shm[walIndexMinSize+4*(frame-1):]) == pgno {
			best = frame
		}
		key = (key + 1) % walIndexHashSlots
	}
	return best
}

// TestForwardedCommitsInWAL: forwarded commits to a database in WAL mode
// leave the database file as it was and go into the WAL, one transaction
// each, with the WAL index the primary's readers use naming each page's
// latest frame; they survive a restart of the store, whose recovery finds
// them in the WAL.
func TestForwardedCommitsInWAL(t *testing.T) {
	for _, sync := range []bool{false, true} {
		t.Run(map[bool]string{false: "normal", true: "sync"}[sync], func(t *testing.T) {
			f := newForwardFixture(t, 4096, 6)
			g := f.grant(true)
			before := f.file(databaseFile)
			steps := []struct {
				commit uint32
				pgnos  []uint32
			}{
				{6, []uint32{2, 3}},
				{6, []uint32{3}},    // a page again: its latest frame wins
				{9, []uint32{2}},    // growth writes the new pages
				{5, []uint32{4, 5}}, // shrinking drops the pages beyond
				{5, []uint32{2, 3, 4, 5}},
			}
			var salts [2]uint32
			for i, s := range steps {
				next, b := f.m.forwardChange(t, s.commit, s.pgnos...)
				f.commit(g, next, b, sync)
				hdr := f.checkWAL(before)
				if i == 0 {
					salts = [2]uint32{hdr.Salt1, hdr.Salt2}
				} else if salts != [2]uint32{hdr.Salt1, hdr.Salt2} {
					t.Fatalf("commit %d started a new WAL", i+1)
				}
				if !bytes.Equal(f.file(databaseFile), before) {
					t.Fatalf("commit %d wrote to the database file", i+1)
				}
			}

			// Recovery at the next start finds the commits in the WAL.
			want := f.m.pos
			if err := f.term.ReleaseHalt(f.epoch, "db", g.ID); err != nil {
				t.Fatal(err)
			}
			f.term.End(context.Background())
			dir := f.r.st.Dir()
			if err := f.r.st.Close(); err != nil {
				t.Fatal(err)
			}
			st := openReplica(t, dir)
			db := st.DB("db")
			if got := db.Pos(); got != want {
				t.Fatalf("at %s after a restart, want %s", got, want)
			}
			buf := make([]byte, f.m.pageSize)
			for pgno := uint32(1); pgno <= f.m.commit; pgno++ {
				db.mu.Lock()
				err := db.readPage(pgno, buf)
				db.mu.Unlock()
				if err != nil || !bytes.Equal(buf, f.m.pages[pgno]) {
					t.Fatalf("page %d after a restart is not the model's (%v)", pgno, err)
				}
			}
		})
	}
}

// TestForwardedCommitsFoldTheWAL: a commit that would take the WAL past the
// first block of the WAL index folds it into the database file first and
// starts a new WAL, with new salts.
func TestForwardedCommitsFoldTheWAL(t *testing.T) {
	const pageSize, commit = 512, 1500
	f := newForwardFixture(t, pageSize, commit)
	g := f.grant(true)
	all := make([]uint32, 0, commit-1)
	for pgno := uint32(2); pgno <= commit; pgno++ {
		all = append(all, pgno)
	}
	var first sqlite.WALHeader
	var folded []byte
	for i := 0; i*len(all) <= walIndexFirstFrames; i++ {
		folded = f.m.file()
		next, b := f.m.forwardChange(t, commit, all...)
		f.commit(g, next, b, false)
		if i == 0 {
			first = f.checkWAL(f.file(databaseFile))
		}
	}
	if got := f.file(databaseFile); !bytes.Equal(got, folded) {
		t.Fatal("the database file does not hold what the folded WAL did")
	}
	hdr := f.checkWAL(folded)
	if hdr.Salt1 != first.Salt1+1 || hdr.Salt2 == first.Salt2 {
		t.Fatalf("the new WAL's salts %x/%x do not follow the old one's %x/%x", hdr.Salt1, hdr.Salt2, first.Salt1, first.Salt2)
	}
	if n := len(f.file(walFile)); n != sqlite.WALHeaderSize+len(all)*(sqlite.WALFrameHeaderSize+pageSize) {
		t.Fatalf("WAL of %d bytes after the fold, want the last commit alone", n)
	}
}

// TestForwardedCommitRefusedLeavesNothing: a forwarded commit to a database
// in WAL mode that does not continue it, or whose pages SQLite would not
// accept, leaves WAL, log and position as they were.
func TestForwardedCommitRefusedLeavesNothing(t *testing.T) {
	f := newForwardFixture(t, 4096, 6)
	g := f.grant(true)
	next, b := f.m.forwardChange(t, 6, 2)
	f.commit(g, next, b, false)
	wal, logPos := f.file(walFile), f.db().Log().Pos()

	// Post-apply checksum wrong.
	m2, _ := f.m.forwardChange(t, 6, 3)
	hdr := ltx.Header{Version: ltx.Version, PageSize: 4096, Commit: 6, MinTXID: m2.pos.TXID, MaxTXID: m2.pos.TXID, PreApplyChecksum: f.m.pos.PostApplyChecksum, Timestamp: time.Now().UnixMilli()}
	badSum := encodeLTX(t, hdr, m2.pages, []uint32{3}, m2.pos.PostApplyChecksum^1)
	// A page claiming to be a table leaf with cells beyond its end.
	m3 := f.m.clone()
	leaf := make([]byte, 4096)
	leaf[0], leaf[4] = btreeLeafTable, 200
	m3.pages[4] = leaf
	m3.pos = ltx.Pos{TXID: f.m.pos.TXID + 1, PostApplyChecksum: m3.checksum()}
	badPage := encodeLTX(t, hdr, m3.pages, []uint32{4}, m3.pos.PostApplyChecksum)

	for _, tc := range []struct {
		name string
		b    []byte
		want error
	}{{"checksum", badSum, ErrMismatch}, {"page", badPage, ErrCorruptChangeset}} {
		_, err := f.term.CommitHalted(context.Background(), f.epoch, "db", g.ID, bytes.NewReader(tc.b), int64(len(tc.b)), false)
		if !errors.Is(err, tc.want) {
			t.Fatalf("%s: %v, want %v", tc.name, err, tc.want)
		}
		if !bytes.Equal(f.file(walFile), wal) || f.db().Log().Pos() != logPos || f.db().Pos() != f.m.pos {
			t.Fatalf("%s: the refused commit changed the WAL, the log or the position", tc.name)
		}
	}
	// The holder's next good commit goes through.
	next, b = f.m.forwardChange(t, 6, 3)
	f.commit(g, next, b, false)
	f.checkWAL(f.file(databaseFile))
}

// TestForwardedCommitCancelledByHolder: a forwarded commit waiting for a
// reader of the WAL fails when its request ends (the holder went away),
// and leaves nothing behind; the grant goes on.
func TestForwardedCommitCancelledByHolder(t *testing.T) {
	f := newForwardFixture(t, 4096, 6)
	g := f.grant(true)
	db := f.db()
	reader := rangelock.Lock{Owner: 0x5678, Start: shmLockRead4, End: shmLockRead4, Type: rangelock.Read}
	if !db.shmLocks.TryLock(reader) {
		t.Fatal("reader lock")
	}
	wal := f.file(walFile)
	next, b := f.m.forwardChange(t, 6, 2)
	ctx, cancel := context.WithCancel(context.Background())
	res := make(chan error, 1)
	go func() {
		_, err := f.term.CommitHalted(ctx, f.epoch, "db", g.ID, bytes.NewReader(b), int64(len(b)), false)
		res <- err
	}()
	waitFor(t, db.turn.applying.Load) // the commit waits for the reader
	cancel()
	if err := <-res; !errors.Is(err, context.Canceled) {
		t.Fatalf("commit whose request ended: %v, want context.Canceled", err)
	}
	if db.Pos() != f.m.pos || !bytes.Equal(f.file(walFile), wal) || db.Log().Pos() != f.m.pos {
		t.Fatal("a commit that failed changed the position, the WAL or the log")
	}
	reader.Type = rangelock.Unlock
	db.shmLocks.TryLock(reader)
	f.commit(g, next, b, false)
	f.checkWAL(f.file(databaseFile))
}
