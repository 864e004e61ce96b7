package http

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	_ "github.com/mattn/go-sqlite3"

	"github.com/litefs-project/litefs/ltx"
	"github.com/litefs-project/litefs/store"
)

// The API's limits against a real server on loopback, with a store of its
// own in its term as primary, and real SQLite files. Option values are
// small so that every deadline passes within a test; each wait is on a
// condition, bounded by a multiple of the deadline it checks.

// limitServer is a Server listening on 127.0.0.1, primary in epoch 3.
type limitServer struct {
	st   *store.Store
	term *store.Term
	srv  *Server
	addr string
	logs *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) contains(s string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Contains(b.b.String(), s)
}

func startLimitServer(t *testing.T, opts ServerOptions) *limitServer {
	t.Helper()
	st, err := store.Open(store.Options{Dir: t.TempDir(), Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	term, err := st.BeginTerm(t.Context(), store.TermOptions{Epoch: 3, HaltTTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	ls := &limitServer{st: st, term: term, logs: &syncBuffer{}}
	opts.Addr = "127.0.0.1:0"
	opts.Logger = slog.New(slog.NewTextHandler(ls.logs, nil))
	ls.srv = NewServer(context.Background(), st, opts)
	if err := ls.srv.Listen(); err != nil {
		t.Fatal(err)
	}
	ls.addr = ls.srv.Addr().String()
	served := make(chan error, 1)
	go func() { served <- ls.srv.Serve() }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		term.End(ctx)
		ls.srv.Shutdown(ctx)
		<-served
		st.Close()
	})
	return ls
}

func (ls *limitServer) url() string { return "http://" + ls.addr }

// uploads lists the temporary files of uploads in the store's directory.
func (ls *limitServer) uploads(t *testing.T) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(ls.st.Dir(), ".upload-*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// stageFiles lists the hidden page-stage files of snapshots this process
// holds open in the store's directory (they are unlinked at creation).
func (ls *limitServer) stageFiles(t *testing.T) []string {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, fd := range fds {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name()))
		if err == nil && strings.HasPrefix(target, ls.st.Dir()) && strings.Contains(target, "/.stage-") {
			out = append(out, target)
		}
	}
	return out
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// makeDB writes a SQLite database of about size bytes with real SQLite
// and returns its path; seed varies the content.
func makeDB(t *testing.T, size, seed int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), fmt.Sprintf("src-%d.db", seed))
	db, err := sql.Open("sqlite3", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows := max(size/1100, 1)
	for _, q := range []string{
		"CREATE TABLE t (id INTEGER PRIMARY KEY, seed INTEGER, v BLOB)",
		fmt.Sprintf("WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < %d) INSERT INTO t (seed, v) SELECT %d, randomblob(1000) FROM s", rows, seed),
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

func (ls *limitServer) importFile(t *testing.T, name, path string) ltx.Pos {
	t.Helper()
	pos, err := ls.term.Import(t.Context(), 3, name, path)
	if err != nil {
		t.Fatal(err)
	}
	return pos
}

func dial(t *testing.T, addr string, rcvbuf int) net.Conn {
	t.Helper()
	d := net.Dialer{}
	if rcvbuf > 0 {
		d.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, rcvbuf)
			})
			return errors.Join(err, serr)
		}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedByServer reads c to its end (what the server answered, if
// anything) and reports whether the server closed it within timeout.
func closedByServer(c net.Conn, timeout time.Duration) (string, bool) {
	c.SetReadDeadline(time.Now().Add(timeout))
	b, err := io.ReadAll(c)
	var ne net.Error
	return string(b), !(errors.As(err, &ne) && ne.Timeout())
}

// get asks path on a new connection and returns the status and body.
func get(addr, path string) (int, string, error) {
	resp, body, err := getResponse(addr, path)
	if err != nil {
		return 0, "", err
	}
	return resp.StatusCode, body, nil
}

func getResponse(addr, path string) (*http.Response, string, error) {
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, string(b), err
}

const jsonHeaders = "Host: 127.0.0.1\r\nContent-Type: application/json\r\n"

// TestImportRefusals: an upload over the size limit is refused from its
// declared length before a byte of it is stored; one whose size is not the
// database size its SQLite header declares is refused naming both; every
// refusal leaves the database as it was and no temporary file behind.
func TestImportRefusals(t *testing.T) {
	const limit = 2 << 20
	ls := startLimitServer(t, ServerOptions{MaxImportSize: limit})
	src := makeDB(t, 200<<10, 1)
	valid, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	before := ls.importFile(t, "app.db", makeDB(t, 50<<10, 2))
	pageSize := int(binary.BigEndian.Uint16(valid[16:18]))
	size := len(valid)

	// A header declaring more pages than the limit allows.
	huge := append([]byte(nil), valid[:4096]...)
	binary.BigEndian.PutUint32(huge[28:], uint32(2*limit/pageSize))
	// A header whose page count SQLite would not trust.
	stale := append([]byte(nil), valid...)
	binary.BigEndian.PutUint32(stale[92:], binary.BigEndian.Uint32(stale[24:])+1)
	padded := append(append([]byte(nil), valid...), make([]byte, 1<<20)...)

	for _, tc := range []struct {
		name     string
		body     []byte
		declared bool // Content-Length set; else chunked
		code     int
		want     []string // in the error
	}{
		{"padded with zeros", padded, true, 400, []string{fmt.Sprint(len(padded)), fmt.Sprint(size)}},
		{"padded with zeros, no length", padded, false, 400, []string{"longer", fmt.Sprint(size)}},
		{"truncated", valid[:size-pageSize], true, 400, []string{fmt.Sprint(size - pageSize), fmt.Sprint(size)}},
		{"truncated, no length", valid[:size-pageSize], false, 400, []string{fmt.Sprint(size - pageSize), fmt.Sprint(size)}},
		{"header over the limit", huge, false, 413, []string{fmt.Sprint(2 * limit), fmt.Sprint(limit)}},
		{"stale page count", stale, true, 400, []string{"not valid"}},
		{"garbage", bytes.Repeat([]byte("garbage!"), 1024), true, 400, []string{"not a SQLite database"}},
		{"shorter than a header", []byte("SQLite"), false, 400, []string{"not a SQLite database"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var body io.Reader = bytes.NewReader(tc.body)
			if !tc.declared {
				body = io.MultiReader(body) // unknown length: sent chunked
			}
			req, err := http.NewRequest("POST", ls.url()+"/import?name=app.db&epoch=3", body)
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/vnd.sqlite3")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			msg, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.code {
				t.Fatalf("status %d (%s), want %d", resp.StatusCode, msg, tc.code)
			}
			for _, w := range tc.want {
				if !strings.Contains(string(msg), w) {
					t.Errorf("error %s does not name %q", msg, w)
				}
			}
			if got := ls.st.DB("app.db").Pos(); got != before {
				t.Fatalf("a refused import moved the database from %s to %s", before, got)
			}
			if f := ls.uploads(t); len(f) > 0 {
				t.Fatalf("temporary files left: %v", f)
			}
		})
	}

	// A declared length over the limit is answered before the body is
	// sent: the client never sends it here.
	t.Run("declared over the limit", func(t *testing.T) {
		c := dial(t, ls.addr, 0)
		fmt.Fprintf(c, "POST /import?name=app.db&epoch=3 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/vnd.sqlite3\r\nContent-Length: %d\r\n\r\n", 200<<20)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("no answer before the body: %v", err)
		}
		msg, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 413 || !strings.Contains(string(msg), fmt.Sprint(limit)) {
			t.Fatalf("status %d %s, want 413 naming the limit", resp.StatusCode, msg)
		}
		if f := ls.uploads(t); len(f) > 0 {
			t.Fatalf("temporary files for a refused upload: %v", f)
		}
		if got := ls.st.DB("app.db").Pos(); got != before {
			t.Fatalf("a refused import moved the database from %s to %s", before, got)
		}
	})

	// The valid file, declared or not, is imported as one transaction.
	for i, declared := range []bool{true, false} {
		var body io.Reader = bytes.NewReader(valid)
		if !declared {
			body = io.MultiReader(body)
		}
		req, err := http.NewRequest("POST", ls.url()+"/import?name=app.db&epoch=3", body)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/vnd.sqlite3")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		msg, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("import of a valid file (declared length %v): %d %s", declared, resp.StatusCode, msg)
		}
		if got, want := ls.st.DB("app.db").Pos().TXID, before.TXID+ltx.TXID(i+1); got != want {
			t.Fatalf("imported at txid %s, want %s", got, want)
		}
	}
}

// TestRequestBodyLimits: every endpoint refuses a body declared over its
// limit before its handler runs, and cuts an undeclared one at the limit.
func TestRequestBodyLimits(t *testing.T) {
	ls := startLimitServer(t, ServerOptions{MaxRequestBody: 64 << 10, MaxImportSize: 1 << 20})
	var mu sync.Mutex
	read := map[string]int64{}
	echo := func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		mu.Lock()
		read[r.URL.Path] = n
		mu.Unlock()
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			writeError(w, http.StatusRequestEntityTooLarge, "%v", err)
			return
		}
		WriteJSON(w, http.StatusOK, struct{}{})
	}
	ls.srv.Handle("POST /promote", http.HandlerFunc(echo)) // as package node registers its endpoints
	ls.srv.Handle(forwardedPrefix, http.HandlerFunc(echo))

	for _, tc := range []struct {
		method, path string
		declared     int64
	}{
		{"POST", "/halt", 64<<10 + 1},
		{"POST", "/halt/keepalive", 64<<10 + 1},
		{"POST", "/halt/release", 64<<10 + 1},
		{"POST", "/promote", 64<<10 + 1},
		{"GET", "/export?name=x", 64<<10 + 1},
		{"POST", "/stream", maxStreamRequest + 1},
		{"POST", "/import?name=x&epoch=3", 1<<20 + 1},
		{"POST", "/halt/commit?name=x&id=1&epoch=3", maxHaltCommit + 1},
	} {
		c := dial(t, ls.addr, 0)
		fmt.Fprintf(c, "%s %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n", tc.method, tc.path, jsonHeaders, tc.declared)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("%s %s: no answer before the body: %v", tc.method, tc.path, err)
		}
		resp.Body.Close()
		if resp.StatusCode != 413 {
			t.Errorf("%s %s with %d bytes declared: status %d, want 413", tc.method, tc.path, tc.declared, resp.StatusCode)
		}
	}
	mu.Lock()
	if len(read) > 0 {
		t.Errorf("handlers ran for bodies declared over the limit: %v", read)
	}
	mu.Unlock()

	// Undeclared: the handler reads no more than the limit.
	req, err := http.NewRequest("POST", ls.url()+"/promote", io.MultiReader(bytes.NewReader(make([]byte, 1<<20))))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	mu.Lock()
	if resp.StatusCode != 413 || read["/promote"] > 64<<10 {
		t.Fatalf("chunked body of 1 MiB: status %d after the handler read %d bytes; want 413 after at most 64 KiB", resp.StatusCode, read["/promote"])
	}
	mu.Unlock()

	// An application's write forwarded from another node's proxy keeps
	// the application's size.
	req, err = http.NewRequest("POST", ls.url()+forwardedPrefix+"upload", bytes.NewReader(make([]byte, 1<<20)))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	if resp, err = http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	mu.Lock()
	defer mu.Unlock()
	if resp.StatusCode != 200 || read[forwardedPrefix+"upload"] != 1<<20 {
		t.Fatalf("forwarded write of 1 MiB: status %d after the handler read %d bytes; want all of it", resp.StatusCode, read[forwardedPrefix+"upload"])
	}
}

// slowClient sends a request header and then its body a byte at a time
// (never if trickle is false).
type slowClient struct {
	c     net.Conn
	start time.Time
}

// startSlow opens n slow requests to path, trickling their bodies until
// the test ends.
func startSlow(t *testing.T, addr, path string, n int, trickle bool) []*slowClient {
	t.Helper()
	var out []*slowClient
	for i := 0; i < n; i++ {
		c := dial(t, addr, 0)
		if _, err := fmt.Fprintf(c, "POST %s HTTP/1.1\r\n%sContent-Length: 4096\r\n\r\n{", path, jsonHeaders); err != nil {
			t.Fatal(err)
		}
		out = append(out, &slowClient{c: c, start: time.Now()})
	}
	if trickle {
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			tick := time.NewTicker(20 * time.Millisecond) // 50 bytes a second
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
					for _, s := range out {
						s.c.SetWriteDeadline(time.Now().Add(10 * time.Millisecond))
						s.c.Write([]byte(" "))
					}
				}
			}
		}()
		t.Cleanup(func() { close(stop); <-done })
	}
	return out
}

// openIdle opens n keep-alive connections that have completed a request.
func openIdle(t *testing.T, addr string, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		c := dial(t, addr, 0)
		fmt.Fprintf(c, "GET /export?name=missing HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("idle connection %d: %v", i, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}

// TestSlowAndIdleClients: slow request bodies (a byte every 20 ms, or
// none) and idle keep-alive connections, up to and beyond the connection
// limit, neither keep the API from answering nor stay open: every slow
// body is cut once its grace period is over.
func TestSlowAndIdleClients(t *testing.T) {
	for _, tc := range []struct {
		name       string
		slow, idle int
		trickle    bool
		// grace is the body's grace period. A slow body is closed for a
		// newcomer after a second (or its grace period, if shorter).
		grace       time.Duration
		wantEvicted bool
	}{
		{"idle beyond the limit", 0, 12, false, 300 * time.Millisecond, true},
		{"trickling bodies at the limit", 8, 0, true, 5 * time.Second, true},
		{"stalled bodies at the limit", 8, 0, false, 5 * time.Second, true},
		{"trickling bodies and idle connections", 4, 8, true, 300 * time.Millisecond, true},
		{"below the limit", 3, 3, true, 300 * time.Millisecond, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			grace := tc.grace
			// A newcomer waits less than the slow bodies' grace period:
			// it gets in only if one is closed for it.
			ls := startLimitServer(t, ServerOptions{MaxConnections: 8, BodyReadTimeout: grace, ConnectionWait: 3 * time.Second})
			slow := startSlow(t, ls.addr, "/halt/keepalive", tc.slow, tc.trickle)
			openIdle(t, ls.addr, tc.idle)
			waitFor(t, 5*time.Second, "every connection admitted, every slow body being read", func() bool {
				st := ls.srv.limit.stats()
				return st.open+int(st.evicted) >= tc.slow+tc.idle && st.reading == tc.slow
			})

			if code, body, err := get(ls.addr, "/export?name=missing"); err != nil || code != 404 || !strings.Contains(body, "no database") {
				t.Fatalf("a new request among slow and idle clients: %d %s %v; want 404 from the endpoint", code, body, err)
			}
			for i, s := range slow {
				answer, closed := closedByServer(s.c, grace+5*time.Second)
				if !closed {
					t.Fatalf("slow client %d still open %s after it began", i, time.Since(s.start))
				}
				if answer != "" && !strings.HasPrefix(answer, "HTTP/1.1 4") {
					t.Fatalf("slow client %d answered %q", i, answer)
				}
			}
			if st := ls.srv.limit.stats(); (st.evicted > 0) != tc.wantEvicted || st.refused > 0 {
				t.Fatalf("%d connections evicted, %d refused; want evictions: %v, no refusals", st.evicted, st.refused, tc.wantEvicted)
			}
		})
	}
}

// TestSlowImportCut: an upload that arrives too slowly is cut with 408
// and leaves no temporary file.
func TestSlowImportCut(t *testing.T) {
	ls := startLimitServer(t, ServerOptions{BodyReadTimeout: 200 * time.Millisecond})
	valid, err := os.ReadFile(makeDB(t, 100<<10, 1))
	if err != nil {
		t.Fatal(err)
	}
	c := dial(t, ls.addr, 0)
	fmt.Fprintf(c, "POST /import?name=app.db&epoch=3 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/vnd.sqlite3\r\nContent-Length: %d\r\n\r\n", len(valid))
	c.Write(valid[:8192]) // then nothing
	answer, closed := closedByServer(c, 10*time.Second)
	if !closed || !strings.HasPrefix(answer, "HTTP/1.1 408") || !strings.Contains(answer, "too slowly") {
		t.Fatalf("stalled upload: closed %v, answer %q; want 408 and the connection closed", closed, answer)
	}
	if f := ls.uploads(t); len(f) > 0 {
		t.Fatalf("temporary files left: %v", f)
	}
	if ls.st.DB("app.db") != nil {
		t.Fatal("a cut upload created the database")
	}
}

// TestConnectionLimitRefuses: when every connection is a live answer (event
// streams here), a new one waits for a slot, is refused with 503 if none
// frees, and gets in once one does.
func TestConnectionLimitRefuses(t *testing.T) {
	ls := startLimitServer(t, ServerOptions{MaxConnections: 4, ConnectionWait: 100 * time.Millisecond})
	var streams []net.Conn
	for i := 0; i < 4; i++ {
		c := dial(t, ls.addr, 0)
		fmt.Fprintf(c, "GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil {
			t.Fatal(err)
		}
		streams = append(streams, c)
	}
	resp, body, err := getResponse(ls.addr, "/export?name=missing")
	if err != nil {
		t.Fatalf("a request beyond the limit: %v; want a 503 answer", err)
	}
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" || !strings.Contains(body, "too many open connections") {
		t.Fatalf("a request beyond the limit: %d %s; want 503 with Retry-After", resp.StatusCode, body)
	}
	streams[0].Close()
	waitFor(t, 5*time.Second, "a slot freed by a closed stream", func() bool {
		code, _, err := get(ls.addr, "/export?name=missing")
		return err == nil && code == 404
	})
}

// TestExportStalledClient: a client that reads a few KB of a large export
// and stops is cut off once a write has waited ExportWriteTimeout, and the
// snapshot it pinned is released: writers no longer save pages for it.
func TestExportStalledClient(t *testing.T) {
	const timeout = 500 * time.Millisecond
	ls := startLimitServer(t, ServerOptions{ExportWriteTimeout: timeout})
	ls.importFile(t, "big.db", makeDB(t, 16<<20, 1))

	c := dial(t, ls.addr, 4096)
	fmt.Fprintf(c, "GET /export?name=big.db HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, 8192)); err != nil {
		t.Fatal(err)
	}
	// Not another byte until the server gave up on the export.
	waitFor(t, 20*timeout, "export aborted", func() bool { return ls.logs.contains("export aborted") })
	rest, closed := closedByServer(c, 10*time.Second)
	if !closed || len(rest) >= 16<<20 {
		t.Fatalf("after the abort: connection closed %v after %d more bytes", closed, len(rest))
	}
	// Rewriting the whole database now would stage every page (far more
	// than a view keeps in memory) if the view were still pinned.
	ls.importFile(t, "big.db", makeDB(t, 16<<20, 2))
	if f := ls.stageFiles(t); len(f) > 0 {
		t.Fatalf("the aborted export's snapshot still holds pages: %v", f)
	}
}

// TestStreamStalledReplica: a replica that stops reading is cut off once a
// write has waited the write timeout, whether it is being sent changesets
// or a snapshot (which has a much longer timeout in all).
func TestStreamStalledReplica(t *testing.T) {
	for _, tc := range []struct {
		name string
		pos  map[string]ltx.Pos
	}{
		{"changesets", nil},
		{"snapshot", map[string]ltx.Pos{"big.db": {TXID: 1, PostApplyChecksum: ltx.ChecksumFlag | 1}}}, // not on the log
	} {
		t.Run(tc.name, func(t *testing.T) {
			ls := startLimitServer(t, ServerOptions{WriteTimeout: 300 * time.Millisecond})
			ls.importFile(t, "big.db", makeDB(t, 16<<20, 1))
			body, err := json.Marshal(StreamRequest{NodeID: "1", Positions: tc.pos, Epoch: 3})
			if err != nil {
				t.Fatal(err)
			}
			c := dial(t, ls.addr, 4096)
			fmt.Fprintf(c, "POST /stream HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s", jsonHeaders, len(body), body)
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(c, make([]byte, 8192)); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 10*time.Second, "the stalled replica cut off", func() bool { return len(ls.srv.Replicas()) == 0 })
			if _, closed := closedByServer(c, 10*time.Second); !closed {
				t.Fatal("the stalled replica's connection is still open")
			}
			if tc.name == "snapshot" && !ls.logs.contains("sending snapshot") {
				t.Fatal("no snapshot was sent")
			}
		})
	}
}

// TestLongAnswersOutliveDeadlines: the replication stream and a HALT
// grant's connection last far beyond the body, header and idle timeouts.
func TestLongAnswersOutliveDeadlines(t *testing.T) {
	const short = 50 * time.Millisecond
	ls := startLimitServer(t, ServerOptions{BodyReadTimeout: short, ReadHeaderTimeout: short, IdleTimeout: short, HeartbeatInterval: 10 * time.Millisecond})
	if _, err := ls.st.CreateDB("db"); err != nil {
		t.Fatal(err)
	}
	replica, err := store.Open(store.Options{Dir: t.TempDir(), Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer replica.Close()
	replica.SetWritable(false)
	hc := NewHaltClient(t.Context(), HaltClientOptions{
		Store:   replica,
		Primary: func() (string, uint64) { return ls.url(), 3 },
		NodeID:  "replica",
		Logger:  quietLogger(),
	})
	defer hc.Close()
	h, err := hc.Acquire(t.Context(), "db", true)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Release()

	body, _ := json.Marshal(StreamRequest{NodeID: "1", Epoch: 3})
	c := dial(t, ls.addr, 0)
	fmt.Fprintf(c, "POST /stream HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s", jsonHeaders, len(body), body)
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("stream: %v %v", resp, err)
	}
	fr := NewFrameReader(resp.Body)
	start := time.Now()
	for beats := 0; time.Since(start) < 20*short; {
		f, _, err := fr.Next()
		if err != nil {
			t.Fatalf("stream ended after %d heartbeats, %s: %v", beats, time.Since(start), err)
		}
		if f.Type == FrameHeartbeat {
			beats++
		}
	}
	if err := h.Lost(); err != nil {
		t.Fatalf("the HALT grant was lost: %v", err)
	}
	if n := ls.st.HaltEnds()["disconnected"]; n != 0 {
		t.Fatalf("%d HALT grants ended by a closed connection", n)
	}
}

// fdListener fails its first Accept as a process out of descriptors does.
type fdListener struct {
	net.Listener
	failed bool
}

func (l *fdListener) Accept() (net.Conn, error) {
	if !l.failed {
		l.failed = true
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

// TestAcceptOutOfDescriptors: when accepting fails for want of file
// descriptors, an idle connection is closed to make room.
func TestAcceptOutOfDescriptors(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer inner.Close()
	cl := newConnLimiter(ServerOptions{MaxConnections: 10, ConnectionWait: time.Second, MinBodyRate: 1, BodyReadTimeout: time.Second, Logger: quietLogger()})
	ln := cl.wrap(&fdListener{Listener: inner, failed: true}, true)
	idle := dial(t, inner.Addr().String(), 0)
	ic, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer ic.Close()
	cl.track(ic, http.StateIdle)

	inner.(*net.TCPListener).SetDeadline(time.Now().Add(10 * time.Second))
	cl.inner = &fdListener{Listener: inner}
	dial(t, inner.Addr().String(), 0)
	nc, err := ln.Accept()
	if err != nil {
		t.Fatalf("accept after running out of descriptors: %v", err)
	}
	defer nc.Close()
	if _, closed := closedByServer(idle, 5*time.Second); !closed {
		t.Fatal("the idle connection was not closed to make room")
	}
	if st := cl.stats(); st.open != 1 || st.evicted != 1 {
		t.Fatalf("%d open, %d evicted; want 1 and 1", st.open, st.evicted)
	}
}
