package http

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/litefs-project/litefs/ltx"
	"github.com/litefs-project/litefs/store"
)

// Tests of the HALT commit channel (haltchan.go) between a real client and
// a real server.

// sqliteChangesets returns n changesets of a real SQLite database, one
// row more each, every one holding all its pages: the first one creates
// the database.
func sqliteChangesets(t *testing.T, n int) ([][]byte, []ltx.Pos) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "src.db")
	db, err := sql.Open("sqlite3", "file:"+path+"?_journal_mode=DELETE")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec("PRAGMA page_size=4096; CREATE TABLE t (v TEXT)"); err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	var positions []ltx.Pos
	var prev ltx.Pos
	for i := 0; i < n; i++ {
		if _, err := db.Exec("INSERT INTO t VALUES ('row')"); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		const ps = 4096
		var post ltx.Checksum
		for pgno := 1; pgno*ps <= len(b); pgno++ {
			post ^= ltx.ChecksumPage(uint32(pgno), b[(pgno-1)*ps:pgno*ps])
		}
		pos := ltx.Pos{TXID: prev.TXID + 1, PostApplyChecksum: ltx.ChecksumFlag | post}
		hdr := ltx.Header{Version: ltx.Version, PageSize: ps, Commit: uint32(len(b) / ps), MinTXID: pos.TXID, MaxTXID: pos.TXID, Timestamp: time.Now().UnixMilli()}
		if pos.TXID > 1 {
			hdr.PreApplyChecksum = prev.PostApplyChecksum
		}
		var buf bytes.Buffer
		enc, err := ltx.NewEncoder(&buf)
		if err != nil {
			t.Fatal(err)
		}
		if err := enc.EncodeHeader(hdr); err != nil {
			t.Fatal(err)
		}
		for pgno := 1; pgno*ps <= len(b); pgno++ {
			if err := enc.EncodePage(ltx.PageHeader{Pgno: uint32(pgno)}, b[(pgno-1)*ps:pgno*ps]); err != nil {
				t.Fatal(err)
			}
		}
		enc.SetPostApplyChecksum(pos.PostApplyChecksum)
		if err := enc.Close(); err != nil {
			t.Fatal(err)
		}
		out = append(out, buf.Bytes())
		positions = append(positions, pos)
		prev = pos
	}
	return out, positions
}

// countPaths counts the requests of each path that reach h.
type countPaths struct {
	h     http.Handler
	paths map[string]*atomic.Int64
	hide  string // a path answered 404, as a server without it would
}

func (c *countPaths) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if n := c.paths[r.URL.Path]; n != nil {
		n.Add(1)
	}
	if r.URL.Path == c.hide {
		http.NotFound(w, r)
		return
	}
	c.h.ServeHTTP(w, r)
}

// TestHaltChannelCommits: a replica's commits under one lock, and its
// request to make them durable, travel over one commit channel; a
// refusal ends the channel and the next commit opens another; a primary
// without commit channels gets each commit as a request of its own.
func TestHaltChannelCommits(t *testing.T) {
	for _, legacy := range []bool{false, true} {
		t.Run(map[bool]string{false: "channel", true: "no-channel"}[legacy], func(t *testing.T) {
			c := &countPaths{paths: map[string]*atomic.Int64{"/halt/commits": {}, "/halt/commit": {}}}
			if legacy {
				c.hide = "/halt/commits"
			}
			p := newHaltPairWith(t, store.TermOptions{HaltTTL: time.Minute}, func(h http.Handler) http.Handler {
				c.h = h
				return c
			})
			h, err := p.client.Acquire(context.Background(), "db", true)
			if err != nil {
				t.Fatal(err)
			}
			changesets, positions := sqliteChangesets(t, 3)
			db := p.primary.DB("db")
			commit := func(i int, sync bool) {
				t.Helper()
				if err := h.Commit(context.Background(), changesets[i], sync); err != nil {
					t.Fatalf("commit %d: %v", i+1, err)
				}
				if pos := db.Pos(); pos != positions[i] {
					t.Fatalf("primary at %s after commit %d, want %s", pos, i+1, positions[i])
				}
			}
			commit(0, false)
			commit(1, true)
			if err := h.Sync(context.Background(), positions[1].TXID); err != nil {
				t.Fatalf("sync: %v", err)
			}
			// A refused commit (the first changeset again) ends the
			// channel; the next opens another.
			if err := h.Commit(context.Background(), changesets[0], false); !errors.Is(err, store.ErrCommitRefused) {
				t.Fatalf("commit of a changeset that does not continue the database: %v, want a refusal", err)
			}
			if db.Pos() != positions[1] {
				t.Fatalf("the refused commit moved the primary to %s", db.Pos())
			}
			commit(2, false)
			if err := h.Lost(); err != nil {
				t.Fatalf("the lock was lost: %v", err)
			}
			channels, requests := c.paths["/halt/commits"].Load(), c.paths["/halt/commit"].Load()
			if legacy {
				if channels != 1 || requests != 4 {
					t.Fatalf("%d channel requests and %d commit requests to a primary without channels, want 1 and 4", channels, requests)
				}
				return
			}
			if channels != 2 || requests != 0 {
				t.Fatalf("%d channels and %d commit requests, want 2 channels (one before the refusal, one after) and no requests", channels, requests)
			}
		})
	}
}

// TestHaltChannelEndsWithGrant: the primary ends the channel when the
// grant ends, and a commit after that fails without changing anything.
func TestHaltChannelEndsWithGrant(t *testing.T) {
	p := newHaltPair(t)
	h, err := p.client.Acquire(context.Background(), "db", true)
	if err != nil {
		t.Fatal(err)
	}
	changesets, positions := sqliteChangesets(t, 2)
	if err := h.Commit(context.Background(), changesets[0], false); err != nil {
		t.Fatal(err)
	}
	ch := h.(*remoteHalt).ch
	if err := p.term.ReleaseHalt(p.epoch, "db", h.(*remoteHalt).ref.ID); err != nil {
		t.Fatal(err)
	}
	// The channel's connection is closed by the primary.
	if _, err := ch.br.ReadByte(); err == nil {
		t.Fatal("the primary sent something on a channel whose grant ended")
	}
	if err := h.Commit(context.Background(), changesets[1], false); err == nil {
		t.Fatal("a commit after the grant ended succeeded")
	}
	if pos := p.primary.DB("db").Pos(); pos != positions[0] {
		t.Fatalf("primary at %s, want %s", pos, positions[0])
	}
}

// TestHaltChannelHeaderChecks: a channel is refused, before it is
// switched to, for a lock ID that is not the holder's, a database the lock
// is not on, or a missing Upgrade.
func TestHaltChannelHeaderChecks(t *testing.T) {
	p := newHaltPair(t)
	h, err := p.client.Acquire(context.Background(), "db", true)
	if err != nil {
		t.Fatal(err)
	}
	id := h.(*remoteHalt).ref.ID.String()
	for _, tc := range []struct {
		name, query, id, upgrade string
		code                     int
	}{
		{"not the holder", "name=db&epoch=3", "ab" + id[2:], haltChannelProtocol, http.StatusConflict},
		{"another database", "name=other&epoch=3", id, haltChannelProtocol, http.StatusConflict},
		{"another term", "name=db&epoch=2", id, haltChannelProtocol, http.StatusConflict},
		{"malformed ID", "name=db&epoch=3", "xyz", haltChannelProtocol, http.StatusBadRequest},
		{"no upgrade", "name=db&epoch=3", id, "", http.StatusBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(http.MethodPost, p.srv.URL+"/halt/commits?"+tc.query, nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/octet-stream")
			req.Header.Set(HaltIDHeader, tc.id)
			if tc.upgrade != "" {
				req.Header.Set("Connection", "Upgrade")
				req.Header.Set("Upgrade", tc.upgrade)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.code {
				t.Fatalf("%d, want %d", resp.StatusCode, tc.code)
			}
		})
	}
	if err := h.Lost(); err != nil {
		t.Fatalf("the holder lost its lock: %v", err)
	}
}
