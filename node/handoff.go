package node

import (
	"context"
	"errors"
	"fmt"
	"time"

	lhttp "github.com/litefs-project/litefs/http"
	"github.com/litefs-project/litefs/internal/clock"
	"github.com/litefs-project/litefs/ltx"
	"github.com/litefs-project/litefs/store"
)

// Handing the lease over without losing a write:
//
//  1. The candidate asks the primary (POST /handoff, naming the term it
//     follows). The primary takes a write hold on every database through
//     its term (in-flight transactions, HALT grants and imports finish
//     first; new ones wait), stops accepting writes, and answers with its
//     positions.
//  2. The candidate waits until it has applied those positions, then asks
//     the primary to pass the lease (POST /handoff/release).
//  3. The primary releases the lease with a note naming the candidate, so
//     that other candidates leave it alone; its term ends; the candidate
//     acquires the lease.
//
// If step 2 does not come within the handoff timeout, the primary resumes.
// If the term ends meanwhile (the lease was lost), the term releases the
// hold itself and nothing is passed on.

// handoffState is where a handoff is.
type handoffState int

const (
	handoffAcquiring handoffState = iota // waiting for the write hold
	handoffHolding                       // writes held, waiting for step 2
	handoffReleasing                     // passing the lease
)

// handoff is a handoff in progress on the primary. Its fields are guarded
// by Node.mu.
type handoff struct {
	to    string
	term  *store.Term
	hold  *store.Hold
	timer clock.Timer // aborts the handoff if step 2 does not come
	state handoffState
}

// Errors of handoffs.
var (
	ErrNotCandidate = errors.New("this node is not a candidate (lease.candidate is false)")
	ErrStaticLease  = errors.New("a static lease cannot be handed over")
	ErrNoHandoff    = errors.New("no such handoff is in progress")
)

// beginHandoff is step 1 on the primary.
func (n *Node) beginHandoff(ctx context.Context, req lhttp.HandoffRequest) (lhttp.HandoffResponse, error) {
	if req.Hostname == "" {
		return lhttp.HandoffResponse{}, errors.New("handoff: no candidate named")
	}
	if n.cfg.Leaser.Type() == "static" {
		return lhttp.HandoffResponse{}, ErrStaticLease
	}
	n.mu.Lock()
	term := n.term
	switch {
	case term == nil:
		n.mu.Unlock()
		return lhttp.HandoffResponse{}, store.ErrNotPrimary
	case n.handoff != nil:
		to := n.handoff.to
		n.mu.Unlock()
		return lhttp.HandoffResponse{}, fmt.Errorf("%w: a handoff to %s is in progress", errConflict, to)
	}
	if err := term.Admit(req.Epoch); err != nil {
		n.mu.Unlock()
		return lhttp.HandoffResponse{}, err
	}
	h := &handoff{to: req.Hostname, term: term, state: handoffAcquiring}
	n.handoff = h
	n.mu.Unlock()

	ctx, cancel := context.WithTimeout(ctx, n.cfg.HandoffTimeout)
	defer cancel()
	hold, err := term.HoldWrites(ctx)

	n.mu.Lock()
	if err == nil && n.handoff != h {
		err = store.ErrTermEnded // the term ended meanwhile and forgot the handoff
	}
	if err == nil {
		err = term.SetWritable(false)
	}
	if err != nil {
		if n.handoff == h {
			n.handoff = nil
		}
		n.mu.Unlock()
		if hold != nil {
			hold.Release()
		}
		return lhttp.HandoffResponse{}, fmt.Errorf("handoff: %w", err)
	}
	h.hold, h.state = hold, handoffHolding
	h.timer = n.cfg.Clock.AfterFunc(n.cfg.HandoffTimeout, func() { n.abortHandoff(h, "timed out") })
	n.mu.Unlock()
	n.logger.Info("handoff started: writes held", "to", req.Hostname, "epoch", term.Epoch())
	return lhttp.HandoffResponse{Positions: n.cfg.Store.Positions(), Epoch: term.Epoch()}, nil
}

// errConflict marks errors that the API answers with 409.
var errConflict = errors.New("conflict")

// releaseHandoff is step 3 on the primary.
func (n *Node) releaseHandoff(ctx context.Context, req lhttp.HandoffRequest) error {
	n.mu.Lock()
	h, l := n.handoff, n.lease
	if h == nil || h.state != handoffHolding || h.to != req.Hostname || l == nil || h.term.Epoch() != req.Epoch {
		n.mu.Unlock()
		return fmt.Errorf("%w: no handoff to %s in epoch %d", ErrNoHandoff, req.Hostname, req.Epoch)
	}
	if !h.timer.Stop() {
		// The timeout fired: writes are being let in again.
		n.mu.Unlock()
		return fmt.Errorf("%w: the handoff to %s timed out", ErrNoHandoff, req.Hostname)
	}
	h.state = handoffReleasing
	n.mu.Unlock()
	if err := l.Handoff(ctx, req.Hostname); err != nil {
		n.abortHandoff(h, "the lease could not be passed on")
		return err
	}
	n.mu.Lock()
	n.quietUntil = n.cfg.Clock.Now().Add(n.cfg.DemoteDelay)
	n.mu.Unlock()
	n.logger.Info("lease handed off", "to", req.Hostname, "epoch", h.term.Epoch())
	return nil
}

// abortHandoff lets writers in again, if the handoff is still the node's.
func (n *Node) abortHandoff(h *handoff, why string) {
	n.mu.Lock()
	if n.handoff != h || h.state == handoffAcquiring {
		n.mu.Unlock()
		return
	}
	n.handoff = nil
	n.mu.Unlock()
	// Refused if the term is ending: only its end changes writes then.
	if err := h.term.SetWritable(true); err == nil {
		n.logger.Warn("handoff abandoned; accepting writes again", "to", h.to, "why", why)
	}
	h.hold.Release()
}

// promote makes this candidate the primary by handoff from the primary it
// follows.
func (n *Node) promote(ctx context.Context, req lhttp.PromoteRequest) error {
	r := n.Role()
	if r.IsPrimary {
		return nil
	}
	if !n.cfg.Leaser.Candidate() {
		return ErrNotCandidate
	}
	primary := r.Primary
	if primary.AdvertiseURL == "" {
		return errors.New("promote: no primary to take over from")
	}
	if req.Epoch != 0 && req.Epoch != primary.Epoch {
		return fmt.Errorf("promote: %w: this node follows epoch %d, the request is from epoch %d", store.ErrStaleEpoch, primary.Epoch, req.Epoch)
	}
	start := n.cfg.Clock.Now()
	// Asked to take over: the delay after this node's own last handoff
	// no longer holds it back.
	n.mu.Lock()
	n.quietUntil = time.Time{}
	n.mu.Unlock()
	hreq := lhttp.HandoffRequest{Hostname: n.cfg.Hostname, Epoch: primary.Epoch}
	resp, err := n.cfg.Transport.Handoff(ctx, primary.AdvertiseURL, hreq)
	if err != nil {
		return fmt.Errorf("promote: %w", err)
	}
	if err := n.waitPositions(ctx, resp.Positions); err != nil {
		return fmt.Errorf("promote: catching up with %s: %w", primary.Hostname, err)
	}
	if err := n.cfg.Transport.ReleaseHandoff(ctx, primary.AdvertiseURL, hreq); err != nil {
		return fmt.Errorf("promote: %w", err)
	}
	for {
		n.mu.Lock()
		primaryNow, changed := n.role.IsPrimary, n.roleChanged
		n.mu.Unlock()
		if primaryNow {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("promote: the lease was released but this node did not acquire it: %w", ctx.Err())
		case <-changed:
		}
	}
	n.logger.Info("promoted by handoff", "from", primary.Hostname, "duration", n.cfg.Clock.Now().Sub(start).Round(time.Millisecond).String())
	return nil
}

// autoPromote takes the lease by handoff once, as lease.promote asks.
func (n *Node) autoPromote(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 2*n.cfg.HandoffTimeout)
	defer cancel()
	if err := n.promote(ctx, lhttp.PromoteRequest{}); err != nil {
		n.logger.Warn("lease.promote: could not take the lease", "err", err)
	}
}

// waitPositions waits until every database is exactly at want: while a
// handoff holds the primary's writes its positions are final, so a
// database ahead of them has diverged from the primary, and taking the
// lease with it would discard what the primary acknowledged.
func (n *Node) waitPositions(ctx context.Context, want map[string]ltx.Pos) error {
	for {
		changed := n.cfg.Store.Changed()
		behind := ""
		for name, pos := range want {
			db := n.cfg.Store.DB(name)
			if db == nil || db.Pos().TXID < pos.TXID {
				behind = name
				break
			}
			if cur := db.Pos(); cur != pos {
				return fmt.Errorf("%s is at %s, the primary at %s: this node has diverged", name, cur, pos)
			}
		}
		if behind == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not caught up: %w", behind, ctx.Err())
		case <-changed:
		}
	}
}

// HandOff passes the lease to a connected candidate, the most caught up
// first, by asking it to promote itself. It is what `litefs demote` and a
// graceful stop do.
func (n *Node) HandOff(ctx context.Context) (lhttp.Info, error) {
	n.mu.Lock()
	term := n.term
	n.mu.Unlock()
	if term == nil {
		return lhttp.Info{}, fmt.Errorf("demote: %w", store.ErrNotPrimary)
	}
	if n.cfg.Leaser.Type() == "static" {
		return lhttp.Info{}, fmt.Errorf("demote: %w", ErrStaticLease)
	}
	pos := n.cfg.Store.Positions()
	var pick *lhttp.ReplicaInfo
	for _, rep := range n.cfg.Replicas() {
		if !rep.Candidate || rep.AdvertiseURL == "" {
			continue
		}
		rep := rep
		if pick == nil || (caughtUp(rep.Positions, pos) && !caughtUp(pick.Positions, pos)) {
			pick = &rep
		}
	}
	if pick == nil {
		return lhttp.Info{}, fmt.Errorf("demote: %w: no candidate replica is connected", errConflict)
	}
	ctx, cancel := context.WithTimeout(ctx, 2*n.cfg.HandoffTimeout)
	defer cancel()
	info, err := n.cfg.Transport.Promote(ctx, pick.AdvertiseURL, lhttp.PromoteRequest{Epoch: term.Epoch()})
	if err != nil {
		return lhttp.Info{}, fmt.Errorf("demote: promote %s: %w", pick.Hostname, err)
	}
	return info, nil
}

func caughtUp(have, want map[string]ltx.Pos) bool {
	for name, p := range want {
		if have[name] != p {
			return false
		}
	}
	return true
}
