package lease

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// heldLease is what a held lease of any store shares: its end, and the
// renewal loop that ends it before the store can give it to another node.
type heldLease struct {
	done     chan struct{} // closed when the lease ends, for any reason
	stop     chan struct{} // closed to end the renewal loop
	doneOnce sync.Once
	stopOnce sync.Once
}

func newHeldLease() heldLease {
	return heldLease{done: make(chan struct{}), stop: make(chan struct{})}
}

// Done implements Lease.
func (h *heldLease) Done() <-chan struct{} { return h.done }

func (h *heldLease) end()         { h.doneOnce.Do(func() { close(h.done) }) }
func (h *heldLease) stopRenewal() { h.stopOnce.Do(func() { close(h.stop) }) }

// errLeaseGone wraps what renew returns when the store says the lease no
// longer exists.
var errLeaseGone = errors.New("the store ended the lease")

// renewer renews one lease.
type renewer struct {
	key      string
	ttl      time.Duration
	logger   *slog.Logger
	renewals *atomic.Int64
	failures *atomic.Int64
	// renew renews the lease once, within ctx; an error wrapping
	// errLeaseGone means the store no longer has it.
	renew func(ctx context.Context) error
}

// keepAlive renews the lease three times per TTL, retrying failures
// quickly, until stopRenewal. It ends the lease when the store says it is
// gone, or when the TTL has passed since the last successful renewal was
// sent: the store counts from when it received that renewal, which is
// later, so the lease ends here before the store can free it. sent is
// when the request that created the lease was sent.
func (h *heldLease) keepAlive(base context.Context, sent time.Time, r renewer) {
	expires := sent.Add(r.ttl)
	renewEvery := r.ttl / 3
	ticker := time.NewTicker(renewEvery)
	defer ticker.Stop()
	for {
		deadline := time.NewTimer(time.Until(expires))
		select {
		case <-h.stop:
			deadline.Stop()
			return
		case <-deadline.C:
			r.logger.Error("primary lease expired: no successful renewal within the TTL", "key", r.key, "ttl", r.ttl.String())
			h.end()
			return
		case <-ticker.C:
		}
		deadline.Stop()

		sent := time.Now()
		ctx, cancel := context.WithDeadline(base, expires)
		err := r.renew(ctx)
		cancel()
		if err != nil {
			r.failures.Add(1)
		} else {
			r.renewals.Add(1)
		}
		switch {
		case errors.Is(err, errLeaseGone):
			r.logger.Error("primary lease lost", "key", r.key, "err", err)
			h.end()
			return
		case err != nil:
			r.logger.Warn("renew primary lease", "key", r.key, "err", err, "expires_in", time.Until(expires).Round(time.Millisecond).String())
			ticker.Reset(min(renewEvery, 250*time.Millisecond)) // retry soon
			continue
		}
		expires = sent.Add(r.ttl)
		ticker.Reset(renewEvery)
	}
}
