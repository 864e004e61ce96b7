package tests

import (
	"errors"
	"io/fs"
	"os"
	"strings"
	"testing"

	"github.com/litefs-project/litefs/internal/testutil"
)

// TestStatusFilesFollowRole: the mount's .primary file appears and
// disappears the moment the node's role changes, for open, stat and
// readdir alike, even where the kernel looked it up while the node had the
// other role.
func TestStatusFilesFollowRole(t *testing.T) {
	c := testutil.StartConsul(t)
	a, b, _ := startConsulCluster(t, c)
	createTable(t, a, "db")
	checkReplica(t, a, b, "db", "")

	// Looked up and read on b while b is a replica.
	if got := readPrimaryFile(t, b); got != "a" {
		t.Fatalf(".primary on the replica reads %q, want a", got)
	}
	if _, err := os.Stat(a.Path(".primary")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("stat .primary on the primary: %v, want not found", err)
	}

	if out, code := runLiteFS(t, "run", "-url", b.URL(), "-promote"); code != 0 {
		t.Fatalf("promote b: exit %d\n%s", code, out)
	}
	// b is the primary now: at once, no .primary there.
	if !apiInfo(t, b).IsPrimary {
		t.Fatal("b is not primary after promote returned")
	}
	if f, err := os.Open(b.Path(".primary")); !errors.Is(err, fs.ErrNotExist) {
		if err == nil {
			f.Close()
		}
		t.Fatalf("open .primary on the new primary: %v, want not found", err)
	}
	if _, err := os.Stat(b.Path(".primary")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("stat .primary on the new primary: %v, want not found", err)
	}
	if listed(t, b, ".primary") {
		t.Fatal(".primary is listed on the new primary")
	}

	// a follows b as soon as it knows; from then on its .primary names b.
	waitUntil(t, failoverLimit, "a follows b", func() bool { return apiInfo(t, a).Primary == "b" })
	if got := readPrimaryFile(t, a); got != "b" {
		t.Fatalf(".primary on the old primary reads %q, want b", got)
	}
	if !listed(t, a, ".primary") {
		t.Fatal(".primary is not listed on the new replica")
	}
}

func readPrimaryFile(t *testing.T, n *testutil.Node) string {
	t.Helper()
	b, err := os.ReadFile(n.Path(".primary"))
	if err != nil {
		t.Fatalf("read .primary on %s: %v", n.Config.Name, err)
	}
	return strings.TrimSpace(string(b))
}

func listed(t *testing.T, n *testutil.Node, name string) bool {
	t.Helper()
	ents, err := os.ReadDir(n.Mnt)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.Name() == name {
			return true
		}
	}
	return false
}
