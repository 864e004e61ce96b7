package tests

import (
	"bufio"
	"database/sql"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"strings"
	"testing"
	"time"

	"github.com/litefs-project/litefs/internal/testutil"
)

// startApp serves a tiny application on the database at path: POST /items
// inserts a row, GET /items counts them, GET /stream streams two chunks,
// and /ws echoes a line after an HTTP upgrade.
func startApp(t *testing.T, path string, release <-chan struct{}) string {
	t.Helper()
	db, err := sql.Open("sqlite3", "file:"+path+"?_busy_timeout=5000")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	mux := http.NewServeMux()
	mux.HandleFunc("POST /items", func(w http.ResponseWriter, r *http.Request) {
		if _, err := db.Exec("INSERT INTO items (v) VALUES ('x')"); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /items", func(w http.ResponseWriter, r *http.Request) {
		var n int
		if err := db.QueryRow("SELECT count(*) FROM items").Scan(&n); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprint(w, n)
	})
	mux.HandleFunc("GET /stream", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "first")
		w.(http.Flusher).Flush()
		<-release
		fmt.Fprintln(w, "second")
	})
	mux.HandleFunc("GET /ws", func(w http.ResponseWriter, r *http.Request) {
		conn, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
		rw.Flush()
		line, _ := rw.ReadString('\n')
		rw.WriteString("echo " + line)
		rw.Flush()
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

func proxyConfig(addr, app string) string {
	return fmt.Sprintf("proxy:\n  addr: %q\n  target: %q\n  db: app.db\n  max-lag: 2s\n", addr, app)
}

// TestProxy: a write through a replica's proxy lands on the primary, and a
// read right after through the same replica sees it; past max-lag the
// client gets 504; streaming and upgraded connections pass through.
func TestProxy(t *testing.T) {
	release := make(chan struct{})
	primary := testutil.NewNode(t, testutil.NodeConfig{Name: "primary"})
	replica := testutil.NewNode(t, testutil.NodeConfig{Name: "replica"})
	pProxy, rProxy := testutil.FreeAddr(t), testutil.FreeAddr(t)
	pApp := startApp(t, primary.Path("app.db"), release)
	rApp := startApp(t, replica.Path("app.db"), release)
	primary.WriteConfig(t, "lease:\n  type: static\n  candidate: true\n  hostname: primary\n  advertise-url: "+primary.URL()+"\n"+proxyConfig(pProxy, pApp))
	primary.Start(t)
	replica.WriteConfig(t, replica.ReplicaLease(primary)+proxyConfig(rProxy, rApp))
	replica.Start(t)

	conn := testutil.OpenDB(t, primary.Path("app.db"), "WAL")
	testutil.Exec(t, conn, "CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT)")
	replica.WaitPos(t, "app.db", primary.Pos(t, "app.db"), syncTimeout)

	jar, _ := cookiejar.New(nil)
	client := &http.Client{Jar: jar, Timeout: 30 * time.Second}
	base := "http://" + rProxy
	for i := 1; i <= 20; i++ {
		resp, err := client.Post(base+"/items", "text/plain", nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("write through the replica's proxy: %s", resp.Status)
		}
		// Read your write, through the same replica, at once.
		resp, err = client.Get(base + "/items")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(body) != fmt.Sprint(i) {
			t.Fatalf("read after write %d through the replica: %s %q", i, resp.Status, body)
		}
	}
	if n := testutil.Count(t, conn, "items"); n != 20 {
		t.Fatalf("primary has %d rows, want 20", n)
	}

	// A client that wrote further than the replica will get within max-lag.
	req, _ := http.NewRequest("GET", base+"/items", nil)
	req.AddCookie(&http.Cookie{Name: "__txid", Value: "00000000000fffff"})
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusGatewayTimeout || !strings.Contains(string(body), "not caught up") {
		t.Fatalf("read beyond max-lag: %s %q", resp.Status, body)
	}
	if time.Since(start) < 2*time.Second {
		t.Fatalf("refused after %s, before max-lag", time.Since(start))
	}

	// Health.
	resp, err = http.Get(base + "/litefs/health")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"healthy":true`) {
		t.Fatalf("health: %s %s", resp.Status, body)
	}

	// A streaming response arrives as it is written.
	resp, err = http.Get(base + "/stream")
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(resp.Body)
	first, err := br.ReadString('\n')
	if err != nil || first != "first\n" {
		t.Fatalf("first chunk: %q %v", first, err)
	}
	close(release)
	rest, _ := io.ReadAll(br)
	resp.Body.Close()
	if string(rest) != "second\n" {
		t.Fatalf("second chunk: %q", rest)
	}

	// An upgraded connection passes through.
	c, err := net.Dial("tcp", rProxy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprint(c, "GET /ws HTTP/1.1\r\nHost: app\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
	cr := bufio.NewReader(c)
	status, _ := cr.ReadString('\n')
	if !strings.Contains(status, "101") {
		t.Fatalf("upgrade: %q", status)
	}
	for {
		line, err := cr.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if line == "\r\n" {
			break
		}
	}
	fmt.Fprint(c, "hello\n")
	if line, _ := cr.ReadString('\n'); line != "echo hello\n" {
		t.Fatalf("echo through the upgraded connection: %q", line)
	}
}
