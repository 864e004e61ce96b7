// Package rangelock implements POSIX byte-range record locks (fcntl F_SETLK,
// F_SETLKW, F_GETLK) for one file: shared and exclusive locks on inclusive
// byte ranges, held by owners, with the POSIX rule that an owner's new lock
// replaces whatever that owner held on the same bytes.
//
// The kernel hands every lock request on a FUSE file to the filesystem, so
// litefs keeps its own table per file. That also lets the daemon take the
// same locks SQLite uses (to apply replicated pages, or to hold off writers)
// under an owner of its own.
package rangelock

import (
	"context"
	"sort"
	"sync"
)

// Type is the kind of a lock.
type Type int

const (
	Unlock Type = iota
	Read        // shared
	Write       // exclusive
)

func (t Type) String() string {
	switch t {
	case Read:
		return "read"
	case Write:
		return "write"
	default:
		return "unlock"
	}
}

// MaxEnd is the inclusive end of a lock that extends to the end of the file.
const MaxEnd = 1<<63 - 1

// Owner identifies who holds a lock. The kernel supplies one per process for
// POSIX locks and one per open file description for OFD locks.
type Owner uint64

// Lock is one held lock.
type Lock struct {
	Owner      Owner
	Start, End uint64 // inclusive
	Type       Type
	PID        uint32 // reported by F_GETLK
	Handle     uint64 // the open file handle the lock was taken through
}

func (l Lock) overlaps(start, end uint64) bool { return l.Start <= end && start <= l.End }

// conflicts reports whether l blocks a lock of type t on [start, end] by owner.
func (l Lock) conflicts(owner Owner, start, end uint64, t Type) bool {
	return l.Owner != owner && l.overlaps(start, end) && (l.Type == Write || t == Write)
}

// Table holds the locks of one file. The zero value is not usable; call New.
type Table struct {
	mu      sync.Mutex
	locks   []Lock        // sorted by Start; an owner's ranges never overlap
	changed chan struct{} // closed and replaced whenever a lock is released
}

// New returns an empty lock table.
func New() *Table {
	return &Table{changed: make(chan struct{})}
}

// TryLock applies a lock request without waiting. With Type Unlock it
// releases the owner's locks in the range. It returns false, changing
// nothing, when another owner holds a conflicting lock.
func (t *Table) TryLock(req Lock) bool {
	t.mu.Lock()
	ok := t.apply(req)
	t.mu.Unlock()
	return ok
}

// Lock applies a lock request, waiting while another owner holds a
// conflicting lock. It returns ctx.Err() if ctx ends first.
func (t *Table) Lock(ctx context.Context, req Lock) error {
	for {
		t.mu.Lock()
		if t.apply(req) {
			t.mu.Unlock()
			return nil
		}
		ch := t.changed
		t.mu.Unlock()

		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Wait blocks until done, called with the held locks, returns true, or
// until ctx ends. done must not call back into the table.
func (t *Table) Wait(ctx context.Context, done func([]Lock) bool) error {
	for {
		t.mu.Lock()
		ok, ch := done(t.locks), t.changed
		t.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Conflict returns a lock that would block req (F_GETLK), if any.
func (t *Table) Conflict(req Lock) (Lock, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, l := range t.locks {
		if l.conflicts(req.Owner, req.Start, req.End, req.Type) {
			return l, true
		}
	}
	return Lock{}, false
}

// Holds reports whether owner holds a lock of at least type typ covering
// every byte of [start, end].
func (t *Table) Holds(owner Owner, start, end uint64, typ Type) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	next := start
	for _, l := range t.locks {
		if l.Owner != owner || l.End < next || l.Start > next || (typ == Write && l.Type != Write) {
			continue
		}
		if l.End >= end {
			return true
		}
		next = l.End + 1
	}
	return false
}

// Locked reports whether anyone holds a lock of type typ, or stronger,
// overlapping [start, end].
func (t *Table) Locked(start, end uint64, typ Type) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, l := range t.locks {
		if l.overlaps(start, end) && (typ == Read || l.Type == Write) {
			return true
		}
	}
	return false
}

// ReleaseOwner drops every lock held by owner (a POSIX close).
func (t *Table) ReleaseOwner(owner Owner) {
	t.release(func(l Lock) bool { return l.Owner == owner })
}

// ReleaseHandle drops every lock taken through handle (the last close of an
// open file description releases its OFD locks).
func (t *Table) ReleaseHandle(handle uint64) {
	t.release(func(l Lock) bool { return l.Handle == handle })
}

// Snapshot returns a copy of the held locks, for diagnostics and tests.
func (t *Table) Snapshot() []Lock {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]Lock(nil), t.locks...)
}

func (t *Table) release(match func(Lock) bool) {
	t.mu.Lock()
	kept := t.locks[:0]
	n := len(t.locks)
	for _, l := range t.locks {
		if !match(l) {
			kept = append(kept, l)
		}
	}
	t.locks = kept
	if len(kept) != n {
		t.wake()
	}
	t.mu.Unlock()
}

// apply performs req if it does not conflict. Caller holds t.mu.
func (t *Table) apply(req Lock) bool {
	if req.End < req.Start {
		return true
	}
	if req.Type != Unlock {
		for _, l := range t.locks {
			if l.conflicts(req.Owner, req.Start, req.End, req.Type) {
				return false
			}
		}
	}

	// Cut the requested range out of the owner's existing locks, keeping
	// the parts outside it, then add the new lock. Any change to the owner's
	// locks may unblock a waiter, so waiters are woken to retry.
	changed := false
	out := make([]Lock, 0, len(t.locks)+2)
	for _, l := range t.locks {
		if l.Owner != req.Owner || !l.overlaps(req.Start, req.End) {
			out = append(out, l)
			continue
		}
		changed = true
		if l.Start < req.Start {
			left := l
			left.End = req.Start - 1
			out = append(out, left)
		}
		if l.End > req.End {
			right := l
			right.Start = req.End + 1
			out = append(out, right)
		}
	}
	if req.Type != Unlock {
		out = append(out, req)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Start < out[j].Start })
	t.locks = out
	if changed {
		t.wake()
	}
	return true
}

// Wake makes every waiter in Lock and Wait look at the table again: the
// condition of a Wait may depend on more than this table.
func (t *Table) Wake() {
	t.mu.Lock()
	t.wake()
	t.mu.Unlock()
}

// wake releases every waiter so it can retry. Caller holds t.mu.
func (t *Table) wake() {
	close(t.changed)
	t.changed = make(chan struct{})
}
