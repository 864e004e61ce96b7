package tests

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/litefs-project/litefs/internal/testutil"
)

// TestDataDirInUse: a second daemon on a data directory a running node
// holds would commit under the same TXIDs, and a restart would lose one
// node's acknowledged commits and move its TXID back. It is refused at
// start, naming the directory and the owner, and the running node's data
// is unchanged, still writable, and survives a restart.
func TestDataDirInUse(t *testing.T) {
	first := testutil.StartNode(t, testutil.NodeConfig{Name: "first"})
	conn := testutil.OpenDB(t, first.Path("app.db"), "WAL")
	testutil.Exec(t, conn, "CREATE TABLE t (v)")
	testutil.Exec(t, conn, "INSERT INTO t (v) "+testutil.Series(100)+" SELECT i FROM s")
	pos := first.Pos(t, "app.db")
	digest := testutil.Digest(t, conn)

	second := testutil.NewNode(t, testutil.NodeConfig{Name: "second"})
	second.DataDir = first.DataDir
	second.WriteConfig(t, "lease:\n  type: static\n  candidate: true\n  hostname: second\n")
	// The command ends at once: a second daemon that started would mount,
	// run it, and exit 0.
	out, code := runLiteFS(t, "mount", "-config", second.CfgPath, "--", "true")
	want := fmt.Sprintf("data.dir %s is in use by litefs pid %d", first.DataDir, first.PID())
	if code == 0 || !strings.Contains(out, want) {
		t.Fatalf("second mount on the same data.dir: exit %d, output:\n%s\nwant a non-zero exit saying %q", code, out, want)
	}
	if ents, err := os.ReadDir(second.Mnt); err == nil && len(ents) > 0 {
		t.Errorf("the refused node left %d entries in its mount directory", len(ents))
	}

	if got := first.Pos(t, "app.db"); got != pos {
		t.Fatalf("position moved from %s to %s", pos, got)
	}
	if got := testutil.Digest(t, conn); got != digest {
		t.Fatalf("rows changed: %s, want %s", got, digest)
	}
	testutil.Exec(t, conn, "INSERT INTO t VALUES (101)")
	testutil.IntegrityCheck(t, conn)
	pos = first.Pos(t, "app.db")
	conn.Close()

	first.Restart(t)
	if got := first.Pos(t, "app.db"); got != pos {
		t.Fatalf("after a restart the position is %s, want %s", got, pos)
	}
	conn = testutil.OpenDB(t, first.Path("app.db"), "WAL")
	if n := testutil.Count(t, conn, "t"); n != 101 {
		t.Fatalf("after a restart %d rows, want 101", n)
	}
	testutil.IntegrityCheck(t, conn)
}

// TestHostileDirs: configurations whose fuse.dir and data.dir overlap, or
// that leave one out, are refused before anything is created or mounted.
// A data directory inside the mount (directly, or through a symbolic link)
// would make the daemon write its data through its own mount and deadlock
// beyond SIGKILL; a missing key used to become /litefs or /var/lib/litefs.
func TestHostileDirs(t *testing.T) {
	testutil.RequireFUSE(t)
	for _, tc := range []struct {
		name string
		// dirs returns the fuse and data sections, given the test's root,
		// which holds an empty mnt directory.
		dirs func(t *testing.T, root string) string
		want func(root string) []string
	}{
		{
			name: "data.dir inside fuse.dir",
			dirs: func(t *testing.T, root string) string { return sections(root+"/mnt", root+"/mnt/data") },
			want: func(root string) []string {
				return []string{fmt.Sprintf(`data.dir %q is inside fuse.dir %q`, root+"/mnt/data", root+"/mnt")}
			},
		},
		{
			name: "same directory",
			dirs: func(t *testing.T, root string) string { return sections(root+"/mnt", root+"/mnt/") },
			want: func(root string) []string {
				return []string{fmt.Sprintf(`data.dir %q (%s) and fuse.dir %q are the same directory`, root+"/mnt/", root+"/mnt", root+"/mnt")}
			},
		},
		{
			name: "fuse.dir inside data.dir",
			dirs: func(t *testing.T, root string) string { return sections(root+"/mnt/sub", root+"/mnt") },
			want: func(root string) []string {
				return []string{fmt.Sprintf(`fuse.dir %q is inside data.dir %q`, root+"/mnt/sub", root+"/mnt")}
			},
		},
		{
			name: "data.dir through a symbolic link into the mount",
			dirs: func(t *testing.T, root string) string {
				symlink(t, root+"/mnt", root+"/link")
				return sections(root+"/mnt", root+"/link/data")
			},
			want: func(root string) []string {
				return []string{fmt.Sprintf(`data.dir %q (resolves to %s) is inside fuse.dir`, root+"/link/data", root+"/mnt/data")}
			},
		},
		{
			name: "data.dir a dangling symbolic link into the mount",
			dirs: func(t *testing.T, root string) string {
				symlink(t, root+"/mnt/data", root+"/data")
				return sections(root+"/mnt", root+"/data")
			},
			want: func(root string) []string {
				return []string{fmt.Sprintf(`data.dir %q (resolves to %s) is inside fuse.dir`, root+"/data", root+"/mnt/data")}
			},
		},
		{
			name: "no fuse.dir",
			dirs: func(t *testing.T, root string) string { return fmt.Sprintf("data:\n  dir: %q\n", root+"/data") },
			want: func(string) []string { return []string{"fuse.dir is required"} },
		},
		{
			name: "no data.dir",
			dirs: func(t *testing.T, root string) string { return fmt.Sprintf("fuse:\n  dir: %q\n", root+"/mnt") },
			want: func(string) []string { return []string{"data.dir is required"} },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			mnt := filepath.Join(root, "mnt")
			if err := os.Mkdir(mnt, 0o755); err != nil {
				t.Fatal(err)
			}
			cfg := filepath.Join(root, "litefs.yml")
			body := tc.dirs(t, root) + fmt.Sprintf("http:\n  addr: %q\nlease:\n  type: static\n  candidate: true\n", testutil.FreeAddr(t))
			if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
			before := tree(t, root)
			// Were it accepted, the daemon would mount, run the command
			// and exit 0.
			out, code := runLiteFS(t, "mount", "-config", cfg, "--", "true")
			if code != 1 || !strings.Contains(out, cfg) {
				t.Fatalf("exit %d, output:\n%s\nwant exit 1 naming %s", code, out, cfg)
			}
			for _, w := range tc.want(root) {
				if !strings.Contains(out, w) {
					t.Errorf("output:\n%s\nwant it to contain %q", out, w)
				}
			}
			// Refused before anything was created or mounted.
			if after := tree(t, root); after != before {
				t.Errorf("the refused start changed %s:\nbefore:\n%safter:\n%s", root, before, after)
			}
			if b, err := os.ReadFile("/proc/mounts"); err == nil && strings.Contains(string(b), " "+mnt+" ") {
				t.Errorf("%s is mounted", mnt)
			}
		})
	}
}

func sections(fuseDir, dataDir string) string {
	return fmt.Sprintf("fuse:\n  dir: %q\ndata:\n  dir: %q\n", fuseDir, dataDir)
}

func symlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}

// tree lists every path under root, one a line.
func tree(t *testing.T, root string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.Walk(root, func(path string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		b.WriteString(path + "\n")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}
