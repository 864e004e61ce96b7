package lowprio

import (
	"errors"
	"runtime"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestRun: fn runs on a thread of lower priority, with a Go processor of
// its own while it runs, and its error comes back.
func TestRun(t *testing.T) {
	before := runtime.GOMAXPROCS(0)
	callerPrio, err := syscall.Getpriority(syscall.PRIO_PROCESS, 0)
	if err != nil {
		t.Fatal(err)
	}
	errFn := errors.New("from fn")
	err = Run(func() error {
		attr, err := unix.SchedGetAttr(0, 0)
		if err != nil {
			t.Errorf("sched_getattr: %v", err)
		} else if attr.Policy != unix.SCHED_BATCH || attr.Nice != Niceness {
			t.Errorf("bulk thread has policy %d, nice %d; want SCHED_BATCH (%d), nice %d", attr.Policy, attr.Nice, unix.SCHED_BATCH, Niceness)
		}
		if n := runtime.GOMAXPROCS(0); n != before+1 {
			t.Errorf("GOMAXPROCS %d while bulk work runs, want %d", n, before+1)
		}
		return errFn
	})
	if !errors.Is(err, errFn) {
		t.Fatalf("Run returned %v, want fn's error", err)
	}
	if n := runtime.GOMAXPROCS(0); n != before {
		t.Fatalf("GOMAXPROCS %d after bulk work, want %d again", n, before)
	}
	// The calling thread keeps its priority.
	if prio, err := syscall.Getpriority(syscall.PRIO_PROCESS, 0); err != nil || prio != callerPrio {
		t.Fatalf("caller's priority %d (%v): the bulk thread's setting leaked", prio, err)
	}
}

// TestRunConcurrent: each bulk thread running has a processor of its own.
func TestRunConcurrent(t *testing.T) {
	before := runtime.GOMAXPROCS(0)
	const n = 3
	var started, release sync.WaitGroup
	started.Add(n)
	release.Add(1)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = Run(func() error {
				started.Done()
				release.Wait()
				return nil
			})
		}()
	}
	started.Wait()
	if got := runtime.GOMAXPROCS(0); got != before+n {
		t.Errorf("GOMAXPROCS %d with %d bulk threads, want %d", got, n, before+n)
	}
	release.Done()
	wg.Wait()
	if got := runtime.GOMAXPROCS(0); got != before {
		t.Fatalf("GOMAXPROCS %d after bulk work, want %d again", got, before)
	}
}

// TestPacer: Pace only yields once a quantum has passed; until then it
// returns without a system call.
func TestPacer(t *testing.T) {
	var p Pacer
	p.Pace()
	first := p.since
	if first.IsZero() {
		t.Fatal("the first Pace did not start the quantum")
	}
	p.Pace()
	if p.since != first && p.since.Sub(first) < Quantum {
		t.Fatal("Pace yielded before a quantum had passed")
	}
	for p.since == first {
		p.Pace() // yields once the quantum is over
	}
	if p.since.Sub(first) < Quantum {
		t.Fatalf("Pace yielded after %s, before the quantum of %s", p.since.Sub(first), Quantum)
	}
}
