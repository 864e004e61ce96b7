// Package lease answers one question: which node is the primary. A node
// that is a candidate tries to acquire the lease; every node can ask who
// holds it.
package lease

import (
	"context"
	"errors"
)

// Errors returned by leasers.
var (
	// ErrPrimaryExists is returned by Acquire when another node holds the lease.
	ErrPrimaryExists = errors.New("primary lease held by another node")
	// ErrNoPrimary is returned by PrimaryInfo when no node holds the lease.
	ErrNoPrimary = errors.New("no primary")
)

// PrimaryInfo identifies the primary and its term.
type PrimaryInfo struct {
	Hostname     string `json:"hostname"`
	AdvertiseURL string `json:"advertise-url"`
	// Epoch is the primary's term: it grows with every acquisition of the
	// lease, and every request between nodes names it.
	Epoch uint64 `json:"epoch,omitempty"`
}

// Leaser elects the primary.
type Leaser interface {
	// Type names the lease implementation ("static", "consul").
	Type() string
	// Hostname and AdvertiseURL identify this node to the others.
	Hostname() string
	AdvertiseURL() string
	// Candidate reports whether this node may become primary.
	Candidate() bool
	// Acquire makes this node the primary, or returns ErrPrimaryExists.
	Acquire(ctx context.Context) (Lease, error)
	// PrimaryInfo returns the current primary, or ErrNoPrimary.
	PrimaryInfo(ctx context.Context) (PrimaryInfo, error)
	// WaitChange blocks until the primary is no longer current (another
	// node, or none), or until ctx ends.
	WaitChange(ctx context.Context, current PrimaryInfo) error
	// Close releases the leaser's resources.
	Close() error
}

// Lease is held by the primary. Losing it ends the node's term.
type Lease interface {
	// Epoch identifies this acquisition of the lease: it is greater than
	// that of every earlier acquisition (for Consul, the Raft index at
	// which the lock was taken).
	Epoch() uint64
	// Done is closed when the lease is lost; the node must stop accepting
	// writes at once.
	Done() <-chan struct{}
	// Handoff gives the lease up in favour of the candidate named by
	// hostname: other candidates leave it to that one for a while.
	Handoff(ctx context.Context, hostname string) error
	// Close gives the lease up.
	Close() error
}

// ErrHandoffUnsupported is returned by leases that cannot be handed over.
var ErrHandoffUnsupported = errors.New("this lease type cannot be handed over")
