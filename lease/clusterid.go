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
	clientv3 "go.etcd.io/etcd/client/v3"
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

// clusterIDStore is where a lease keeps the cluster ID, beside its key.
type clusterIDStore interface {
	// getClusterID returns the registered ID, or "" if there is none.
	getClusterID(ctx context.Context) (string, error)
	// createClusterID registers id unless one is registered already, and
	// reports whether it did.
	createClusterID(ctx context.Context, id string) (bool, error)
	// clusterIDKey names where the ID is kept, for messages.
	clusterIDKey() string
}

// joinCluster makes this node's data directory and the lease store agree
// on the cluster ID: the first node to start registers one, later nodes
// adopt it, and a node whose data directory already belongs to another
// cluster is refused with ErrClusterIDMismatch.
func joinCluster(ctx context.Context, dataDir string, st clusterIDStore) (string, error) {
	local, err := readClusterID(dataDir)
	if err != nil {
		return "", err
	}
	key := st.clusterIDKey()
	for {
		remote, err := st.getClusterID(ctx)
		if err != nil {
			return "", fmt.Errorf("read cluster ID at %s: %w", key, err)
		}
		if remote != "" {
			if err := ValidateClusterID(remote); err != nil {
				return "", fmt.Errorf("%s: %w", key, err)
			}
			switch {
			case local == "":
				return remote, writeClusterID(dataDir, remote)
			case local != remote:
				return "", fmt.Errorf("%w: this node's data directory %s belongs to cluster %s, but %s names cluster %s",
					ErrClusterIDMismatch, dataDir, local, key, remote)
			}
			return local, nil
		}
		id := local
		if id == "" {
			id = NewClusterID()
		}
		ok, err := st.createClusterID(ctx, id)
		if err != nil {
			return "", fmt.Errorf("register cluster ID at %s: %w", key, err)
		}
		if ok {
			return id, writeClusterID(dataDir, id)
		}
	}
}

// JoinCluster makes this node's data directory and Consul agree on the
// cluster ID, kept at <key>/clusterid.
func (c *Consul) JoinCluster(ctx context.Context, dataDir string) (string, error) {
	return joinCluster(ctx, dataDir, c)
}

func (c *Consul) clusterIDKey() string { return "consul key " + c.opts.Key + "/clusterid" }

func (c *Consul) getClusterID(ctx context.Context) (string, error) {
	pair, _, err := c.client.KV().Get(c.opts.Key+"/clusterid", (&api.QueryOptions{}).WithContext(ctx))
	if err != nil || pair == nil {
		return "", err
	}
	return strings.TrimSpace(string(pair.Value)), nil
}

func (c *Consul) createClusterID(ctx context.Context, id string) (bool, error) {
	// CAS on index 0: only if the key does not exist.
	ok, _, err := c.client.KV().CAS(&api.KVPair{Key: c.opts.Key + "/clusterid", Value: []byte(id), ModifyIndex: 0}, (&api.WriteOptions{}).WithContext(ctx))
	return ok, err
}

// JoinCluster makes this node's data directory and etcd agree on the
// cluster ID, kept at <key>/clusterid.
func (e *Etcd) JoinCluster(ctx context.Context, dataDir string) (string, error) {
	return joinCluster(ctx, dataDir, e)
}

func (e *Etcd) clusterIDKey() string { return "etcd key " + e.opts.Key + "/clusterid" }

func (e *Etcd) getClusterID(ctx context.Context) (string, error) {
	resp, err := e.client.Get(ctx, e.opts.Key+"/clusterid")
	if err != nil || len(resp.Kvs) == 0 {
		return "", err
	}
	return strings.TrimSpace(string(resp.Kvs[0].Value)), nil
}

func (e *Etcd) createClusterID(ctx context.Context, id string) (bool, error) {
	key := e.opts.Key + "/clusterid"
	txn, err := e.client.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, id)).
		Commit()
	if err != nil {
		return false, err
	}
	return txn.Succeeded, nil
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
