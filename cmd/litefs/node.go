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
	"github.com/litefs-project/litefs/internal/sqlcheck"
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

	hostname     string // this node's, as the lease knows it
	advertiseURL string // this node's API, as the lease knows it
	proxy        *lhttp.Proxy
	proxyURL     string // where other nodes reach this node's proxy

	mu        sync.Mutex
	isPrimary bool
	lease     lease.Lease       // held while primary
	primary   lease.PrimaryInfo // the primary, while this node replicates
	handoff   *handoff          // a handoff in progress, on the primary
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
		IsPrimary:       n.IsPrimary,
		HaltTTL:         n.cfg.Lease.HaltTTL,
		ValidateImport:  sqlcheck.Check,
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
	if n.leaser.Type() == "static" && n.leaser.Candidate() {
		// A static candidate is the primary from the start: the mount
		// must accept writes from its first request.
		st.SetWritable(true)
	}

	n.replicator = lhttp.NewReplicator(st, lhttp.ReplicatorOptions{
		Databases:    n.cfg.Lease.Databases,
		Hostname:     n.hostname,
		AdvertiseURL: n.advertiseURL,
		Candidate:    n.leaser.Candidate(),
		Logger:       n.logger,
	})
	n.registerAPI()
	st.SetHalter(&lhttp.HaltClient{
		Store:      st,
		PrimaryURL: n.primaryURL,
		NodeID:     fmt.Sprintf("%016X", st.NodeID()),
		Logger:     n.logger,
	})
	n.http.EnableMetrics(n)
	srv, err := fuse.Mount(n.cfg.FUSE.Dir, st, fuse.Options{
		Observe:    n.http.ObserveFUSE,
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
	if err := n.startProxy(); err != nil {
		n.fuse.Unmount(context.Background())
		n.http.Shutdown(context.Background())
		st.Close()
		return err
	}
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
	if advertise == "" || (n.cfg.Lease.Type == "static" && !n.cfg.Lease.Candidate) {
		// A static replica's advertise-url names the primary, not itself.
		port := n.http.Addr().(*net.TCPAddr).Port
		advertise = "http://" + net.JoinHostPort(hostname, strconv.Itoa(port))
	}
	n.hostname, n.advertiseURL = hostname, advertise
	switch n.cfg.Lease.Type {
	case "static":
		primaryURL := n.cfg.Lease.AdvertiseURL
		if n.cfg.Lease.Candidate {
			primaryURL = advertise
		}
		return lease.NewStatic(hostname, primaryURL, n.cfg.Lease.Candidate), nil
	case "consul":
		c, err := lease.NewConsul(lease.ConsulOptions{
			URL:          n.cfg.Lease.Consul.URL,
			Key:          n.cfg.Lease.Consul.Key,
			TTL:          n.cfg.Lease.Consul.TTL,
			LockDelay:    n.cfg.Lease.Consul.LockDelay,
			Hostname:     hostname,
			AdvertiseURL: advertise,
			Candidate:    n.cfg.Lease.Candidate,
			Logger:       n.logger,
		})
		if err != nil {
			return nil, err
		}
		if err := n.joinCluster(c); err != nil {
			return nil, err
		}
		return c, nil
	}
	return nil, fmt.Errorf("lease type %q is not supported", n.cfg.Lease.Type)
}

// joinCluster checks the cluster ID against Consul, waiting a while for an
// agent that is not up yet. A mismatch is final.
func (n *node) joinCluster(c *lease.Consul) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for {
		id, err := c.JoinCluster(ctx, n.cfg.Data.Dir)
		if err == nil {
			n.logger.Info("cluster joined", "cluster_id", id, "key", c.Key())
			return nil
		}
		if errors.Is(err, lease.ErrClusterIDMismatch) || ctx.Err() != nil {
			return err
		}
		n.logger.Warn("consul not reachable yet; retrying", "err", err)
		select {
		case <-ctx.Done():
			return err
		case <-time.After(time.Second):
		}
	}
}

// run follows the lease until ctx ends: a candidate that acquires it serves
// as primary until it loses it; otherwise the node replicates from the
// primary until the stream ends or the lease names another primary.
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
		if errors.Is(err, lease.ErrNoPrimary) && n.leaser.Candidate() {
			sleep(ctx, 100*time.Millisecond) // free, or within its lock delay: try again soon
			continue
		}
		if err == nil && info.AdvertiseURL == n.advertiseURL {
			// The lease still names this node from before a restart;
			// its old session has to expire first.
			n.leaser.WaitChange(ctx, info)
			continue
		}
		if err != nil {
			n.logger.Info("no primary yet", "err", err)
			backoff.wait(ctx)
			continue
		}
		if err := n.setReplica(ctx, info); err != nil {
			n.logger.Error("prepare databases to replicate", "err", err)
			backoff.wait(ctx)
			continue
		}
		start := time.Now()
		sctx, cancel := context.WithCancel(ctx)
		changed := make(chan struct{})
		go func() {
			if n.leaser.WaitChange(sctx, info) == nil {
				close(changed)
				cancel()
			}
		}()
		err = n.replicator.Stream(sctx, info.AdvertiseURL)
		cancel()
		if ctx.Err() != nil {
			return
		}
		select {
		case <-changed:
			n.logger.Info("the lease names a new primary", "old", info.Hostname)
			backoff.reset()
			continue
		default:
		}
		n.logger.Warn("replication stream ended; reconnecting", "primary", info.Hostname, "err", err)
		if time.Since(start) > 10*time.Second {
			backoff.reset() // it worked for a while: retry promptly
		}
		backoff.wait(ctx)
	}
}

// servePrimary accepts writes until the lease ends or ctx ends.
func (n *node) servePrimary(ctx context.Context, l lease.Lease) {
	n.mu.Lock()
	n.isPrimary, n.primary, n.lease = true, lease.PrimaryInfo{}, l
	n.mu.Unlock()
	n.store.SetWritable(true)
	n.http.SetRole(true, n.hostname)
	n.logger.Info("primary lease acquired", "type", n.leaser.Type(), "hostname", n.hostname)
	n.markReady()

	select {
	case <-l.Done():
		n.store.SetWritable(false)
		n.logger.Warn("primary lease ended; no longer accepting writes")
	case <-ctx.Done():
		n.store.SetWritable(false)
		l.Close()
	}
	n.mu.Lock()
	n.isPrimary, n.lease = false, nil
	n.mu.Unlock()
	n.http.SetRole(false, "")
	n.endHandoff()
	n.http.DropStreams()
}

// setReplica makes this node a replica of info: no local writes, and
// databases in the shape the replication stream applies to.
func (n *node) setReplica(ctx context.Context, info lease.PrimaryInfo) error {
	n.mu.Lock()
	n.isPrimary, n.primary = false, info
	n.mu.Unlock()
	n.http.SetRole(false, info.Hostname)
	return n.store.Demote(ctx)
}

// sleep waits for d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func (n *node) markReady() { n.readyOnce.Do(func() { close(n.ready) }) }

// primaryURL is the API of the primary this node replicates from.
func (n *node) primaryURL() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.isPrimary {
		return ""
	}
	return n.primary.AdvertiseURL
}

// LeaseStats implements lhttp.NodeStatus.
func (n *node) LeaseStats() (renewals, failures int64) {
	if c, ok := n.leaser.(interface{ Stats() (int64, int64) }); ok {
		return c.Stats()
	}
	return 0, 0
}

// IsPrimary reports whether this node holds the lease.
func (n *node) IsPrimary() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.isPrimary
}

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
	if n.proxy != nil {
		if err := n.proxy.Shutdown(ctx); err != nil {
			errs = append(errs, err)
		}
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
