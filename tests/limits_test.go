package tests

import (
	"bufio"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	lhttp "github.com/litefs-project/litefs/http"
	"github.com/litefs-project/litefs/internal/testutil"
)

// The API's limits on real nodes with their default settings: an upload
// is refused for its size before it costs disk, and slow or idle clients
// neither keep the API from answering nor stay connected.

// rawConn opens a TCP connection to a node's API, closed when the test ends.
func rawConn(t *testing.T, n *testutil.Node) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", n.HTTPAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// readAnswer reads one HTTP answer from c and returns its status and body.
func readAnswer(t *testing.T, c net.Conn) (int, string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// uploadsLeft lists the temporary files of uploads in a node's data directory.
func uploadsLeft(t *testing.T, n *testutil.Node) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(n.DataDir, ".upload-*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestImportSizeRefused: a valid database padded with 200 MB of zeros, and
// an upload declared over the import size limit, are refused on the
// primary with errors naming the sizes; no node's database changes and no
// temporary file stays behind.
func TestImportSizeRefused(t *testing.T) {
	primary := testutil.StartNode(t, testutil.NodeConfig{Name: "primary"})
	replicas := []*testutil.Node{
		testutil.StartReplica(t, primary, testutil.NodeConfig{Name: "replica1"}),
		testutil.StartReplica(t, primary, testutil.NodeConfig{Name: "replica2"}),
	}
	conn := testutil.OpenDB(t, primary.Path("app.db"), "WAL")
	testutil.Exec(t, conn, "CREATE TABLE t (v)")
	testutil.Exec(t, conn, "INSERT INTO t VALUES (1)")
	before := primary.Pos(t, "app.db")
	for _, r := range replicas {
		r.WaitPos(t, "app.db", before, syncTimeout)
	}

	src := filepath.Join(t.TempDir(), "src.db")
	sconn, err := sql.Open("sqlite3", src)
	if err != nil {
		t.Fatal(err)
	}
	testutil.Exec(t, sconn, "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
	testutil.Exec(t, sconn, testutil.Series(200)+" INSERT INTO users (name) SELECT 'user' || i FROM s")
	sconn.Close()
	fi, err := os.Stat(src)
	if err != nil {
		t.Fatal(err)
	}
	size := fi.Size()
	// The padding is a hole: the file costs no disk here.
	padded := filepath.Join(t.TempDir(), "padded.db")
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(padded, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(padded, size+200<<20); err != nil {
		t.Fatal(err)
	}

	// Through the CLI, which declares the file's length: refused before
	// the upload starts.
	msg, code := runLiteFS(t, "import", "-url", primary.URL(), "-name", "app.db", padded)
	if code == 0 || !strings.Contains(msg, "declares a database of "+fmt.Sprint(size)) {
		t.Fatalf("import of a padded file: exit %d, %q; want a refusal naming the database's size %d", code, msg, size)
	}

	epoch := apiInfo(t, primary).Epoch
	for _, tc := range []struct {
		name     string
		declared int64
		body     []byte // sent before the answer is read
		code     int
		want     []string
	}{
		{"padded, declared", size + 200<<20, b, 400, []string{fmt.Sprint(size + 200<<20), fmt.Sprint(size)}},
		{"over the limit", lhttp.DefaultMaxImportSize + 1, nil, 413, []string{fmt.Sprint(lhttp.DefaultMaxImportSize)}},
	} {
		c := rawConn(t, primary)
		fmt.Fprintf(c, "POST /import?name=app.db&epoch=%d HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/vnd.sqlite3\r\nContent-Length: %d\r\n\r\n", epoch, tc.declared)
		c.Write(tc.body)
		code, body := readAnswer(t, c)
		if code != tc.code {
			t.Fatalf("%s: status %d %s, want %d", tc.name, code, body, tc.code)
		}
		for _, w := range tc.want {
			if !strings.Contains(body, w) {
				t.Errorf("%s: error %s does not name %s", tc.name, body, w)
			}
		}
		if f := uploadsLeft(t, primary); len(f) > 0 {
			t.Fatalf("%s: temporary files left: %v", tc.name, f)
		}
	}

	if got := primary.Pos(t, "app.db"); got != before {
		t.Fatalf("refused imports moved the primary from %s to %s", before, got)
	}
	for _, r := range replicas {
		checkReplica(t, primary, r, "app.db", "")
	}
	// The file itself, unpadded, is taken.
	if msg, code := runLiteFS(t, "import", "-url", primary.URL(), "-name", "app.db", src); code != 0 {
		t.Fatalf("import of the valid file: %s", msg)
	}
}

// TestSlowAndIdleClients: 300 clients sending request bodies a byte at a
// time and 300 idle keep-alive connections, more than the API's
// connection limit together, do not keep it from answering /info or a new
// replica from streaming; the server closes every slow one once its body's
// grace period is over.
func TestSlowAndIdleClients(t *testing.T) {
	const n = 300
	primary := testutil.StartNode(t, testutil.NodeConfig{Name: "primary"})
	conn := testutil.OpenDB(t, primary.Path("app.db"), "WAL")
	testutil.Exec(t, conn, "CREATE TABLE t (v)")

	start := time.Now()
	var slow []net.Conn
	for i := 0; i < n; i++ {
		c := rawConn(t, primary)
		fmt.Fprintf(c, "POST /halt/keepalive HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n{")
		slow = append(slow, c)
	}
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(time.Second) // a byte a second on each
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				for _, c := range slow {
					c.SetWriteDeadline(time.Now().Add(10 * time.Millisecond))
					c.Write([]byte(" "))
				}
			}
		}
	}()
	defer func() { close(stop); <-done }()
	for i := 0; i < n; i++ {
		c := rawConn(t, primary)
		fmt.Fprintf(c, "GET /info HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
		if code, body := readAnswer(t, c); code != 200 {
			t.Fatalf("idle connection %d: %d %s", i, code, body)
		}
	}

	if info := apiInfo(t, primary); !info.IsPrimary {
		t.Fatalf("/info among slow and idle clients: %+v", info)
	}
	replica := testutil.StartReplica(t, primary, testutil.NodeConfig{Name: "replica"})
	testutil.Exec(t, conn, "INSERT INTO t VALUES (1)")
	checkReplica(t, primary, replica, "app.db", "")

	deadline := start.Add(lhttp.DefaultBodyReadTimeout + 20*time.Second)
	for i, c := range slow {
		c.SetReadDeadline(deadline)
		_, err := io.ReadAll(c)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("slow client %d still connected %s after it began", i, time.Since(start).Round(time.Second))
		}
	}
}
