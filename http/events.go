package http

import (
	"encoding/json"
	"net/http"
	"sync"
	"time"

	"github.com/litefs-project/litefs/ltx"
)

// The /events endpoint streams newline-delimited JSON in the format of
// LiteFS's event stream, which the litefs-go client library decodes: an
// "init" event, then a "tx" event for every transaction of every database
// and a "primaryChange" event whenever the primary changes.

// Event is one event of the stream.
type Event struct {
	Type string `json:"type"`
	DB   string `json:"db,omitempty"`
	Data any    `json:"data,omitempty"`
}

// Event types.
const (
	EventInit          = "init"
	EventTx            = "tx"
	EventPrimaryChange = "primaryChange"
)

// RoleEventData is the data of init and primaryChange events.
type RoleEventData struct {
	IsPrimary bool   `json:"isPrimary"`
	Hostname  string `json:"hostname,omitempty"` // the primary's
	Epoch     uint64 `json:"epoch,omitempty"`    // the primary's term
}

// TxEventData is the data of a tx event.
type TxEventData struct {
	TXID              string    `json:"txID"`
	PostApplyChecksum string    `json:"postApplyChecksum"`
	PageSize          uint32    `json:"pageSize"`
	Commit            uint32    `json:"commit"`
	Timestamp         time.Time `json:"timestamp"`
}

// roleHub passes role changes to every /events subscriber.
type roleHub struct {
	mu   sync.Mutex
	role RoleEventData
	subs map[chan RoleEventData]struct{}
}

// SetRole records this node's role and tells every subscriber: whether it
// is the primary, the primary's hostname (on a replica) and its epoch.
func (s *Server) SetRole(isPrimary bool, primaryHostname string, epoch uint64) {
	h := &s.roles
	h.mu.Lock()
	defer h.mu.Unlock()
	r := RoleEventData{IsPrimary: isPrimary, Hostname: primaryHostname, Epoch: epoch}
	if r == h.role {
		return
	}
	h.role = r
	for ch := range h.subs {
		select {
		case ch <- r:
		default: // a subscriber that fell behind gets the latest at its next read
			select {
			case <-ch:
			default:
			}
			ch <- r
		}
	}
}

func (h *roleHub) subscribe() (RoleEventData, chan RoleEventData) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.subs == nil {
		h.subs = make(map[chan RoleEventData]struct{})
	}
	ch := make(chan RoleEventData, 1)
	h.subs[ch] = struct{}{}
	return h.role, ch
}

func (h *roleHub) unsubscribe(ch chan RoleEventData) {
	h.mu.Lock()
	delete(h.subs, ch)
	h.mu.Unlock()
}

func (s *Server) handleEvents(w http.ResponseWriter, r *http.Request) {
	role, roles := s.roles.subscribe()
	defer s.roles.unsubscribe(roles)
	w.Header().Set("Content-Type", "application/x-ndjson")
	rc := http.NewResponseController(w)
	enc := json.NewEncoder(w)
	send := func(e Event) bool {
		if err := enc.Encode(e); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	if !send(Event{Type: EventInit, Data: role}) {
		return
	}

	// Follow every database from its position now.
	sent := make(map[string]ltx.TXID)
	for _, db := range s.store.DBs() {
		sent[db.Name()] = db.Pos().TXID
	}
	ctx := r.Context()
	for {
		changed := s.store.Changed()
		for _, db := range s.store.DBs() {
			name, pos := db.Name(), db.Pos()
			last, known := sent[name]
			if pos.TXID < last {
				last = 0 // replaced by a snapshot of an older history
			}
			if !known && pos.TXID > 0 {
				last = pos.TXID - 1 // a new database: from its latest transaction
			}
			for txid := last + 1; txid <= pos.TXID; txid++ {
				info, err := db.Log().Info(txid)
				if err != nil {
					continue // pruned, or replaced by a snapshot
				}
				if !send(Event{Type: EventTx, DB: name, Data: TxEventData{
					TXID:              info.Header.MaxTXID.String(),
					PostApplyChecksum: info.Trailer.PostApplyChecksum.String(),
					PageSize:          info.Header.PageSize,
					Commit:            info.Header.Commit,
					Timestamp:         time.UnixMilli(info.Header.Timestamp).UTC(),
				}}) {
					return
				}
			}
			sent[name] = pos.TXID
		}
		select {
		case <-ctx.Done():
			return
		case role := <-roles:
			if !send(Event{Type: EventPrimaryChange, Data: role}) {
				return
			}
		case <-changed:
		case <-time.After(30 * time.Second):
		}
	}
}
