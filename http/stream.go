package http

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"time"

	"github.com/litefs-project/litefs/ltx"
	"github.com/litefs-project/litefs/store"
)

// maxChangesetsForNewDB is the longest log sent to a replica that lacks a
// database entirely; a longer history goes as a snapshot.
const maxChangesetsForNewDB = 256

// stream sends one replica everything it lacks, then follows the store.
type stream struct {
	server *Server
	w      http.ResponseWriter
	rc     *http.ResponseController
	fw     *FrameWriter
	peer   string
	sent   map[string]ltx.Pos // each database's position on the replica
	only   []string           // replicate only these databases, if set

	readers map[string]*ltx.Reader
}

func (st *stream) run(ctx context.Context) error {
	st.readers = make(map[string]*ltx.Reader)
	defer func() {
		for _, r := range st.readers {
			r.Close()
		}
	}()
	hb := time.NewTicker(st.server.opts.HeartbeatInterval)
	defer hb.Stop()

	ready := false
	for {
		changed := st.server.store.Changed()
		if !st.server.store.Writable() {
			return errors.New("this node stopped being the primary")
		}
		if err := st.syncAll(ctx); err != nil {
			return err
		}
		if !ready {
			if err := st.send(Frame{Type: FrameReady}, st.server.opts.WriteTimeout); err != nil {
				return err
			}
			ready = true
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		case <-hb.C:
			// Everything known has been sent: the replica is caught up.
			hbf := Frame{Type: FrameHeartbeat, Meta: uint64(time.Now().UnixMilli())}
			if err := st.send(hbf, st.server.opts.WriteTimeout); err != nil {
				return err
			}
		}
	}
}

// syncAll sends every database's missing changesets, and drops databases
// the primary no longer has.
func (st *stream) syncAll(ctx context.Context) error {
	dbs := st.server.store.DBs()
	have := make(map[string]bool, len(dbs))
	for _, db := range dbs {
		if len(st.only) > 0 && !slices.Contains(st.only, db.Name()) {
			continue
		}
		have[db.Name()] = true
		if err := st.syncDB(ctx, db); err != nil {
			return err
		}
	}
	for name := range st.sent {
		if have[name] || (len(st.only) > 0 && !slices.Contains(st.only, name)) {
			continue
		}
		if err := st.send(Frame{Type: FrameDrop, Name: name}, st.server.opts.WriteTimeout); err != nil {
			return err
		}
		delete(st.sent, name)
		if r := st.readers[name]; r != nil {
			r.Close()
			delete(st.readers, name)
		}
	}
	return nil
}

// syncDB brings one database on the replica to the primary's position:
// from the log when the replica's position is on it, else by snapshot.
func (st *stream) syncDB(ctx context.Context, db *store.DB) error {
	pos := db.Pos()
	if pos.TXID == 0 {
		return nil // nothing committed yet
	}
	have, ok := st.sent[db.Name()]
	if ok && have == pos {
		return nil
	}
	if !ok && db.Log().Base().TXID == 0 && pos.TXID <= maxChangesetsForNewDB {
		ok = true // a young database: its whole log is cheaper than a snapshot
	}
	if !ok || !st.onLog(db, have) {
		return st.sendSnapshot(db, have, ok)
	}

	r := st.readers[db.Name()]
	if r == nil {
		r = db.Log().NewReader()
		st.readers[db.Name()] = r
	}
	for txid := have.TXID + 1; txid <= pos.TXID; txid++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		info, data, err := r.Read(txid)
		if errors.Is(err, ltx.ErrTXIDNotFound) {
			// Pruned while we were sending; fall back to a snapshot.
			return st.sendSnapshot(db, st.sent[db.Name()], true)
		} else if err != nil {
			return fmt.Errorf("read changeset %s of %s: %w", txid, db.Name(), err)
		}
		if err := st.sendPayload(Frame{Type: FrameChangeset, Name: db.Name()}, data, st.server.opts.WriteTimeout); err != nil {
			return err
		}
		st.sent[db.Name()] = info.Pos()
	}
	return nil
}

// onLog reports whether the replica's position is one the primary's log
// passed through, so that it can continue from the log: the log's base, or
// a record whose post-apply checksum matches. Anything else (older than
// retention, unknown, or diverged at that TXID) needs a snapshot.
func (st *stream) onLog(db *store.DB, have ltx.Pos) bool {
	l := db.Log()
	base := l.Base()
	switch {
	case have == base:
		return true
	case have.TXID < base.TXID || have.TXID > l.Pos().TXID:
		return false
	}
	info, err := l.Info(have.TXID)
	return err == nil && info.Pos() == have
}

// sendSnapshot sends the whole database and logs why.
func (st *stream) sendSnapshot(db *store.DB, have ltx.Pos, known bool) error {
	snap, err := db.OpenSnapshot()
	if errors.Is(err, store.ErrEmpty) {
		return nil
	} else if err != nil {
		return fmt.Errorf("snapshot of %s: %w", db.Name(), err)
	}
	defer snap.Close()
	reason := "the replica does not have it"
	if known {
		reason = fmt.Sprintf("the replica's position %s is not on this node's log (older than retention, or diverged)", have)
	}
	st.server.logger.Info("sending snapshot", "db", db.Name(), "peer", st.peer, "pos", snap.Pos().String(), "reason", reason)

	start := time.Now()
	if err := st.rc.SetWriteDeadline(time.Now().Add(st.server.opts.SnapshotTimeout)); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return err
	}
	if err := st.fw.Begin(Frame{Type: FrameSnapshot, Name: db.Name()}); err != nil {
		return err
	}
	n, err := snap.WriteTo(st.fw.PayloadWriter())
	if err != nil {
		return err
	}
	if err := st.end(); err != nil {
		return err
	}
	st.sent[db.Name()] = snap.Pos()
	st.server.logger.Info("snapshot sent", "db", db.Name(), "peer", st.peer, "bytes", n, "duration", time.Since(start).Round(time.Millisecond).String())
	return nil
}

// send writes a frame without payload.
func (st *stream) send(f Frame, timeout time.Duration) error {
	return st.sendPayload(f, nil, timeout)
}

// sendPayload writes a frame whose payload is read from r (nil for none).
func (st *stream) sendPayload(f Frame, r io.Reader, timeout time.Duration) error {
	if err := st.rc.SetWriteDeadline(time.Now().Add(timeout)); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return err
	}
	if err := st.fw.Begin(f); err != nil {
		return err
	}
	if r != nil {
		if _, err := io.Copy(st.fw.PayloadWriter(), r); err != nil {
			return err
		}
	}
	return st.end()
}

// end finishes a frame and pushes it out to the replica.
func (st *stream) end() error {
	if err := st.fw.End(); err != nil {
		return fmt.Errorf("send to %s: %w", st.peer, err)
	}
	if err := st.rc.Flush(); err != nil {
		return fmt.Errorf("send to %s: %w", st.peer, err)
	}
	return nil
}
