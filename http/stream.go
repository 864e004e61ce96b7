package http

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/litefs-project/litefs/internal/lowprio"
	"github.com/litefs-project/litefs/ltx"
	"github.com/litefs-project/litefs/store"
)

// maxChangesetsForNewDB is the longest log sent to a replica that lacks a
// database entirely; a longer history goes as a snapshot.
const maxChangesetsForNewDB = 256

// stream sends one replica everything it lacks, then follows the store.
type stream struct {
	server   *Server
	term     *store.Term // the term the stream carries
	w        http.ResponseWriter
	rc       *http.ResponseController
	dw       *deadlineWriter // under fw: each write to the replica has WriteTimeout
	fw       *FrameWriter
	peer     string
	sent     map[string]ltx.Pos // each database's position on the replica
	only     []string           // replicate only these databases, if set
	req      StreamRequest
	finish   chan struct{} // closed to end the stream once it has sent everything
	finishMu sync.Once

	mu        sync.Mutex
	published map[string]ltx.Pos // copy of sent, for Server.Replicas

	readers map[string]*ltx.Reader
	copyBuf []byte // carries changesets from the log into frames
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
		sent, err := st.syncAll(ctx)
		if err != nil {
			return err
		}
		if sent {
			st.publish()
		}
		if !ready {
			if err := st.send(Frame{Type: FrameReady}, st.server.opts.WriteTimeout); err != nil {
				return err
			}
			ready = true
		}
		// One flush for everything this round sent.
		if err := st.flush(); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
			// Send at once: an idle stream adds nothing to a commit's
			// lag. Commits that land while a round is being sent go
			// out together in the next round, so a stream batches
			// exactly when commits come faster than it sends them.
		case <-hb.C:
			if err := st.heartbeat(); err != nil {
				return err
			}
		case <-st.finish:
			return st.drain(ctx)
		}
	}
}

// drain sends what was committed before this node stopped being the
// primary (writes are refused by then), then ends the stream. A replica
// that is connected when the primary steps down misses nothing it
// acknowledged.
func (st *stream) drain(ctx context.Context) error {
	if _, err := st.syncAll(ctx); err != nil {
		return err
	}
	if err := st.flush(); err != nil {
		return err
	}
	return errStepDown
}

// errStepDown ends a stream whose term ended.
var errStepDown = errors.New("this node's term as primary ended")

// stop signals the stream to drain and end.
func (st *stream) stop() { st.finishMu.Do(func() { close(st.finish) }) }

// publish makes the positions sent so far visible to Server.Replicas.
func (st *stream) publish() {
	m := maps.Clone(st.sent)
	st.mu.Lock()
	st.published = m
	st.mu.Unlock()
}

// info describes the replica at the other end.
func (st *stream) info() ReplicaInfo {
	st.mu.Lock()
	defer st.mu.Unlock()
	return ReplicaInfo{
		NodeID:       st.req.NodeID,
		Hostname:     st.req.Hostname,
		AdvertiseURL: st.req.AdvertiseURL,
		Candidate:    st.req.Candidate,
		Positions:    st.published,
	}
}

// heartbeat tells the replica it has everything as of the primary's clock.
func (st *stream) heartbeat() error {
	if err := st.send(Frame{Type: FrameHeartbeat, Meta: uint64(time.Now().UnixMilli())}, st.server.opts.WriteTimeout); err != nil {
		return err
	}
	return st.flush()
}

// syncAll sends every database's missing changesets, and drops databases
// the primary no longer has. It reports whether it sent anything.
func (st *stream) syncAll(ctx context.Context) (bool, error) {
	dbs := st.server.store.DBs()
	have := make(map[string]bool, len(dbs))
	sent := false
	for _, db := range dbs {
		if len(st.only) > 0 && !slices.Contains(st.only, db.Name()) {
			continue
		}
		have[db.Name()] = true
		before := st.sent[db.Name()]
		if err := st.syncDB(ctx, db); err != nil {
			return sent, err
		}
		sent = sent || st.sent[db.Name()] != before
	}
	for name := range st.sent {
		if have[name] || (len(st.only) > 0 && !slices.Contains(st.only, name)) {
			continue
		}
		if err := st.send(Frame{Type: FrameDrop, Name: name}, st.server.opts.WriteTimeout); err != nil {
			return sent, err
		}
		sent = true
		delete(st.sent, name)
		if r := st.readers[name]; r != nil {
			r.Close()
			delete(st.readers, name)
		}
	}
	return sent, nil
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
		// Meta carries the primary's position: the replica knows it is
		// caught up when it applies the changeset with that TXID.
		// A changeset can be as large as a snapshot (an import, a
		// VACUUM): it has as long in all, while each write must still
		// complete within the write timeout.
		f := Frame{Type: FrameChangeset, Name: db.Name(), Meta: uint64(pos.TXID)}
		if err := st.sendPayload(f, data, st.server.opts.SnapshotTimeout); err != nil {
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

// commonTXID is the newest TXID at which the replica's database and this
// node's log agree, from the positions the replica listed when it
// connected; 0 if none is known.
func (st *stream) commonTXID(db *store.DB, have ltx.Pos) ltx.TXID {
	if have.TXID == 0 {
		return 0
	}
	if st.onLog(db, have) || have.TXID < db.Log().Base().TXID {
		return have.TXID // on the log, or older than it: nothing to tell
	}
	for _, p := range st.req.Recent[db.Name()] {
		if p.TXID > have.TXID {
			continue
		}
		if st.onLog(db, p) {
			return p.TXID
		}
	}
	return 0
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
	// Meta tells the replica the last TXID it shares with this node, so
	// that it can report what it discards.
	common := st.commonTXID(db, have)
	reason := "the replica does not have it"
	if known {
		reason = fmt.Sprintf("the replica's position %s is not on this node's log (older than retention, or diverged)", have)
	}
	st.server.logger.Info("sending snapshot", "db", db.Name(), "peer", st.peer, "pos", snap.Pos().String(), "reason", reason, "common_txid", common.String(), "recent", len(st.req.Recent[db.Name()]))

	// Each write must complete within the write timeout, so a replica that
	// stops reading releases the snapshot at once; the whole snapshot has
	// the snapshot timeout.
	start := time.Now()
	st.dw.setBound(start.Add(st.server.opts.SnapshotTimeout))
	defer st.dw.setBound(time.Time{})
	if err := st.fw.Begin(Frame{Type: FrameSnapshot, Name: db.Name(), Meta: uint64(common)}); err != nil {
		return err
	}
	// Encoding and sending a snapshot is bulk work: it runs at a lower CPU
	// priority so that the node's writers come first, and in short turns
	// so that they do not wait for it either.
	var n int64
	err = lowprio.Run(func() (err error) {
		var p lowprio.Pacer
		snap.SetPace(p.Pace)
		n, err = snap.WriteTo(st.fw.PayloadWriter())
		return err
	})
	if err != nil {
		return err
	}
	if err := st.end(); err != nil {
		return err
	}
	st.sent[db.Name()] = snap.Pos()
	st.server.metrics.streamed.WithLabelValues(db.Name()).Add(float64(n))
	st.server.metrics.snapshots.WithLabelValues(db.Name()).Inc()
	st.server.metrics.snapshotDuration.WithLabelValues(db.Name()).Observe(time.Since(start).Seconds())
	st.server.logger.Info("snapshot sent", "db", db.Name(), "peer", st.peer, "bytes", n, "duration", time.Since(start).Round(time.Millisecond).String())
	return nil
}

// send writes a frame without payload.
func (st *stream) send(f Frame, timeout time.Duration) error {
	return st.sendPayload(f, nil, timeout)
}

// sendPayload writes a frame whose payload is read from r (nil for none),
// within timeout in all and each write within the write timeout.
func (st *stream) sendPayload(f Frame, r io.Reader, timeout time.Duration) error {
	st.dw.setBound(time.Now().Add(timeout))
	defer st.dw.setBound(time.Time{})
	if err := st.fw.Begin(f); err != nil {
		return err
	}
	if r != nil {
		if st.copyBuf == nil {
			st.copyBuf = make([]byte, 32<<10)
		}
		n, err := io.CopyBuffer(st.fw.PayloadWriter(), r, st.copyBuf)
		st.server.metrics.streamed.WithLabelValues(f.Name).Add(float64(n))
		if err != nil {
			return err
		}
	}
	return st.end()
}

// end finishes a frame. It reaches the replica at the next flush.
func (st *stream) end() error {
	if err := st.fw.End(); err != nil {
		return fmt.Errorf("send to %s: %w", st.peer, err)
	}
	return nil
}

// flush pushes the frames written so far out to the replica.
func (st *stream) flush() error {
	if err := st.dw.Flush(); err != nil {
		return fmt.Errorf("send to %s: %w", st.peer, err)
	}
	return nil
}
