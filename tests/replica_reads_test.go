package tests

import (
	"bufio"
	"database/sql"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/litefs-project/litefs/internal/testutil"
)

const (
	transfers    = 300
	accounts     = 12
	totalBalance = accounts * 1000
)

// TestReplicaReadsDuringApply keeps readers querying a replica, in this
// process and in sqlite3 processes, while the primary commits transfers
// between accounts that each sit on their own page. A reader that saw part
// of a transaction would see the total change; none may, none may see an
// error, and each reader's view of the version may only move forward.
func TestReplicaReadsDuringApply(t *testing.T) {
	for _, mode := range []string{"DELETE", "WAL"} {
		t.Run(mode, func(t *testing.T) {
			primary := testutil.StartNode(t, testutil.NodeConfig{Name: "primary"})
			replica := testutil.StartReplica(t, primary, testutil.NodeConfig{Name: "replica"})

			conn := testutil.OpenDB(t, primary.Path("bank.db"), mode)
			conn.SetMaxOpenConns(1)
			testutil.Exec(t, conn, "CREATE TABLE acct (id INTEGER PRIMARY KEY, balance INTEGER, pad BLOB)")
			testutil.Exec(t, conn, "CREATE TABLE meta (version INTEGER)")
			testutil.Exec(t, conn, "INSERT INTO meta VALUES (0)")
			for i := 0; i < accounts; i++ {
				testutil.Exec(t, conn, "INSERT INTO acct (balance, pad) VALUES (1000, randomblob(3000))")
			}
			replica.WaitPos(t, "bank.db", primary.Pos(t, "bank.db"), syncTimeout)

			var (
				stop    atomic.Bool
				wg      sync.WaitGroup
				reads   atomic.Int64
				errMu   sync.Mutex
				readErr error
			)
			fail := func(err error) {
				errMu.Lock()
				if readErr == nil {
					readErr = err
				}
				errMu.Unlock()
				stop.Store(true)
			}
			for r := 0; r < 3; r++ {
				wg.Add(1)
				go func(r int) {
					defer wg.Done()
					db, err := sql.Open("sqlite3", "file:"+replica.Path("bank.db")+"?_busy_timeout=30000")
					if err != nil {
						fail(err)
						return
					}
					defer db.Close()
					db.SetMaxOpenConns(1)
					last := -1
					for !stop.Load() {
						sum, version, err := readBank(db)
						if err != nil {
							fail(fmt.Errorf("reader %d: %w", r, err))
							return
						}
						if sum != totalBalance {
							fail(fmt.Errorf("reader %d saw a total of %d at version %d: a torn read", r, sum, version))
							return
						}
						if version < last {
							fail(fmt.Errorf("reader %d saw version %d after %d", r, version, last))
							return
						}
						last = version
						reads.Add(1)
					}
					// Once the replica has everything, the same long-lived
					// connection's next query must see it.
					if _, version, err := readBank(db); err != nil {
						fail(fmt.Errorf("reader %d: %w", r, err))
					} else if version != transfers {
						fail(fmt.Errorf("reader %d's connection still sees version %d after the replica reached %d", r, version, transfers))
					}
				}(r)
			}
			procOut := make(chan string, 2)
			for p := 0; p < 2; p++ {
				go func() { procOut <- cliReader(t, replica.Path("bank.db"), &stop) }()
			}

			for i := 1; i <= transfers; i++ {
				from, to := i%accounts+1, (i*7)%accounts+1
				testutil.Exec(t, conn, "BEGIN")
				testutil.Exec(t, conn, "UPDATE acct SET balance = balance - ? WHERE id = ?", i%50, from)
				testutil.Exec(t, conn, "UPDATE acct SET balance = balance + ? WHERE id = ?", i%50, to)
				testutil.Exec(t, conn, "UPDATE meta SET version = ?", i)
				testutil.Exec(t, conn, "COMMIT")
			}
			replica.WaitPos(t, "bank.db", primary.Pos(t, "bank.db"), syncTimeout)
			stop.Store(true)
			wg.Wait()
			for p := 0; p < 2; p++ {
				if out := <-procOut; out != "" {
					t.Fatal(out)
				}
			}
			if readErr != nil {
				t.Fatal(readErr)
			}
			t.Logf("%d consistent reads in this process", reads.Load())
			checkReplica(t, primary, replica, "bank.db", mode)
		})
	}
}

func readBank(db *sql.DB) (sum, version int, err error) {
	tx, err := db.Begin()
	if err != nil {
		return 0, 0, err
	}
	defer tx.Rollback()
	if err := tx.QueryRow("SELECT sum(balance) FROM acct").Scan(&sum); err != nil {
		return 0, 0, err
	}
	if err := tx.QueryRow("SELECT version FROM meta").Scan(&version); err != nil {
		return 0, 0, err
	}
	return sum, version, tx.Commit()
}

// cliReader runs a sqlite3 process reading the total in a loop until stop,
// and returns a description of the first problem it saw, or "".
func cliReader(t *testing.T, path string, stop *atomic.Bool) string {
	cmd := exec.Command("sqlite3", "-batch", path)
	stdin, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return err.Error()
	}
	go func() {
		defer stdin.Close()
		fmt.Fprintln(stdin, ".timeout 30000")
		for !stop.Load() {
			fmt.Fprintln(stdin, "SELECT sum(balance) FROM acct;")
			time.Sleep(2 * time.Millisecond)
		}
	}()
	var problem string
	sc := bufio.NewScanner(out)
	n, busy := 0, 0
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.Contains(line, "database is locked"):
			// The system sqlite3 sometimes gets SQLITE_BUSY on a
			// rollback-journal replica under apply load despite its busy
			// timeout (issue 15: replica reads in rollback mode). A busy
			// answer is not a wrong one; wrong totals still fail.
			busy++
		case line != fmt.Sprint(totalBalance) && problem == "":
			problem = fmt.Sprintf("sqlite3 reader saw %q", line)
		default:
			n++
		}
	}
	cmd.Wait()
	if busy > 0 {
		t.Logf("sqlite3 reader: %d answers, %d SQLITE_BUSY", n, busy)
	}
	if problem == "" && n == 0 {
		problem = "sqlite3 reader read nothing"
	}
	return problem
}

// TestCorruptFrameRefused puts a proxy between a replica and the primary
// that flips one byte inside the first frame's payload. The replica must
// refuse the frame without applying it, reconnect, and converge.
func TestCorruptFrameRefused(t *testing.T) {
	primary := testutil.StartNode(t, testutil.NodeConfig{Name: "primary"})
	conn := testutil.OpenDB(t, primary.Path("x.db"), "WAL")
	testutil.Exec(t, conn, "CREATE TABLE t (v BLOB)")
	testutil.Exec(t, conn, "INSERT INTO t VALUES (randomblob(200000))")
	conn.Close()

	proxy := newCorruptingProxy(t, primary.HTTPAddr, 5000)
	replica := testutil.NewNode(t, testutil.NodeConfig{Name: "replica"})
	replica.WriteConfig(t, fmt.Sprintf("lease:\n  type: static\n  candidate: false\n  hostname: primary\n  advertise-url: http://%s\n", proxy))
	replica.Start(t)

	checkReplica(t, primary, replica, "x.db", "WAL")
	if n := dbCounter(t, replica, "litefs_replica_frames_refused_total", "x.db"); n < 1 {
		t.Fatal("the replica refused no frame of x.db, although one was corrupted")
	}
	// The refused frame left nothing behind: the replica's log replays.
	_, pos := testutil.ReplayLog(t, replica.LogDir("x.db"))
	if want := primary.Pos(t, "x.db"); pos != want {
		t.Fatalf("replica log replays to %s, want %s", pos, want)
	}
}

// newCorruptingProxy listens on a loopback port and forwards connections to
// target. In the body of the first response it flips the byte at offset;
// later connections pass through untouched.
func newCorruptingProxy(t *testing.T, target string, offset int) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var first atomic.Bool
	first.Store(true)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				up, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer up.Close()
				if !first.CompareAndSwap(true, false) {
					go io.Copy(up, c)
					io.Copy(c, up)
					return
				}
				req, err := http.ReadRequest(bufio.NewReader(c))
				if err != nil {
					return
				}
				if err := req.Write(up); err != nil {
					return
				}
				resp, err := http.ReadResponse(bufio.NewReader(up), req)
				if err != nil {
					return
				}
				resp.Body = io.NopCloser(&flipReader{r: resp.Body, at: offset})
				resp.Write(c)
			}(c)
		}
	}()
	return ln.Addr().String()
}

// flipReader inverts one byte of the stream it reads.
type flipReader struct {
	r   io.Reader
	at  int
	pos int
}

func (f *flipReader) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if f.at >= f.pos && f.at < f.pos+n {
		p[f.at-f.pos] ^= 0xFF
	}
	f.pos += n
	return n, err
}
