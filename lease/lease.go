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

// PrimaryInfo identifies the primary.
type PrimaryInfo struct {
	Hostname     string `json:"hostname"`
	AdvertiseURL string `json:"advertise-url"`
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
	// Close releases the leaser's resources.
	Close() error
}

// Lease is held by the primary. Losing it ends the node's term.
type Lease interface {
	// Done is closed when the lease is lost; the node must stop accepting
	// writes at once.
	Done() <-chan struct{}
	// Close gives the lease up.
	Close() error
}
