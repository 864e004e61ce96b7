package store

import (
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/litefs-project/litefs/internal/rangelock"
	"github.com/litefs-project/litefs/internal/sqlite"
)

const truncPageSize = 4096

// truncFixture is a primary's database of four pages written in
// rollback-journal mode, with strict verification after every commit.
type truncFixture struct {
	t  *testing.T
	st *Store
	db *DB
	m  *testDB // the content, page by page
}

func newTruncFixture(t *testing.T) *truncFixture {
	t.Helper()
	st, err := Open(Options{Dir: t.TempDir(), StrictVerify: true, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	db, err := st.CreateDB("db")
	if err != nil {
		t.Fatal(err)
	}
	f := &truncFixture{t: t, st: st, db: db, m: newTestDB(truncPageSize, 7)}
	f.transaction(sqlitePID, func() {
		for pgno := uint32(1); pgno <= 4; pgno++ {
			f.write(pgno, f.page(pgno, 4))
		}
	})
	if pos := db.Pos(); pos.TXID != 1 {
		t.Fatalf("fixture at %s, want txid 1", pos)
	}
	return f
}

// sqlitePID is the process the fixture's "SQLite" runs in.
const sqlitePID = 4242

// page returns new content for pgno; page 1 carries a header whose
// in-header size, dbSize pages, SQLite trusts.
func (f *truncFixture) page(pgno, dbSize uint32) []byte {
	b := f.m.randomPage(pgno)
	if pgno == 1 {
		binary.BigEndian.PutUint32(b[24:], 9)      // change counter
		binary.BigEndian.PutUint32(b[28:], dbSize) // in-header size
		binary.BigEndian.PutUint32(b[92:], 9)      // version-valid-for
	}
	return b
}

func (f *truncFixture) write(pgno uint32, b []byte) {
	f.t.Helper()
	if _, err := f.db.WriteAt(FileDatabase, b, int64(pgno-1)*truncPageSize); err != nil {
		f.t.Fatalf("write page %d: %v", pgno, err)
	}
}

// lock takes (or with rangelock.Unlock, drops) SQLite's EXCLUSIVE lock as
// process pid.
func (f *truncFixture) lock(pid uint32, typ rangelock.Type) {
	f.t.Helper()
	l := rangelock.Lock{Owner: rangelock.Owner(pid), PID: pid, Start: sqlite.PendingByte, End: sqlite.SharedFirst + sqlite.SharedSize - 1, Type: typ}
	if ok, err := f.db.Lock(FileDatabase, l); !ok || err != nil {
		f.t.Fatalf("lock %v as %d: %v %v", typ, pid, ok, err)
	}
}

// transaction runs body as a rollback-journal transaction of process pid:
// under its exclusive lock, with a hot journal, committed by deleting it.
func (f *truncFixture) transaction(pid uint32, body func()) {
	f.t.Helper()
	f.lock(pid, rangelock.Write)
	if err := f.db.Create(FileJournal); err != nil {
		f.t.Fatal(err)
	}
	hdr := make([]byte, 512)
	copy(hdr, sqlite.JournalMagic)
	if _, err := f.db.WriteAt(FileJournal, hdr, 0); err != nil {
		f.t.Fatal(err)
	}
	body()
	if err := f.db.Remove(FileJournal); err != nil {
		f.t.Fatalf("commit: %v", err)
	}
	f.lock(pid, rangelock.Unlock)
}

func (f *truncFixture) fileSize() int64 {
	f.t.Helper()
	fi, err := os.Stat(filepath.Join(f.st.Dir(), "dbs", "db", databaseFile))
	if err != nil {
		f.t.Fatal(err)
	}
	return fi.Size()
}

// checkContent asserts that the position is the checksum of what the
// database file reads as, pages past its end being zeros.
func (f *truncFixture) checkContent(pages uint32) {
	f.t.Helper()
	pos := f.db.Pos()
	sum, err := checksumPages(truncPageSize, pages, f.db.readDatabasePage)
	if err != nil {
		f.t.Fatal(err)
	}
	if sum.Sum() != pos.PostApplyChecksum {
		f.t.Fatalf("position %s, content checksum %s", pos, sum.Sum())
	}
	f.db.mu.Lock()
	n := f.db.chk.PageN()
	f.db.mu.Unlock()
	if n != pages {
		f.t.Fatalf("%d pages tracked, want %d", n, pages)
	}
}

// TestTruncateOutsideTransaction: a truncation of the database file that
// no transaction of the truncating process explains is refused with
// EINVAL and changes nothing; one that changes nothing is accepted.
func TestTruncateOutsideTransaction(t *testing.T) {
	const committed = 4 * truncPageSize
	tests := []struct {
		name   string
		lockAs uint32 // process holding the write lock, 0 for none
		daemon bool   // the write lock is the store's own (no process)
		pid    uint32 // truncating process
		size   int64
		ok     bool
	}{
		{name: "no lock, shrink", pid: sqlitePID, size: truncPageSize},
		{name: "no lock, to zero", pid: sqlitePID, size: 0},
		{name: "no lock, grow", pid: sqlitePID, size: committed + truncPageSize},
		{name: "no lock, unknown process", pid: 0, size: truncPageSize},
		{name: "another process holds the lock", lockAs: sqlitePID, pid: sqlitePID + 1, size: truncPageSize},
		{name: "the store holds the lock", daemon: true, pid: sqlitePID, size: truncPageSize},
		{name: "the store holds the lock, unknown process", daemon: true, pid: 0, size: truncPageSize},
		{name: "no lock, committed size", pid: sqlitePID, size: committed, ok: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newTruncFixture(t)
			pos := f.db.Pos()
			if tt.lockAs != 0 {
				f.lock(tt.lockAs, rangelock.Write)
			}
			if tt.daemon {
				l := rangelock.Lock{Owner: applyOwner, Start: sqlite.PendingByte, End: sqlite.PendingByte, Type: rangelock.Write}
				if !f.db.dbLocks.TryLock(l) {
					t.Fatal("store's lock")
				}
			}
			err := f.db.Truncate(FileDatabase, tt.size, tt.pid)
			if tt.ok {
				if err != nil {
					t.Fatalf("Truncate: %v", err)
				}
			} else if !errors.Is(err, syscall.EINVAL) {
				t.Fatalf("Truncate: got %v, want EINVAL", err)
			}
			if got := f.fileSize(); got != committed {
				t.Fatalf("file is %d bytes, want %d", got, committed)
			}
			if tt.lockAs != 0 {
				f.lock(tt.lockAs, rangelock.Unlock)
			}
			if got := f.db.Pos(); got != pos {
				t.Fatalf("position moved from %s to %s", pos, got)
			}
			f.checkContent(4)
		})
	}
}

// TestTruncateInTransaction: SQLite's own truncations, made under its write
// lock, are part of its transaction, and the position follows the content.
func TestTruncateInTransaction(t *testing.T) {
	t.Run("commit that shrinks", func(t *testing.T) {
		f := newTruncFixture(t)
		f.transaction(sqlitePID, func() {
			f.write(1, f.page(1, 2))
			if err := f.db.Truncate(FileDatabase, 2*truncPageSize, sqlitePID); err != nil {
				t.Fatalf("Truncate: %v", err)
			}
		})
		if pos := f.db.Pos(); pos.TXID != 2 {
			t.Fatalf("at %s, want txid 2", pos)
		}
		f.checkContent(2)
	})
	t.Run("rollback of a transaction that grew the file", func(t *testing.T) {
		f := newTruncFixture(t)
		pos := f.db.Pos()
		orig := make([]byte, truncPageSize)
		if err := f.db.readDatabasePage(1, orig); err != nil {
			t.Fatal(err)
		}
		f.transaction(sqlitePID, func() {
			f.write(1, f.page(1, 6))
			f.write(5, f.page(5, 6))
			f.write(6, f.page(6, 6))
			// The rollback: the file is cut back first, then page 1
			// restored from the journal.
			if err := f.db.Truncate(FileDatabase, 4*truncPageSize, sqlitePID); err != nil {
				t.Fatalf("Truncate: %v", err)
			}
			f.write(1, orig)
		})
		if got := f.db.Pos(); got != pos {
			t.Fatalf("a rolled-back transaction moved the position from %s to %s", pos, got)
		}
		f.checkContent(4)
	})
	t.Run("no journal, cut below the header's size", func(t *testing.T) {
		// journal_mode=OFF, and a truncation SQLite would not make: the
		// header still counts four pages. The pages cut off read as
		// zeros, and the commit says so.
		f := newTruncFixture(t)
		f.lock(sqlitePID, rangelock.Write)
		if err := f.db.Truncate(FileDatabase, 2*truncPageSize, sqlitePID); err != nil {
			t.Fatalf("Truncate: %v", err)
		}
		f.lock(sqlitePID, rangelock.Unlock)
		if pos := f.db.Pos(); pos.TXID != 2 {
			t.Fatalf("at %s, want txid 2", pos)
		}
		f.checkContent(4)
	})
	t.Run("unknown process, a process holds the lock", func(t *testing.T) {
		f := newTruncFixture(t)
		f.transaction(sqlitePID, func() {
			f.write(1, f.page(1, 3))
			if err := f.db.Truncate(FileDatabase, 3*truncPageSize, 0); err != nil {
				t.Fatalf("Truncate: %v", err)
			}
		})
		f.checkContent(3)
	})
}

// TestTruncateInWALMode: in WAL mode the database file is only cut by
// checkpoints, to the size of the transaction they copied, which may be
// older than the last commit. A truncation is accepted when every page it
// cuts off that is still committed content has a frame in the WAL.
func TestTruncateInWALMode(t *testing.T) {
	f := newTruncFixture(t)

	// One WAL transaction growing the database to six pages.
	if err := f.db.Create(FileWAL); err != nil {
		t.Fatal(err)
	}
	whdr := make([]byte, sqlite.WALHeaderSize)
	binary.BigEndian.PutUint32(whdr[0:], 0x377f0682)
	binary.BigEndian.PutUint32(whdr[4:], 3007000)
	binary.BigEndian.PutUint32(whdr[8:], truncPageSize)
	binary.BigEndian.PutUint32(whdr[16:], 0x1234)
	binary.BigEndian.PutUint32(whdr[20:], 0x5678)
	s1, s2 := sqlite.WALChecksum(false, 0, 0, whdr[:24])
	binary.BigEndian.PutUint32(whdr[24:], s1)
	binary.BigEndian.PutUint32(whdr[28:], s2)
	hdr, err := sqlite.ParseWALHeader(whdr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.db.WriteAt(FileWAL, whdr, 0); err != nil {
		t.Fatal(err)
	}
	off := int64(sqlite.WALHeaderSize)
	for i, pgno := range []uint32{1, 5, 6} {
		var commit uint32
		if i == 2 {
			commit = 6
		}
		page := f.page(pgno, 6)
		frame := make([]byte, sqlite.WALFrameHeaderSize+truncPageSize)
		s1, s2 = sqlite.EncodeWALFrameHeader(frame, hdr, pgno, commit, s1, s2, page)
		copy(frame[sqlite.WALFrameHeaderSize:], page)
		if _, err := f.db.WriteAt(FileWAL, frame, off); err != nil {
			t.Fatalf("write frame %d: %v", i, err)
		}
		off += int64(len(frame))
	}
	pos := f.db.Pos()
	if pos.TXID != 2 {
		t.Fatalf("at %s after the WAL commit, want txid 2", pos)
	}

	tests := []struct {
		name  string
		pages int64
		ok    bool
	}{
		{"to the size before the last commit: the pages past it are in the WAL", 4, true},
		{"cutting a page only the file holds", 2, false},
		{"to zero", 0, false},
		{"larger than the database", 8, true},
		{"to the committed size", 6, true},
	}
	for _, tt := range tests {
		// No lock: a checkpointer holds only a read lock on the database.
		err := f.db.Truncate(FileDatabase, tt.pages*truncPageSize, sqlitePID)
		if tt.ok && err != nil {
			t.Errorf("%s: %v", tt.name, err)
		}
		if !tt.ok && !errors.Is(err, syscall.EINVAL) {
			t.Errorf("%s: got %v, want EINVAL", tt.name, err)
		}
		if got := f.db.Pos(); got != pos {
			t.Fatalf("%s: position moved from %s to %s", tt.name, pos, got)
		}
		f.db.mu.Lock()
		sum, err := checksumPages(truncPageSize, 6, f.db.readPage)
		f.db.mu.Unlock()
		if err != nil {
			t.Fatal(err)
		}
		if sum.Sum() != pos.PostApplyChecksum {
			t.Fatalf("%s: content checksum %s, position %s", tt.name, sum.Sum(), pos)
		}
	}
}
