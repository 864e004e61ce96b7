package lease

import (
	"context"
	"sync"
)

// Static is a lease fixed by configuration: the candidate node is always
// the primary, and every other node is told who the primary is. There is
// only ever one term, StaticEpoch.
type Static struct {
	hostname     string
	advertiseURL string
	candidate    bool
}

// NewStatic returns a static leaser. On a candidate, hostname and
// advertiseURL are this node's; on any other node they name the primary.
func NewStatic(hostname, advertiseURL string, candidate bool) *Static {
	return &Static{hostname: hostname, advertiseURL: advertiseURL, candidate: candidate}
}

// StaticEpoch is the epoch of the static lease's one term.
const StaticEpoch = 1

func (s *Static) Type() string         { return "static" }
func (s *Static) Hostname() string     { return s.hostname }
func (s *Static) AdvertiseURL() string { return s.advertiseURL }
func (s *Static) Candidate() bool      { return s.candidate }
func (s *Static) Close() error         { return nil }

// Acquire succeeds on the candidate, which holds the lease until it closes it.
func (s *Static) Acquire(ctx context.Context) (Lease, error) {
	if !s.candidate {
		return nil, ErrPrimaryExists
	}
	return &staticLease{done: make(chan struct{})}, nil
}

// PrimaryInfo returns the configured primary.
func (s *Static) PrimaryInfo(ctx context.Context) (PrimaryInfo, error) {
	if s.advertiseURL == "" {
		return PrimaryInfo{}, ErrNoPrimary
	}
	return PrimaryInfo{Hostname: s.hostname, AdvertiseURL: s.advertiseURL, Epoch: StaticEpoch}, nil
}

// WaitChange blocks until ctx ends: a static primary never changes.
func (s *Static) WaitChange(ctx context.Context, current PrimaryInfo) error {
	<-ctx.Done()
	return ctx.Err()
}

type staticLease struct {
	done chan struct{}
	once sync.Once
}

func (l *staticLease) Done() <-chan struct{} { return l.done }

func (l *staticLease) Epoch() uint64 { return StaticEpoch }

// Handoff is not possible: the configuration names the primary.
func (l *staticLease) Handoff(ctx context.Context, hostname string) error {
	return ErrHandoffUnsupported
}

func (l *staticLease) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}
