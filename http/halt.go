package http

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"

	"github.com/litefs-project/litefs/ltx"
	"github.com/litefs-project/litefs/store"
)

// The HALT protocol between a replica and the primary:
//
//	POST /halt {name, nodeID, wait, epoch}
//	    answers, once granted, 200 and a line {id, ttlMS, pos, epoch}, then
//	    keeps the response open for as long as the grant lives: a line
//	    {lost} if the primary ends it, the end of the body when it is gone.
//	    The replica keeps the connection open while it holds the lock; when
//	    it closes (the replica died), the primary ends the grant at once.
//	POST /halt/keepalive {name, id, epoch}   every third of the TTL
//	POST /halt/commit?name=&epoch=            an LTX file committed locally,
//	    with the lock ID in the Litefs-Halt-Id header
//	POST /halt/release {name, id, epoch}
//
// Every request names the epoch of the term it is for; the primary refuses
// any other with 409. A lock ID is 128 random bits written as 32
// hexadecimal digits (store.HaltID); a malformed one is refused with 400,
// one that is not the holder's with 409. At most store.DefaultHaltQueue
// requests wait for one database's lock; more are refused with 429, and a
// request that waited store.DefaultHaltQueueWait is answered 408 (the
// replica asks again in both cases).

// HaltIDHeader carries the lock ID of a forwarded commit: a header rather
// than the URL, which logs and proxies record.
const HaltIDHeader = "Litefs-Halt-Id"

// HaltRequest asks the primary for the HALT lock (POST /halt).
type HaltRequest struct {
	Name   string `json:"name"`
	NodeID string `json:"nodeID"`
	Wait   bool   `json:"wait"`
	Epoch  uint64 `json:"epoch"`
}

// HaltResponse is a line of the answer to POST /halt: first the grant,
// then, if the primary ends it, why.
type HaltResponse struct {
	ID    store.HaltID `json:"id,omitzero"`
	TTLMS int64        `json:"ttlMS,omitempty"`
	Pos   ltx.Pos      `json:"pos"`
	Epoch uint64       `json:"epoch,omitempty"`
	Lost  string       `json:"lost,omitempty"`
}

// HaltRef names a granted lock (POST /halt/keepalive, /halt/release).
type HaltRef struct {
	Name  string       `json:"name"`
	ID    store.HaltID `json:"id"`
	Epoch uint64       `json:"epoch"`
}

func (s *Server) registerHalt() {
	s.mux.HandleFunc("POST /halt", s.handleHalt)
	s.mux.HandleFunc("POST /halt/keepalive", s.handleHaltRef(func(t *store.Term, r HaltRef) error { return t.KeepHalt(r.Epoch, r.Name, r.ID) }))
	s.mux.HandleFunc("POST /halt/release", s.handleHaltRef(func(t *store.Term, r HaltRef) error { return t.ReleaseHalt(r.Epoch, r.Name, r.ID) }))
	s.mux.HandleFunc("POST /halt/commit", s.handleHaltCommit)
}

// termStatus maps an error of the term and HALT protocol to an HTTP status.
func termStatus(err error) int {
	switch {
	case errors.Is(err, store.ErrHaltHeld), errors.Is(err, store.ErrHaltNotHeld), errors.Is(err, store.ErrStaleEpoch):
		return http.StatusConflict
	case errors.Is(err, store.ErrBadHaltID):
		return http.StatusBadRequest
	case errors.Is(err, store.ErrHaltQueueFull):
		return http.StatusTooManyRequests
	case errors.Is(err, store.ErrTooLarge):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, store.ErrCorruptChangeset):
		return http.StatusUnprocessableEntity
	case errors.Is(err, store.ErrReadOnly), errors.Is(err, store.ErrTermEnded), errors.Is(err, store.ErrNotPrimary):
		return http.StatusServiceUnavailable
	case errors.Is(err, store.ErrNotExist):
		return http.StatusNotFound
	case errors.Is(err, store.ErrMismatch):
		return http.StatusUnprocessableEntity
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return http.StatusRequestTimeout
	}
	return http.StatusBadRequest
}

// currentTerm returns this node's term, or answers 503.
func (s *Server) currentTerm(w http.ResponseWriter) *store.Term {
	t := s.store.CurrentTerm()
	if t == nil {
		writeError(w, http.StatusServiceUnavailable, "%v", store.ErrNotPrimary)
	}
	return t
}

func (s *Server) handleHalt(w http.ResponseWriter, r *http.Request) {
	var req HaltRequest
	if err := decodeBody(r, &req); err != nil || req.Name == "" {
		writeError(w, http.StatusBadRequest, "invalid halt request: want {\"name\": DB, \"nodeID\": ..., \"wait\": bool, \"epoch\": N}")
		return
	}
	term := s.currentTerm(w)
	if term == nil {
		return
	}
	g, err := term.GrantHalt(r.Context(), store.HaltRequest{DB: req.Name, NodeID: req.NodeID, Epoch: req.Epoch, Wait: req.Wait})
	if err != nil {
		code := termStatus(err)
		if code == http.StatusTooManyRequests {
			w.Header().Set("Retry-After", "1")
		}
		writeError(w, code, "%v", err)
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	enc := json.NewEncoder(w)
	if enc.Encode(HaltResponse{ID: g.ID, TTLMS: g.TTL.Milliseconds(), Pos: g.Pos, Epoch: g.Epoch}) != nil || rc.Flush() != nil {
		term.DropHalt(g.ID)
		return
	}
	select {
	case <-g.Done():
		if err := g.Err(); err != nil {
			enc.Encode(HaltResponse{Lost: err.Error()})
			rc.Flush()
		}
	case <-r.Context().Done():
		// The holder's connection closed: its node is gone.
		term.DropHalt(g.ID)
	}
}

// decodeBody decodes a small JSON request body and reads it to its end,
// which lets the server notice at once when the client goes away.
func decodeBody(r *http.Request, v any) error {
	err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(v)
	io.Copy(io.Discard, io.LimitReader(r.Body, 64<<10))
	return err
}

func (s *Server) handleHaltRef(do func(*store.Term, HaltRef) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var ref HaltRef
		if err := decodeBody(r, &ref); err != nil || ref.Name == "" || ref.ID.IsZero() {
			if err == nil {
				err = errors.New("no name or lock ID")
			}
			writeError(w, http.StatusBadRequest, "invalid request: want {\"name\": DB, \"id\": LOCK_ID, \"epoch\": N}: %v", err)
			return
		}
		term := s.currentTerm(w)
		if term == nil {
			return
		}
		if err := do(term, ref); err != nil {
			writeError(w, termStatus(err), "%v", err)
			return
		}
		WriteJSON(w, http.StatusOK, struct{}{})
	}
}

// handleHaltCommit applies a changeset from the HALT holder: the body is
// the LTX file, ?name= the database, ?epoch= the term and the
// Litefs-Halt-Id header the lock ID. Everything that can be checked
// without the body (the lock, the database, the declared size) is checked
// before a byte of it is read.
func (s *Server) handleHaltCommit(w http.ResponseWriter, r *http.Request) {
	// A refusal reads nothing of the body, so the connection cannot serve
	// another request; closing it also keeps the server from reading the
	// body to its end before answering.
	refuse := func(code int, format string, args ...any) {
		w.Header().Set("Connection", "close")
		writeError(w, code, format, args...)
	}
	q := r.URL.Query()
	name := q.Get("name")
	epoch, eerr := strconv.ParseUint(q.Get("epoch"), 10, 64)
	if name == "" || eerr != nil {
		refuse(http.StatusBadRequest, "invalid halt commit: want ?name=DB&epoch=N, the lock ID in %s and an LTX body", HaltIDHeader)
		return
	}
	id, err := store.ParseHaltID(r.Header.Get(HaltIDHeader))
	if err != nil {
		refuse(http.StatusBadRequest, "invalid halt commit: %s: %v", HaltIDHeader, err)
		return
	}
	if r.ContentLength < 0 {
		refuse(http.StatusLengthRequired, "invalid halt commit: a changeset must declare its Content-Length")
		return
	}
	term := s.store.CurrentTerm()
	if term == nil {
		refuse(http.StatusServiceUnavailable, "%v", store.ErrNotPrimary)
		return
	}
	if err := term.CheckHaltCommit(epoch, name, id, r.ContentLength); err != nil {
		refuse(termStatus(err), "%v", err)
		return
	}
	sp := &spool{dir: s.store.Dir()}
	defer sp.Close()
	if _, err := io.Copy(sp, http.MaxBytesReader(w, r.Body, r.ContentLength)); err != nil {
		writeError(w, http.StatusBadRequest, "read changeset: %v", err)
		return
	}
	pos, err := term.CommitHalted(r.Context(), epoch, name, id, sp, sp.size)
	if err != nil {
		writeError(w, termStatus(err), "%v", err)
		return
	}
	WriteJSON(w, http.StatusOK, struct {
		Pos ltx.Pos `json:"pos"`
	}{pos})
}
