package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/litefs-project/litefs/internal/testutil"
	"github.com/litefs-project/litefs/ltx"
)

// runLiteFS runs the litefs binary to completion and returns its combined
// output and exit code.
func runLiteFS(t *testing.T, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(testutil.Binary(t), args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		if _, ok := err.(*exec.ExitError); !ok {
			t.Fatal(err)
		}
	}
	return string(out), cmd.ProcessState.ExitCode()
}

func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name   string
		config string
		want   string
	}{
		{"unknown key", "fuse:\n  dir: /x\n  dri: /y\nlease:\n  type: static\n", `unknown key "fuse.dri" at line 3`},
		{"unknown section", "lease:\n  type: static\nreplication:\n  x: 1\n", `unknown key "replication" at line 3`},
		{"bad lease type", "fuse:\n  dir: /x\ndata:\n  dir: /y\nlease:\n  type: raft\n", `invalid lease.type "raft"`},
		{"no lease type", "fuse:\n  dir: /x\ndata:\n  dir: /y\n", `lease.type is required`},
		{"bad duration", "lease:\n  type: static\ndata:\n  retention: soon\n", `invalid value`},
		{"bad yaml", "lease: [\n", `invalid YAML`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "-")+".yml")
			os.WriteFile(path, []byte(tt.config), 0o644)
			out, code := runLiteFS(t, "mount", "-config", path)
			if code != 1 || !strings.Contains(out, tt.want) || !strings.Contains(out, path) {
				t.Fatalf("exit %d, output %q; want exit 1 naming %s and %q", code, out, path, tt.want)
			}
		})
	}
	t.Run("missing file", func(t *testing.T) {
		out, code := runLiteFS(t, "mount", "-config", filepath.Join(dir, "nope.yml"))
		if code != 1 || !strings.Contains(out, "nope.yml") {
			t.Fatalf("exit %d, output %q", code, out)
		}
	})
}

func TestVersionAndUsage(t *testing.T) {
	if out, code := runLiteFS(t, "version"); code != 0 || !strings.HasPrefix(out, "litefs ") {
		t.Fatalf("version: exit %d, %q", code, out)
	}
	if out, code := runLiteFS(t, "frobnicate"); code != 2 || !strings.Contains(out, `unknown command "frobnicate"`) {
		t.Fatalf("unknown command: exit %d, %q", code, out)
	}
}

// TestExecCommand runs the application after mounting, passes its exit
// status through and unmounts when it exits.
func TestExecCommand(t *testing.T) {
	t.Run("exit status", func(t *testing.T) {
		n := testutil.NewNode(t, testutil.NodeConfig{})
		n.WriteConfig(t, "lease:\n  type: static\n  candidate: true\nexec: \"sh -c 'sqlite3 "+n.Path("x.db")+" \\\"CREATE TABLE t (v)\\\" && exit 7'\"\n")
		out, code := runLiteFS(t, "mount", "-config", n.CfgPath)
		if code != 7 {
			t.Fatalf("exit %d, want the command's 7; output:\n%s", code, out)
		}
		if n.Mounted() {
			t.Fatal("still mounted after the command exited")
		}
		if _, err := os.Stat(filepath.Join(n.DataDir, "dbs", "x.db", "database")); err != nil {
			t.Fatalf("the command did not see the mount: %v", err)
		}
	})

	t.Run("command after --", func(t *testing.T) {
		n := testutil.NewNode(t, testutil.NodeConfig{})
		n.WriteConfig(t, "lease:\n  type: static\n  candidate: true\nexec: \"false\"\n")
		out, code := runLiteFS(t, "mount", "-config", n.CfgPath, "--", "sqlite3", n.Path("y.db"), "CREATE TABLE t (v); INSERT INTO t VALUES (1);")
		if code != 0 {
			t.Fatalf("exit %d; output:\n%s", code, out)
		}
		l, err := ltx.OpenLog(n.LogDir("y.db"), ltx.Options{ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		if pos := l.Pos(); pos.TXID != 2 {
			t.Fatalf("log at %s after two transactions", pos)
		}
	})

	t.Run("list with if-candidate", func(t *testing.T) {
		n := testutil.NewNode(t, testutil.NodeConfig{})
		marker := filepath.Join(n.Root, "migrated")
		n.WriteConfig(t, "lease:\n  type: static\n  candidate: true\nexec:\n  - cmd: \"touch "+marker+"\"\n    if-candidate: true\n  - cmd: \"test -e "+marker+"\"\n")
		if out, code := runLiteFS(t, "mount", "-config", n.CfgPath); code != 0 {
			t.Fatalf("exit %d; output:\n%s", code, out)
		}
	})

	t.Run("exit-on-error false stays up", func(t *testing.T) {
		n := testutil.NewNode(t, testutil.NodeConfig{})
		done := filepath.Join(n.Root, "done")
		n.WriteConfig(t, "exit-on-error: false\nlease:\n  type: static\n  candidate: true\nexec: \"sh -c 'touch "+done+"; exit 5'\"\n")
		n.Start(t)
		waitUntil(t, 10*time.Second, "the command ran", func() bool { _, err := os.Stat(done); return err == nil })
		// With exit-on-error: true litefs unmounts and exits at once; here
		// it stays up, mount and API, until told to stop.
		for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			if !n.Running() || !n.Mounted() {
				t.Fatal("litefs stopped after the command failed, with exit-on-error: false")
			}
		}
		if err := n.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if code := n.Wait(t, 15*time.Second); code != 5 {
			t.Fatalf("litefs exited %d, want the command's 5", code)
		}
		if n.Mounted() {
			t.Fatal("still mounted after shutdown")
		}
	})

	t.Run("signals are forwarded", func(t *testing.T) {
		n := testutil.NewNode(t, testutil.NodeConfig{})
		ready := filepath.Join(n.Root, "ready")
		got := filepath.Join(n.Root, "got")
		n.WriteConfig(t, "lease:\n  type: static\n  candidate: true\nexec: \"sh -c 'trap \\\"echo TERM > "+got+"; exit 3\\\" TERM; touch "+ready+"; while :; do sleep 0.05; done'\"\n")
		n.Start(t)
		deadline := time.Now().Add(10 * time.Second)
		for _, err := os.Stat(ready); err != nil; _, err = os.Stat(ready) {
			if time.Now().After(deadline) {
				t.Fatal("the command never started")
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err := n.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if code := n.Wait(t, 15*time.Second); code != 3 {
			t.Fatalf("litefs exited %d, want the command's 3", code)
		}
		if b, err := os.ReadFile(got); err != nil || strings.TrimSpace(string(b)) != "TERM" {
			t.Fatalf("the command did not get SIGTERM: %q %v", b, err)
		}
		if n.Mounted() {
			t.Fatal("still mounted after shutdown")
		}
	})
}

// TestLogCommand lists a database's changesets from the data directory.
func TestLogCommand(t *testing.T) {
	n := testutil.StartNode(t, testutil.NodeConfig{})
	conn := testutil.OpenDB(t, n.Path("c.db"), "WAL")
	testutil.Exec(t, conn, "CREATE TABLE t (v)")
	testutil.Exec(t, conn, "INSERT INTO t VALUES (1)")
	pos := n.Pos(t, "c.db")
	out, code := runLiteFS(t, "log", "-data-dir", n.DataDir, "-name", "c.db", "-verify")
	if code != 0 || !strings.Contains(out, pos.String()) || strings.Count(out, "\n") < int(pos.TXID)+3 {
		t.Fatalf("exit %d, output:\n%s", code, out)
	}
	if out, code := runLiteFS(t, "log", "-data-dir", n.DataDir, "-name", "nope.db"); code != 1 || !strings.Contains(out, `"nope.db"`) {
		t.Fatalf("missing database: exit %d, %q", code, out)
	}
}

// TestRetention prunes old changesets but keeps the newest.
func TestRetention(t *testing.T) {
	n := testutil.StartNode(t, testutil.NodeConfig{Retention: time.Second, RetentionMonitorInterval: 100 * time.Millisecond})
	conn := testutil.OpenDB(t, n.Path("r.db"), "WAL")
	testutil.Exec(t, conn, "CREATE TABLE t (v)")
	// Spread commits over time until the log has sealed a segment (it
	// seals them by age) and begun the next, so that retention has one to
	// prune.
	sealed := func() bool {
		segs, err := filepath.Glob(filepath.Join(n.LogDir("r.db"), "*.ltxs"))
		if err != nil {
			t.Fatal(err)
		}
		return len(segs) >= 2
	}
	deadline := time.Now().Add(syncTimeout)
	for !sealed() {
		if time.Now().After(deadline) {
			t.Fatal("the log sealed no segment")
		}
		testutil.Exec(t, conn, "INSERT INTO t VALUES (randomblob(100))")
		time.Sleep(100 * time.Millisecond)
	}
	pos := n.Pos(t, "r.db")
	deadline = time.Now().Add(15 * time.Second)
	for {
		l, err := ltx.OpenLog(n.LogDir("r.db"), ltx.Options{ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		base, lpos := l.Base(), l.Pos()
		_, infoErr := l.Info(lpos.TXID)
		l.Close()
		if lpos != pos || infoErr != nil {
			t.Fatalf("the newest changeset is gone: log at %s (%v), database at %s", lpos, infoErr, pos)
		}
		if base.TXID > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no changeset was pruned")
		}
		time.Sleep(200 * time.Millisecond)
	}
	testutil.IntegrityCheck(t, conn)
}
