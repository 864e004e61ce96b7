package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	lhttp "github.com/litefs-project/litefs/http"
	"github.com/litefs-project/litefs/ltx"
)

// Handing the lease over without losing a write:
//
//  1. The candidate asks the primary (POST /handoff). The primary waits for
//     in-flight write transactions, holds new ones off, stops accepting
//     writes, and answers with its positions.
//  2. The candidate waits until it has applied those positions, then asks
//     the primary to pass the lease (POST /handoff/release).
//  3. The primary releases the lease with a note naming the candidate, so
//     that other candidates leave it alone, and becomes a replica; the
//     candidate acquires the lease.
//
// If step 2 does not come within handoffTimeout, the primary resumes.

const handoffTimeout = 15 * time.Second

// handoff is a handoff in progress on the primary.
type handoff struct {
	hostname string
	release  func() // lets writers in again
	timer    *time.Timer
}

type handoffRequest struct {
	Hostname string `json:"hostname"`
}

type handoffResponse struct {
	Positions map[string]ltx.Pos `json:"positions"`
}

// Info is the body of GET /info.
type Info struct {
	NodeID       string             `json:"nodeID"`
	Hostname     string             `json:"hostname"`
	AdvertiseURL string             `json:"advertiseURL"`
	IsPrimary    bool               `json:"isPrimary"`
	Candidate    bool               `json:"candidate"`
	Primary      string             `json:"primary,omitempty"`    // the primary's hostname, on replicas
	PrimaryURL   string             `json:"primaryURL,omitempty"` // the primary's API, on replicas
	ProxyURL     string             `json:"proxyURL,omitempty"`   // this node's proxy, if it runs one
	Databases    map[string]ltx.Pos `json:"databases"`
}

// registerAPI adds the node's own endpoints to the HTTP server.
func (n *node) registerAPI() {
	n.http.Handle("GET /info", http.HandlerFunc(n.handleInfo))
	n.http.Handle("POST /promote", http.HandlerFunc(n.handlePromote))
	n.http.Handle("POST /demote", http.HandlerFunc(n.handleDemote))
	n.http.Handle("POST /handoff", http.HandlerFunc(n.handleHandoff))
	n.http.Handle("POST /handoff/release", http.HandlerFunc(n.handleHandoffRelease))
}

func (n *node) info() Info {
	n.mu.Lock()
	defer n.mu.Unlock()
	return Info{
		NodeID:       fmt.Sprintf("%016X", n.store.NodeID()),
		Hostname:     n.hostname,
		AdvertiseURL: n.advertiseURL,
		IsPrimary:    n.isPrimary,
		Candidate:    n.leaser.Candidate(),
		Primary:      n.primary.Hostname,
		PrimaryURL:   n.primary.AdvertiseURL,
		ProxyURL:     n.proxyURL,
		Databases:    n.store.Positions(),
	}
}

func (n *node) handleInfo(w http.ResponseWriter, r *http.Request) {
	lhttp.WriteJSON(w, http.StatusOK, n.info())
}

// handlePromote makes this candidate the primary by handoff.
func (n *node) handlePromote(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*handoffTimeout)
	defer cancel()
	if err := n.promote(ctx); err != nil {
		lhttp.WriteJSON(w, http.StatusConflict, lhttp.Error{Error: err.Error()})
		return
	}
	lhttp.WriteJSON(w, http.StatusOK, n.info())
}

func (n *node) promote(ctx context.Context) error {
	if n.IsPrimary() {
		return nil
	}
	if !n.leaser.Candidate() {
		return errors.New("promote: this node is not a candidate (lease.candidate is false)")
	}
	n.mu.Lock()
	primary := n.primary
	n.mu.Unlock()
	if primary.AdvertiseURL == "" {
		return errors.New("promote: no primary to take over from")
	}
	start := time.Now()
	var resp handoffResponse
	if err := postJSON(ctx, primary.AdvertiseURL+"/handoff", handoffRequest{Hostname: n.hostname}, &resp); err != nil {
		return fmt.Errorf("promote: %w", err)
	}
	if err := n.waitPositions(ctx, resp.Positions); err != nil {
		return fmt.Errorf("promote: catching up with %s: %w", primary.Hostname, err)
	}
	if err := postJSON(ctx, primary.AdvertiseURL+"/handoff/release", handoffRequest{Hostname: n.hostname}, nil); err != nil {
		return fmt.Errorf("promote: %w", err)
	}
	for !n.IsPrimary() {
		if ctx.Err() != nil {
			return fmt.Errorf("promote: the lease was released but this node did not acquire it: %w", ctx.Err())
		}
		sleep(ctx, 5*time.Millisecond)
	}
	n.logger.Info("promoted by handoff", "from", primary.Hostname, "duration", time.Since(start).Round(time.Millisecond).String())
	return nil
}

// waitPositions waits until every database is at least at want.
func (n *node) waitPositions(ctx context.Context, want map[string]ltx.Pos) error {
	for {
		changed := n.store.Changed()
		behind := ""
		for name, pos := range want {
			db := n.store.DB(name)
			if db == nil || db.Pos().TXID < pos.TXID {
				behind = name
				break
			}
			if db.Pos().TXID == pos.TXID && db.Pos() != pos {
				return fmt.Errorf("%s is at %s, the primary at %s", name, db.Pos(), pos)
			}
		}
		if behind == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not caught up: %w", behind, ctx.Err())
		case <-changed:
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// handleHandoff is step 1 on the primary.
func (n *node) handleHandoff(w http.ResponseWriter, r *http.Request) {
	var req handoffRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&req); err != nil || req.Hostname == "" {
		lhttp.WriteJSON(w, http.StatusBadRequest, lhttp.Error{Error: "invalid handoff request: want {\"hostname\": ...}"})
		return
	}
	if n.leaser.Type() == "static" {
		lhttp.WriteJSON(w, http.StatusBadRequest, lhttp.Error{Error: "a static lease cannot be handed over"})
		return
	}
	n.mu.Lock()
	switch {
	case !n.isPrimary:
		n.mu.Unlock()
		lhttp.WriteJSON(w, http.StatusServiceUnavailable, lhttp.Error{Error: "this node is not the primary"})
		return
	case n.handoff != nil:
		n.mu.Unlock()
		lhttp.WriteJSON(w, http.StatusConflict, lhttp.Error{Error: "a handoff to " + n.handoff.hostname + " is in progress"})
		return
	}
	h := &handoff{hostname: req.Hostname}
	n.handoff = h
	n.mu.Unlock()

	ctx, cancel := context.WithTimeout(r.Context(), handoffTimeout)
	defer cancel()
	release, err := n.store.HoldWrites(ctx)
	if err != nil {
		n.mu.Lock()
		n.handoff = nil
		n.mu.Unlock()
		lhttp.WriteJSON(w, http.StatusServiceUnavailable, lhttp.Error{Error: "handoff: " + err.Error()})
		return
	}
	n.store.SetWritable(false)
	n.mu.Lock()
	h.release = release
	h.timer = time.AfterFunc(handoffTimeout, func() { n.abortHandoff(h) })
	n.mu.Unlock()
	pos := n.store.Positions()
	n.logger.Info("handoff started: writes held", "to", req.Hostname)
	lhttp.WriteJSON(w, http.StatusOK, handoffResponse{Positions: pos})
}

// handleHandoffRelease is step 3 on the primary.
func (n *node) handleHandoffRelease(w http.ResponseWriter, r *http.Request) {
	var req handoffRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&req); err != nil {
		lhttp.WriteJSON(w, http.StatusBadRequest, lhttp.Error{Error: "invalid handoff request"})
		return
	}
	n.mu.Lock()
	h, l := n.handoff, n.lease
	n.mu.Unlock()
	if h == nil || h.release == nil || h.hostname != req.Hostname || l == nil {
		lhttp.WriteJSON(w, http.StatusConflict, lhttp.Error{Error: "no handoff to " + req.Hostname + " is in progress"})
		return
	}
	h.timer.Stop()
	if err := l.Handoff(r.Context(), req.Hostname); err != nil {
		n.abortHandoff(h)
		lhttp.WriteJSON(w, http.StatusInternalServerError, lhttp.Error{Error: err.Error()})
		return
	}
	n.logger.Info("lease handed off", "to", req.Hostname)
	lhttp.WriteJSON(w, http.StatusOK, struct{}{})
}

// abortHandoff lets writers in again if the node is still primary.
func (n *node) abortHandoff(h *handoff) {
	n.mu.Lock()
	if n.handoff != h {
		n.mu.Unlock()
		return
	}
	n.handoff = nil
	primary := n.isPrimary
	n.mu.Unlock()
	if primary {
		n.store.SetWritable(true)
		n.logger.Warn("handoff abandoned; accepting writes again", "to", h.hostname)
	}
	if h.release != nil {
		h.release()
	}
}

// endHandoff releases a handoff's hold once the node is no longer primary.
func (n *node) endHandoff() {
	n.mu.Lock()
	h := n.handoff
	n.handoff = nil
	n.mu.Unlock()
	if h != nil {
		if h.timer != nil {
			h.timer.Stop()
		}
		if h.release != nil {
			h.release()
		}
	}
}

// handleDemote hands the lease to a connected candidate, the most caught
// up first.
func (n *node) handleDemote(w http.ResponseWriter, r *http.Request) {
	if !n.IsPrimary() {
		lhttp.WriteJSON(w, http.StatusConflict, lhttp.Error{Error: "demote: this node is not the primary"})
		return
	}
	pos := n.store.Positions()
	var pick *lhttp.ReplicaInfo
	for _, rep := range n.http.Replicas() {
		if !rep.Candidate || rep.AdvertiseURL == "" {
			continue
		}
		rep := rep
		if pick == nil || (caughtUp(rep.Positions, pos) && !caughtUp(pick.Positions, pos)) {
			pick = &rep
		}
	}
	if pick == nil {
		lhttp.WriteJSON(w, http.StatusConflict, lhttp.Error{Error: "demote: no candidate replica is connected"})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*handoffTimeout)
	defer cancel()
	var info Info
	if err := postJSON(ctx, pick.AdvertiseURL+"/promote", struct{}{}, &info); err != nil {
		lhttp.WriteJSON(w, http.StatusConflict, lhttp.Error{Error: fmt.Sprintf("demote: promote %s: %v", pick.Hostname, err)})
		return
	}
	lhttp.WriteJSON(w, http.StatusOK, info)
}

func caughtUp(have, want map[string]ltx.Pos) bool {
	for name, p := range want {
		if have[name] != p {
			return false
		}
	}
	return true
}

// postJSON posts body as JSON to url and decodes a 200 answer into out
// (if not nil); any other answer becomes an error with the node's message.
func postJSON(ctx context.Context, url string, body, out any) error {
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	return callJSON(ctx, http.MethodPost, url, bytes.NewReader(b), out)
}

// getJSON decodes a 200 answer from url into out.
func getJSON(ctx context.Context, url string, out any) error {
	return callJSON(ctx, http.MethodGet, url, nil, out)
}

func callJSON(ctx context.Context, method, url string, body io.Reader, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(url, "/"), body)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := lhttp.CheckResponse(resp); err != nil {
		return fmt.Errorf("%s: %w", url, err)
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}
