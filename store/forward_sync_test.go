package store

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/litefs-project/litefs/internal/rangelock"
	"github.com/litefs-project/litefs/internal/sqlite"
)

// Tests of how durable a replica asks the primary to make its forwarded
// WAL commits (pending.go): as durable as SQLite on the replica makes
// them, which shows in whether it fsyncs the WAL after a commit.

// walWriter writes WAL transactions into a database as SQLite does.
type walWriter struct {
	db     *DB
	hdr    sqlite.WALHeader
	s1, s2 uint32
	off    int64
}

// commit writes the pages of next that differ from prev as one
// transaction and returns the error of the write of its commit frame.
func (w *walWriter) commit(t *testing.T, prev, next *testDB) error {
	t.Helper()
	if w.off == 0 {
		if err := w.db.Create(FileWAL); err != nil {
			t.Fatal(err)
		}
		w.hdr = sqlite.NewWALHeader(next.pageSize, 0, 0x1234, 0x5678, false)
		b := make([]byte, sqlite.WALHeaderSize)
		w.hdr.Encode(b)
		if _, err := w.db.WriteAt(FileWAL, b, 0); err != nil {
			t.Fatal(err)
		}
		w.off, w.s1, w.s2 = sqlite.WALHeaderSize, w.hdr.Checksum1, w.hdr.Checksum2
	}
	var pgnos []uint32
	for pgno := uint32(1); pgno <= next.commit; pgno++ {
		if string(prev.pages[pgno]) != string(next.pages[pgno]) {
			pgnos = append(pgnos, pgno)
		}
	}
	var err error
	for i, pgno := range pgnos {
		var commit uint32
		if i == len(pgnos)-1 {
			commit = next.commit
		}
		frame := make([]byte, sqlite.WALFrameHeaderSize+int(next.pageSize))
		w.s1, w.s2 = sqlite.EncodeWALFrameHeader(frame, w.hdr, pgno, commit, w.s1, w.s2, next.pages[pgno])
		copy(frame[sqlite.WALFrameHeaderSize:], next.pages[pgno])
		_, err = w.db.WriteAt(FileWAL, frame, w.off)
		w.off += int64(len(frame))
	}
	return err
}

// haltedWALReplica is a replica holding the HALT lock (from h) on a
// database in WAL mode.
func haltedWALReplica(t *testing.T, h *fakeHalt) (*replica, *testDB, *DB) {
	t.Helper()
	r := newReplica(t, "db")
	m, b := newTestDB(4096, 2).forwardChange(t, 4)
	r.apply(m, b)
	r.st.SetHalter(fakeHalter{h: h})
	db := r.st.DB("db")
	lock := rangelock.Lock{Owner: 0x77, Start: HaltByte, End: HaltByte, Type: rangelock.Write, Handle: 1}
	if ok, err := db.LockHalt(context.Background(), lock, false); !ok || err != nil {
		t.Fatalf("HALT lock: %v %v", ok, err)
	}
	return r, m, db
}

// forwardWALCommit commits next through w under the fake lock h, the primary
// accepting it, and returns whether it was sent as durable.
func forwardWALCommit(t *testing.T, db *DB, h *fakeHalt, w *walWriter, prev, next *testDB) bool {
	t.Helper()
	p := PendingOf(w.commit(t, prev, next))
	if p == nil {
		t.Fatal("a WAL commit under the HALT lock did not wait for the primary")
	}
	h.answer <- nil
	if err := p.Wait(context.Background()); err != nil {
		t.Fatalf("commit %s: %v", next.pos.TXID, err)
	}
	<-h.sent
	if pos := db.Pos(); pos != next.pos {
		t.Fatalf("at %s after the commit, want %s", pos, next.pos)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.durable[len(h.durable)-1]
}

// TestForwardedWALSyncFollowsFsync: the first WAL commit under the lock is
// sent as durable; after that, a commit is sent as durable when SQLite
// fsynced the WAL after the previous one (synchronous=FULL) and as not
// durable otherwise (NORMAL); an fsync after a commit sent as not durable
// waits for the primary to make it durable.
func TestForwardedWALSyncFollowsFsync(t *testing.T) {
	h := newFakeHalt()
	_, m, db := haltedWALReplica(t, h)
	w := &walWriter{db: db}
	steps := []struct {
		fsync       bool // SQLite fsyncs the WAL after the commit
		wantDurable bool
		wantAsk     bool // the fsync asks the primary
	}{
		{fsync: false, wantDurable: true},                // nothing known yet
		{fsync: true, wantDurable: false, wantAsk: true}, // NORMAL so far; now FULL
		{fsync: true, wantDurable: true},                 // FULL
		{fsync: false, wantDurable: true},                // FULL so far; now NORMAL
		{fsync: false, wantDurable: false},               // NORMAL
		{fsync: true, wantDurable: false, wantAsk: true},
	}
	for i, s := range steps {
		next, _ := m.forwardChange(t, 4, uint32(2+i%3))
		if durable := forwardWALCommit(t, db, h, w, m, next); durable != s.wantDurable {
			t.Fatalf("commit %d sent as durable: %v, want %v", i+1, durable, s.wantDurable)
		}
		m = next
		if !s.fsync {
			continue
		}
		err := db.Sync(FileWAL)
		p := PendingOf(err)
		if !s.wantAsk {
			if err != nil {
				t.Fatalf("fsync after commit %d: %v, want it done at once", i+1, err)
			}
			continue
		}
		if p == nil {
			t.Fatalf("fsync after commit %d, sent as not durable, returned %v; want it to wait for the primary", i+1, err)
		}
		h.answer <- nil
		if err := p.Wait(context.Background()); err != nil {
			t.Fatalf("fsync after commit %d: %v", i+1, err)
		}
		if txid := <-h.syncs; txid != m.pos.TXID {
			t.Fatalf("the primary was asked to make %s durable, want %s", txid, m.pos.TXID)
		}
	}
}

// TestForwardedWALSyncFailure: when the primary does not confirm a commit
// durable, the fsync fails, the lock is given up (nothing more is written
// under it), and before anything is written under the next lock the WAL,
// whose last commit SQLite rolled back in its own view while the primary
// has it, is folded into the database file, so readers see that commit.
func TestForwardedWALSyncFailure(t *testing.T) {
	h := newFakeHalt()
	r, m, db := haltedWALReplica(t, h)
	w := &walWriter{db: db}
	for i := 0; i < 2; i++ {
		next, _ := m.forwardChange(t, 4, 2, 3)
		forwardWALCommit(t, db, h, w, m, next)
		m = next
	}
	p := PendingOf(db.Sync(FileWAL))
	if p == nil {
		t.Fatal("an fsync after a commit sent as not durable did not ask the primary")
	}
	h.answer <- errors.New("connection refused")
	err := p.Wait(context.Background())
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("fsync when the primary did not answer: %v, want EIO", err)
	}
	<-h.syncs
	if db.Writable() {
		t.Fatal("the replica still accepts writes under a lock whose commit could not be made durable")
	}
	if pos := db.Pos(); pos != m.pos {
		t.Fatalf("at %s, want %s: the primary has the commit", pos, m.pos)
	}

	// The holder asks for the lock again.
	r.st.SetHalter(fakeHalter{h: newFakeHalt()})
	lock := rangelock.Lock{Owner: 0x77, Start: HaltByte, End: HaltByte, Type: rangelock.Write, Handle: 1}
	if ok, err := db.LockHalt(context.Background(), lock, false); !ok || err != nil {
		t.Fatalf("HALT lock again: %v %v", ok, err)
	}
	got, err := os.ReadFile(filepath.Join(r.st.Dir(), "dbs", "db", databaseFile))
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(m.file()) {
		t.Fatal("the database file does not hold the last commit before writes resume")
	}
	if fi, err := os.Stat(filepath.Join(r.st.Dir(), "dbs", "db", walFile)); err != nil || fi.Size() != 0 {
		t.Fatalf("the WAL was not emptied before writes resume (%v)", err)
	}
	if !db.Writable() || db.Pos() != m.pos {
		t.Fatalf("writable %v at %s under the new lock, want writable at %s", db.Writable(), db.Pos(), m.pos)
	}
}
