package store

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/litefs-project/litefs/internal/rangelock"
	"github.com/litefs-project/litefs/internal/sqlite"
)

// maxReaderTurn bounds how long an apply gives way to a refused reader.
// SQLite's own retry sleeps grow to a few hundred milliseconds before a
// WAL reader gives up, so this covers most of a reader's back-off without
// letting one idle reader stall replication.
const maxReaderTurn = 100 * time.Millisecond

// readerTurn makes a replica's applies and its local readers take turns.
//
// An apply needs every reader lock for a moment. Readers that overlap one
// another could keep it out forever, so once an apply is waiting, new
// reader locks are refused (SQLite's PENDING lock does the same for
// writers). The other way round, back-to-back applies could hold the locks
// nearly all the time, and a SQLite reader polls for its lock with growing
// sleeps and gives up after about a hundred tries ("locking protocol"). So
// when the daemon refused a reader's lock, the next apply first waits
// until some reader's lock request succeeds, or for maxReaderTurn.
type readerTurn struct {
	applying atomic.Bool // an apply is taking or holds the reader locks

	mu      sync.Mutex
	refused bool
	served  chan struct{} // closed when a refused reader got a lock

	// writers is the same for the primary's local writers and HALT grants
	// (grant.go).
	writers writerTurn
}

// gated reports whether a local lock request must be refused because an
// apply is waiting for the reader locks it overlaps.
func (t *readerTurn) gated(kind FileKind, req rangelock.Lock) bool {
	if req.Type == rangelock.Unlock || req.Owner == applyOwner || !t.applying.Load() {
		return false
	}
	switch kind {
	case FileSHM:
		return req.Start <= shmLockRead4 && req.End >= shmLockWrite
	case FileDatabase:
		return req.Start <= sqlite.SharedFirst+sqlite.SharedSize-1 && req.End >= sqlite.PendingByte
	}
	return false
}

// refuse records that a local lock request was turned away.
func (t *readerTurn) refuse() {
	t.mu.Lock()
	if !t.refused {
		t.refused = true
		t.served = make(chan struct{})
	}
	t.mu.Unlock()
}

// serve records that a local lock request succeeded.
func (t *readerTurn) serve() {
	t.mu.Lock()
	if t.refused {
		t.refused = false
		close(t.served)
	}
	t.mu.Unlock()
}

// wait lets a refused reader through before the caller locks readers out.
func (t *readerTurn) wait(ctx context.Context) error {
	t.mu.Lock()
	refused, served := t.refused, t.served
	t.mu.Unlock()
	if !refused {
		return nil
	}
	timer := time.NewTimer(maxReaderTurn)
	defer timer.Stop()
	select {
	case <-served:
	case <-timer.C:
		t.mu.Lock()
		if t.served == served && t.refused {
			t.refused = false
			close(t.served)
		}
		t.mu.Unlock()
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}
