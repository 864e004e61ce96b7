// Package tests runs litefs as real processes with real FUSE mounts, real
// SQLite clients and real HTTP between nodes, and checks what a user would:
// data, positions and changeset logs.
package tests

import (
	"os"
	"testing"

	"github.com/litefs-project/litefs/internal/testutil"
)

func TestMain(m *testing.M) {
	os.Exit(testutil.Main(m))
}
