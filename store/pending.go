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

// Pending is a commit waiting for the primary. It travels as the error of
// the file operation that completed the transaction; the caller must call
// Wait, and report the operation's success only if Wait returns nil.
type Pending struct {
	db      *DB
	txid    ltx.TXID
	remote  Halt
	publish func() error // makes the commit the position; under db.mu
	once    sync.Once
	done    chan struct{} // closed once resolved
	err     error
}

// Error describes the commit for callers that treat it as an error.
func (p *Pending) Error() string {
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
	db := p.db
	data, err := db.readRecord(p.txid)
	if err == nil {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ForwardTimeout)
		err = p.remote.Commit(ctx, data)
		cancel()
	}
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
