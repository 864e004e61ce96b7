package lease

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
)

// Consul defaults.
const (
	DefaultConsulTTL       = 10 * time.Second
	DefaultConsulLockDelay = 1 * time.Second

	// handoffWindow is how long other candidates leave a lease handed to
	// a named node alone.
	handoffWindow = 5 * time.Second
)

// ConsulOptions configures a Consul leaser.
type ConsulOptions struct {
	URL          string // agent address; a token may be given as the URL's user or ?token=
	Key          string // KV key holding the lock
	TTL          time.Duration
	LockDelay    time.Duration
	Hostname     string
	AdvertiseURL string
	Candidate    bool
	Logger       *slog.Logger
}

// Consul elects the primary with a Consul session and a KV lock. The
// primary's session has a TTL it renews; the key's value names it.
//
// Safety: Consul frees the lock at the earliest TTL after the server last
// saw a renewal, then refuses it to everyone for the lock delay. The
// primary counts its TTL from the moment it sent its last successful
// renewal, which is earlier, and gives up writes when that runs out, so it
// has stopped before any other node can hold the lock.
type Consul struct {
	opts   ConsulOptions
	client *api.Client
	logger *slog.Logger

	renewals, failures atomic.Int64
	wg                 sync.WaitGroup // keepAlive goroutines; Close waits for them
}

// Stats returns how many session renewals succeeded and failed.
func (c *Consul) Stats() (renewals, failures int64) {
	return c.renewals.Load(), c.failures.Load()
}

// primaryRecord is the value of the lease's key: LiteFS's format, plus (in
// Consul) a handoff note written when the lease is released in favour of a
// named node.
type primaryRecord struct {
	Hostname     string `json:"hostname"`
	AdvertiseURL string `json:"advertise-url"`
	HandoffTo    string `json:"handoff-to,omitempty"`
	HandoffAt    int64  `json:"handoff-at,omitempty"` // unix ms
}

// NewConsul returns a Consul leaser. It does not contact the agent.
func NewConsul(opts ConsulOptions) (*Consul, error) {
	if opts.Key == "" {
		return nil, errors.New("consul lease: key is required")
	}
	if opts.TTL <= 0 {
		opts.TTL = DefaultConsulTTL
	}
	if opts.LockDelay < 0 {
		return nil, fmt.Errorf("consul lease: negative lock-delay %s", opts.LockDelay)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	cfg, err := consulConfig(opts.URL)
	if err != nil {
		return nil, err
	}
	client, err := api.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("consul lease: %w", err)
	}
	opts.Key = strings.TrimPrefix(opts.Key, "/")
	return &Consul{opts: opts, client: client, logger: opts.Logger}, nil
}

// consulConfig turns lease.consul.url into a client configuration.
func consulConfig(raw string) (*api.Config, error) {
	cfg := api.DefaultConfig()
	if raw == "" {
		return cfg, nil
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("consul lease: invalid url %q: want scheme://[token@]host:port", raw)
	}
	cfg.Address, cfg.Scheme = u.Host, u.Scheme
	if u.User != nil {
		if pw, ok := u.User.Password(); ok {
			cfg.Token = pw
		} else {
			cfg.Token = u.User.Username()
		}
	}
	if t := u.Query().Get("token"); t != "" {
		cfg.Token = t
	}
	return cfg, nil
}

func (c *Consul) Type() string         { return "consul" }
func (c *Consul) Hostname() string     { return c.opts.Hostname }
func (c *Consul) AdvertiseURL() string { return c.opts.AdvertiseURL }
func (c *Consul) Candidate() bool      { return c.opts.Candidate }

// Close waits for the renewal of every lease it handed out to stop; close
// those leases first.
func (c *Consul) Close() error {
	c.wg.Wait()
	return nil
}

// Key is the KV key of the lock.
func (c *Consul) Key() string { return c.opts.Key }

// Client is the Consul API client the leaser uses.
func (c *Consul) Client() *api.Client { return c.client }

// Acquire creates a session and takes the lock with it.
func (c *Consul) Acquire(ctx context.Context) (Lease, error) {
	if !c.opts.Candidate {
		return nil, ErrPrimaryExists
	}
	kv := c.client.KV()
	pair, _, err := kv.Get(c.opts.Key, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("consul lease: read %s: %w", c.opts.Key, err)
	}
	if pair != nil {
		if pair.Session != "" {
			return nil, ErrPrimaryExists
		}
		var v primaryRecord
		if json.Unmarshal(pair.Value, &v) == nil && v.HandoffTo != "" && v.HandoffTo != c.opts.Hostname &&
			time.Since(time.UnixMilli(v.HandoffAt)) < handoffWindow {
			return nil, ErrPrimaryExists // handed to another node
		}
	}

	sessions := c.client.Session()
	sent := time.Now()
	id, _, err := sessions.Create(&api.SessionEntry{
		Name:      "litefs-" + c.opts.Hostname,
		TTL:       c.opts.TTL.String(),
		LockDelay: c.opts.LockDelay,
		Behavior:  api.SessionBehaviorDelete,
	}, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("consul lease: create session: %w", err)
	}
	value, _ := json.Marshal(primaryRecord{Hostname: c.opts.Hostname, AdvertiseURL: c.opts.AdvertiseURL})
	ok, _, err := kv.Acquire(&api.KVPair{Key: c.opts.Key, Value: value, Session: id}, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil || !ok {
		c.destroy(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("consul lease: acquire %s: %w", c.opts.Key, err)
		}
		return nil, ErrPrimaryExists // held, or within another session's lock delay
	}
	// The epoch is the index at which this session took the key; read it
	// back, which also confirms the lock is ours.
	pair, _, err = kv.Get(c.opts.Key, (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil || pair == nil || pair.Session != id {
		c.release(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("consul lease: read back %s: %w", c.opts.Key, err)
		}
		return nil, ErrPrimaryExists
	}
	l := &consulLease{
		heldLease: newHeldLease(),
		c:         c,
		base:      context.WithoutCancel(ctx),
		session:   id,
		epoch:     pair.ModifyIndex,
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		l.keepAlive(l.base, sent, renewer{key: c.opts.Key, ttl: c.opts.TTL, logger: c.logger,
			renewals: &c.renewals, failures: &c.failures, renew: l.renew})
	}()
	return l, nil
}

// release gives up a lock just taken, best effort, and ends its session.
func (c *Consul) release(ctx context.Context, id string) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	c.client.KV().Release(&api.KVPair{Key: c.opts.Key, Session: id}, (&api.WriteOptions{}).WithContext(rctx))
	c.destroy(ctx, id)
}

// destroy ends a session, best effort.
// It runs to completion even when ctx is cancelled, within a timeout.
func (c *Consul) destroy(ctx context.Context, id string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	c.client.Session().Destroy(id, (&api.WriteOptions{}).WithContext(ctx))
}

// PrimaryInfo reads the key: the primary is the node that holds it.
func (c *Consul) PrimaryInfo(ctx context.Context) (PrimaryInfo, error) {
	pair, _, err := c.client.KV().Get(c.opts.Key, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return PrimaryInfo{}, fmt.Errorf("consul lease: read %s: %w", c.opts.Key, err)
	}
	return primaryOf(pair)
}

func primaryOf(pair *api.KVPair) (PrimaryInfo, error) {
	if pair == nil || pair.Session == "" {
		return PrimaryInfo{}, ErrNoPrimary
	}
	var v primaryRecord
	if err := json.Unmarshal(pair.Value, &v); err != nil {
		return PrimaryInfo{}, fmt.Errorf("consul lease: value of %s is not a primary's record: %w", pair.Key, err)
	}
	return PrimaryInfo{Hostname: v.Hostname, AdvertiseURL: v.AdvertiseURL, Epoch: pair.ModifyIndex}, nil
}

// WaitChange follows the key with blocking queries until its holder is no
// longer current.
func (c *Consul) WaitChange(ctx context.Context, current PrimaryInfo) error {
	var index uint64
	for {
		pair, meta, err := c.client.KV().Get(c.opts.Key, (&api.QueryOptions{WaitIndex: index, WaitTime: time.Minute}).WithContext(ctx))
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			// Consul unreachable: keep following the primary we know;
			// it steps down by itself if it loses the lease.
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Second):
			}
			index = 0
			continue
		}
		info, err := primaryOf(pair)
		if err != nil || info != current {
			return nil
		}
		if meta.LastIndex < index {
			index = 0 // the agent's index went back: it was reset
		} else {
			index = meta.LastIndex
		}
	}
}

// consulLease is a held lock, renewed until it is closed, handed off or
// lost.
type consulLease struct {
	heldLease
	c       *Consul
	base    context.Context // renewals and the release carry its values, not its cancellation
	session string
	epoch   uint64 // the key's ModifyIndex when the lock was taken
}

func (l *consulLease) Epoch() uint64 { return l.epoch }

// renew renews the session once; Consul answers no entry for a session it
// has invalidated.
func (l *consulLease) renew(ctx context.Context) error {
	entry, _, err := l.c.client.Session().Renew(l.session, (&api.WriteOptions{}).WithContext(ctx))
	if err == nil && entry == nil {
		return fmt.Errorf("%w: consul invalidated the session", errLeaseGone)
	}
	return err
}

// Handoff releases the lock with a note naming the next primary.
func (l *consulLease) Handoff(ctx context.Context, hostname string) error {
	l.stopRenewal()
	defer l.end()
	value, _ := json.Marshal(primaryRecord{HandoffTo: hostname, HandoffAt: time.Now().UnixMilli()})
	ok, _, err := l.c.client.KV().Release(&api.KVPair{Key: l.c.opts.Key, Value: value, Session: l.session}, (&api.WriteOptions{}).WithContext(ctx))
	l.c.destroy(ctx, l.session)
	if err != nil {
		return fmt.Errorf("consul lease: release %s: %w", l.c.opts.Key, err)
	}
	if !ok {
		return fmt.Errorf("consul lease: release %s: this node no longer held it", l.c.opts.Key)
	}
	return nil
}

// Close releases the lock and destroys the session.
func (l *consulLease) Close() error {
	l.stopRenewal()
	defer l.end()
	ctx, cancel := context.WithTimeout(l.base, 2*time.Second)
	defer cancel()
	_, _, err := l.c.client.KV().Release(&api.KVPair{Key: l.c.opts.Key, Session: l.session}, (&api.WriteOptions{}).WithContext(ctx))
	l.c.destroy(ctx, l.session)
	if err != nil {
		return fmt.Errorf("consul lease: release %s: %w", l.c.opts.Key, err)
	}
	return nil
}
