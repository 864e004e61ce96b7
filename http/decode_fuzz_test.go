package http

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/litefs-project/litefs/internal/fuzzutil"
	"github.com/litefs-project/litefs/ltx"
	"github.com/litefs-project/litefs/store"
)

// Fuzz targets for the request decoders of the API: the JSON bodies of
// POST /stream and the HALT requests, and the query strings of
// /halt/commit, /export and /import. Each request goes to its handler on a
// real primary (a store in a temporary directory, a term of epoch 3,
// database "db" at TXID 1). A request never panics; one that is accepted
// named valid databases and the term's epoch; one that is refused changes
// nothing.

const fuzzEpoch = 3

// fuzzPrimary is a primary's store and API, shared by a target's inputs.
type fuzzPrimary struct {
	st   *store.Store
	term *store.Term
	srv  *Server
	base []byte // the changeset that made "db"
}

func newFuzzPrimary(f *testing.F) *fuzzPrimary {
	f.Helper()
	st, err := store.Open(store.Options{Dir: f.TempDir(), Logger: quietLogger()})
	if err != nil {
		f.Fatal(err)
	}
	p := &fuzzPrimary{st: st}
	pages := map[uint32][]byte{1: emptyDB(512, 2), 2: leafPage(512, 1)}
	sum := ltx.ChecksumFlag | (ltx.ChecksumPage(1, pages[1]) ^ ltx.ChecksumPage(2, pages[2]))
	p.base = fuzzutil.EncodeLTX(f, ltx.Header{Version: ltx.Version, PageSize: 512, Commit: 2, MinTXID: 1, MaxTXID: 1, Timestamp: 1}, pages, []uint32{1, 2}, sum)
	st.SetWritable(false)
	if _, err := st.ApplyChangeset(context.Background(), "db", bytes.NewReader(p.base), int64(len(p.base))); err != nil {
		f.Fatal(err)
	}
	if p.term, err = st.BeginTerm(context.Background(), store.TermOptions{Epoch: fuzzEpoch, HaltTTL: time.Minute}); err != nil {
		f.Fatal(err)
	}
	p.srv = NewServer(context.Background(), st, ServerOptions{Logger: quietLogger()})
	f.Cleanup(func() {
		p.term.End(context.Background())
		st.Close()
	})
	return p
}

// leafPage is an empty table b-tree leaf page, its unused space filled
// with v.
func leafPage(pageSize uint32, v byte) []byte {
	b := bytes.Repeat([]byte{v}, int(pageSize))
	copy(b, []byte{13, 0, 0, 0, 0, byte(pageSize >> 8), byte(pageSize), 0})
	return b
}

// emptyDB is page 1 of an empty SQLite database of pageN pages.
func emptyDB(pageSize, pageN uint32) []byte {
	b := make([]byte, pageSize)
	copy(b, "SQLite format 3\x00")
	binary.BigEndian.PutUint16(b[16:], uint16(pageSize))
	b[18], b[19] = 1, 1
	b[21], b[22], b[23] = 64, 32, 32
	binary.BigEndian.PutUint32(b[24:], 1) // change counter
	binary.BigEndian.PutUint32(b[28:], pageN)
	binary.BigEndian.PutUint32(b[44:], 4) // schema format
	binary.BigEndian.PutUint32(b[56:], 1) // UTF-8
	binary.BigEndian.PutUint32(b[92:], 1) // version-valid-for
	binary.BigEndian.PutUint32(b[96:], 3045000)
	b[100] = 13 // an empty table b-tree leaf: sqlite_schema
	binary.BigEndian.PutUint16(b[105:], uint16(pageSize))
	return b
}

// answer is a ResponseWriter that may be read while its handler runs, so
// that an answer meant to last (a stream, a HALT grant) can be seen
// begun.
type answer struct {
	header  http.Header
	mu      sync.Mutex
	code    int
	body    bytes.Buffer
	started chan struct{} // closed once the status is written
}

func newAnswer() *answer {
	return &answer{header: make(http.Header), started: make(chan struct{})}
}

func (a *answer) Header() http.Header { return a.header }

func (a *answer) WriteHeader(code int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.code == 0 {
		a.code = code
		close(a.started)
	}
}

func (a *answer) Write(b []byte) (int, error) {
	a.WriteHeader(http.StatusOK)
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.body.Write(b)
}

func (a *answer) Flush() {}

// serve sends a request to its handler and returns the status and the
// beginning of the body. An answer that lasts ends when its client goes
// away, which the request's context tells the handler once the status is
// written.
func (p *fuzzPrimary) serve(r *http.Request) (int, string) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r = r.WithContext(ctx)
	a := newAnswer()
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.srv.mux.ServeHTTP(a, r)
	}()
	select {
	case <-a.started:
	case <-done:
	}
	cancel()
	<-done
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.code == 0 {
		a.code = http.StatusOK
	}
	return a.code, a.body.String()
}

func jsonRequest(method, path string, body []byte) *http.Request {
	r := httptest.NewRequest(method, path, bytes.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	return r
}

// checkRefused fails unless code is a refusal with a JSON error naming
// what is wrong.
func checkRefused(t *testing.T, code int, body string) {
	t.Helper()
	var e Error
	if code < 400 || json.Unmarshal([]byte(body), &e) != nil || e.Error == "" {
		t.Fatalf("refused with %d and body %q, not a JSON error", code, body)
	}
}

// checkName fails unless an accepted request named a valid database.
func checkName(t *testing.T, what, name string) {
	t.Helper()
	if err := store.ValidateName(name); err != nil {
		t.Fatalf("accepted %s naming an invalid database: %v", what, err)
	}
}

// unchanged fails unless "db" is still at the position it was made at and
// no other database was created.
func (p *fuzzPrimary) unchanged(t *testing.T, what string) {
	t.Helper()
	if dbs := p.st.DBs(); len(dbs) != 1 || dbs[0].Name() != "db" || dbs[0].Pos().TXID != 1 {
		var names []string
		for _, db := range dbs {
			names = append(names, db.Name()+"@"+db.Pos().String())
		}
		t.Fatalf("a refused %s changed the store: %v", what, names)
	}
}

// FuzzStreamRequest: the body of POST /stream.
func FuzzStreamRequest(f *testing.F) {
	pos := `{"txid":"0000000000000001","postApplyChecksum":"8000000000001234"}`
	for _, s := range []string{
		`{"nodeID":"A1","positions":{},"epoch":3}`,
		`{"nodeID":"A1","positions":{"db":` + pos + `},"recent":{"db":[` + pos + `]},"databases":["db"],"hostname":"h","advertiseURL":"http://h:20202","candidate":true,"epoch":3}`,
		`{"positions":{"../db":` + pos + `},"epoch":3}`,
		`{"positions":{},"recent":{"a/b":[]},"epoch":3}`,
		`{"positions":{},"databases":[".hidden"],"epoch":3}`,
		`{"positions":{"db":{"txid":"zz"}},"epoch":3}`,
		`{"positions":{},"epoch":4}`,
		`{"positions":{},"epoch":3,"extra":1}`,
		`{"positions":{},"epoch":3} trailing`,
		`[]`, ``, `{`,
	} {
		f.Add([]byte(s))
	}
	p := newFuzzPrimary(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		code, out := p.serve(jsonRequest(http.MethodPost, "/stream", body))
		if code != http.StatusOK {
			checkRefused(t, code, out)
			p.unchanged(t, "stream request")
			return
		}
		// The handler decodes the first JSON value of the body.
		var req StreamRequest
		if err := json.NewDecoder(bytes.NewReader(body)).Decode(&req); err != nil {
			t.Fatalf("accepted a stream request that is not one: %v", err)
		}
		if req.Epoch != fuzzEpoch {
			t.Fatalf("accepted a stream request for epoch %d in epoch %d", req.Epoch, fuzzEpoch)
		}
		for name := range req.Positions {
			checkName(t, "stream request", name)
		}
		for name := range req.Recent {
			checkName(t, "stream request", name)
		}
		for _, name := range req.Databases {
			checkName(t, "stream request", name)
		}
	})
}

// FuzzHaltRequest: the body of POST /halt.
func FuzzHaltRequest(f *testing.F) {
	for _, s := range []string{
		`{"name":"db","nodeID":"A1","wait":false,"epoch":3}`,
		`{"name":"db","nodeID":"A1","wait":true,"epoch":3}`,
		`{"name":"db","epoch":2}`,
		`{"name":"nope","epoch":3}`,
		`{"name":"../db","epoch":3}`,
		`{"name":"db-wal","epoch":3}`,
		`{"name":"","epoch":3}`,
		`{"name":"db","epoch":-1}`,
		`{"name":"db","epoch":"3"}`,
		`{}`, ``, `null`,
	} {
		f.Add([]byte(s))
	}
	p := newFuzzPrimary(f)
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, body []byte) {
		code, out := p.serve(jsonRequest(http.MethodPost, "/halt", body))
		if code == http.StatusOK {
			var req HaltRequest
			if err := json.Unmarshal([]byte(strings.TrimSpace(string(body))), &req); err != nil {
				// The decoder reads one value; what follows it is not read.
				if err := json.NewDecoder(bytes.NewReader(body)).Decode(&req); err != nil {
					t.Fatalf("granted a HALT request that is not one: %v", err)
				}
			}
			checkName(t, "HALT request", req.Name)
			if req.Epoch != fuzzEpoch || req.Name != "db" {
				t.Fatalf("granted the HALT lock on %q for epoch %d", req.Name, req.Epoch)
			}
		} else {
			checkRefused(t, code, out)
		}
		// Either way no grant is left: the holder's connection is gone.
		g, err := p.term.GrantHalt(ctx, store.HaltRequest{DB: "db", Epoch: fuzzEpoch})
		if err != nil {
			t.Fatalf("the HALT lock is still taken after the request (%d %s): %v", code, out, err)
		}
		p.term.DropHalt(g.ID)
		p.unchanged(t, "HALT request")
	})
}

// grant takes the HALT lock on "db" and returns its ID as JSON and as
// text, to stand for "$ID" in the fuzzer's inputs.
func (p *fuzzPrimary) grant(t *testing.T) (store.HaltGrant, string, string) {
	t.Helper()
	g, err := p.term.GrantHalt(context.Background(), store.HaltRequest{DB: "db", Epoch: fuzzEpoch})
	if err != nil {
		t.Fatalf("take the HALT lock: %v", err)
	}
	b, err := json.Marshal(g.ID)
	if err != nil {
		t.Fatal(err)
	}
	return g, string(b), fmt.Sprint(g.ID)
}

// FuzzHaltRef: the body of POST /halt/keepalive and /halt/release, with
// "$ID" standing for the lock ID of a live grant.
func FuzzHaltRef(f *testing.F) {
	for _, s := range []string{
		`{"name":"db","id":$ID,"epoch":3}`,
		`{"name":"db","id":$ID,"epoch":2}`,
		`{"name":"other","id":$ID,"epoch":3}`,
		`{"name":"db","id":"00000000000000000000000000000001","epoch":3}`,
		`{"name":"db","id":"1","epoch":3}`,
		`{"name":"db","id":"","epoch":3}`,
		`{"name":"db","id":12,"epoch":3}`,
		`{"name":"","id":$ID,"epoch":3}`,
		`{}`, ``,
	} {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	p := newFuzzPrimary(f)
	f.Fuzz(func(t *testing.T, body []byte, release bool) {
		g, id, _ := p.grant(t)
		defer p.term.DropHalt(g.ID)
		body = bytes.ReplaceAll(body, []byte("$ID"), []byte(id))
		path := "/halt/keepalive"
		if release {
			path = "/halt/release"
		}
		code, out := p.serve(jsonRequest(http.MethodPost, path, body))
		var ref HaltRef
		if code != http.StatusOK {
			checkRefused(t, code, out)
		} else if err := json.NewDecoder(bytes.NewReader(body)).Decode(&ref); err != nil {
			t.Fatalf("accepted %s with a body that is not a lock reference: %v", path, err)
		} else if ref.Name != "db" || ref.Epoch != fuzzEpoch || ref.ID != g.ID {
			t.Fatalf("accepted %s for the lock %v on %q in epoch %d; the lock is %v on db in epoch %d", path, ref.ID, ref.Name, ref.Epoch, g.ID, fuzzEpoch)
		}
		// The grant lives unless it was released.
		select {
		case <-g.Done():
			if !release || code != http.StatusOK {
				t.Fatalf("%s answered %d and the grant ended", path, code)
			}
		default:
			if release && code == http.StatusOK {
				t.Fatalf("%s answered 200 and the grant lives on", path)
			}
		}
		p.unchanged(t, path)
	})
}

// haltIDHeader is where a HALT commit carries its lock ID (or, from older
// clients, in the query as id=).
const haltIDHeader = "Litefs-Halt-Id"

// FuzzHaltCommitQuery: the query string and lock ID header of POST
// /halt/commit, with "$ID" standing for the lock ID of a live grant in
// either, and a body that is a changeset continuing "db", or damaged.
func FuzzHaltCommitQuery(f *testing.F) {
	for _, q := range []string{"name=db&epoch=3", "name=db&epoch=2", "name=other&epoch=3", "name=..%2Fdb&epoch=3", "name=db&epoch=x", "name=&epoch=3", "epoch=3", "name=db&name=x&epoch=3", "name=db&epoch=3&epoch=4", "%zz"} {
		for _, id := range []string{"$ID", "", "0", "00000000000000000000000000000001", "$ID$ID"} {
			f.Add(q, id, false)
			f.Add(q, id, true)
			f.Add(q+"&id="+id, "", false)
		}
	}
	p := newFuzzPrimary(f)
	f.Fuzz(func(t *testing.T, query, idHeader string, damaged bool) {
		g, _, id := p.grant(t)
		defer p.term.DropHalt(g.ID)
		db := p.st.DB("db")
		before := db.Pos()
		// The next changeset of "db": page 2 changes.
		pages := map[uint32][]byte{2: leafPage(512, byte(before.TXID))}
		body := p.nextChangeset(t, before, pages)
		if damaged {
			body[len(body)/2] ^= 1
		}
		r := httptest.NewRequest(http.MethodPost, "/halt/commit", bytes.NewReader(body))
		r.URL.RawQuery = strings.ReplaceAll(query, "$ID", id)
		r.Header.Set("Content-Type", "application/octet-stream")
		r.Header.Set(haltIDHeader, strings.ReplaceAll(idHeader, "$ID", id))
		code, out := p.serve(r)
		after := db.Pos()
		if code != http.StatusOK {
			checkRefused(t, code, out)
			if after != before {
				t.Fatalf("a refused commit (%d %s) moved db from %s to %s", code, out, before, after)
			}
			return
		}
		q, _ := url.ParseQuery(r.URL.RawQuery)
		checkName(t, "HALT commit", q.Get("name"))
		if q.Get("name") != "db" || damaged || after.TXID != before.TXID+1 {
			t.Fatalf("accepted a commit (?%s, damaged %v) that moved db from %s to %s", query, damaged, before, after)
		}
	})
}

// nextChangeset encodes the changeset after pos that writes pages over
// the database "db" of 2 pages.
func (p *fuzzPrimary) nextChangeset(t *testing.T, pos ltx.Pos, pages map[uint32][]byte) []byte {
	t.Helper()
	db := p.st.DB("db")
	snap, err := db.OpenSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := snap.WriteDatabase(&buf); err != nil {
		t.Fatal(err)
	}
	snap.Close()
	file := buf.Bytes()
	sum := pos.PostApplyChecksum
	var pgnos []uint32
	for pgno := uint32(1); pgno <= 2; pgno++ {
		if data, ok := pages[pgno]; ok {
			sum ^= ltx.ChecksumPage(pgno, file[(pgno-1)*512:pgno*512]) ^ ltx.ChecksumPage(pgno, data)
			pgnos = append(pgnos, pgno)
		}
	}
	return fuzzutil.EncodeLTX(t, ltx.Header{Version: ltx.Version, PageSize: 512, Commit: 2, MinTXID: pos.TXID + 1, MaxTXID: pos.TXID + 1,
		Timestamp: time.Now().UnixMilli(), PreApplyChecksum: pos.PostApplyChecksum}, pages, pgnos, ltx.ChecksumFlag|sum)
}

// FuzzExportImportQuery: the query strings of GET /export and POST /import
// (with an empty database as the upload).
func FuzzExportImportQuery(f *testing.F) {
	for _, q := range []string{"name=db", "name=nope", "name=", "", "name=..%2F..%2Fetc%2Fpasswd", "name=.db", "name=db-wal", "name=%00", "name=db&name=other", "%zz", "name=a%0Ab"} {
		f.Add(q, false)
		f.Add(q+"&epoch=3", true)
		f.Add(q+"&epoch=2", true)
		f.Add(q+"&epoch=-1", true)
		f.Add(q+"&epoch=18446744073709551616", true)
	}
	p := newFuzzPrimary(f)
	f.Fuzz(func(t *testing.T, query string, upload bool) {
		before := p.st.DB("db").Pos()
		method, path := http.MethodGet, "/export"
		body := []byte(nil)
		if upload {
			method, path, body = http.MethodPost, "/import", emptyDB(512, 1)
		}
		r := httptest.NewRequest(method, path, bytes.NewReader(body))
		r.URL.RawQuery = query
		if upload {
			r.Header.Set("Content-Type", "application/vnd.sqlite3")
		}
		code, out := p.serve(r)
		q, _ := url.ParseQuery(query)
		name := q.Get("name")
		if code != http.StatusOK {
			checkRefused(t, code, out)
			if p.st.DB("db").Pos() != before || len(p.st.DBs()) != 1 {
				t.Fatalf("a refused %s?%s changed the store", path, query)
			}
			return
		}
		checkName(t, path, name)
		if !upload {
			if name != "db" || !bytes.HasPrefix([]byte(out), []byte("SQLite format 3\x00")) {
				t.Fatalf("export of %q answered 200 with %d bytes", name, len(out))
			}
			return
		}
		if q.Get("epoch") != "3" && strings.TrimLeft(q.Get("epoch"), "0") != "3" {
			t.Fatalf("import ?%s accepted in epoch %d", query, fuzzEpoch)
		}
		db := p.st.DB(name)
		if db == nil {
			t.Fatalf("import of %q answered 200 and there is no such database", name)
		}
		// Back to one database, "db", for the next input.
		if name != "db" {
			if err := p.st.DropDB(name); err != nil {
				t.Fatal(err)
			}
		} else if db.Pos().TXID != before.TXID+1 {
			t.Fatalf("import into db moved it from %s to %s", before, db.Pos())
		}
	})
}
