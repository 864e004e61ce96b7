package tests

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/litefs-project/litefs/internal/testutil"
)

// TestDiskFull puts the data directory on a small tmpfs and writes until it
// is full, in both journal modes. SQLite must report a full disk, nothing
// committed may be lost, the position must still match the content and the
// log must still replay; once space is freed, writing resumes.
func TestDiskFull(t *testing.T) {
	if os.Getuid() != 0 {
		t.Fatal("this test mounts a tmpfs and must run as root")
	}
	for _, mode := range []string{"DELETE", "WAL"} {
		t.Run(mode, func(t *testing.T) {
			n := testutil.NewNode(t, testutil.NodeConfig{})
			if err := os.MkdirAll(n.DataDir, 0o755); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=6m", "litefs-test", n.DataDir).CombinedOutput(); err != nil {
				t.Fatalf("mount tmpfs: %v: %s", err, out)
			}
			t.Cleanup(func() {
				n.Stop(t)
				exec.Command("umount", "-l", n.DataDir).Run()
			})
			n.WriteConfig(t, "lease:\n  type: static\n  candidate: true\n")
			n.Start(t)

			conn := testutil.OpenDB(t, n.Path("full.db"), mode)
			conn.SetMaxOpenConns(1)
			testutil.Exec(t, conn, "CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
			committed := 0
			var lastErr error
			for i := 0; i < 10000; i++ {
				if _, err := conn.Exec("INSERT INTO t (v) VALUES (randomblob(20000))"); err != nil {
					lastErr = err
					break
				}
				committed++
			}
			if lastErr == nil || !(strings.Contains(lastErr.Error(), "full") || strings.Contains(lastErr.Error(), "no space left")) {
				t.Fatalf("after %d inserts: got %v, want SQLite's disk-full error", committed, lastErr)
			}
			t.Logf("disk full after %d inserts: %v", committed, lastErr)

			if got := testutil.Count(t, conn, "t"); got != committed {
				t.Fatalf("%d rows after the disk filled, %d inserts succeeded", got, committed)
			}
			checkDB(t, n, "full.db", conn)

			// Free space and keep going.
			if out, err := exec.Command("mount", "-o", "remount,size=64m", n.DataDir).CombinedOutput(); err != nil {
				t.Fatalf("grow tmpfs: %v: %s", err, out)
			}
			for i := 0; i < 20; i++ {
				testutil.Exec(t, conn, "INSERT INTO t (v) VALUES (randomblob(20000))")
			}
			if got := testutil.Count(t, conn, "t"); got != committed+20 {
				t.Fatalf("%d rows, want %d", got, committed+20)
			}
			checkDB(t, n, "full.db", conn)

			pos := n.Pos(t, "full.db")
			conn.Close()
			n.Restart(t)
			if got := n.Pos(t, "full.db"); got != pos {
				t.Fatalf("after restart at %s, want %s", got, pos)
			}
		})
	}
}
