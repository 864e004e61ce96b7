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
	"github.com/litefs-project/litefs/node"
	"github.com/litefs-project/litefs/store"
)

// daemon wires a litefs node together: its store, API, lease, role logic,
// HALT client, mount and proxy. It holds no logic of its own.
type daemon struct {
	cfg    config.Config
	logger *slog.Logger

	store      *store.Store
	http       *lhttp.Server
	leaser     lease.Leaser
	replicator *lhttp.Replicator
	halts      *lhttp.HaltClient
	node       *node.Node
	fuse       *fuse.Server
	proxy      *lhttp.Proxy

	security     *lhttp.Security
	hostname     string // this node's, as the lease knows it
	advertiseURL string // this node's API, as the lease knows it

	cancel  context.CancelFunc
	runDone chan struct{}  // closed when the node's Run returns
	wg      sync.WaitGroup // the servers' Serve
}

// transport reaches other nodes: the replication stream and the node API.
type transport struct {
	*lhttp.Replicator
	*lhttp.APIClient
}

func (d *daemon) open(ctx context.Context) error {
	if d.cfg.Tracing.Path != "" {
		d.logger.Warn("tracing.path is set, but litefs writes no trace file; ignoring it")
	}
	sec, err := newSecurity(d.cfg.HTTP)
	if err != nil {
		return err
	}
	d.security = sec
	if sec.Open() {
		d.logger.Warn("the API is open: anyone who reaches http.addr can read, replace and stall every database; set http.auth-token on every node", "addr", d.cfg.HTTP.Addr)
	}
	st, err := store.Open(store.Options{
		Dir:                      d.cfg.Data.Dir,
		Retention:                d.cfg.Data.Retention,
		RetentionMonitorInterval: d.cfg.Data.RetentionMonitorInterval,
		StrictVerify:             d.cfg.StrictVerify,
		Logger:                   d.logger,
	})
	if err != nil {
		return err
	}
	d.store = st
	st.SetWritable(false) // until a term begins
	for _, db := range st.DBs() {
		d.logger.Info("database ready", "db", db.Name(), "pos", db.Pos().String())
	}

	d.http = lhttp.NewServer(ctx, st, lhttp.ServerOptions{
		Addr:            d.cfg.HTTP.Addr,
		SnapshotTimeout: d.snapshotTimeout(),
		ValidateImport:  sqlcheck.Check,
		Security:        sec,
		PublicPaths:     d.cfg.HTTP.PublicEndpoints,
		AllowedHosts:    allowedHosts(d.cfg),
		Pprof:           d.cfg.HTTP.Pprof,

		MaxImportSize:      int64(d.cfg.HTTP.MaxImportSize),
		MaxRequestBody:     int64(d.cfg.HTTP.MaxRequestBody),
		MaxConnections:     d.cfg.HTTP.MaxConnections,
		ConnectionWait:     d.cfg.HTTP.ConnectionWait,
		ReadHeaderTimeout:  d.cfg.HTTP.ReadHeaderTimeout,
		IdleTimeout:        d.cfg.HTTP.IdleTimeout,
		BodyReadTimeout:    d.cfg.HTTP.BodyReadTimeout,
		MinBodyRate:        int64(d.cfg.HTTP.MinBodyRate),
		WriteTimeout:       d.cfg.HTTP.WriteTimeout,
		ExportWriteTimeout: d.cfg.HTTP.ExportWriteTimeout,
		Logger:             d.logger,
	})
	if err := d.http.Listen(); err != nil {
		st.Close()
		return err
	}
	if d.leaser, err = d.newLeaser(ctx); err != nil {
		d.http.Shutdown(ctx)
		st.Close()
		return err
	}

	nodeID := fmt.Sprintf("%016X", st.NodeID())
	d.replicator = lhttp.NewReplicator(st, lhttp.ReplicatorOptions{
		Databases:    d.cfg.Lease.Databases,
		Hostname:     d.hostname,
		AdvertiseURL: d.advertiseURL,
		Candidate:    d.leaser.Candidate(),
		Security:     sec,
		Logger:       d.logger,
	})
	d.node = node.New(node.Config{
		Hostname:       d.hostname,
		AdvertiseURL:   d.advertiseURL,
		NodeID:         nodeID,
		Leaser:         d.leaser,
		Store:          st,
		Transport:      transport{d.replicator, lhttp.NewAPIClient(sec)},
		Logger:         d.logger,
		HaltTTL:        d.cfg.Lease.HaltTTL,
		ReconnectDelay: d.cfg.Lease.ReconnectDelay,
		DemoteDelay:    d.cfg.Lease.DemoteDelay,
		Promote:        d.cfg.Lease.Promote,
		ReplicaReady:   d.replicator.Ready(),
		Lag:            d.replicator.Lag,
		Replicas:       d.http.Replicas,
		OnRoleChange:   d.roleChanged,
	})
	d.halts = lhttp.NewHaltClient(ctx, lhttp.HaltClientOptions{
		Store:    st,
		Primary:  d.node.PrimaryURL,
		NodeID:   nodeID,
		Security: sec,
		Logger:   d.logger,
	})
	st.SetHalter(d.halts)
	d.node.Register(d.http)
	d.http.EnableMetrics(status{d.node, d.leaser}, d.replicator)

	// The role loop starts before the mount, so that a static candidate
	// accepts writes from the mount's first request.
	rctx, cancel := context.WithCancel(ctx)
	d.cancel, d.runDone = cancel, make(chan struct{})
	go func() {
		defer close(d.runDone)
		d.node.Run(rctx)
	}()

	if d.leaser.Type() == "static" && d.leaser.Candidate() {
		// A static candidate is the primary from the start: its term
		// begins before the mount takes its first request.
		select {
		case <-d.node.Ready():
		case <-ctx.Done():
			d.close(ctx)
			return ctx.Err()
		}
	}
	srv, err := fuse.Mount(context.WithoutCancel(ctx), d.cfg.FUSE.Dir, st, fuse.Options{
		Observe:    d.http.ObserveFUSE,
		AllowOther: d.cfg.FUSE.AllowOther,
		Debug:      d.cfg.FUSE.Debug,
		Status:     d.node,
		Logger:     d.logger,
	})
	if err != nil {
		d.close(ctx)
		return err
	}
	d.fuse = srv
	d.logger.Info("mounted", "dir", d.cfg.FUSE.Dir, "data", d.cfg.Data.Dir, "http", d.http.Addr().String())

	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		if err := d.http.Serve(); err != nil {
			d.logger.Error("http server", "err", err)
		}
	}()
	if err := d.startProxy(); err != nil {
		d.close(ctx)
		return err
	}
	return nil
}

// roleChanged passes a change of role to the parts that show or depend on
// it.
func (d *daemon) roleChanged(r node.Role) {
	d.http.SetRole(r.IsPrimary, r.Primary.Hostname, r.Epoch)
	d.halts.PrimaryChanged()
}

// status is what /metrics reports of the node.
type status struct {
	*node.Node
	leaser lease.Leaser
}

// LeaseStats implements lhttp.NodeStatus.
func (s status) LeaseStats() (renewals, failures int64) {
	if c, ok := s.leaser.(interface{ Stats() (int64, int64) }); ok {
		return c.Stats()
	}
	return 0, 0
}

// snapshotTimeout is http.snapshot-timeout, or data.retention when unset.
func (d *daemon) snapshotTimeout() time.Duration {
	if t := d.cfg.HTTP.SnapshotTimeout; t > 0 {
		return t
	}
	return d.cfg.Data.Retention
}

// newLeaser builds the configured lease.
func (d *daemon) newLeaser(ctx context.Context) (lease.Leaser, error) {
	hostname := d.cfg.Lease.Hostname
	if hostname == "" {
		hostname, _ = os.Hostname()
	}
	advertise := d.cfg.Lease.AdvertiseURL
	if advertise == "" || (d.cfg.Lease.Type == "static" && !d.cfg.Lease.Candidate) {
		// A static replica's advertise-url names the primary, not itself.
		port := d.http.Addr().(*net.TCPAddr).Port
		scheme := "http://"
		if d.security.ServerTLS.Serves() {
			scheme = "https://"
		}
		advertise = scheme + net.JoinHostPort(hostname, strconv.Itoa(port))
	}
	d.hostname, d.advertiseURL = hostname, advertise
	switch d.cfg.Lease.Type {
	case "static":
		primaryURL := d.cfg.Lease.AdvertiseURL
		if d.cfg.Lease.Candidate {
			primaryURL = advertise
		}
		return lease.NewStatic(hostname, primaryURL, d.cfg.Lease.Candidate), nil
	case "consul":
		c, err := lease.NewConsul(lease.ConsulOptions{
			URL:          d.cfg.Lease.Consul.URL,
			Key:          d.cfg.Lease.Consul.Key,
			TTL:          d.cfg.Lease.Consul.TTL,
			LockDelay:    d.cfg.Lease.Consul.LockDelay,
			Hostname:     hostname,
			AdvertiseURL: advertise,
			Candidate:    d.cfg.Lease.Candidate,
			Logger:       d.logger,
		})
		if err != nil {
			return nil, err
		}
		if err := d.joinCluster(ctx, c); err != nil {
			return nil, err
		}
		return c, nil
	case "etcd":
		ec := d.cfg.Lease.Etcd
		opts := lease.EtcdOptions{
			Endpoints:    ec.Endpoints,
			Key:          ec.Key,
			TTL:          ec.TTL,
			Username:     ec.Username,
			Password:     ec.Password,
			Hostname:     hostname,
			AdvertiseURL: advertise,
			Candidate:    d.cfg.Lease.Candidate,
			Logger:       d.logger,
		}
		if ec.TLS.Enabled() {
			tc, err := lease.EtcdTLS(ec.TLS.CAFile, ec.TLS.CertFile, ec.TLS.KeyFile, ec.TLS.ServerName, ec.TLS.InsecureSkipVerify)
			if err != nil {
				return nil, err
			}
			opts.TLS = tc
		}
		e, err := lease.NewEtcd(opts)
		if err != nil {
			return nil, err
		}
		if err := d.joinCluster(ctx, e); err != nil {
			e.Close()
			return nil, err
		}
		return e, nil
	}
	return nil, fmt.Errorf("lease type %q is not supported", d.cfg.Lease.Type)
}

// clusterJoiner is a lease that keeps a cluster ID beside its key.
type clusterJoiner interface {
	JoinCluster(ctx context.Context, dataDir string) (string, error)
	Key() string
	Type() string
}

// joinCluster checks the cluster ID against the lease store, waiting a
// while for one that is not up yet. A mismatch is final.
func (d *daemon) joinCluster(ctx context.Context, c clusterJoiner) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		id, err := c.JoinCluster(ctx, d.cfg.Data.Dir)
		if err == nil {
			d.logger.Info("cluster joined", "cluster_id", id, "key", c.Key())
			return nil
		}
		if errors.Is(err, lease.ErrClusterIDMismatch) || ctx.Err() != nil {
			return err
		}
		d.logger.Warn(c.Type()+" not reachable yet; retrying", "err", err)
		select {
		case <-ctx.Done():
			return err
		case <-time.After(time.Second):
		}
	}
}

// gracefulHandoffTimeout bounds the handoff a stopping primary tries.
const gracefulHandoffTimeout = 5 * time.Second

// close stops the node: a primary first hands its lease to a connected
// candidate, if it can, so that the cluster has a writable primary at
// once; then the term ends (writes stop, streams send what they have) and
// the lease is released; then everything else closes.
func (d *daemon) close(ctx context.Context) error {
	var errs []error
	if d.node != nil && d.node.IsPrimary() && d.leaser.Type() != "static" {
		hctx, cancel := context.WithTimeout(ctx, gracefulHandoffTimeout)
		if info, err := d.node.HandOff(hctx); err != nil {
			d.logger.Info("no handoff before stopping; releasing the lease", "reason", err)
		} else {
			d.logger.Info("lease handed off before stopping", "to", info.Hostname)
		}
		cancel()
	}
	if d.cancel != nil {
		d.cancel()
		<-d.runDone // the term has ended and the lease is released
	}
	if d.halts != nil {
		d.halts.Close()
	}
	if d.proxy != nil {
		if err := d.proxy.Shutdown(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if d.http != nil {
		if err := d.http.Shutdown(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if d.fuse != nil {
		if err := d.fuse.Unmount(ctx); err != nil {
			errs = append(errs, err)
		} else {
			d.logger.Info("unmounted", "dir", d.cfg.FUSE.Dir)
		}
	}
	d.wg.Wait()
	if d.leaser != nil {
		errs = append(errs, d.leaser.Close())
	}
	if d.store != nil {
		errs = append(errs, d.store.Close())
	}
	return errors.Join(errs...)
}
