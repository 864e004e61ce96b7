package node

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"

	lhttp "github.com/litefs-project/litefs/http"
	"github.com/litefs-project/litefs/store"
)

// Mux is where the node registers its endpoints.
type Mux interface {
	Handle(pattern string, h http.Handler)
}

// Register adds the node's endpoints: GET /info, POST /promote, /demote,
// /handoff and /handoff/release.
func (n *Node) Register(mux Mux) {
	mux.Handle("GET /info", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		lhttp.WriteJSON(w, http.StatusOK, n.Info())
	}))
	mux.Handle("POST /promote", http.HandlerFunc(n.handlePromote))
	mux.Handle("POST /demote", http.HandlerFunc(n.handleDemote))
	mux.Handle("POST /handoff", http.HandlerFunc(n.handleHandoff))
	mux.Handle("POST /handoff/release", http.HandlerFunc(n.handleHandoffRelease))
}

// status maps the node's errors to HTTP statuses.
func status(err error) int {
	switch {
	case errors.Is(err, store.ErrNotPrimary), errors.Is(err, store.ErrTermEnded):
		return http.StatusServiceUnavailable
	case errors.Is(err, ErrStaticLease), errors.Is(err, ErrNotCandidate):
		return http.StatusBadRequest
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return http.StatusRequestTimeout
	}
	return http.StatusConflict
}

func writeErr(w http.ResponseWriter, err error) {
	lhttp.WriteJSON(w, status(err), lhttp.Error{Error: err.Error()})
}

func decode(r *http.Request, v any) error {
	err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(v)
	if errors.Is(err, io.EOF) {
		return nil // an empty body is an empty request
	}
	return err
}

func (n *Node) handlePromote(w http.ResponseWriter, r *http.Request) {
	var req lhttp.PromoteRequest
	if err := decode(r, &req); err != nil {
		lhttp.WriteJSON(w, http.StatusBadRequest, lhttp.Error{Error: "invalid promote request: " + err.Error()})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*n.cfg.HandoffTimeout)
	defer cancel()
	if err := n.promote(ctx, req); err != nil {
		writeErr(w, err)
		return
	}
	lhttp.WriteJSON(w, http.StatusOK, n.Info())
}

func (n *Node) handleDemote(w http.ResponseWriter, r *http.Request) {
	info, err := n.HandOff(r.Context())
	if err != nil {
		writeErr(w, err)
		return
	}
	lhttp.WriteJSON(w, http.StatusOK, info)
}

func (n *Node) handleHandoff(w http.ResponseWriter, r *http.Request) {
	var req lhttp.HandoffRequest
	if err := decode(r, &req); err != nil || req.Hostname == "" {
		lhttp.WriteJSON(w, http.StatusBadRequest, lhttp.Error{Error: "invalid handoff request: want {\"hostname\": ..., \"epoch\": N}"})
		return
	}
	resp, err := n.beginHandoff(r.Context(), req)
	if err != nil {
		writeErr(w, err)
		return
	}
	lhttp.WriteJSON(w, http.StatusOK, resp)
}

func (n *Node) handleHandoffRelease(w http.ResponseWriter, r *http.Request) {
	var req lhttp.HandoffRequest
	if err := decode(r, &req); err != nil {
		lhttp.WriteJSON(w, http.StatusBadRequest, lhttp.Error{Error: "invalid handoff request"})
		return
	}
	if err := n.releaseHandoff(r.Context(), req); err != nil {
		code := status(err)
		if !errors.Is(err, ErrNoHandoff) && code == http.StatusConflict {
			code = http.StatusInternalServerError // the lease store failed
		}
		lhttp.WriteJSON(w, code, lhttp.Error{Error: err.Error()})
		return
	}
	lhttp.WriteJSON(w, http.StatusOK, struct{}{})
}
