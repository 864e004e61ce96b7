package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"syscall"
	"testing"

	"github.com/litefs-project/litefs/internal/rangelock"
	"github.com/litefs-project/litefs/internal/sqlite"
	"github.com/litefs-project/litefs/ltx"
)

// fakeHalt is the primary's HALT lock as a replica holds it: Commit waits
// until the test answers.
type fakeHalt struct {
	mu       sync.Mutex
	sent     chan []byte // changesets sent, for the test to see
	answer   chan error  // what the primary answers
	released bool
	lost     error
}

func newFakeHalt() *fakeHalt {
	return &fakeHalt{sent: make(chan []byte, 1), answer: make(chan error, 1)}
}

func (h *fakeHalt) Commit(ctx context.Context, data []byte) error {
	h.sent <- data
	select {
	case err := <-h.answer:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (h *fakeHalt) Release() {
	h.mu.Lock()
	h.released = true
	h.mu.Unlock()
}

func (h *fakeHalt) Lost() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.lost
}

type fakeHalter struct {
	h      *fakeHalt
	during func() // runs while the primary is being asked
}

func (f fakeHalter) Acquire(ctx context.Context, db string, wait bool) (Halt, error) {
	if f.during != nil {
		f.during()
	}
	return f.h, nil
}

// haltedReplica is a replica holding the HALT lock on a database of four
// pages in rollback-journal mode, with a fake primary.
func haltedReplica(t *testing.T) (*replica, *testDB, *fakeHalt) {
	t.Helper()
	r := newReplica(t, "db")
	m := newTestDB(4096, 2)
	m, b := m.change(t, 4, 1)
	r.apply(m, b)
	h := newFakeHalt()
	r.st.SetHalter(fakeHalter{h: h})
	db := r.st.DB("db")
	lock := rangelock.Lock{Owner: 0x77, Start: HaltByte, End: HaltByte, Type: rangelock.Write, Handle: 1}
	if ok, err := db.LockHalt(context.Background(), lock, false); !ok || err != nil {
		t.Fatalf("HALT lock: %v %v", ok, err)
	}
	return r, m, h
}

// writeRollbackTxn writes page 2 of db as SQLite does in DELETE mode, up to
// the deletion of the journal, which commits it; it returns that error.
func writeRollbackTxn(t *testing.T, db *DB, page []byte) error {
	t.Helper()
	if err := db.Create(FileJournal); err != nil {
		t.Fatal(err)
	}
	hdr := make([]byte, 512)
	copy(hdr, sqlite.JournalMagic)
	if _, err := db.WriteAt(FileJournal, hdr, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := db.WriteAt(FileDatabase, page, 4096); err != nil {
		t.Fatal(err)
	}
	return db.Remove(FileJournal)
}

// TestPendingCommit: a commit under the HALT lock on a replica does not
// wait on the caller: the file operation returns a Pending at once, the
// position moves only when the primary has the changeset, and until then
// applies wait.
func TestPendingCommit(t *testing.T) {
	r, m, h := haltedReplica(t)
	db := r.st.DB("db")
	page := m.randomPage(2)
	err := writeRollbackTxn(t, db, page)
	p := PendingOf(err)
	if p == nil {
		t.Fatalf("commit under HALT returned %v, want a Pending", err)
	}
	if pos := db.Pos(); pos != m.pos {
		t.Fatalf("position moved to %s before the primary answered", pos)
	}
	if !db.Exists(FileJournal) {
		t.Fatal("the journal was deleted before the commit was acknowledged")
	}
	// Another request on the database is served meanwhile.
	buf := make([]byte, 4096)
	if _, err := db.ReadAt(FileDatabase, buf, 4096); err != nil || !bytes.Equal(buf, page) {
		t.Fatalf("read during the pending commit: %v", err)
	}

	done := make(chan error, 1)
	go func() { done <- p.Wait(context.Background()) }()
	sent := <-h.sent
	hdr, err := ltx.DecodeHeader(bytes.NewReader(sent))
	if err != nil || hdr.MinTXID != m.pos.TXID+1 {
		t.Fatalf("changeset sent: %+v %v", hdr, err)
	}
	// An apply from the stream waits for the commit.
	applied := make(chan error, 1)
	go func() {
		_, err := db.applyChangeset(context.Background(), bytes.NewReader(sent), int64(len(sent)))
		applied <- err
	}()
	h.answer <- nil
	if err := <-done; err != nil {
		t.Fatalf("wait: %v", err)
	}
	if err := <-applied; err != nil {
		t.Fatalf("the changeset coming back from the primary: %v", err)
	}
	if pos := db.Pos(); pos.TXID != m.pos.TXID+1 {
		t.Fatalf("position %s after the primary acknowledged", pos)
	}
	if db.Exists(FileJournal) {
		t.Fatal("the journal survived its commit")
	}
	if err := p.Wait(context.Background()); err != nil {
		t.Fatalf("second wait: %v", err)
	}
}

// TestPendingCommitRefused: a commit the primary refuses leaves no trace:
// position, log and checksums are as before, and the journal is still hot
// so SQLite rolls the transaction back.
func TestPendingCommitRefused(t *testing.T) {
	r, m, h := haltedReplica(t)
	db := r.st.DB("db")
	p := PendingOf(writeRollbackTxn(t, db, m.randomPage(2)))
	if p == nil {
		t.Fatal("no pending commit")
	}
	h.answer <- fmt.Errorf("%w: checksum mismatch", ErrCommitRefused)
	go func() { <-h.sent }()
	if err := p.Wait(context.Background()); err == nil {
		t.Fatal("a refused commit succeeded")
	}
	if pos := db.Pos(); pos != m.pos {
		t.Fatalf("position %s after a refused commit, want %s", pos, m.pos)
	}
	if pos := db.Log().Pos(); pos != m.pos {
		t.Fatalf("log at %s after a refused commit, want %s", pos, m.pos)
	}
	if !db.Exists(FileJournal) || !db.journalHot() {
		t.Fatal("the journal is gone after a refused commit")
	}
	db.mu.Lock()
	sum := db.chk.Sum()
	db.mu.Unlock()
	if sum != m.pos.PostApplyChecksum {
		t.Fatal("page checksums changed by a refused commit")
	}
}

// TestPendingLostLockRefusesWrites: once the primary has ended the lock,
// the replica refuses writes at once.
func TestPendingLostLockRefusesWrites(t *testing.T) {
	r, m, h := haltedReplica(t)
	db := r.st.DB("db")
	h.mu.Lock()
	h.lost = errors.New("the primary's term ended")
	h.mu.Unlock()
	if _, err := db.WriteAt(FileDatabase, m.randomPage(2), 4096); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("write under a lost HALT lock: %v, want ErrReadOnly", err)
	}
}

// faultFile fails writes after the first n.
type faultFile struct {
	*os.File
	n int
}

func (f *faultFile) WriteAt(p []byte, off int64) (int, error) {
	if f.n <= 0 {
		return 0, syscall.EIO
	}
	f.n--
	return f.File.WriteAt(p, off)
}

// TestApplyIOErrorKeepsChecksums: an I/O error half way through an apply
// changes neither the position nor the page checksums; the database reads
// as an I/O error until the changeset is applied again, which repairs it.
func TestApplyIOErrorKeepsChecksums(t *testing.T) {
	r := newReplica(t, "db")
	m := newTestDB(4096, 3)
	m, b := m.change(t, 4)
	r.apply(m, b)
	db := r.st.DB("db")
	next, b := m.change(t, 6, 1, 2, 3)

	db.mu.Lock()
	real := db.dbFile.(*os.File)
	db.dbFile = &faultFile{File: real, n: 1}
	db.mu.Unlock()
	if _, err := r.st.ApplyChangeset(context.Background(), "db", bytes.NewReader(b), int64(len(b))); !errors.Is(err, syscall.EIO) {
		t.Fatalf("apply on a failing disk: %v", err)
	}
	db.mu.Lock()
	sum, n := db.chk.Sum(), db.chk.PageN()
	db.dbFile = real
	db.mu.Unlock()
	if sum != m.pos.PostApplyChecksum || n != m.commit {
		t.Fatalf("page checksums after a failed apply: %s over %d pages, want %s over %d", sum, n, m.pos.PostApplyChecksum, m.commit)
	}
	if pos := db.Pos(); pos != m.pos {
		t.Fatalf("position %s after a failed apply", pos)
	}
	if _, err := db.ReadAt(FileDatabase, make([]byte, 4096), 0); !errors.Is(err, syscall.EIO) {
		t.Fatalf("read of a half-applied database: %v, want EIO", err)
	}
	r.apply(next, b) // the stream sends it again
	if _, err := db.ReadAt(FileDatabase, make([]byte, 4096), 0); err != nil {
		t.Fatalf("read after the repair: %v", err)
	}
	db.mu.Lock()
	err := db.verifyLocked(db.readPage)
	db.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
}

// TestHaltGivenUpWhileAcquiring: a holder that closes its file while the
// primary is being asked for the lock does not end up with a lock nobody
// holds: the primary's lock goes back, and the database stays read-only.
func TestHaltGivenUpWhileAcquiring(t *testing.T) {
	r := newReplica(t, "db")
	m := newTestDB(4096, 4)
	m, b := m.change(t, 4, 1)
	r.apply(m, b)
	db := r.st.DB("db")
	h := newFakeHalt()
	const handle = 9
	r.st.SetHalter(fakeHalter{h: h, during: func() { db.ReleaseHandle(FileLock, handle) }})
	lock := rangelock.Lock{Owner: 0x77, Start: HaltByte, End: HaltByte, Type: rangelock.Write, Handle: handle}
	ok, err := db.LockHalt(context.Background(), lock, false)
	if ok || err == nil {
		t.Fatalf("HALT lock given up while acquiring: granted=%v err=%v", ok, err)
	}
	h.mu.Lock()
	released := h.released
	h.mu.Unlock()
	if !released {
		t.Fatal("the primary's lock was kept for a holder that had gone")
	}
	if db.Halted() || db.Writable() {
		t.Fatal("the database is writable with no HALT holder")
	}
}

// TestPendingRefusedThenRetried: after a refused commit whose record was
// the first of a log segment, the next commit sends its own changeset, not
// the refused one read from the removed segment of the same name.
func TestPendingRefusedThenRetried(t *testing.T) {
	st, err := Open(Options{Dir: t.TempDir(), SegmentSize: 1, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	st.SetWritable(false)
	r := &replica{t: t, st: st, name: "db", ltxs: make(map[ltx.TXID][]byte)}
	m := newTestDB(4096, 6)
	m, b := m.change(t, 4, 1)
	r.apply(m, b)
	h := newFakeHalt()
	st.SetHalter(fakeHalter{h: h})
	db := st.DB("db")
	lock := rangelock.Lock{Owner: 0x77, Start: HaltByte, End: HaltByte, Type: rangelock.Write, Handle: 1}
	if ok, err := db.LockHalt(context.Background(), lock, false); !ok || err != nil {
		t.Fatalf("HALT lock: %v %v", ok, err)
	}
	commit := func(page []byte, answer error) ([]byte, error) {
		p := PendingOf(writeRollbackTxn(t, db, page))
		if p == nil {
			t.Fatal("no pending commit")
		}
		h.answer <- answer
		res := make(chan error, 1)
		go func() { res <- p.Wait(context.Background()) }()
		sent := <-h.sent
		return sent, <-res
	}
	first, err := commit(m.randomPage(2), fmt.Errorf("%w: test", ErrCommitRefused))
	if err == nil {
		t.Fatal("refused commit succeeded")
	}
	second, err := commit(m.randomPage(2), nil)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(first, second) {
		t.Fatal("the second commit sent the refused changeset again")
	}
	want, err := db.readRecord(db.Pos().TXID)
	if err != nil || !bytes.Equal(second, want) {
		t.Fatalf("sent changeset differs from the committed one (%v)", err)
	}
}

// TestHaltRelockAfterLoss: a holder that takes the HALT byte again after
// the primary ended its lock asks the primary again, and may write.
func TestHaltRelockAfterLoss(t *testing.T) {
	r, m, h := haltedReplica(t)
	db := r.st.DB("db")
	h.mu.Lock()
	h.lost = errors.New("the primary's term ended")
	h.mu.Unlock()
	if db.Writable() {
		t.Fatal("writable under a lost lock")
	}
	fresh := newFakeHalt()
	r.st.SetHalter(fakeHalter{h: fresh})
	lock := rangelock.Lock{Owner: 0x77, Start: HaltByte, End: HaltByte, Type: rangelock.Write, Handle: 1}
	if ok, err := db.LockHalt(context.Background(), lock, false); !ok || err != nil {
		t.Fatalf("HALT lock again: %v %v", ok, err)
	}
	if !db.Writable() {
		t.Fatal("the holder cannot write after taking the lock again")
	}
	if _, err := db.WriteAt(FileDatabase, m.randomPage(2), 4096); err != nil {
		t.Fatalf("write after taking the lock again: %v", err)
	}
}

// TestApplyRefusedWhenLogAhead: with a record in the log beyond the
// position (a commit whose acknowledgement failed after it was logged), an
// apply is refused before it writes a page: the database stays readable.
func TestApplyRefusedWhenLogAhead(t *testing.T) {
	r := newReplica(t, "db")
	m := newTestDB(4096, 7)
	m, b := m.change(t, 4)
	r.apply(m, b)
	db := r.st.DB("db")
	_, next := m.change(t, 4, 2)
	hdr, trailer, _, err := db.verifyChangeset(bytes.NewReader(next))
	if err != nil {
		t.Fatal(err)
	}
	db.mu.Lock()
	_, err = db.log.AppendEncoded(hdr, trailer, bytes.NewReader(next))
	db.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.st.ApplyChangeset(context.Background(), "db", bytes.NewReader(next), int64(len(next))); err == nil {
		t.Fatal("an apply onto a log ahead of the position succeeded")
	}
	if _, err := db.ReadAt(FileDatabase, make([]byte, 4096), 0); err != nil {
		t.Fatalf("the database after a refused apply: %v", err)
	}
	got, err := os.ReadFile(r.dbPath())
	if err != nil || !bytes.Equal(got, m.file()) {
		t.Fatalf("the database file changed under a refused apply (%v)", err)
	}
	if pos := db.Pos(); pos != m.pos {
		t.Fatalf("position %s, want %s", pos, m.pos)
	}
}
