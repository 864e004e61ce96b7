package main

import (
	"fmt"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/litefs-project/litefs"
	"github.com/litefs-project/litefs/internal/testutil"
)

// runStallBench measures reads on one database of a replica while a HALT
// holder's commit on another database waits for a stalled primary: that
// wait must not hold up the rest of the mount.
func runStallBench(h *harness) {
	const window = 3 * time.Second
	fmt.Printf("HALT holder on a replica waiting for a stalled primary:\n")
	primary := testutil.StartNode(h, testutil.NodeConfig{Name: "primary", Production: true})
	replica := testutil.StartReplica(h, primary, testutil.NodeConfig{Name: "replica", Production: true})
	// A stopped primary would ignore the SIGTERM of the cleanups; this
	// runs before them, and also when a failure skips the defers.
	h.Cleanup(func() { primary.Signal(syscall.SIGCONT) })
	for _, name := range []string{"a.db", "b.db"} {
		db := openDB(h, primary.Path(name), "WAL", "NORMAL")
		mustExec(h, db, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
		if name == "b.db" {
			mustExec(h, db, "INSERT INTO t (v) "+testutil.Series(300)+" SELECT 'row ' || i FROM s")
		}
		db.Close()
		replica.WaitPos(h, name, primary.Pos(h, name), time.Minute)
	}

	var reads atomic.Int64
	quit := make(chan struct{})
	readerDone := make(chan error, 1)
	r := openDB(h, replica.Path("b.db"), "WAL", "NORMAL")
	go func() {
		for {
			select {
			case <-quit:
				readerDone <- nil
				return
			default:
			}
			var n int
			if err := r.QueryRow("SELECT count(*) FROM t").Scan(&n); err != nil {
				readerDone <- err
				return
			}
			reads.Add(1)
		}
	}()
	rate := func() float64 {
		n, start := reads.Load(), time.Now()
		time.Sleep(window)
		return float64(reads.Load()-n) / time.Since(start).Seconds()
	}
	idle := rate()

	// The holder runs in its own goroutine and connection: its last
	// insert blocks on the stalled primary.
	ready := make(chan error, 1)
	insert := make(chan struct{})
	inserted := make(chan error, 1)
	released := make(chan error, 1)
	go func() {
		f, err := litefs.Halt(replica.Path("a.db"))
		if err != nil {
			ready <- err
			return
		}
		a := openDB(h, replica.Path("a.db"), "WAL", "NORMAL")
		for i := 0; i < 3 && err == nil; i++ {
			_, err = a.Exec("INSERT INTO t (v) VALUES ('held row')")
		}
		ready <- err
		if err == nil {
			<-insert
			_, err = a.Exec("INSERT INTO t (v) VALUES ('stalled row')")
			inserted <- err
		}
		a.Close()
		released <- litefs.Unhalt(f)
	}()
	if err := <-ready; err != nil {
		h.Fatalf("HALT holder on the replica: %v", err)
	}

	if err := primary.Signal(syscall.SIGSTOP); err != nil {
		h.Fatal(err)
	}
	defer primary.Signal(syscall.SIGCONT)
	close(insert)
	stalled := rate()
	select {
	case err := <-inserted:
		fmt.Printf("  odd: the holder's insert returned while the primary was stopped (%v)\n", err)
		inserted <- err
	default:
	}
	primary.Signal(syscall.SIGCONT)

	fmt.Printf("  reads/s on another database of the replica while a HALT holder's primary is stalled for %s: %.0f (idle: %.0f, ratio %.2f)\n",
		window, stalled, idle, stalled/idle)
	select {
	case err := <-inserted:
		took := "committed"
		if err != nil {
			took = fmt.Sprintf("failed: %v", err)
		}
		fmt.Printf("  the holder's insert, once the primary resumed: %s\n", took)
		if err := <-released; err != nil {
			fmt.Printf("  odd: releasing the HALT lock: %v\n", err)
		}
	case <-time.After(30 * time.Second):
		fmt.Printf("  odd: the holder's insert was still blocked 30s after the primary resumed\n")
	}
	close(quit)
	select {
	case err := <-readerDone:
		if err != nil {
			fmt.Printf("  odd: the reader failed: %v\n", err)
		}
	case <-time.After(30 * time.Second):
		fmt.Printf("  odd: the reader was still blocked 30s after the primary resumed\n")
	}
	r.Close()
	replica.Stop(h)
	primary.Stop(h)
}
