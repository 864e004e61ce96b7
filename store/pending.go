package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"syscall"
	"time"

	"github.com/litefs-project/litefs/ltx"
)

// A commit on a replica under the HALT lock is acknowledged to SQLite only
// once the primary has applied it, which takes a network round trip. The
// store does not wait for it under DB.mu, nor on the caller's goroutine
// (the FUSE serve loop): the file operation that completed the transaction
// returns a *Pending instead of an error, and the caller waits for it
// elsewhere (fuse answers that one request when it resolves, and keeps
// serving every other). Until it resolves, the changeset is in the log but
// the position has not moved; nothing else may commit to or apply to the
// database meanwhile.

// ForwardTimeout bounds how long a commit waits for the primary.
const ForwardTimeout = 30 * time.Second

// ErrCommitRefused marks a Halt.Commit error by which the primary said it
// did not apply the changeset. Any other error leaves the outcome unknown.
var ErrCommitRefused = errors.New("the primary refused the commit")

// How durable the primary makes a forwarded commit follows what SQLite on
// this node asked for. A rollback-journal commit says so itself: SQLite
// fsynced the database file during the transaction, or not
// (synchronous=OFF). A WAL commit does not: SQLite writes the commit frame
// (when the store forwards the commit, and must know the outcome before
// the write returns, for SQLite then shows the commit to readers) and only
// then, with synchronous=FULL, fsyncs the WAL. So the store predicts it
// from the previous WAL commit it forwarded: durable if no commit was
// forwarded yet, or if the WAL was fsynced after the last one. A wrong
// prediction costs no guarantee: a commit sent as durable that SQLite did
// not fsync costs the primary an fsync; one sent as not durable that
// SQLite does fsync makes the fsync wait until the primary has made it
// durable (Halt.Sync). If that fails, the fsync fails and SQLite rolls the
// transaction back in its own view while the store and the primary keep
// it; the lock is given up, and the WAL is folded into the database file
// before anything else is written (settleDiverged), so every reader then
// sees the transaction, as after any commit whose outcome is unknown.

// forwardState follows the durability of this node's forwarded WAL
// commits. Guarded by DB.mu.
type forwardState struct {
	last     ltx.TXID // the last WAL commit forwarded, 0 if none yet
	sent     bool     // the primary was asked to make it durable
	synced   bool     // SQLite fsynced the WAL after it
	diverged bool     // a commit SQLite rolled back is in the WAL
}

// predictSync says whether the next WAL commit is to be made durable on
// the primary.
func (f *forwardState) predictSync() bool {
	return f.last == 0 || f.synced
}

// Pending is a commit waiting for the primary, or an fsync waiting for the
// primary to make a commit durable. It travels as the error of the file
// operation that completed the transaction (or the fsync); the caller
// must call Wait, and report the operation's success only if Wait
// returns nil.
type Pending struct {
	db       *DB
	txid     ltx.TXID
	remote   Halt
	sync     bool                        // the primary is asked to make the commit durable
	wal      bool                        // a WAL commit
	syncOnly bool                        // not a commit: the primary is asked to make txid durable
	publish  func() error                // makes the commit the position; under db.mu
	wait     func(context.Context) error // reads the primary's answer to a commit sent at once
	once     sync.Once
	done     chan struct{} // closed once resolved
	err      error
}

// Error describes the commit for callers that treat it as an error.
func (p *Pending) Error() string {
	if p.syncOnly {
		return fmt.Sprintf("commit %s of %s is being made durable on the primary", p.txid, p.db.name)
	}
	return fmt.Sprintf("commit %s of %s is waiting for the primary", p.txid, p.db.name)
}

// PendingOf returns the pending commit carried by err, or nil.
func PendingOf(err error) *Pending {
	var p *Pending
	if errors.As(err, &p) {
		return p
	}
	return nil
}

// Wait sends the changeset to the primary and resolves the commit: on
// success it becomes the database's position; on failure it is removed
// from the log and the transaction fails. The wait is bounded by
// ForwardTimeout, not by ctx's cancellation: once sent, a changeset's
// outcome must be known before the database can move on. Calls after the
// first return its result.
func (p *Pending) Wait(ctx context.Context) error {
	p.once.Do(func() {
		p.err = p.resolve(ctx)
		close(p.done)
	})
	<-p.done
	return p.err
}

func (p *Pending) resolve(ctx context.Context) error {
	if p.syncOnly {
		return p.resolveSync(ctx)
	}
	db := p.db
	var err error
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ForwardTimeout)
	if p.wait != nil {
		err = p.wait(ctx)
	} else {
		var data []byte
		data, err = db.readRecord(p.txid)
		if err == nil {
			err = p.remote.Commit(ctx, data, p.sync)
		}
	}
	cancel()
	db.mu.Lock()
	defer db.mu.Unlock()
	defer func() { db.pending = nil }()
	if db.closed {
		return fmt.Errorf("commit %s of %s: %w", p.txid, db.name, ErrNotExist)
	}
	if err != nil {
		db.dropPendingRecord(p.txid)
		if errors.Is(err, ErrCommitRefused) {
			db.logger.Error("commit refused by the primary; the transaction fails", "txid", p.txid.String(), "err", err)
			return fmt.Errorf("forward changeset %s of %s: %w", p.txid, db.name, err)
		}
		// A timeout or a lost connection: the primary may have applied it,
		// and then it comes back through the stream.
		db.logger.Error("commit's outcome unknown: no answer from the primary; the transaction is reported failed, and appears later if the primary applied it", "txid", p.txid.String(), "err", err)
		return fmt.Errorf("forward changeset %s of %s: outcome unknown (the primary may have applied it): %w", p.txid, db.name, err)
	}
	if err := p.publish(); err != nil {
		// The primary has it, but it cannot be this node's position: the
		// stream brings it back.
		if db.pos.TXID < p.txid {
			db.dropPendingRecord(p.txid)
		}
		return err
	}
	if p.wal {
		db.fwd.last, db.fwd.sent, db.fwd.synced = p.txid, p.sync, false
	}
	return nil
}

// resolveSync asks the primary to make the commit durable, for an fsync
// of the WAL that followed it.
func (p *Pending) resolveSync(ctx context.Context) error {
	db := p.db
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ForwardTimeout)
	err := p.remote.Sync(ctx, p.txid)
	cancel()
	db.mu.Lock()
	defer db.mu.Unlock()
	db.pending = nil
	if err == nil {
		return nil
	}
	// SQLite rolls the transaction back in its own view when its fsync
	// fails; the store and the primary keep it. The lock is gone, so
	// nothing is written until the WAL is folded into the database file.
	db.fwd.diverged = true
	db.logger.Error("the primary did not make a commit durable; the fsync fails, and the commit, which the primary applied, shows once the WAL is folded into the database file", "txid", p.txid.String(), "err", err)
	return fmt.Errorf("fsync %s: commit %s was applied on the primary, which did not confirm it durable: %v: %w", db.name, p.txid, err, syscall.EIO)
}

// HaltStarter is a Halt that can send a commit at once, on the caller's
// goroutine and without waiting for the network, leaving the answer to be
// read later. A commit is then on its way while the file operation that
// committed it is handed to the goroutine that waits for the answer.
type HaltStarter interface {
	// Start sends a commit if it can do so at once (else ok is false and
	// nothing was sent); wait then reads the answer, as Commit would
	// return it, and must be called.
	Start(data []byte, sync bool) (wait func(context.Context) error, ok bool)
}

// start sends the commit at once, if the Halt can. Caller holds db.mu.
func (p *Pending) start() {
	s, ok := p.remote.(HaltStarter)
	if !ok {
		return
	}
	data, err := p.db.readRecord(p.txid)
	if err != nil {
		return // resolve reads it again, and fails
	}
	p.wait, _ = s.Start(data, p.sync)
}

// forwardSyncLocked handles an fsync of the WAL: under the HALT lock, one
// that follows a commit the primary was not asked to make durable returns
// a Pending that asks it now. Caller holds db.mu.
func (db *DB) forwardSyncLocked() error {
	f := &db.fwd
	if !db.forwardingLocked() || f.last == 0 || f.last != db.pos.TXID || f.synced || db.pending != nil {
		return nil
	}
	f.synced = true
	if f.sent {
		return nil
	}
	p := &Pending{db: db, txid: f.last, remote: db.halt.remote, syncOnly: true, done: make(chan struct{})}
	db.pending = p
	return p
}

// settleDiverged folds the WAL into the database file if it holds a
// commit SQLite rolled back in its own view (see resolveSync), before
// anything more is written to it: SQLite would write its next transaction
// over that commit's frames.
func (db *DB) settleDiverged(ctx context.Context) error {
	db.mu.Lock()
	diverged := db.fwd.diverged
	db.mu.Unlock()
	if !diverged {
		return nil
	}
	if err := db.settle(ctx, 0); err != nil {
		return err
	}
	db.mu.Lock()
	db.fwd.diverged = db.unsettledLocked()
	db.mu.Unlock()
	return nil
}

// dropPendingRecord removes the record of a commit that did not become the
// position, so that log and position agree. Caller holds db.mu.
func (db *DB) dropPendingRecord(txid ltx.TXID) {
	if err := db.log.TruncateAfter(txid - 1); err != nil {
		db.logger.Error("remove the changeset of a commit that failed", "txid", txid.String(), "err", err)
	}
}

// readRecord returns the encoded changeset txid from the log, through a
// reader kept open for the next one.
func (db *DB) readRecord(txid ltx.TXID) ([]byte, error) {
	db.fwdMu.Lock()
	defer db.fwdMu.Unlock()
	if db.fwdReader == nil {
		db.fwdReader = db.log.NewReader()
	}
	_, sr, err := db.fwdReader.Read(txid)
	if err != nil {
		return nil, err
	}
	return io.ReadAll(sr)
}

// closeForwardReader closes the reader of readRecord.
func (db *DB) closeForwardReader() {
	db.fwdMu.Lock()
	defer db.fwdMu.Unlock()
	if db.fwdReader != nil {
		db.fwdReader.Close()
		db.fwdReader = nil
	}
}

// awaitPending waits until no commit of this database is waiting for the
// primary.
func (db *DB) awaitPending(ctx context.Context) error {
	for {
		db.mu.Lock()
		p := db.pending
		db.mu.Unlock()
		if p == nil {
			return nil
		}
		select {
		case <-p.done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// errCommitInFlight refuses a commit while another waits for the primary;
// SQLite's locks make that impossible for its own connections.
func (db *DB) errCommitInFlight() error {
	return fmt.Errorf("commit %s: transaction %s is still waiting for the primary: %w", db.name, db.pending.txid, syscall.EBUSY)
}
