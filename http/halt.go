package http

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/litefs-project/litefs/ltx"
	"github.com/litefs-project/litefs/store"
)

// DefaultHaltTTL is how long a HALT lock outlives its holder's last sign
// of life.
const DefaultHaltTTL = 5 * time.Second

// HaltRequest asks the primary for the HALT lock (POST /halt).
type HaltRequest struct {
	Name   string `json:"name"`
	NodeID string `json:"nodeID"`
	Wait   bool   `json:"wait"`
}

// HaltResponse grants it.
type HaltResponse struct {
	ID    uint64  `json:"id,string"`
	TTLMS int64   `json:"ttlMS"`
	Pos   ltx.Pos `json:"pos"`
}

// HaltRef names a granted lock (POST /halt/keepalive, /halt/release).
type HaltRef struct {
	Name string `json:"name"`
	ID   uint64 `json:"id,string"`
}

func (s *Server) registerHalt() {
	s.mux.HandleFunc("POST /halt", s.handleHalt)
	s.mux.HandleFunc("POST /halt/keepalive", s.handleHaltRef(func(r HaltRef) error { return s.store.KeepHalt(r.Name, r.ID) }))
	s.mux.HandleFunc("POST /halt/release", s.handleHaltRef(func(r HaltRef) error { return s.store.ReleaseHalt(r.Name, r.ID) }))
	s.mux.HandleFunc("POST /halt/commit", s.handleHaltCommit)
}

// haltStatus maps a HALT error to an HTTP status.
func haltStatus(err error) int {
	switch {
	case errors.Is(err, store.ErrHaltHeld), errors.Is(err, store.ErrHaltNotHeld):
		return http.StatusConflict
	case errors.Is(err, store.ErrReadOnly):
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

func (s *Server) handleHalt(w http.ResponseWriter, r *http.Request) {
	var req HaltRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&req); err != nil || req.Name == "" {
		writeError(w, http.StatusBadRequest, "invalid halt request: want {\"name\": DB, \"nodeID\": ..., \"wait\": bool}")
		return
	}
	if !s.opts.IsPrimary() {
		writeError(w, http.StatusServiceUnavailable, "this node is not the primary")
		return
	}
	g, err := s.store.GrantHalt(r.Context(), req.Name, req.NodeID, s.opts.HaltTTL, req.Wait)
	if err != nil {
		writeError(w, haltStatus(err), "%v", err)
		return
	}
	WriteJSON(w, http.StatusOK, HaltResponse{ID: g.ID, TTLMS: s.opts.HaltTTL.Milliseconds(), Pos: g.Pos})
}

func (s *Server) handleHaltRef(do func(HaltRef) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var ref HaltRef
		if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&ref); err != nil || ref.Name == "" {
			writeError(w, http.StatusBadRequest, "invalid request: want {\"name\": DB, \"id\": LOCK_ID}")
			return
		}
		if err := do(ref); err != nil {
			writeError(w, haltStatus(err), "%v", err)
			return
		}
		WriteJSON(w, http.StatusOK, struct{}{})
	}
}

// handleHaltCommit applies a changeset from the HALT holder: the body is
// the LTX file, ?name= the database and ?id= the lock ID.
func (s *Server) handleHaltCommit(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("name")
	id, err := strconv.ParseUint(r.URL.Query().Get("id"), 10, 64)
	if name == "" || err != nil {
		writeError(w, http.StatusBadRequest, "invalid halt commit: want ?name=DB&id=LOCK_ID and an LTX body")
		return
	}
	sp := &spool{dir: s.store.Dir()}
	defer sp.Close()
	if _, err := io.Copy(sp, http.MaxBytesReader(w, r.Body, 1<<34)); err != nil {
		writeError(w, http.StatusBadRequest, "read changeset: %v", err)
		return
	}
	pos, err := s.store.CommitHalted(r.Context(), name, id, sp, sp.size)
	if err != nil {
		writeError(w, haltStatus(err), "%v", err)
		return
	}
	WriteJSON(w, http.StatusOK, struct {
		Pos ltx.Pos `json:"pos"`
	}{pos})
}

// HaltClient obtains HALT locks from the primary for a replica: it
// implements store.Halter.
type HaltClient struct {
	Store      *store.Store
	PrimaryURL func() string // the current primary's API, "" if none
	NodeID     string
	Logger     *slog.Logger
	client     http.Client
}

// Acquire asks the primary for the lock and waits until this node has the
// primary's position.
func (c *HaltClient) Acquire(ctx context.Context, name string, wait bool) (store.Halt, error) {
	base := c.PrimaryURL()
	if base == "" {
		return nil, errors.New("no primary is known")
	}
	var resp HaltResponse
	err := c.post(ctx, base+"/halt", HaltRequest{Name: name, NodeID: c.NodeID, Wait: wait}, &resp)
	var se *StatusError
	if errors.As(err, &se) && se.Code == http.StatusConflict && !wait {
		return nil, store.ErrHaltHeld
	} else if err != nil {
		return nil, err
	}
	h := &remoteHalt{c: c, base: base, ref: HaltRef{Name: name, ID: resp.ID}, ttl: time.Duration(resp.TTLMS) * time.Millisecond, stop: make(chan struct{})}
	if err := c.waitPos(ctx, name, resp.Pos); err != nil {
		h.Release(context.Background())
		return nil, err
	}
	go h.keepAlive()
	return h, nil
}

// waitPos waits until the local database reaches pos.
func (c *HaltClient) waitPos(ctx context.Context, name string, pos ltx.Pos) error {
	for {
		changed := c.Store.Changed()
		if db := c.Store.DB(name); db != nil {
			cur := db.Pos()
			if cur == pos {
				return nil
			}
			if cur.TXID >= pos.TXID {
				return fmt.Errorf("%s is at %s, which is not on the primary (at %s)", name, cur, pos)
			}
		} else if pos.TXID == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("catching up with the primary's %s at %s: %w", name, pos, ctx.Err())
		case <-changed:
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (c *HaltClient) post(ctx context.Context, u string, body, out any) error {
	var rd io.Reader
	ctype := "application/json"
	if b, ok := body.([]byte); ok {
		rd, ctype = bytes.NewReader(b), "application/octet-stream"
	} else {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", ctype)
	resp, err := c.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := CheckResponse(resp); err != nil {
		return err
	}
	if out != nil {
		return json.NewDecoder(resp.Body).Decode(out)
	}
	return nil
}

// remoteHalt is a HALT lock held from the primary.
type remoteHalt struct {
	c    *HaltClient
	base string
	ref  HaltRef
	ttl  time.Duration

	mu   sync.Mutex
	lost error // set once the primary no longer knows the lock
	stop chan struct{}
	once sync.Once
}

// keepAlive renews the lock three times per TTL until it is released.
func (h *remoteHalt) keepAlive() {
	t := time.NewTicker(max(h.ttl/3, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-h.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), h.ttl)
		err := h.c.post(ctx, h.base+"/halt/keepalive", h.ref, nil)
		cancel()
		var se *StatusError
		if errors.As(err, &se) && se.Code == http.StatusConflict {
			h.mu.Lock()
			h.lost = fmt.Errorf("HALT lock %d on %s was lost: %s", h.ref.ID, h.ref.Name, se.Message)
			h.mu.Unlock()
			h.c.Logger.Warn("HALT lock lost", "db", h.ref.Name, "lock_id", h.ref.ID, "err", se.Message)
			return
		} else if err != nil {
			h.c.Logger.Warn("keep HALT lock alive", "db", h.ref.Name, "err", err)
		}
	}
}

// Commit sends a changeset to the primary.
func (h *remoteHalt) Commit(ctx context.Context, data []byte) error {
	h.mu.Lock()
	lost := h.lost
	h.mu.Unlock()
	if lost != nil {
		return lost
	}
	q := url.Values{"name": {h.ref.Name}, "id": {strconv.FormatUint(h.ref.ID, 10)}}
	if err := h.c.post(ctx, h.base+"/halt/commit?"+q.Encode(), data, nil); err != nil {
		return fmt.Errorf("primary %s refused the commit: %w", strings.TrimPrefix(h.base, "http://"), err)
	}
	return nil
}

// Release gives the lock back.
func (h *remoteHalt) Release(ctx context.Context) error {
	h.once.Do(func() { close(h.stop) })
	return h.c.post(ctx, h.base+"/halt/release", h.ref, nil)
}
