package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/litefs-project/litefs/fuse"
	lhttp "github.com/litefs-project/litefs/http"
	"github.com/litefs-project/litefs/internal/config"
	"github.com/litefs-project/litefs/lease"
	"github.com/litefs-project/litefs/store"
)

// node is a running litefs node: its store, mount and API, and the loop
// that follows the lease, serving as primary or replicating from it.
type node struct {
	cfg    config.Config
	logger *slog.Logger

	store      *store.Store
	fuse       *fuse.Server
	http       *lhttp.Server
	leaser     lease.Leaser
	replicator *lhttp.Replicator

	mu        sync.Mutex
	isPrimary bool
	primary   lease.PrimaryInfo // the primary, while this node replicates
	ready     chan struct{}     // closed once primary or caught up
	readyOnce sync.Once

	cancel context.CancelFunc
	done   chan struct{}
}

func (n *node) open() error {
	if n.cfg.Tracing.Path != "" {
		n.logger.Warn("tracing.path is set, but litefs writes no trace file; ignoring it")
	}
	n.ready = make(chan struct{})
	n.done = make(chan struct{})
	st, err := store.Open(store.Options{
		Dir:                      n.cfg.Data.Dir,
		Retention:                n.cfg.Data.Retention,
		RetentionMonitorInterval: n.cfg.Data.RetentionMonitorInterval,
		StrictVerify:             n.cfg.StrictVerify,
		Logger:                   n.logger,
	})
	if err != nil {
		return err
	}
	n.store = st
	st.SetWritable(false) // until the lease says otherwise
	for _, db := range st.DBs() {
		n.logger.Info("database ready", "db", db.Name(), "pos", db.Pos().String())
	}

	n.http = lhttp.NewServer(st, lhttp.ServerOptions{
		Addr:            n.cfg.HTTP.Addr,
		SnapshotTimeout: n.snapshotTimeout(),
		Logger:          n.logger,
	})
	if err := n.http.Listen(); err != nil {
		st.Close()
		return err
	}
	if n.leaser, err = n.newLeaser(); err != nil {
		n.http.Shutdown(context.Background())
		st.Close()
		return err
	}

	n.replicator = lhttp.NewReplicator(st, lhttp.ReplicatorOptions{
		Databases: n.cfg.Lease.Databases,
		Logger:    n.logger,
	})
	srv, err := fuse.Mount(n.cfg.FUSE.Dir, st, fuse.Options{
		AllowOther: n.cfg.FUSE.AllowOther,
		Debug:      n.cfg.FUSE.Debug,
		Status:     n,
		Logger:     n.logger,
	})
	if err != nil {
		n.http.Shutdown(context.Background())
		st.Close()
		return err
	}
	n.fuse = srv
	st.SetInvalidator(srv)
	n.logger.Info("mounted", "dir", n.cfg.FUSE.Dir, "data", n.cfg.Data.Dir, "http", n.http.Addr().String())

	go func() {
		if err := n.http.Serve(); err != nil {
			n.logger.Error("http server", "err", err)
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	go n.run(ctx)
	go func() {
		select {
		case <-n.replicator.Ready():
			n.markReady()
		case <-n.done:
		}
	}()
	return nil
}

// snapshotTimeout is http.snapshot-timeout, or data.retention when unset.
func (n *node) snapshotTimeout() time.Duration {
	if d := n.cfg.HTTP.SnapshotTimeout; d > 0 {
		return d
	}
	return n.cfg.Data.Retention
}

// newLeaser builds the configured lease.
func (n *node) newLeaser() (lease.Leaser, error) {
	hostname := n.cfg.Lease.Hostname
	if hostname == "" {
		hostname, _ = os.Hostname()
	}
	advertise := n.cfg.Lease.AdvertiseURL
	if advertise == "" {
		port := n.http.Addr().(*net.TCPAddr).Port
		advertise = "http://" + net.JoinHostPort(hostname, strconv.Itoa(port))
	}
	switch n.cfg.Lease.Type {
	case "static":
		return lease.NewStatic(hostname, advertise, n.cfg.Lease.Candidate), nil
	}
	return nil, fmt.Errorf("lease type %q is not supported", n.cfg.Lease.Type)
}

// run follows the lease until ctx ends: a candidate that acquires it serves
// as primary until it loses it; otherwise the node replicates from the
// primary, reconnecting with backoff when the stream ends.
func (n *node) run(ctx context.Context) {
	defer close(n.done)
	backoff := newBackoff(100*time.Millisecond, n.cfg.Lease.ReconnectDelay)
	for ctx.Err() == nil {
		if n.leaser.Candidate() {
			l, err := n.leaser.Acquire(ctx)
			if err == nil {
				n.servePrimary(ctx, l)
				backoff.reset()
				continue
			}
			if !errors.Is(err, lease.ErrPrimaryExists) {
				n.logger.Warn("acquire lease", "err", err)
				backoff.wait(ctx)
				continue
			}
		}

		info, err := n.leaser.PrimaryInfo(ctx)
		if err != nil {
			n.logger.Info("no primary yet", "err", err)
			backoff.wait(ctx)
			continue
		}
		n.setReplica(info)
		start := time.Now()
		err = n.replicator.Stream(ctx, info.AdvertiseURL)
		if ctx.Err() != nil {
			return
		}
		n.logger.Warn("replication stream ended; reconnecting", "primary", info.Hostname, "err", err)
		if time.Since(start) > 10*time.Second {
			backoff.reset() // it worked for a while: retry promptly
		}
		backoff.wait(ctx)
	}
}

// servePrimary accepts writes until the lease is lost or ctx ends.
func (n *node) servePrimary(ctx context.Context, l lease.Lease) {
	n.mu.Lock()
	n.isPrimary, n.primary = true, lease.PrimaryInfo{}
	n.mu.Unlock()
	n.store.SetWritable(true)
	n.logger.Info("primary lease acquired", "type", n.leaser.Type())
	n.markReady()

	select {
	case <-l.Done():
		n.store.SetWritable(false)
		n.logger.Warn("primary lease lost; no longer accepting writes")
	case <-ctx.Done():
		n.store.SetWritable(false)
		l.Close()
	}
	n.mu.Lock()
	n.isPrimary = false
	n.mu.Unlock()
}

func (n *node) setReplica(info lease.PrimaryInfo) {
	n.store.SetWritable(false)
	n.mu.Lock()
	n.isPrimary, n.primary = false, info
	n.mu.Unlock()
}

func (n *node) markReady() { n.readyOnce.Do(func() { close(n.ready) }) }

// PrimaryHostname implements fuse.Status: the primary's name, on replicas.
func (n *node) PrimaryHostname() (string, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.isPrimary || n.primary.Hostname == "" {
		return "", false
	}
	return n.primary.Hostname, true
}

// Lag implements fuse.Status.
func (n *node) Lag() time.Duration {
	n.mu.Lock()
	primary := n.isPrimary
	n.mu.Unlock()
	if primary {
		return 0
	}
	return n.replicator.Lag()
}

func (n *node) close(ctx context.Context) error {
	var errs []error
	if n.cancel != nil {
		n.cancel()
		<-n.done
	}
	if n.http != nil {
		if err := n.http.Shutdown(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if n.fuse != nil {
		if err := n.fuse.Unmount(ctx); err != nil {
			errs = append(errs, err)
		} else {
			n.logger.Info("unmounted", "dir", n.cfg.FUSE.Dir)
		}
	}
	if n.leaser != nil {
		errs = append(errs, n.leaser.Close())
	}
	if n.store != nil {
		errs = append(errs, n.store.Close())
	}
	return errors.Join(errs...)
}

// backoff waits longer after each failure, up to a limit.
type backoff struct {
	min, max, cur time.Duration
}

func newBackoff(lo, hi time.Duration) *backoff {
	if hi < lo {
		hi = lo
	}
	return &backoff{min: lo, max: hi, cur: lo}
}

func (b *backoff) reset() { b.cur = b.min }

func (b *backoff) wait(ctx context.Context) {
	t := time.NewTimer(b.cur)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
	b.cur = min(2*b.cur, b.max)
}
