package lease

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// EtcdTLS builds the TLS configuration of the connection to etcd from PEM
// files: the CA that signs the members' certificates (the system's roots
// if empty) and this node's client certificate and key (none if empty).
func EtcdTLS(caFile, certFile, keyFile, serverName string, insecureSkipVerify bool) (*tls.Config, error) {
	cfg := &tls.Config{ServerName: serverName, InsecureSkipVerify: insecureSkipVerify, MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("etcd lease: read lease.etcd.tls.ca-file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("etcd lease: lease.etcd.tls.ca-file %s holds no PEM certificate", caFile)
		}
		cfg.RootCAs = pool
	}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("etcd lease: load lease.etcd.tls.cert-file and key-file: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// DefaultEtcdTTL is lease.etcd.ttl when unset.
const DefaultEtcdTTL = 5 * time.Second

// EtcdOptions configures an etcd leaser.
type EtcdOptions struct {
	Endpoints    []string // client URLs of the etcd members
	Key          string   // key holding the primary's record
	TTL          time.Duration
	Username     string
	Password     string
	TLS          *tls.Config // nil for plain connections
	Hostname     string
	AdvertiseURL string
	Candidate    bool
	Logger       *slog.Logger
}

// Etcd elects the primary with an etcd lease and a key bound to it: the
// primary creates the key (only if it does not exist) with its lease, and
// renews the lease; the key's value names it.
//
// Safety: etcd revokes a lease, and deletes the key, once TTL has passed
// since the server processed its last renewal (a new etcd leader extends
// every lease by the full TTL). The primary counts the TTL from the moment
// it sent its last successful renewal, which is earlier, and gives up
// writes when that runs out, so it has stopped before the key can go and
// another node can create it. The lease is renewed with one request at a
// time, not etcd's keep-alive stream, for that send time.
//
// The epoch of a term is the key's create revision: etcd's revision grows
// with every change to its store, so every acquisition has a greater one.
type Etcd struct {
	opts   EtcdOptions
	client *clientv3.Client
	logger *slog.Logger

	renewals, failures atomic.Int64
	wg                 sync.WaitGroup // renewal goroutines; Close waits for them
}

// NewEtcd returns an etcd leaser. It does not wait for the cluster.
func NewEtcd(opts EtcdOptions) (*Etcd, error) {
	if len(opts.Endpoints) == 0 {
		return nil, errors.New("etcd lease: at least one endpoint is required")
	}
	opts.Key = strings.TrimSuffix(opts.Key, "/")
	if opts.Key == "" {
		return nil, errors.New("etcd lease: key is required")
	}
	if opts.TTL <= 0 {
		opts.TTL = DefaultEtcdTTL
	}
	if opts.TTL < time.Second || opts.TTL%time.Second != 0 {
		return nil, fmt.Errorf("etcd lease: ttl %s: etcd leases are whole seconds, at least 1s", opts.TTL)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	endpoints := make([]string, len(opts.Endpoints))
	for i, e := range opts.Endpoints {
		endpoints[i] = strings.TrimSuffix(e, "/")
	}
	client, err := clientv3.New(clientv3.Config{
		Endpoints:            endpoints,
		DialTimeout:          5 * time.Second,
		DialKeepAliveTime:    opts.TTL,
		DialKeepAliveTimeout: opts.TTL,
		Username:             opts.Username,
		Password:             opts.Password,
		TLS:                  opts.TLS,
		Logger:               zap.NewNop(), // the leaser logs what matters itself
	})
	if err != nil {
		return nil, fmt.Errorf("etcd lease: %w", err)
	}
	return &Etcd{opts: opts, client: client, logger: opts.Logger}, nil
}

func (e *Etcd) Type() string         { return "etcd" }
func (e *Etcd) Hostname() string     { return e.opts.Hostname }
func (e *Etcd) AdvertiseURL() string { return e.opts.AdvertiseURL }
func (e *Etcd) Candidate() bool      { return e.opts.Candidate }

// Key is the key of the primary's record.
func (e *Etcd) Key() string { return e.opts.Key }

// Stats returns how many lease renewals succeeded and failed.
func (e *Etcd) Stats() (renewals, failures int64) {
	return e.renewals.Load(), e.failures.Load()
}

// Close waits for the renewal of every lease it handed out to stop (close
// those leases first) and closes the client.
func (e *Etcd) Close() error {
	e.wg.Wait()
	return e.client.Close()
}

// handoffNote is written beside the key when a primary hands its lease to
// a named candidate, which other candidates leave it to for a while.
type handoffNote struct {
	To string `json:"to"`
	At int64  `json:"at"` // unix ms
}

func (e *Etcd) handoffKey() string { return e.opts.Key + "/handoff" }

// Acquire creates the key with a new lease, if no node holds it.
func (e *Etcd) Acquire(ctx context.Context) (Lease, error) {
	if !e.opts.Candidate {
		return nil, ErrPrimaryExists
	}
	resp, err := e.client.Get(ctx, e.handoffKey())
	if err != nil {
		return nil, fmt.Errorf("etcd lease: read %s: %w", e.handoffKey(), err)
	}
	if len(resp.Kvs) > 0 {
		var n handoffNote
		if json.Unmarshal(resp.Kvs[0].Value, &n) == nil && n.To != "" && n.To != e.opts.Hostname &&
			time.Since(time.UnixMilli(n.At)) < handoffWindow {
			return nil, ErrPrimaryExists // handed to another node
		}
	}

	sent := time.Now()
	grant, err := e.client.Grant(ctx, int64(e.opts.TTL/time.Second))
	if err != nil {
		return nil, fmt.Errorf("etcd lease: grant a lease: %w", err)
	}
	value, _ := json.Marshal(primaryRecord{Hostname: e.opts.Hostname, AdvertiseURL: e.opts.AdvertiseURL})
	txn, err := e.client.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(e.opts.Key), "=", 0)).
		Then(clientv3.OpPut(e.opts.Key, string(value), clientv3.WithLease(grant.ID))).
		Commit()
	if err != nil || !txn.Succeeded {
		e.revoke(ctx, grant.ID)
		if err != nil {
			return nil, fmt.Errorf("etcd lease: create %s: %w", e.opts.Key, err)
		}
		return nil, ErrPrimaryExists
	}
	l := &etcdLease{
		heldLease: newHeldLease(),
		e:         e,
		id:        grant.ID,
		epoch:     uint64(txn.Header.Revision),
		base:      context.WithoutCancel(ctx),
	}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		l.keepAlive(l.base, sent, renewer{key: e.opts.Key, ttl: e.opts.TTL, logger: e.logger,
			renewals: &e.renewals, failures: &e.failures, renew: l.renew})
	}()
	return l, nil
}

// revoke ends a lease, and the key bound to it, best effort.
func (e *Etcd) revoke(ctx context.Context, id clientv3.LeaseID) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	_, err := e.client.Revoke(ctx, id)
	return err
}

// PrimaryInfo reads the key: the primary is the node whose record it is.
func (e *Etcd) PrimaryInfo(ctx context.Context) (PrimaryInfo, error) {
	resp, err := e.client.Get(ctx, e.opts.Key)
	if err != nil {
		return PrimaryInfo{}, fmt.Errorf("etcd lease: read %s: %w", e.opts.Key, err)
	}
	info, _, err := e.primaryOf(resp)
	return info, err
}

func (e *Etcd) primaryOf(resp *clientv3.GetResponse) (PrimaryInfo, int64, error) {
	if len(resp.Kvs) == 0 {
		return PrimaryInfo{}, resp.Header.Revision, ErrNoPrimary
	}
	kv := resp.Kvs[0]
	var v primaryRecord
	if err := json.Unmarshal(kv.Value, &v); err != nil {
		return PrimaryInfo{}, resp.Header.Revision, fmt.Errorf("etcd lease: value of %s is not a primary's record: %w", e.opts.Key, err)
	}
	return PrimaryInfo{Hostname: v.Hostname, AdvertiseURL: v.AdvertiseURL, Epoch: uint64(kv.CreateRevision)}, resp.Header.Revision, nil
}

// WaitChange watches the key until its holder is no longer current.
func (e *Etcd) WaitChange(ctx context.Context, current PrimaryInfo) error {
	for {
		resp, err := e.client.Get(ctx, e.opts.Key)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			// etcd unreachable: keep following the primary we know; it
			// steps down by itself if it cannot renew its lease.
			if err := sleepCtx(ctx, time.Second); err != nil {
				return err
			}
			continue
		}
		info, rev, err := e.primaryOf(resp)
		if err != nil || info != current {
			return nil
		}
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		for wresp := range e.client.Watch(wctx, e.opts.Key, clientv3.WithRev(rev+1)) {
			if wresp.Err() != nil {
				break // compacted, or the member lost its leader: read again
			}
			if len(wresp.Events) > 0 {
				break
			}
		}
		cancel()
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// etcdLease is a held key, its lease renewed until it is closed, handed
// off or lost.
type etcdLease struct {
	heldLease
	e     *Etcd
	id    clientv3.LeaseID
	epoch uint64
	base  context.Context // renewals carry its values, not its cancellation
}

func (l *etcdLease) Epoch() uint64 { return l.epoch }

// renew renews the lease once, with one request rather than etcd's
// keep-alive stream, so that its send time is known.
func (l *etcdLease) renew(ctx context.Context) error {
	resp, err := l.e.client.KeepAliveOnce(ctx, l.id)
	if errors.Is(err, rpctypes.ErrLeaseNotFound) || (err == nil && resp.TTL <= 0) {
		return fmt.Errorf("%w: etcd revoked the lease", errLeaseGone)
	}
	return err
}

// Handoff deletes the key and leaves a note naming the next primary, in
// one transaction, then revokes the lease.
func (l *etcdLease) Handoff(ctx context.Context, hostname string) error {
	l.stopRenewal()
	defer l.end()
	note, _ := json.Marshal(handoffNote{To: hostname, At: time.Now().UnixMilli()})
	key := l.e.opts.Key
	txn, err := l.e.client.Txn(ctx).
		If(clientv3.Compare(clientv3.LeaseValue(key), "=", l.id)).
		Then(clientv3.OpDelete(key), clientv3.OpPut(l.e.handoffKey(), string(note))).
		Commit()
	rerr := l.e.revoke(ctx, l.id)
	if err != nil {
		return fmt.Errorf("etcd lease: hand %s over: %w", key, err)
	}
	if !txn.Succeeded {
		return fmt.Errorf("etcd lease: hand %s over: this node no longer held it", key)
	}
	if rerr != nil && !errors.Is(rerr, rpctypes.ErrLeaseNotFound) {
		l.e.logger.Warn("revoke the lease after a handoff", "err", rerr)
	}
	return nil
}

// Close revokes the lease, which deletes the key.
func (l *etcdLease) Close() error {
	l.stopRenewal()
	defer l.end()
	if err := l.e.revoke(l.base, l.id); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return fmt.Errorf("etcd lease: release %s: %w", l.e.opts.Key, err)
	}
	return nil
}
