// Package lowprio runs bulk work, such as streaming a snapshot, at a lower
// CPU priority than the rest of the daemon, so that it takes only a small
// share of a CPU that latency-sensitive work (the FUSE loop serving
// SQLite's commits) needs, in short turns, and goes at full speed on an
// idle machine.
//
// Three things make that hold, each against a way it failed:
//
//   - The thread runs SCHED_BATCH at nice 10, which sets its share of a
//     contended CPU (about a tenth next to one busy thread) and keeps its
//     wake-ups from preempting other threads.
//   - Its turns are short. The kernel checks a running thread's time
//     slice only at its tick (4 ms at HZ=250), so a commit that became
//     runnable behind bulk work could wait that long. Bulk work calls a
//     Pacer every few microseconds, which yields the CPU once the thread
//     has run for Quantum; the thread asks the kernel for a slice of the
//     same length (Linux 6.12 and later), so that yielding that often
//     does not also cut its share below the nice value's.
//   - It never holds a Go processor (P) that other goroutines need. Go
//     code only runs on a thread holding one of GOMAXPROCS Ps; a niced
//     thread the kernel has set aside while it holds one keeps that P
//     from every other goroutine (with one CPU, one P: the FUSE loop
//     waited for the bulk thread's next turn before it could answer).
//     While bulk work runs the runtime has one P more for each bulk
//     thread. And a yield is a system call: while the kernel has the
//     thread set aside in it, the runtime can stop the world (a garbage
//     collection) without waiting for the thread's next turn.
package lowprio

import (
	"os"
	"runtime"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Niceness is the nice value of the threads bulk work runs on.
const Niceness = 10

// Quantum is how long bulk work runs before it gives way to any thread
// waiting for its CPU, and the time slice its thread asks the kernel for.
// It bounds how long a commit waits for bulk work on a shared CPU.
const Quantum = 100 * time.Microsecond

var procs struct {
	mu   sync.Mutex
	bulk int // bulk threads running
	base int // GOMAXPROCS before the first of them started
}

// addProc gives the runtime a P for one more bulk thread.
func addProc() {
	procs.mu.Lock()
	defer procs.mu.Unlock()
	if procs.bulk == 0 {
		procs.base = runtime.GOMAXPROCS(0)
	}
	procs.bulk++
	runtime.GOMAXPROCS(procs.base + procs.bulk)
}

// removeProc takes the P of a finished bulk thread away again. When the
// last one ends, GOMAXPROCS goes back to the runtime's default (which
// follows the CPUs the process may use), unless the environment set it.
func removeProc() {
	procs.mu.Lock()
	defer procs.mu.Unlock()
	procs.bulk--
	switch {
	case procs.bulk > 0:
		runtime.GOMAXPROCS(procs.base + procs.bulk)
	case os.Getenv("GOMAXPROCS") != "":
		runtime.GOMAXPROCS(procs.base)
	default:
		runtime.SetDefaultGOMAXPROCS()
	}
}

// lowerPriority makes the calling thread a bulk thread.
func lowerPriority() {
	tid := unix.Gettid()
	attr := unix.SchedAttr{Policy: unix.SCHED_BATCH, Nice: Niceness, Runtime: uint64(Quantum)}
	if err := unix.SchedSetAttr(tid, &attr, 0); err != nil {
		// A kernel without sched_setattr: the nice value alone.
		_ = syscall.Setpriority(syscall.PRIO_PROCESS, tid, Niceness)
	}
}

// Run calls fn on a dedicated OS thread of lower priority, and returns
// what fn returns. The thread exits with fn: it is never handed back to
// the Go scheduler with its lowered priority.
func Run(fn func() error) error {
	addProc()
	defer removeProc()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Deliberately never unlocked: the goroutine exiting while locked
		// makes the runtime terminate the thread.
		lowerPriority()
		done <- fn()
	}()
	return <-done
}

// A Pacer makes bulk work give way to other threads: fn, as Run calls it,
// calls Pace every few microseconds of work (a page, say). The zero value
// is ready to use; a Pacer is for one thread.
type Pacer struct {
	since time.Time // end of the last yield, zero before the first Pace
}

// Pace yields the CPU if the thread has run for Quantum since it last
// did. A yield with no other thread waiting for the CPU returns at once.
func (p *Pacer) Pace() {
	now := time.Now()
	if p.since.IsZero() {
		p.since = now
		return
	}
	if now.Sub(p.since) < Quantum {
		return
	}
	// syscall.Syscall, not RawSyscall: the runtime must know that the
	// thread is in a system call while the kernel has it set aside.
	_, _, _ = syscall.Syscall(syscall.SYS_SCHED_YIELD, 0, 0, 0)
	p.since = time.Now()
}
