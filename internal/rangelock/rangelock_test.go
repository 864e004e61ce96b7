package rangelock

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"reflect"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// step is one lock request applied with TryLock, with the result expected.
type step struct {
	req  Lock
	want bool
}

func rd(owner Owner, start, end uint64) Lock {
	return Lock{Owner: owner, Start: start, End: end, Type: Read}
}

func wr(owner Owner, start, end uint64) Lock {
	return Lock{Owner: owner, Start: start, End: end, Type: Write}
}

func un(owner Owner, start, end uint64) Lock {
	return Lock{Owner: owner, Start: start, End: end, Type: Unlock}
}

// sortedLocks returns the locks ordered by (Start, Owner) so that tables can
// be compared independently of how ties are ordered.
func sortedLocks(ls []Lock) []Lock {
	out := append([]Lock(nil), ls...)
	sort.Slice(out, func(i, j int) bool {
		if out[i].Start != out[j].Start {
			return out[i].Start < out[j].Start
		}
		return out[i].Owner < out[j].Owner
	})
	return out
}

func checkSnapshot(t *testing.T, tab *Table, want []Lock) {
	t.Helper()
	got := tab.Snapshot()
	if len(got) == 0 && len(want) == 0 {
		return
	}
	if !reflect.DeepEqual(sortedLocks(got), sortedLocks(want)) {
		t.Fatalf("snapshot:\n got  %+v\n want %+v", sortedLocks(got), sortedLocks(want))
	}
}

func TestTypeString(t *testing.T) {
	for _, tc := range []struct {
		typ  Type
		want string
	}{
		{Unlock, "unlock"},
		{Read, "read"},
		{Write, "write"},
		{Type(42), "unlock"},
	} {
		if got := tc.typ.String(); got != tc.want {
			t.Errorf("Type(%d).String() = %q, want %q", int(tc.typ), got, tc.want)
		}
	}
}

func TestTryLock(t *testing.T) {
	for _, tc := range []struct {
		name  string
		steps []step
		want  []Lock
	}{
		{
			name:  "empty table grants read",
			steps: []step{{rd(1, 0, 9), true}},
			want:  []Lock{rd(1, 0, 9)},
		},
		{
			name:  "shared locks of two owners coexist",
			steps: []step{{rd(1, 0, 9), true}, {rd(2, 5, 14), true}},
			want:  []Lock{rd(1, 0, 9), rd(2, 5, 14)},
		},
		{
			name:  "write blocked by another owner's read",
			steps: []step{{rd(1, 0, 9), true}, {wr(2, 9, 20), false}},
			want:  []Lock{rd(1, 0, 9)},
		},
		{
			name:  "read blocked by another owner's write",
			steps: []step{{wr(1, 10, 19), true}, {rd(2, 0, 10), false}},
			want:  []Lock{wr(1, 10, 19)},
		},
		{
			name:  "write blocked by another owner's write",
			steps: []step{{wr(1, 10, 19), true}, {wr(2, 19, 19), false}},
			want:  []Lock{wr(1, 10, 19)},
		},
		{
			name:  "adjacent ranges of different owners do not conflict",
			steps: []step{{wr(1, 10, 19), true}, {wr(2, 20, 29), true}, {wr(3, 0, 9), true}},
			want:  []Lock{wr(3, 0, 9), wr(1, 10, 19), wr(2, 20, 29)},
		},
		{
			name:  "single byte ranges",
			steps: []step{{wr(1, 5, 5), true}, {rd(2, 5, 5), false}, {rd(2, 4, 4), true}, {rd(2, 6, 6), true}},
			want:  []Lock{rd(2, 4, 4), wr(1, 5, 5), rd(2, 6, 6)},
		},
		{
			name:  "same owner upgrade read to write",
			steps: []step{{rd(1, 0, 9), true}, {wr(1, 0, 9), true}},
			want:  []Lock{wr(1, 0, 9)},
		},
		{
			name:  "same owner downgrade write to read",
			steps: []step{{wr(1, 0, 9), true}, {rd(1, 0, 9), true}, {rd(2, 0, 9), true}},
			want:  []Lock{rd(1, 0, 9), rd(2, 0, 9)},
		},
		{
			name:  "upgrade blocked while another owner shares",
			steps: []step{{rd(1, 0, 9), true}, {rd(2, 0, 9), true}, {wr(1, 0, 9), false}},
			want:  []Lock{rd(1, 0, 9), rd(2, 0, 9)},
		},
		{
			name:  "failed upgrade keeps the owner's existing lock",
			steps: []step{{rd(1, 0, 99), true}, {rd(2, 50, 50), true}, {wr(1, 0, 99), false}},
			want:  []Lock{rd(1, 0, 99), rd(2, 50, 50)},
		},
		{
			name:  "upgrade middle splits a read lock in three",
			steps: []step{{rd(1, 0, 99), true}, {wr(1, 40, 59), true}},
			want:  []Lock{rd(1, 0, 39), wr(1, 40, 59), rd(1, 60, 99)},
		},
		{
			name:  "downgrade of a prefix splits a write lock",
			steps: []step{{wr(1, 0, 99), true}, {rd(1, 0, 9), true}},
			want:  []Lock{rd(1, 0, 9), wr(1, 10, 99)},
		},
		{
			name:  "new lock over two of the owner's locks replaces both and the gap",
			steps: []step{{rd(1, 0, 9), true}, {wr(1, 20, 29), true}, {rd(1, 0, 29), true}},
			want:  []Lock{rd(1, 0, 29)},
		},
		{
			name:  "new lock partially overlapping two of the owner's locks trims them",
			steps: []step{{rd(1, 0, 9), true}, {rd(1, 20, 29), true}, {wr(1, 5, 24), true}},
			want:  []Lock{rd(1, 0, 4), wr(1, 5, 24), rd(1, 25, 29)},
		},
		{
			name:  "same-type relock of the same range leaves one lock",
			steps: []step{{wr(1, 0, 9), true}, {wr(1, 0, 9), true}},
			want:  []Lock{wr(1, 0, 9)},
		},
		{
			name:  "owner's own locks never conflict with its new request",
			steps: []step{{wr(1, 0, 9), true}, {wr(1, 5, 14), true}},
			want:  []Lock{wr(1, 0, 4), wr(1, 5, 14)},
		},
		{
			name:  "unlock middle splits a lock",
			steps: []step{{wr(1, 0, 99), true}, {un(1, 10, 19), true}},
			want:  []Lock{wr(1, 0, 9), wr(1, 20, 99)},
		},
		{
			name:  "unlock prefix and suffix",
			steps: []step{{rd(1, 0, 99), true}, {un(1, 0, 9), true}, {un(1, 90, 200), true}},
			want:  []Lock{rd(1, 10, 89)},
		},
		{
			name:  "unlock covering everything",
			steps: []step{{rd(1, 10, 19), true}, {wr(1, 30, 39), true}, {un(1, 0, MaxEnd), true}},
			want:  nil,
		},
		{
			name:  "unlock of a range not held is a no-op",
			steps: []step{{rd(1, 10, 19), true}, {un(1, 20, 29), true}},
			want:  []Lock{rd(1, 10, 19)},
		},
		{
			name:  "unlock only touches the requesting owner",
			steps: []step{{rd(1, 0, 9), true}, {rd(2, 0, 9), true}, {un(2, 0, 9), true}},
			want:  []Lock{rd(1, 0, 9)},
		},
		{
			name:  "unlock never conflicts even under another's write",
			steps: []step{{wr(1, 0, 9), true}, {un(2, 0, 9), true}},
			want:  []Lock{wr(1, 0, 9)},
		},
		{
			name:  "lock to end of file conflicts with any later byte",
			steps: []step{{wr(1, 100, MaxEnd), true}, {rd(2, 1<<40, 1<<40), false}, {rd(2, MaxEnd, MaxEnd), false}, {rd(2, 0, 99), true}},
			want:  []Lock{rd(2, 0, 99), wr(1, 100, MaxEnd)},
		},
		{
			name:  "unlock in the middle of a lock to end of file",
			steps: []step{{rd(1, 0, MaxEnd), true}, {un(1, 1000, 1999), true}},
			want:  []Lock{rd(1, 0, 999), rd(1, 2000, MaxEnd)},
		},
		{
			name:  "unlock to end of file trims a lock to end of file",
			steps: []step{{wr(1, 0, MaxEnd), true}, {un(1, 512, MaxEnd), true}, {wr(2, 512, MaxEnd), true}},
			want:  []Lock{wr(1, 0, 511), wr(2, 512, MaxEnd)},
		},
		{
			name:  "empty range (end before start) is accepted and ignored",
			steps: []step{{wr(1, 0, 9), true}, {wr(2, 9, 0), true}, {un(1, 5, 4), true}},
			want:  []Lock{wr(1, 0, 9)},
		},
		{
			name: "sqlite-style lock bytes",
			steps: []step{
				// Two connections take SHARED; one takes RESERVED (the
				// other cannot), then PENDING, and can only get EXCLUSIVE
				// once the other reader has dropped SHARED.
				{rd(1, 0x40000002, 0x40000002+509), true},
				{rd(2, 0x40000002, 0x40000002+509), true},
				{wr(1, 0x40000001, 0x40000001), true},
				{wr(2, 0x40000001, 0x40000001), false},
				{wr(1, 0x40000000, 0x40000000), true},
				{wr(1, 0x40000002, 0x40000002+509), false}, // EXCLUSIVE blocked by reader 2
				{un(2, 0x40000002, 0x40000002+509), true},
				{wr(1, 0x40000002, 0x40000002+509), true},
			},
			want: []Lock{wr(1, 0x40000000, 0x40000000), wr(1, 0x40000001, 0x40000001), wr(1, 0x40000002, 0x40000002+509)},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tab := New()
			for i, s := range tc.steps {
				if got := tab.TryLock(s.req); got != s.want {
					t.Fatalf("step %d: TryLock(%+v) = %v, want %v; table %+v", i, s.req, got, s.want, tab.Snapshot())
				}
			}
			checkSnapshot(t, tab, tc.want)
			checkInvariants(t, tab.Snapshot())
		})
	}
}

// checkInvariants verifies the documented table invariants: sorted by Start
// and no two ranges of one owner overlap.
func checkInvariants(t *testing.T, ls []Lock) {
	t.Helper()
	for i := 1; i < len(ls); i++ {
		if ls[i-1].Start > ls[i].Start {
			t.Fatalf("snapshot not sorted by Start: %+v", ls)
		}
	}
	for i := range ls {
		if ls[i].End < ls[i].Start {
			t.Fatalf("empty range in table: %+v", ls[i])
		}
		if ls[i].Type != Read && ls[i].Type != Write {
			t.Fatalf("lock of type %v in table: %+v", ls[i].Type, ls[i])
		}
		for j := i + 1; j < len(ls); j++ {
			if ls[i].Owner == ls[j].Owner && ls[i].Start <= ls[j].End && ls[j].Start <= ls[i].End {
				t.Fatalf("owner %d has overlapping ranges %+v and %+v", ls[i].Owner, ls[i], ls[j])
			}
		}
	}
}

func TestSplitKeepsPIDAndHandle(t *testing.T) {
	tab := New()
	orig := Lock{Owner: 1, Start: 0, End: 99, Type: Write, PID: 11, Handle: 100}
	if !tab.TryLock(orig) {
		t.Fatal("TryLock failed on empty table")
	}
	mid := Lock{Owner: 1, Start: 40, End: 59, Type: Read, PID: 12, Handle: 200}
	if !tab.TryLock(mid) {
		t.Fatal("downgrade failed")
	}
	checkSnapshot(t, tab, []Lock{
		{Owner: 1, Start: 0, End: 39, Type: Write, PID: 11, Handle: 100},
		{Owner: 1, Start: 40, End: 59, Type: Read, PID: 12, Handle: 200},
		{Owner: 1, Start: 60, End: 99, Type: Write, PID: 11, Handle: 100},
	})

	// ReleaseHandle drops only the parts taken through handle 100.
	tab.ReleaseHandle(100)
	checkSnapshot(t, tab, []Lock{mid})
}

func TestConflict(t *testing.T) {
	base := []Lock{
		{Owner: 1, Start: 0, End: 9, Type: Read, PID: 101},
		{Owner: 2, Start: 20, End: 29, Type: Write, PID: 202},
		{Owner: 3, Start: 100, End: MaxEnd, Type: Read, PID: 303},
	}
	for _, tc := range []struct {
		name string
		req  Lock
		want *Lock
	}{
		{"read over read", rd(9, 0, 9), nil},
		{"write over read", wr(9, 5, 5), &base[0]},
		{"read over write", rd(9, 29, 40), &base[1]},
		{"write over write", wr(9, 15, 25), &base[1]},
		{"gap between locks", wr(9, 10, 19), nil},
		{"gap after write", wr(9, 30, 99), nil},
		{"write over eof lock", wr(9, 1<<50, 1<<50), &base[2]},
		{"read over eof lock", rd(9, 1<<50, MaxEnd), nil},
		{"own read does not conflict", wr(1, 0, 9), nil},
		{"own write does not conflict", wr(2, 20, 29), nil},
		{"owner 1 write blocked by owner 2", wr(1, 0, 25), &base[1]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tab := New()
			for _, l := range base {
				if !tab.TryLock(l) {
					t.Fatalf("setup TryLock(%+v) failed", l)
				}
			}
			got, ok := tab.Conflict(tc.req)
			if tc.want == nil {
				if ok {
					t.Fatalf("Conflict(%+v) = %+v, want none", tc.req, got)
				}
				if got != (Lock{}) {
					t.Fatalf("Conflict returned non-zero lock %+v with ok=false", got)
				}
				if !tab.TryLock(tc.req) {
					t.Fatalf("no conflict reported but TryLock(%+v) failed", tc.req)
				}
				return
			}
			if !ok || got != *tc.want {
				t.Fatalf("Conflict(%+v) = %+v, %v; want %+v", tc.req, got, ok, *tc.want)
			}
			if tab.TryLock(tc.req) {
				t.Fatalf("conflict reported but TryLock(%+v) succeeded", tc.req)
			}
			// Conflict must not change the table.
			checkSnapshot(t, tab, base)
		})
	}
}

func TestHolds(t *testing.T) {
	// Owner 1: read [0,9], read [10,19] (adjacent, distinct entries),
	// write [20,29], gap, write [40, MaxEnd]. Owner 2: read [30,35].
	setup := []Lock{rd(1, 0, 9), wr(1, 20, 29), rd(1, 10, 19), rd(2, 30, 35), wr(1, 40, MaxEnd)}
	for _, tc := range []struct {
		owner      Owner
		start, end uint64
		typ        Type
		want       bool
	}{
		{1, 0, 9, Read, true},
		{1, 0, 9, Write, false},
		{1, 0, 19, Read, true}, // across adjacent read locks
		{1, 5, 14, Read, true},
		{1, 0, 29, Read, true}, // read over read+read+write
		{1, 0, 29, Write, false},
		{1, 20, 29, Write, true},
		{1, 25, 25, Write, true},
		{1, 0, 30, Read, false}, // byte 30 not held
		{1, 0, 39, Read, false},
		{1, 29, 40, Read, false}, // gap 30..39
		{1, 40, MaxEnd, Write, true},
		{1, 1 << 62, MaxEnd, Write, true},
		{1, 20, 29, Read, true}, // write counts as at least read
		{2, 30, 35, Read, true},
		{2, 30, 36, Read, false},
		{2, 29, 35, Read, false},
		{2, 30, 35, Write, false},
		{2, 0, 9, Read, false},
		{3, 0, 0, Read, false},
	} {
		t.Run(fmt.Sprintf("owner%d_%d-%d_%v", tc.owner, tc.start, tc.end, tc.typ), func(t *testing.T) {
			tab := New()
			for _, l := range setup {
				if !tab.TryLock(l) {
					t.Fatalf("setup TryLock(%+v) failed", l)
				}
			}
			if got := tab.Holds(tc.owner, tc.start, tc.end, tc.typ); got != tc.want {
				t.Fatalf("Holds(%d, %d, %d, %v) = %v, want %v; table %+v", tc.owner, tc.start, tc.end, tc.typ, got, tc.want, tab.Snapshot())
			}
		})
	}
}

func TestHoldsAdjacentAfterSplit(t *testing.T) {
	// Building coverage out of many small adjacent locks of mixed types.
	tab := New()
	for i := uint64(0); i < 10; i++ {
		typ := Read
		if i%2 == 0 {
			typ = Write
		}
		if !tab.TryLock(Lock{Owner: 7, Start: i * 10, End: i*10 + 9, Type: typ}) {
			t.Fatalf("TryLock %d failed", i)
		}
	}
	if n := len(tab.Snapshot()); n != 10 {
		t.Fatalf("got %d locks, want 10 distinct entries", n)
	}
	if !tab.Holds(7, 0, 99, Read) {
		t.Error("Holds(0..99, read) = false across 10 adjacent locks")
	}
	if tab.Holds(7, 0, 99, Write) {
		t.Error("Holds(0..99, write) = true with read locks in between")
	}
	if !tab.Holds(7, 40, 49, Write) {
		t.Error("Holds(40..49, write) = false")
	}
	if tab.Holds(7, 0, 100, Read) {
		t.Error("Holds(0..100) = true but byte 100 is not held")
	}
	if !tab.TryLock(un(7, 55, 55)) {
		t.Fatal("unlock failed")
	}
	if tab.Holds(7, 0, 99, Read) {
		t.Error("Holds(0..99) = true after unlocking byte 55")
	}
	if !tab.Holds(7, 0, 54, Read) || !tab.Holds(7, 56, 99, Read) {
		t.Error("Holds on either side of the hole = false")
	}
}

func TestLocked(t *testing.T) {
	setup := []Lock{rd(1, 0, 9), wr(2, 20, 29), rd(3, 100, MaxEnd)}
	for _, tc := range []struct {
		start, end uint64
		typ        Type
		want       bool
	}{
		{0, 0, Read, true},
		{0, 0, Write, false},
		{9, 19, Read, true},
		{10, 19, Read, false},
		{10, 19, Write, false},
		{19, 20, Write, true},
		{29, 29, Read, true},
		{30, 99, Read, false},
		{50, 1 << 40, Read, true},
		{50, 1 << 40, Write, false}, // overlaps only owner 3's read lock
		{0, MaxEnd, Write, true},
		{1 << 40, MaxEnd, Write, false},
		{MaxEnd, MaxEnd, Read, true},
	} {
		want := tc.want
		tab := New()
		for _, l := range setup {
			if !tab.TryLock(l) {
				t.Fatalf("setup TryLock(%+v) failed", l)
			}
		}
		if got := tab.Locked(tc.start, tc.end, tc.typ); got != want {
			t.Errorf("Locked(%d, %d, %v) = %v, want %v", tc.start, tc.end, tc.typ, got, want)
		}
	}
}

func TestReleaseOwnerAndHandle(t *testing.T) {
	locks := []Lock{
		{Owner: 1, Start: 0, End: 9, Type: Read, Handle: 100},
		{Owner: 1, Start: 20, End: 29, Type: Write, Handle: 200},
		{Owner: 2, Start: 0, End: 9, Type: Read, Handle: 100}, // another owner, same handle
		{Owner: 2, Start: 40, End: 49, Type: Write, Handle: 300},
		{Owner: 3, Start: 60, End: MaxEnd, Type: Read, Handle: 400},
	}
	for _, tc := range []struct {
		name    string
		release func(*Table)
		want    []Lock
	}{
		{"owner 1", func(t *Table) { t.ReleaseOwner(1) }, []Lock{locks[2], locks[3], locks[4]}},
		{"owner 2", func(t *Table) { t.ReleaseOwner(2) }, []Lock{locks[0], locks[1], locks[4]}},
		{"unknown owner", func(t *Table) { t.ReleaseOwner(9) }, locks},
		{"handle 100 (two owners)", func(t *Table) { t.ReleaseHandle(100) }, []Lock{locks[1], locks[3], locks[4]}},
		{"handle 200", func(t *Table) { t.ReleaseHandle(200) }, []Lock{locks[0], locks[2], locks[3], locks[4]}},
		{"unknown handle", func(t *Table) { t.ReleaseHandle(999) }, locks},
		{"every owner", func(t *Table) {
			t.ReleaseOwner(1)
			t.ReleaseOwner(2)
			t.ReleaseOwner(3)
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tab := New()
			for _, l := range locks {
				if !tab.TryLock(l) {
					t.Fatalf("setup TryLock(%+v) failed", l)
				}
			}
			tc.release(tab)
			checkSnapshot(t, tab, tc.want)
		})
	}
}

func TestReleaseAllowsOthers(t *testing.T) {
	tab := New()
	if !tab.TryLock(Lock{Owner: 1, Start: 0, End: MaxEnd, Type: Write, Handle: 5}) {
		t.Fatal("TryLock failed")
	}
	if tab.TryLock(rd(2, 10, 10)) {
		t.Fatal("read granted under another owner's write")
	}
	tab.ReleaseHandle(5)
	if !tab.TryLock(rd(2, 10, 10)) {
		t.Fatal("read refused after ReleaseHandle")
	}
	if !tab.TryLock(Lock{Owner: 1, Start: 0, End: 0, Type: Write}) {
		t.Fatal("owner 1 refused a non-overlapping lock")
	}
	tab.ReleaseOwner(2)
	if !tab.TryLock(wr(1, 0, MaxEnd)) {
		t.Fatal("write refused after ReleaseOwner")
	}
}

func TestSnapshotIsCopy(t *testing.T) {
	tab := New()
	tab.TryLock(wr(1, 0, 9))
	s := tab.Snapshot()
	s[0].Owner = 99
	s[0].Type = Read
	if got := tab.Snapshot(); got[0].Owner != 1 || got[0].Type != Write {
		t.Fatalf("modifying a snapshot changed the table: %+v", got)
	}
	// A snapshot taken before a release is unaffected by it.
	tab.TryLock(wr(2, 20, 29))
	before := tab.Snapshot()
	tab.ReleaseOwner(1)
	if len(before) != 2 || before[0].Owner != 1 || before[1].Owner != 2 {
		t.Fatalf("snapshot changed by a later ReleaseOwner: %+v", before)
	}
	if s := New().Snapshot(); len(s) != 0 {
		t.Fatalf("new table snapshot = %+v, want empty", s)
	}
}

// startLock runs Lock(req) in a goroutine; the returned channel receives
// Lock's result.
func startLock(ctx context.Context, tab *Table, req Lock) <-chan error {
	done := make(chan error, 1)
	go func() { done <- tab.Lock(ctx, req) }()
	return done
}

func expectBlocked(t *testing.T, done <-chan error) {
	t.Helper()
	select {
	case err := <-done:
		t.Fatalf("Lock returned %v while a conflicting lock is held", err)
	case <-time.After(50 * time.Millisecond):
	}
}

func expectDone(t *testing.T, done <-chan error, want error) {
	t.Helper()
	select {
	case err := <-done:
		if !errors.Is(err, want) || (want == nil && err != nil) {
			t.Fatalf("Lock returned %v, want %v", err, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Lock still blocked 5s after the conflicting lock was released")
	}
}

func TestLockImmediate(t *testing.T) {
	tab := New()
	if err := tab.Lock(context.Background(), rd(1, 0, 9)); err != nil {
		t.Fatal(err)
	}
	if err := tab.Lock(context.Background(), rd(2, 0, 9)); err != nil {
		t.Fatal(err)
	}
	checkSnapshot(t, tab, []Lock{rd(1, 0, 9), rd(2, 0, 9)})
}

func TestLockWokenByRelease(t *testing.T) {
	holder := Lock{Owner: 1, Start: 0, End: 99, Type: Write, Handle: 10}
	for _, tc := range []struct {
		name    string
		waiter  Lock
		release func(*Table)
	}{
		{"unlock whole range", wr(2, 10, 20), func(t *Table) { t.TryLock(un(1, 0, 99)) }},
		{"unlock the contested part", wr(2, 10, 20), func(t *Table) { t.TryLock(un(1, 5, 25)) }},
		{"release owner", rd(2, 50, MaxEnd), func(t *Table) { t.ReleaseOwner(1) }},
		{"release handle", wr(2, 0, 0), func(t *Table) { t.ReleaseHandle(10) }},
		{"downgrade to read lets a reader in", rd(2, 0, 99), func(t *Table) { t.TryLock(rd(1, 0, 99)) }},
		{"blocking lock by holder moving away", wr(2, 0, 9), func(t *Table) {
			_ = t.Lock(context.Background(), wr(1, 10, 99)) // own lock: never blocks
			t.TryLock(un(1, 0, 9))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tab := New()
			if !tab.TryLock(holder) {
				t.Fatal("setup failed")
			}
			done := startLock(context.Background(), tab, tc.waiter)
			expectBlocked(t, done)
			tc.release(tab)
			expectDone(t, done, nil)
			if !tab.Holds(tc.waiter.Owner, tc.waiter.Start, tc.waiter.End, tc.waiter.Type) {
				t.Fatalf("waiter does not hold its lock after Lock returned: %+v", tab.Snapshot())
			}
		})
	}
}

func TestLockKeepsWaitingAfterUnrelatedRelease(t *testing.T) {
	tab := New()
	tab.TryLock(wr(1, 0, 99))
	tab.TryLock(wr(3, 200, 299))
	done := startLock(context.Background(), tab, wr(2, 50, 60))
	expectBlocked(t, done)

	// Releases that do not remove the conflict wake the waiter, which must
	// go back to waiting.
	tab.ReleaseOwner(3)
	expectBlocked(t, done)
	tab.TryLock(un(1, 0, 49))
	expectBlocked(t, done)
	tab.TryLock(rd(1, 90, 99)) // downgrade elsewhere
	expectBlocked(t, done)

	tab.TryLock(un(1, 50, 89))
	expectDone(t, done, nil)
	checkSnapshot(t, tab, []Lock{wr(2, 50, 60), rd(1, 90, 99)})
}

func TestLockManyWaiters(t *testing.T) {
	tab := New()
	tab.TryLock(wr(1, 0, MaxEnd))
	const n = 8
	var dones []<-chan error
	for i := 0; i < n; i++ {
		dones = append(dones, startLock(context.Background(), tab, rd(Owner(10+i), uint64(i), uint64(i)+100)))
	}
	for _, d := range dones {
		expectBlocked(t, d)
	}
	tab.ReleaseOwner(1)
	for _, d := range dones {
		expectDone(t, d, nil)
	}
	if got := len(tab.Snapshot()); got != n {
		t.Fatalf("%d locks held, want %d", got, n)
	}
}

func TestLockContext(t *testing.T) {
	for _, tc := range []struct {
		name string
		ctx  func() (context.Context, context.CancelFunc)
		want error
	}{
		{"cancel", func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(100*time.Millisecond, cancel)
			return ctx, cancel
		}, context.Canceled},
		{"deadline", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 100*time.Millisecond)
		}, context.DeadlineExceeded},
		{"already cancelled", func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return ctx, cancel
		}, context.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tab := New()
			tab.TryLock(wr(1, 0, 9))
			ctx, cancel := tc.ctx()
			defer cancel()
			done := startLock(ctx, tab, rd(2, 5, 5))
			expectDone(t, done, tc.want)
			// The failed waiter holds nothing.
			checkSnapshot(t, tab, []Lock{wr(1, 0, 9)})
			if tab.Holds(2, 5, 5, Read) {
				t.Fatal("cancelled waiter holds a lock")
			}
		})
	}
}

// TestLockMutualExclusion runs many goroutines taking the same exclusive
// lock with the blocking Lock; under -race, a broken exclusion shows up as
// a data race on counter, and inside is checked explicitly.
func TestLockMutualExclusion(t *testing.T) {
	tab := New()
	var (
		inside  int32
		counter int
		wg      sync.WaitGroup
	)
	const workers, iters = 8, 200
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(owner Owner) {
			defer wg.Done()
			for i := 0; i < iters; i++ {
				// Half the workers lock a range straddling the contested byte.
				req := wr(owner, 10, 10)
				if owner%2 == 0 {
					req = wr(owner, 0, MaxEnd)
				}
				if err := tab.Lock(context.Background(), req); err != nil {
					t.Error(err)
					return
				}
				if atomic.AddInt32(&inside, 1) != 1 {
					t.Error("two owners inside the exclusive section")
				}
				counter++
				atomic.AddInt32(&inside, -1)
				if i%2 == 0 {
					tab.TryLock(un(owner, 0, MaxEnd))
				} else {
					tab.ReleaseOwner(owner)
				}
			}
		}(Owner(w + 1))
	}
	wg.Wait()
	if counter != workers*iters {
		t.Fatalf("counter = %d, want %d", counter, workers*iters)
	}
	if s := tab.Snapshot(); len(s) != 0 {
		t.Fatalf("locks left over: %+v", s)
	}
}

// TestConcurrentReaders checks that shared locks do not block each other and
// that the table stays consistent under concurrent use (run with -race).
func TestConcurrentReaders(t *testing.T) {
	tab := New()
	var wg sync.WaitGroup
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(owner Owner) {
			defer wg.Done()
			for i := 0; i < 300; i++ {
				start := uint64(i % 50)
				if err := tab.Lock(ctx, rd(owner, start, start+20)); err != nil {
					t.Error(err)
					return
				}
				if !tab.Holds(owner, start, start+20, Read) {
					t.Errorf("owner %d lost its read lock", owner)
				}
				_ = tab.Locked(0, MaxEnd, Write)
				_, _ = tab.Conflict(wr(owner, 0, MaxEnd))
				_ = tab.Snapshot()
				tab.TryLock(un(owner, start, start+20))
			}
		}(Owner(w + 1))
	}
	wg.Wait()
	if tab.Locked(0, MaxEnd, Read) {
		t.Fatalf("locks left over: %+v", tab.Snapshot())
	}
}

// --- randomized comparison against a per-byte reference model ---

// modelSize is the number of modelled bytes. Byte modelSize-1 stands for
// the whole tail [modelSize-1, MaxEnd]: requests either end before it or
// extend to MaxEnd, so that tail is always uniform.
const modelSize = 40

type modelEntry struct {
	typ    Type
	pid    uint32
	handle uint64
}

type model [modelSize]map[Owner]modelEntry

func newModel() *model {
	var m model
	for i := range m {
		m[i] = make(map[Owner]modelEntry)
	}
	return &m
}

// span converts a lock range to modelled byte indexes.
func span(start, end uint64) (int, int) {
	if end == MaxEnd {
		return int(start), modelSize - 1
	}
	return int(start), int(end)
}

func (m *model) conflicts(req Lock) bool {
	if req.Type == Unlock || req.End < req.Start {
		return false
	}
	s, e := span(req.Start, req.End)
	for i := s; i <= e; i++ {
		for o, ent := range m[i] {
			if o != req.Owner && (ent.typ == Write || req.Type == Write) {
				return true
			}
		}
	}
	return false
}

func (m *model) tryLock(req Lock) bool {
	if req.End < req.Start {
		return true
	}
	if m.conflicts(req) {
		return false
	}
	s, e := span(req.Start, req.End)
	for i := s; i <= e; i++ {
		delete(m[i], req.Owner)
		if req.Type != Unlock {
			m[i][req.Owner] = modelEntry{req.Type, req.PID, req.Handle}
		}
	}
	return true
}

func (m *model) release(match func(Owner, modelEntry) bool) {
	for i := range m {
		for o, ent := range m[i] {
			if match(o, ent) {
				delete(m[i], o)
			}
		}
	}
}

func (m *model) holds(owner Owner, start, end uint64, typ Type) bool {
	s, e := span(start, end)
	for i := s; i <= e; i++ {
		ent, ok := m[i][owner]
		if !ok || (typ == Write && ent.typ != Write) {
			return false
		}
	}
	return true
}

func (m *model) locked(start, end uint64, typ Type) bool {
	s, e := span(start, end)
	for i := s; i <= e; i++ {
		for _, ent := range m[i] {
			if typ == Read || ent.typ == Write {
				return true
			}
		}
	}
	return false
}

// fromSnapshot expands a table snapshot into a per-byte model.
func fromSnapshot(t *testing.T, ls []Lock) *model {
	t.Helper()
	m := newModel()
	for _, l := range ls {
		if l.End != MaxEnd && l.End >= modelSize-1 {
			t.Fatalf("lock %+v ends inside the uniform tail", l)
		}
		if l.Start > modelSize-1 {
			t.Fatalf("lock %+v starts inside the uniform tail", l)
		}
		s, e := span(l.Start, l.End)
		for i := s; i <= e; i++ {
			if _, dup := m[i][l.Owner]; dup {
				t.Fatalf("owner %d holds byte %d twice: %+v", l.Owner, i, ls)
			}
			m[i][l.Owner] = modelEntry{l.Type, l.PID, l.Handle}
		}
	}
	return m
}

func randRange(r *rand.Rand) (uint64, uint64) {
	start := uint64(r.Intn(modelSize - 1))
	if r.Intn(5) == 0 {
		return start, MaxEnd
	}
	end := start + uint64(r.Intn(8))
	if end > modelSize-2 {
		end = modelSize - 2
	}
	if start > 0 && r.Intn(30) == 0 {
		return start, start - 1 // empty range
	}
	return start, end
}

func TestRandomAgainstModel(t *testing.T) {
	const (
		seeds  = 12
		ops    = 1500
		owners = 4
	)
	for seed := int64(1); seed <= seeds; seed++ {
		r := rand.New(rand.NewSource(seed))
		tab, m := New(), newModel()
		for op := 0; op < ops; op++ {
			owner := Owner(1 + r.Intn(owners))
			start, end := randRange(r)
			var desc string
			switch k := r.Intn(20); {
			case k < 16:
				typ := Type(r.Intn(3))
				req := Lock{Owner: owner, Start: start, End: end, Type: typ, PID: uint32(r.Intn(3)), Handle: uint64(owner)*10 + uint64(r.Intn(2))}
				desc = fmt.Sprintf("TryLock(%+v)", req)
				want := m.tryLock(req)
				if got := tab.TryLock(req); got != want {
					t.Fatalf("seed %d op %d: %s = %v, model says %v", seed, op, desc, got, want)
				}
			case k < 18:
				desc = fmt.Sprintf("ReleaseOwner(%d)", owner)
				tab.ReleaseOwner(owner)
				m.release(func(o Owner, _ modelEntry) bool { return o == owner })
			default:
				h := uint64(r.Intn(owners+1))*10 + uint64(r.Intn(2))
				desc = fmt.Sprintf("ReleaseHandle(%d)", h)
				tab.ReleaseHandle(h)
				m.release(func(_ Owner, e modelEntry) bool { return e.handle == h })
			}

			snap := tab.Snapshot()
			checkInvariants(t, snap)
			if got := fromSnapshot(t, snap); !reflect.DeepEqual(got, m) {
				t.Fatalf("seed %d op %d: after %s table %+v differs from model", seed, op, desc, snap)
			}

			// Random queries.
			for q := 0; q < 3; q++ {
				qo := Owner(1 + r.Intn(owners+1))
				qs, qe := randRange(r)
				if qe < qs {
					continue
				}
				qt := Type(1 + r.Intn(2))
				if got, want := tab.Holds(qo, qs, qe, qt), m.holds(qo, qs, qe, qt); got != want {
					t.Fatalf("seed %d op %d: Holds(%d, %d, %d, %v) = %v, model %v; table %+v", seed, op, qo, qs, qe, qt, got, want, snap)
				}
				if got, want := tab.Locked(qs, qe, qt), m.locked(qs, qe, qt); got != want {
					t.Fatalf("seed %d op %d: Locked(%d, %d, %v) = %v, model %v; table %+v", seed, op, qs, qe, qt, got, want, snap)
				}
				req := Lock{Owner: qo, Start: qs, End: qe, Type: qt}
				c, ok := tab.Conflict(req)
				if want := m.conflicts(req); ok != want {
					t.Fatalf("seed %d op %d: Conflict(%+v) = %v, model %v; table %+v", seed, op, req, ok, want, snap)
				}
				if ok {
					if c.Owner == qo || !(c.Start <= qe && qs <= c.End) || (c.Type != Write && qt != Write) {
						t.Fatalf("seed %d op %d: Conflict(%+v) returned non-conflicting %+v", seed, op, req, c)
					}
					found := false
					for _, l := range snap {
						if l == c {
							found = true
						}
					}
					if !found {
						t.Fatalf("seed %d op %d: Conflict returned %+v, not in table %+v", seed, op, c, snap)
					}
				}
			}
		}
	}
}
