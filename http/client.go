package http

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/litefs-project/litefs/internal/lowprio"
	"github.com/litefs-project/litefs/ltx"
	"github.com/litefs-project/litefs/store"
)

// spoolMemory is the largest changeset held in memory while it is being
// received; larger ones are spooled to a temporary file.
const spoolMemory = 4 << 20

// Replicator keeps a replica's store in step with the primary: it opens a
// stream, verifies and applies what arrives, and tracks how far behind the
// primary it is.
type Replicator struct {
	store     *store.Store
	logger    *slog.Logger
	client    *http.Client
	databases []string
	heartbeat time.Duration
	opts      ReplicatorOptions

	mu        sync.Mutex
	connected bool
	ready     chan struct{} // closed on the first ready frame
	readyOnce sync.Once
	caughtUp  time.Time // when the primary last said there was nothing more
	lastTx    time.Time // commit time of the last changeset applied
	stats     map[string]*ReplicaDBStats
}

// ReplicaDBStats counts what a replica did to one database.
type ReplicaDBStats struct {
	Snapshots     int64 // snapshots installed
	Discarded     int64 // local transactions a snapshot discarded (the primary never had them)
	RefusedFrames int64 // frames refused as corrupt or not fitting the database
}

// Stats returns the replica's counters, by database.
func (r *Replicator) Stats() map[string]ReplicaDBStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := make(map[string]ReplicaDBStats, len(r.stats))
	for name, s := range r.stats {
		m[name] = *s
	}
	return m
}

// count updates the counters of a database.
func (r *Replicator) count(name string, f func(*ReplicaDBStats)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stats == nil {
		r.stats = make(map[string]*ReplicaDBStats)
	}
	s := r.stats[name]
	if s == nil {
		s = &ReplicaDBStats{}
		r.stats[name] = s
	}
	f(s)
}

// ReplicatorOptions configures a Replicator.
type ReplicatorOptions struct {
	Databases         []string      // replicate only these; empty for all
	Hostname          string        // this node, as the primary lists it
	AdvertiseURL      string        // where the primary can reach this node
	Candidate         bool          // this node may become primary
	HeartbeatInterval time.Duration // the primary's, to judge staleness
	Security          *Security     // credentials presented to the primary; nil for none
	Logger            *slog.Logger
}

// NewReplicator returns a replicator applying to st.
func NewReplicator(st *store.Store, opts ReplicatorOptions) *Replicator {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.HeartbeatInterval <= 0 {
		opts.HeartbeatInterval = DefaultHeartbeatInterval
	}
	return &Replicator{
		store:  st,
		logger: opts.Logger,
		client: &http.Client{Transport: opts.Security.Client(&http.Transport{
			Proxy:                 nil,
			DisableCompression:    true,
			DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 15 * time.Second}).DialContext,
			ResponseHeaderTimeout: 10 * time.Second,
		})},
		databases: opts.Databases,
		heartbeat: opts.HeartbeatInterval,
		opts:      opts,
		ready:     make(chan struct{}),
	}
}

// Ready is closed once this node has caught up with the primary for the
// first time.
func (r *Replicator) Ready() <-chan struct{} { return r.ready }

// Lag returns how far behind the primary this node is: zero while the
// primary's heartbeats say there is nothing more, else the age of the last
// transaction applied; the maximum when it never caught up.
func (r *Replicator) Lag() time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.connected && !r.caughtUp.IsZero() && time.Since(r.caughtUp) < 3*r.heartbeat {
		return 0
	}
	last := r.lastTx
	if r.caughtUp.After(last) {
		last = r.caughtUp
	}
	if last.IsZero() {
		return math.MaxInt32 * time.Millisecond
	}
	return time.Since(last)
}

// streamIdleTimeout is how long a stream may carry nothing at all (the
// primary sends a heartbeat every second) before it is taken for dead.
const streamIdleTimeout = 15 * time.Second

// Stream connects to the primary at baseURL, which must be in the term of
// epoch, and applies its stream until the stream ends, ctx ends, or
// something fails verification. It always returns an error saying why it
// stopped.
func (r *Replicator) Stream(ctx context.Context, baseURL string, epoch uint64) error {
	req := StreamRequest{
		NodeID:       fmt.Sprintf("%016X", r.store.NodeID()),
		Positions:    r.store.Positions(),
		Recent:       r.recentPositions(),
		Databases:    r.databases,
		Hostname:     r.opts.Hostname,
		AdvertiseURL: r.opts.AdvertiseURL,
		Candidate:    r.opts.Candidate,
		Epoch:        epoch,
	}
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(baseURL, "/")+"/stream", bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("stream from %s: %w", baseURL, err)
	}
	hreq.Header.Set("Content-Type", ContentTypeJSON)
	resp, err := r.client.Do(hreq)
	if err != nil {
		return fmt.Errorf("stream from %s: %w", baseURL, err)
	}
	defer resp.Body.Close()
	if err := CheckResponse(resp); err != nil {
		return fmt.Errorf("stream from %s: %w", baseURL, err)
	}
	// A stream belongs to one term: frames of any other are refused.
	if got := resp.Header.Get(EpochHeader); got != strconv.FormatUint(epoch, 10) {
		return fmt.Errorf("stream from %s: %w: the primary is in epoch %q, the lease names epoch %d", baseURL, ErrStaleTerm, got, epoch)
	}

	r.setConnected(true)
	defer r.setConnected(false)
	r.logger.Info("connected to primary", "url", baseURL, "epoch", epoch)
	// A frame being applied may wait (for a commit of this node's that
	// waits for the primary): that is not the stream being idle.
	var idled, applying atomic.Bool
	var idle *time.Timer
	idle = time.AfterFunc(streamIdleTimeout, func() {
		if applying.Load() {
			idle.Reset(streamIdleTimeout)
			return
		}
		idled.Store(true)
		cancel()
	})
	defer idle.Stop()
	fr := NewFrameReader(&watchdogReader{r: resp.Body, t: idle, d: streamIdleTimeout})
	// One spool for every changeset of the stream: a changeset a commit
	// long is received without allocating.
	sp := &spool{dir: r.store.Dir()}
	defer sp.Close()
	for {
		f, payload, err := fr.Next()
		if err != nil {
			if idled.Load() {
				err = fmt.Errorf("nothing received for %s: %w", streamIdleTimeout, err)
			}
			return fmt.Errorf("stream from %s: %w", baseURL, err)
		}
		applying.Store(true)
		err = r.handle(ctx, f, payload, sp)
		applying.Store(false)
		idle.Reset(streamIdleTimeout)
		if err != nil {
			if ctx.Err() == nil {
				var pos ltx.Pos
				if db := r.store.DB(f.Name); db != nil {
					pos = db.Pos()
				}
				r.logger.Warn("frame from the primary refused; nothing of it was applied",
					"db", f.Name, "frame", f.Type.String(), "local_pos", pos.String(), "peer", baseURL, "err", err)
				r.count(f.Name, func(s *ReplicaDBStats) { s.RefusedFrames++ })
			}
			return fmt.Errorf("stream from %s: %s %s: %w", baseURL, f.Type, f.Name, err)
		}
	}
}

// handle applies one frame; sp receives a changeset's payload.
func (r *Replicator) handle(ctx context.Context, f Frame, payload io.Reader, sp *spool) error {
	switch f.Type {
	case FrameChangeset:
		return r.applyChangeset(ctx, f.Name, ltx.TXID(f.Meta), payload, sp)
	case FrameSnapshot:
		// Decoding and writing a whole database is bulk work: at a lower
		// CPU priority it does not starve applications on this node.
		var before, pos ltx.Pos
		if db := r.store.DB(f.Name); db != nil {
			before = db.Pos()
		}
		err := lowprio.Run(func() (err error) {
			pos, err = r.store.ApplySnapshot(ctx, f.Name, payload)
			return err
		})
		if err != nil {
			return err
		}
		r.logger.Info("snapshot applied", "db", f.Name, "pos", pos.String())
		// Meta is the last TXID this node shares with the primary.
		common := ltx.TXID(f.Meta)
		if before.TXID > common {
			r.logger.Warn("discarded local transactions that the primary does not have",
				"db", f.Name, "txids", fmt.Sprintf("%s-%s", common+1, before.TXID), "local_pos", before.String(), "primary_pos", pos.String())
		}
		r.count(f.Name, func(s *ReplicaDBStats) {
			s.Snapshots++
			if before.TXID > common {
				s.Discarded += int64(before.TXID - common)
			}
		})
		return nil
	case FrameDrop:
		if _, err := io.Copy(io.Discard, payload); err != nil {
			return err
		}
		r.logger.Info("database deleted on the primary", "db", f.Name)
		return r.store.DropDB(f.Name)
	case FrameReady:
		if _, err := io.Copy(io.Discard, payload); err != nil {
			return err
		}
		r.readyOnce.Do(func() { close(r.ready) })
		r.markCaughtUp()
		r.logger.Info("caught up with the primary")
		return nil
	case FrameHeartbeat:
		if _, err := io.Copy(io.Discard, payload); err != nil {
			return err
		}
		r.markCaughtUp()
		return nil
	}
	return fmt.Errorf("%w: unexpected type %d", ErrBadFrame, f.Type)
}

// applyChangeset receives a changeset completely into sp, which verifies
// the frame's checksum, before the store verifies and applies it.
// primaryTXID is the database's position on the primary when the
// changeset was sent.
func (r *Replicator) applyChangeset(ctx context.Context, name string, primaryTXID ltx.TXID, payload io.Reader, sp *spool) error {
	if err := sp.reset(); err != nil {
		return err
	}
	if _, err := sp.ReadFrom(payload); err != nil {
		return err
	}
	hdr, err := ltx.DecodeHeader(io.NewSectionReader(sp, 0, sp.size))
	if err != nil {
		return err
	}
	pos, err := r.store.ApplyChangeset(ctx, name, sp, sp.size)
	if err != nil {
		return err
	}
	r.mu.Lock()
	if t := time.UnixMilli(hdr.Timestamp); t.After(r.lastTx) {
		r.lastTx = t
	}
	if pos.TXID >= primaryTXID {
		r.caughtUp = time.Now()
	} else {
		r.caughtUp = time.Time{} // more is on its way
	}
	r.mu.Unlock()
	return nil
}

// ErrStaleTerm is returned when a node answers for another term than the
// one the lease names.
var ErrStaleTerm = errors.New("the node is in another term")

// watchdogReader restarts a timer on every read that returns data.
type watchdogReader struct {
	r io.Reader
	t *time.Timer
	d time.Duration
}

func (w *watchdogReader) Read(p []byte) (int, error) {
	n, err := w.r.Read(p)
	if n > 0 {
		w.t.Reset(w.d)
	}
	return n, err
}

// recentTXIDs is how many of each database's latest positions a replica
// sends, so that the primary can tell where a diverged replica left its log.
const recentTXIDs = 64

// recentPositions lists the latest positions of each database's log,
// newest first.
func (r *Replicator) recentPositions() map[string][]ltx.Pos {
	m := make(map[string][]ltx.Pos)
	for _, db := range r.store.DBs() {
		l := db.Log()
		last := l.Pos().TXID
		for txid := last; txid > 0 && last-txid < recentTXIDs; txid-- {
			info, err := l.Info(txid)
			if err != nil {
				break
			}
			m[db.Name()] = append(m[db.Name()], info.Pos())
		}
	}
	return m
}

func (r *Replicator) markCaughtUp() {
	r.mu.Lock()
	r.caughtUp = time.Now()
	r.mu.Unlock()
}

func (r *Replicator) setConnected(v bool) {
	r.mu.Lock()
	r.connected = v
	r.mu.Unlock()
}

// spoolKeep is the most memory a spool keeps between payloads.
const spoolKeep = 256 << 10

// spool holds one received payload, in memory up to spoolMemory and in a
// temporary file beyond. reset makes it ready for the next payload.
type spool struct {
	dir  string
	mem  []byte
	file *os.File
	size int64
}

func (s *spool) Write(p []byte) (int, error) {
	if s.file == nil && len(s.mem)+len(p) <= spoolMemory {
		s.mem = append(s.mem, p...)
		s.size += int64(len(p))
		return len(p), nil
	}
	if s.file == nil {
		f, err := os.CreateTemp(s.dir, ".spool-*")
		if err != nil {
			return 0, err
		}
		os.Remove(f.Name())
		if _, err := f.Write(s.mem); err != nil {
			f.Close()
			return 0, err
		}
		s.file, s.mem = f, nil
	}
	n, err := s.file.Write(p)
	s.size += int64(n)
	return n, err
}

func (s *spool) ReadAt(p []byte, off int64) (int, error) {
	if s.file != nil {
		return s.file.ReadAt(p, off)
	}
	if off >= int64(len(s.mem)) {
		return 0, io.EOF
	}
	n := copy(p, s.mem[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// ReadFrom reads r to its end into the spool, straight into its memory
// while the payload fits there.
func (s *spool) ReadFrom(r io.Reader) (int64, error) {
	var total int64
	for s.file == nil && len(s.mem) < spoolMemory {
		if len(s.mem) == cap(s.mem) {
			s.mem = slices.Grow(s.mem, min(max(cap(s.mem), 4<<10), spoolMemory-len(s.mem)))
		}
		n, err := r.Read(s.mem[len(s.mem):min(cap(s.mem), spoolMemory)])
		s.mem = s.mem[:len(s.mem)+n]
		s.size += int64(n)
		total += int64(n)
		if errors.Is(err, io.EOF) {
			return total, nil
		} else if err != nil {
			return total, err
		}
	}
	// Larger than memory: Write moves the payload to a file.
	n, err := io.Copy(spoolWriter{s}, r)
	return total + n, err
}

// spoolWriter hides a spool's ReadFrom from io.Copy.
type spoolWriter struct{ io.Writer }

// reset empties the spool for the next payload, keeping up to spoolKeep
// of its memory.
func (s *spool) reset() error {
	var err error
	if s.file != nil {
		err = s.file.Close()
		s.file = nil
	}
	if cap(s.mem) > spoolKeep {
		s.mem = nil
	}
	s.mem, s.size = s.mem[:0], 0
	return err
}

func (s *spool) Close() error {
	if s.file != nil {
		return s.file.Close()
	}
	return nil
}
