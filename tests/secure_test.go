package tests

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	lhttp "github.com/litefs-project/litefs/http"
	"github.com/litefs-project/litefs/internal/testutil"
)

// startSecureCluster starts three candidates on Consul that share a
// cluster secret and mutual TLS, and waits for the first to be primary.
func startSecureCluster(t *testing.T, sec *testutil.Secure) (nodes []*testutil.Node) {
	t.Helper()
	c := testutil.StartConsul(t)
	for i, name := range []string{"a", "b", "c"} {
		n := testutil.NewNode(t, testutil.NodeConfig{Name: name, Secure: sec})
		n.WriteConfig(t, n.ConsulLease(c, consulKey(t), true, testTTL, testLockDelay))
		n.Start(t)
		nodes = append(nodes, n)
		if i == 0 && waitPrimary(t, nodes, failoverLimit) != n {
			t.Fatal("a is not the primary")
		}
	}
	return nodes
}

// clusterState is what an intruder must not change: every node's role,
// epoch, position and rows.
type clusterState map[string]string

func stateOf(t *testing.T, nodes []*testutil.Node) clusterState {
	t.Helper()
	s := clusterState{}
	for _, n := range nodes {
		info := apiInfo(t, n)
		conn := testutil.OpenDB(t, n.Path("db"), "")
		s[n.Config.Name] = fmt.Sprintf("primary=%v(%s) epoch=%d pos=%s rows=%s", info.IsPrimary, info.Primary, info.Epoch, n.Pos(t, "db"), testutil.Digest(t, conn))
		conn.Close()
	}
	return s
}

// TestSecureCluster: three nodes with a secret and mutual TLS replicate,
// forward writes under HALT and hand the lease off; clients without the
// secret, with a wrong one, with a certificate from another CA, without a
// certificate, over plain HTTP or from a web page are refused on every
// endpoint of every node, and no node's data, role or term changes.
func TestSecureCluster(t *testing.T) {
	ca := testutil.NewCA(t, "cluster")
	sec := &testutil.Secure{Token: "cluster-secret-1", CA: ca}
	nodes := startSecureCluster(t, sec)
	a, b, c := nodes[0], nodes[1], nodes[2]

	createTable(t, a, "db")
	for i := 0; i < 20; i++ {
		if err := tryWrite(a, "db", fmt.Sprintf("a-%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range nodes[1:] {
		n.WaitPos(t, "db", a.Pos(t, "db"), 30*time.Second)
	}

	// Writes forwarded under HALT from a replica.
	w := startHaltWriter(t, c, "db", 5)
	w.waitMore(t, 20)
	acked := w.finish()
	for _, n := range nodes[1:] {
		n.WaitPos(t, "db", a.Pos(t, "db"), 30*time.Second)
	}
	requireAcked(t, acked, nodes...)

	// A handoff, over the same authenticated connections.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := b.API().Promote(ctx, b.URL(), lhttp.PromoteRequest{}); err != nil {
		t.Fatalf("promote b: %v", err)
	}
	if waitPrimary(t, nodes, failoverLimit) != b {
		t.Fatal("b is not the primary after the handoff")
	}
	if err := tryWrite(b, "db", "after-handoff"); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*testutil.Node{a, c} {
		n.WaitPos(t, "db", b.Pos(t, "db"), 30*time.Second)
	}

	before := stateOf(t, nodes)
	other := testutil.NewCA(t, "other")
	intruders := []struct {
		name   string
		client *http.Client
		header http.Header
		url    func(n *testutil.Node) string
		want   string // in the error, or the status
	}{
		{"no secret", client(&lhttp.Security{ClientTLS: ca.ClientTLS(t, "x")}), nil, nil, "401"},
		{"wrong secret", client(&lhttp.Security{ClientTLS: ca.ClientTLS(t, "x"), Tokens: lhttp.NewTokens("cluster-secret-2", "", time.Time{})}), nil, nil, "401"},
		{"secret, certificate of another CA", client(&lhttp.Security{ClientTLS: other.ClientTLSTrusting(t, "x", ca), Tokens: lhttp.NewTokens(sec.Token, "", time.Time{})}), nil, nil, "refused this node's client certificate"},
		{"secret, no certificate", client(&lhttp.Security{ClientTLS: noCertificate(t, ca), Tokens: lhttp.NewTokens(sec.Token, "", time.Time{})}), nil, nil, "refused this node's client certificate"},
		{"secret, trusting another CA", client(&lhttp.Security{ClientTLS: other.ClientTLS(t, "x"), Tokens: lhttp.NewTokens(sec.Token, "", time.Time{})}), nil, nil, "not signed by a CA this node trusts"},
		{"plain HTTP", client(&lhttp.Security{Tokens: lhttp.NewTokens(sec.Token, "", time.Time{})}), nil, func(n *testutil.Node) string { return "http://" + n.HTTPAddr }, "speaks HTTPS"},
		{"web page", a.Client(), http.Header{"Origin": {"http://evil.example"}}, nil, "403"},
		{"rebound host name", a.Client(), http.Header{"Host": {"evil.example:20202"}}, nil, "421"},
	}
	for _, in := range intruders {
		t.Run(in.name, func(t *testing.T) {
			for _, n := range nodes {
				base := n.URL()
				if in.url != nil {
					base = in.url(n)
				}
				for _, ep := range intrusions(t, a) {
					got := try(in.client, base, ep, in.header)
					if !strings.Contains(got, in.want) {
						t.Errorf("%s %s on %s: %s, want %s", ep.method, ep.path, n.Config.Name, got, in.want)
					}
				}
			}
		})
	}
	// A fourth process: the CLI, importing a database without the
	// secret, then with the secret but no certificate.
	upload := filepath.Join(t.TempDir(), "junk.db")
	junk := testutil.OpenDB(t, upload, "DELETE")
	testutil.Exec(t, junk, "CREATE TABLE junk (x)")
	junk.Close()
	for _, env := range [][]string{nil, {"LITEFS_AUTH_TOKEN=" + sec.Token}} {
		cmd := exec.Command(testutil.Binary(t), "import", "-url", b.URL(), "-name", "db", upload)
		cmd.Env = append(os.Environ(), env...)
		if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "certificate") {
			t.Errorf("litefs import without credentials: %v: %s", err, out)
		}
	}
	if after := stateOf(t, nodes); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("intruders changed the cluster:\nbefore %v\nafter  %v", before, after)
	}
	// Monitoring still reaches the public endpoints without the secret.
	for _, path := range []string{"/metrics", "/health"} {
		resp, err := client(&lhttp.Security{ClientTLS: ca.ClientTLS(t, "monitor")}).Get(a.URL() + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s without the secret: %s, want 200", path, resp.Status)
		}
	}
	if v := metricNow(t, a, "litefs_http_requests_refused_total", "code", "401"); v == 0 {
		t.Error("no refused request counted")
	}
}

// intrusion is one request an intruder tries.
type intrusion struct {
	method, path, ctype, body string
}

// intrusions are well-formed requests to every endpoint, such as a member
// of the cluster would send.
func intrusions(t *testing.T, n *testutil.Node) []intrusion {
	t.Helper()
	db := "SQLite format 3\x00" + strings.Repeat("\x00", 4096-16)
	epoch := apiInfo(t, n).Epoch
	json := lhttp.ContentTypeJSON
	return []intrusion{
		{"GET", "/info", "", ""},
		{"GET", "/events", "", ""},
		{"GET", "/export?name=db", "", ""},
		{"GET", "/debug/pprof/", "", ""},
		{"POST", "/stream", json, fmt.Sprintf(`{"nodeID":"FFFF","positions":{},"epoch":%d}`, epoch)},
		{"POST", "/halt", json, fmt.Sprintf(`{"name":"db","nodeID":"FFFF","epoch":%d}`, epoch)},
		{"POST", "/halt/keepalive", json, fmt.Sprintf(`{"name":"db","id":%q,"epoch":%d}`, guessedID, epoch)},
		{"POST", "/halt/release", json, fmt.Sprintf(`{"name":"db","id":%q,"epoch":%d}`, guessedID, epoch)},
		{"POST", fmt.Sprintf("/halt/commit?name=db&epoch=%d", epoch), lhttp.ContentTypeBinary, "LTX1"},
		{"POST", fmt.Sprintf("/import?name=db&epoch=%d", epoch), lhttp.ContentTypeSQLite, db},
		{"POST", "/promote", json, "{}"},
		{"POST", "/demote", json, "{}"},
		{"POST", "/handoff", json, fmt.Sprintf(`{"hostname":"x","epoch":%d}`, epoch)},
		{"POST", "/handoff/release", json, fmt.Sprintf(`{"hostname":"x","epoch":%d}`, epoch)},
	}
}

// guessedID is a well-formed HALT lock ID that no node granted.
const guessedID = "0123456789abcdef0123456789abcdef"

// try sends one intrusion and describes the outcome: the status, or the
// error.
func try(c *http.Client, base string, in intrusion, header http.Header) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, in.method, base+in.path, strings.NewReader(in.body))
	if err != nil {
		return err.Error()
	}
	if in.ctype != "" {
		req.Header.Set("Content-Type", in.ctype)
	}
	req.Header.Set(lhttp.HaltIDHeader, guessedID)
	for k, v := range header {
		if k == "Host" {
			req.Host = v[0]
			continue
		}
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	return fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(string(body)))
}

func client(sec *lhttp.Security) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: sec.Client(&http.Transport{DisableKeepAlives: true})}
}

// noCertificate is a client TLS setup that trusts ca and presents no
// certificate.
func noCertificate(t *testing.T, ca *testutil.CA) *lhttp.TLS {
	t.Helper()
	tls, err := lhttp.LoadTLS(lhttp.TLSFiles{CAFile: ca.CAFile})
	if err != nil {
		t.Fatal(err)
	}
	return tls
}

// TestSecretRotation: during a rotation, a primary on the new secret that
// still accepts the previous one serves a replica that knows only the
// previous one, and a replica on the new secret reaches a primary that
// knows only the previous one. Without the overlap they are refused.
func TestSecretRotation(t *testing.T) {
	rotated := "  previous-auth-token: \"old-secret\"\n  auth-token-overlap: 1h\n"
	cases := []struct {
		name             string
		primary, replica string // the http settings of each
		replicates       bool
	}{
		{"primary rotated first", "  auth-token: \"new-secret\"\n" + rotated, "  auth-token: \"old-secret\"\n", true},
		{"replica rotated first", "  auth-token: \"old-secret\"\n", "  auth-token: \"new-secret\"\n" + rotated, true},
		{"no overlap", "  auth-token: \"new-secret\"\n", "  auth-token: \"old-secret\"\n", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := testutil.NewNode(t, testutil.NodeConfig{Name: "primary", HTTP: tc.primary})
			p.WriteConfig(t, "lease:\n  type: static\n  candidate: true\n  hostname: primary\n")
			p.Start(t)
			r := testutil.NewNode(t, testutil.NodeConfig{Name: "replica", HTTP: tc.replica})
			r.WriteConfig(t, r.ReplicaLease(p))
			r.Start(t)

			createTable(t, p, "db")
			if err := tryWrite(p, "db", "x"); err != nil {
				t.Fatal(err)
			}
			if !tc.replicates {
				waitMetric(t, p, 30*time.Second, atLeast(1), "litefs_http_requests_refused_total", "code", "401")
				if _, err := os.Stat(r.Path("db")); err == nil {
					t.Fatal("the replica has the database, though its secret is refused")
				}
				return
			}
			r.WaitPos(t, "db", p.Pos(t, "db"), 30*time.Second)
			if rows := rowSet(t, r, "db"); !rows["x"] {
				t.Fatalf("replica rows: %v", rows)
			}
		})
	}
}

// TestCLISecret: the CLI presents the secret from -config or from
// $LITEFS_AUTH_TOKEN, and is refused without it.
func TestCLISecret(t *testing.T) {
	n := testutil.NewNode(t, testutil.NodeConfig{Name: "primary", Secure: &testutil.Secure{Token: "cli-secret"}})
	n.WriteConfig(t, "lease:\n  type: static\n  candidate: true\n  hostname: primary\n")
	n.Start(t)
	createTable(t, n, "db")
	if err := tryWrite(n, "db", "x"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	export := func(env []string, args ...string) (string, error) {
		out := filepath.Join(dir, "out.db")
		os.Remove(out)
		cmd := exec.Command(testutil.Binary(t), append(append([]string{"export", "-url", n.URL(), "-name", "db"}, args...), out)...)
		cmd.Env = append(os.Environ(), env...)
		b, err := cmd.CombinedOutput()
		return string(b), err
	}
	if out, err := export(nil); err == nil || !strings.Contains(out, "401") {
		t.Fatalf("export without the secret: %v: %s", err, out)
	}
	if out, err := export([]string{"LITEFS_AUTH_TOKEN=wrong"}); err == nil || !strings.Contains(out, "wrong cluster secret") {
		t.Fatalf("export with a wrong secret: %v: %s", err, out)
	}
	if out, err := export([]string{"LITEFS_AUTH_TOKEN=cli-secret"}); err != nil {
		t.Fatalf("export with $LITEFS_AUTH_TOKEN: %v: %s", err, out)
	}
	if out, err := export(nil, "-config", n.CfgPath); err != nil {
		t.Fatalf("export with -config: %v: %s", err, out)
	}
	conn := testutil.OpenDB(t, filepath.Join(dir, "out.db"), "")
	defer conn.Close()
	if got := testutil.Count(t, conn, "t"); got != 1 {
		t.Fatalf("exported %d rows, want 1", got)
	}
	if strings.Contains(readFile(t, n.LogPath), "cli-secret") {
		t.Fatal("the secret is in the node's log")
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestProxyForwardsSecurely: with a secret and mutual TLS, a replica's
// proxy forwards writes through the primary's API. The application on the
// primary gets the client's request as sent (its own Authorization and
// Origin headers) and never the cluster secret; a forwarded write without
// the secret is refused and inserts nothing.
func TestProxyForwardsSecurely(t *testing.T) {
	sec := &testutil.Secure{Token: "proxy-secret", CA: testutil.NewCA(t, "cluster")}
	primary := testutil.NewNode(t, testutil.NodeConfig{Name: "primary", Secure: sec})
	replica := testutil.NewNode(t, testutil.NodeConfig{Name: "replica", Secure: sec})
	pProxy, rProxy := testutil.FreeAddr(t), testutil.FreeAddr(t)

	seen := make(chan http.Header, 10)
	app := func(path string) string {
		db, err := sql.Open("sqlite3", "file:"+path+"?_busy_timeout=5000")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPost {
				seen <- r.Header.Clone()
				if _, err := db.Exec("INSERT INTO items (v) VALUES ('x')"); err != nil {
					http.Error(w, err.Error(), http.StatusInternalServerError)
					return
				}
			}
			fmt.Fprintln(w, "ok")
		}))
		t.Cleanup(srv.Close)
		return strings.TrimPrefix(srv.URL, "http://")
	}
	primary.WriteConfig(t, "lease:\n  type: static\n  candidate: true\n  hostname: primary\n  advertise-url: "+primary.URL()+"\n"+proxyConfig(pProxy, app(primary.Path("app.db"))))
	primary.Start(t)
	replica.WriteConfig(t, replica.ReplicaLease(primary)+proxyConfig(rProxy, app(replica.Path("app.db"))))
	replica.Start(t)
	conn := testutil.OpenDB(t, primary.Path("app.db"), "WAL")
	defer conn.Close()
	testutil.Exec(t, conn, "CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT)")
	replica.WaitPos(t, "app.db", primary.Pos(t, "app.db"), 30*time.Second)

	req, _ := http.NewRequest("POST", "http://"+rProxy+"/items", strings.NewReader("x=1"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Authorization", "Bearer app-user")
	req.Header.Set("Origin", "http://app.example")
	req.Header.Set(lhttp.ForwardAuthHeader, "Bearer guess")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("write through the replica's proxy: %s %s", resp.Status, body)
	}
	h := <-seen
	if h.Get("Authorization") != "Bearer app-user" || h.Get("Origin") != "http://app.example" || h.Get(lhttp.ForwardAuthHeader) != "" {
		t.Fatalf("the application got headers %v", h)
	}
	if n := testutil.Count(t, conn, "items"); n != 1 {
		t.Fatalf("primary has %d rows, want 1", n)
	}

	// The forwarding endpoint, without the secret.
	intruder := client(&lhttp.Security{ClientTLS: sec.CA.ClientTLS(t, "intruder")})
	req, _ = http.NewRequest("POST", primary.URL()+lhttp.ProxyPrefix+"/items", strings.NewReader("x=1"))
	req.Header.Set(lhttp.ForwardAuthHeader, "Bearer guess")
	if resp, err = intruder.Do(req); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("forwarded write without the secret: %s", resp.Status)
	}
	if n := testutil.Count(t, conn, "items"); n != 1 {
		t.Fatalf("primary has %d rows after the refused write, want 1", n)
	}
}
