package lease

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/hashicorp/consul/api"
)

// ClusterIDFile is the file in the data directory that holds the ID of
// the cluster the node's data belongs to.
const ClusterIDFile = "clusterid"

// ErrClusterIDMismatch is returned when a node's data belongs to another
// cluster than the one registered in Consul.
var ErrClusterIDMismatch = errors.New("cluster ID mismatch")

var clusterIDPattern = regexp.MustCompile(`^LFSC[0-9A-F]{16}$`)

// NewClusterID returns a fresh cluster ID: "LFSC" and 16 hex digits.
func NewClusterID() string {
	b := make([]byte, 8)
	rand.Read(b)
	return "LFSC" + strings.ToUpper(hex.EncodeToString(b))
}

// ValidateClusterID reports whether id has the form of a cluster ID.
func ValidateClusterID(id string) error {
	if !clusterIDPattern.MatchString(id) {
		return fmt.Errorf("invalid cluster ID %q: want LFSC and 16 upper-case hex digits", id)
	}
	return nil
}

// JoinCluster makes this node's data directory and Consul agree on the
// cluster ID, kept at <key>/clusterid: the first node to start registers
// one, later nodes adopt it, and a node whose data directory already
// belongs to another cluster is refused with ErrClusterIDMismatch.
func (c *Consul) JoinCluster(ctx context.Context, dataDir string) (string, error) {
	local, err := readClusterID(dataDir)
	if err != nil {
		return "", err
	}
	key := c.opts.Key + "/clusterid"
	kv := c.client.KV()
	for {
		pair, _, err := kv.Get(key, (&api.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return "", fmt.Errorf("read cluster ID at %s: %w", key, err)
		}
		if pair != nil {
			remote := strings.TrimSpace(string(pair.Value))
			if err := ValidateClusterID(remote); err != nil {
				return "", fmt.Errorf("consul key %s: %w", key, err)
			}
			switch {
			case local == "":
				return remote, writeClusterID(dataDir, remote)
			case local != remote:
				return "", fmt.Errorf("%w: this node's data directory %s belongs to cluster %s, but consul key %s names cluster %s",
					ErrClusterIDMismatch, dataDir, local, key, remote)
			}
			return local, nil
		}
		id := local
		if id == "" {
			id = NewClusterID()
		}
		// Register it unless another node got there first (CAS on index 0).
		ok, _, err := kv.CAS(&api.KVPair{Key: key, Value: []byte(id), ModifyIndex: 0}, (&api.WriteOptions{}).WithContext(ctx))
		if err != nil {
			return "", fmt.Errorf("register cluster ID at %s: %w", key, err)
		}
		if ok {
			return id, writeClusterID(dataDir, id)
		}
	}
}

func readClusterID(dataDir string) (string, error) {
	path := filepath.Join(dataDir, ClusterIDFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	} else if err != nil {
		return "", fmt.Errorf("read cluster ID: %w", err)
	}
	id := strings.TrimSpace(string(b))
	if err := ValidateClusterID(id); err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	return id, nil
}

func writeClusterID(dataDir, id string) error {
	path := filepath.Join(dataDir, ClusterIDFile)
	if cur, err := readClusterID(dataDir); err == nil && cur == id {
		return nil
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(id+"\n"), 0o644); err != nil {
		return fmt.Errorf("write cluster ID: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write cluster ID: %w", err)
	}
	return nil
}
