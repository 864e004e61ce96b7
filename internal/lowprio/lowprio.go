// Package lowprio runs bulk work, such as streaming a snapshot, at a lower
// CPU priority than the rest of the daemon, so that it takes only the CPU
// that latency-sensitive work (the FUSE loop serving SQLite's commits)
// leaves idle, and goes at full speed on an idle machine.
package lowprio

import (
	"runtime"
	"syscall"
)

// Niceness is the nice value of the threads bulk work runs on.
const Niceness = 10

// Run calls fn on a dedicated OS thread whose nice value is raised, and
// returns what fn returns. The thread exits with fn: it is never handed
// back to the Go scheduler with its lowered priority.
func Run(fn func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Deliberately never unlocked: the goroutine exiting while locked
		// makes the runtime terminate the thread.
		_ = syscall.Setpriority(syscall.PRIO_PROCESS, syscall.Gettid(), Niceness)
		done <- fn()
	}()
	return <-done
}
