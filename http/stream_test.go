package http

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"testing/synctest"
	"time"

	_ "github.com/mattn/go-sqlite3"

	"github.com/litefs-project/litefs/ltx"
	"github.com/litefs-project/litefs/store"
)

// The primary's side of the stream, run in a synctest bubble so that its
// timers run on the bubble's clock: a frame that arrives after the stream
// waited for a timer arrives at a later bubble time, deterministically,
// and one sent at once at the same bubble time as the commit.

// roundWriter is the answer of a stream: it collects what the stream
// writes and hands each flushed round to the test, holding the stream in
// Flush until the test takes it, as a replica that is slow to read would.
type roundWriter struct {
	header http.Header
	buf    bytes.Buffer
	rounds chan []byte
	done   chan struct{} // closed when the test stops reading
}

func newRoundWriter() *roundWriter {
	return &roundWriter{header: make(http.Header), rounds: make(chan []byte), done: make(chan struct{})}
}

func (w *roundWriter) Header() http.Header         { return w.header }
func (w *roundWriter) WriteHeader(int)             {}
func (w *roundWriter) Write(p []byte) (int, error) { return w.buf.Write(p) }

func (w *roundWriter) FlushError() error {
	if w.buf.Len() == 0 {
		return nil
	}
	round := bytes.Clone(w.buf.Bytes())
	w.buf.Reset()
	select {
	case w.rounds <- round:
		return nil
	case <-w.done:
		return io.ErrClosedPipe
	}
}

// sentFrame is a frame the stream sent, with its payload.
type sentFrame struct {
	Frame
	payload []byte
}

// next returns the frames of the next round the stream flushed.
func (w *roundWriter) next(t *testing.T) []sentFrame {
	t.Helper()
	var frames []sentFrame
	fr := NewFrameReader(bytes.NewReader(<-w.rounds))
	for {
		f, payload, err := fr.Next()
		if errors.Is(err, io.EOF) {
			return frames
		} else if err != nil {
			t.Fatalf("frame %d of the round: %v", len(frames), err)
		}
		b, err := io.ReadAll(payload)
		if err != nil {
			t.Fatalf("frame %d of the round: %v", len(frames), err)
		}
		frames = append(frames, sentFrame{f, b})
	}
}

// changesets lists the TXIDs of the changesets for name in a round.
func changesets(t *testing.T, frames []sentFrame, name string) []ltx.TXID {
	t.Helper()
	var txids []ltx.TXID
	for _, f := range frames {
		if f.Type != FrameChangeset || f.Name != name {
			continue
		}
		hdr, err := ltx.DecodeHeader(bytes.NewReader(f.payload))
		if err != nil {
			t.Fatalf("changeset frame for %s: %v", name, err)
		}
		txids = append(txids, hdr.MinTXID)
	}
	return txids
}

// sqliteVersions makes n versions of one SQLite database, each with one
// more row than the one before, to be imported as n commits.
func sqliteVersions(t *testing.T, n int) []string {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "src.db")
	db, err := sql.Open("sqlite3", "file:"+src+"?_journal_mode=DELETE")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"); err != nil {
		t.Fatal(err)
	}
	var paths []string
	for i := range n {
		if _, err := db.Exec("INSERT INTO t (v) VALUES (?)", fmt.Sprintf("row %d", i)); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, fmt.Sprintf("v%d.db", i+1))
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	return paths
}

// streamHarness is a primary's store in its term with one stream open to
// a replica that has nothing yet.
type streamHarness struct {
	st   *store.Store
	term *store.Term
	w    *roundWriter
}

const streamEpoch = 3

// startStream opens the store and the stream inside the bubble, and reads
// the stream's first round (ready: the store is empty). Everything it
// starts ends when the bubble's test does.
func startStream(t *testing.T) *streamHarness {
	t.Helper()
	st, err := store.Open(store.Options{Dir: t.TempDir(), Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	term, err := st.BeginTerm(t.Context(), store.TermOptions{Epoch: streamEpoch, HaltTTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(t.Context(), st, ServerOptions{Logger: quietLogger()})
	body, err := json.Marshal(StreamRequest{NodeID: "00000000000000AA", Epoch: streamEpoch})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	req := httptest.NewRequestWithContext(ctx, http.MethodPost, "/stream", bytes.NewReader(body))
	req.Header.Set("Content-Type", ContentTypeJSON)
	h := &streamHarness{st: st, term: term, w: newRoundWriter()}
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.handleStream(h.w, req)
	}()
	t.Cleanup(func() {
		cancel()
		close(h.w.done)
		<-served
		term.End(context.WithoutCancel(t.Context()))
		st.Close()
	})
	if f := h.w.next(t); len(f) != 1 || f[0].Type != FrameReady {
		t.Fatalf("first round: %v, want the ready frame alone", f)
	}
	return h
}

// commit imports path as the next transaction of name.
func (h *streamHarness) commit(t *testing.T, name, path string) ltx.TXID {
	t.Helper()
	pos, err := h.term.Import(t.Context(), streamEpoch, name, path)
	if err != nil {
		t.Fatalf("commit %s: %v", path, err)
	}
	return pos.TXID
}

func TestStreamSendsAtOnce(t *testing.T) {
	versions := sqliteVersions(t, 3)
	synctest.Test(t, func(t *testing.T) {
		h := startStream(t)
		// One commit after another, each once the replica has the one
		// before, as a writer waiting for its reads on a replica does:
		// the stream is idle each time, and must not wait to send.
		for _, v := range versions {
			start := time.Now()
			txid := h.commit(t, "db", v)
			frames := h.w.next(t)
			if got := changesets(t, frames, "db"); len(got) != 1 || got[0] != txid {
				t.Fatalf("commit %s: round holds changesets %v, want [%s]", txid, got, txid)
			}
			if waited := time.Since(start); waited != 0 {
				t.Fatalf("commit %s reached the replica after the stream waited %s", txid, waited)
			}
		}
	})
}

func TestStreamBatchesWhileBusy(t *testing.T) {
	versions := sqliteVersions(t, 4)
	synctest.Test(t, func(t *testing.T) {
		h := startStream(t)
		// The replica is slow: the stream is still sending the first
		// commit when the others are made. They go together in the next
		// round, one flush for all of them.
		first := h.commit(t, "db", versions[0])
		synctest.Wait() // the stream is in its flush of the first commit
		var rest []ltx.TXID
		for _, v := range versions[1:] {
			rest = append(rest, h.commit(t, "db", v))
		}
		if got := changesets(t, h.w.next(t), "db"); len(got) != 1 || got[0] != first {
			t.Fatalf("first round: changesets %v, want [%s]", got, first)
		}
		got := changesets(t, h.w.next(t), "db")
		if fmt.Sprint(got) != fmt.Sprint(rest) {
			t.Fatalf("second round: changesets %v, want %v in one round", got, rest)
		}
	})
}
