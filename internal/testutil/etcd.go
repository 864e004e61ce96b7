package testutil

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// EtcdBinary returns the path of a real etcd server: $LITEFS_ETCD, or the
// one scripts/install-etcd.sh fetches and caches (`make test` runs it
// first).
func EtcdBinary(t T) string {
	t.Helper()
	return installed(t, "LITEFS_ETCD", "install-etcd.sh")
}

// Etcd is a cluster of etcd members on loopback ports of its own, each
// with a data directory that survives its restarts.
type Etcd struct {
	Members []*EtcdMember
	t       T
}

// EtcdMember is one etcd server process.
type EtcdMember struct {
	Name       string
	ClientPort int
	PeerPort   int
	dir        string
	cluster    string // --initial-cluster
	token      string // --initial-cluster-token, the same for every member
	t          T

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	fresh  bool // never started: bootstraps the cluster
}

// StartEtcd starts a cluster of n members and waits until it serves
// requests. It is stopped when the test ends.
func StartEtcd(t T, n int) *Etcd {
	t.Helper()
	e := &Etcd{t: t}
	var peers []string
	for i := 0; i < n; i++ {
		m := &EtcdMember{Name: fmt.Sprintf("m%d", i), ClientPort: freePort(t), PeerPort: freePort(t), dir: t.TempDir(), t: t, fresh: true}
		e.Members = append(e.Members, m)
		peers = append(peers, fmt.Sprintf("%s=http://127.0.0.1:%d", m.Name, m.PeerPort))
	}
	for _, m := range e.Members {
		m.cluster = strings.Join(peers, ",")
		m.token = fmt.Sprintf("litefs-test-%d", e.Members[0].PeerPort)
	}
	t.Cleanup(func() {
		for _, m := range e.Members {
			m.Stop()
		}
		if t.Failed() {
			for _, m := range e.Members {
				if b, err := os.ReadFile(filepath.Join(m.dir, "etcd.log")); err == nil && len(b) > 0 {
					if len(b) > 4<<10 {
						b = b[len(b)-4<<10:]
					}
					t.Logf("etcd %s log (tail):\n%s", m.Name, b)
				}
			}
		}
	})
	for _, m := range e.Members {
		m.launch()
	}
	for _, m := range e.Members {
		m.waitHealthy()
	}
	return e
}

// URL is the client URL of the first member.
func (e *Etcd) URL() string { return e.Members[0].URL() }

// URLs lists every member's client URL.
func (e *Etcd) URLs() []string {
	var urls []string
	for _, m := range e.Members {
		urls = append(urls, m.URL())
	}
	return urls
}

// Stop stops every member.
func (e *Etcd) Stop() {
	for _, m := range e.Members {
		m.Stop()
	}
}

// Start starts every member again and waits until the cluster serves.
func (e *Etcd) Start() {
	for _, m := range e.Members {
		m.launch()
	}
	for _, m := range e.Members {
		m.waitHealthy()
	}
}

// URL is the member's client URL.
func (m *EtcdMember) URL() string { return fmt.Sprintf("http://127.0.0.1:%d", m.ClientPort) }

// Start runs the member (again) with its data directory.
func (m *EtcdMember) Start() {
	m.launch()
	m.waitHealthy()
}

func (m *EtcdMember) launch() {
	t := m.t
	t.Helper()
	logf, err := os.OpenFile(filepath.Join(m.dir, "etcd.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	state := "existing"
	if m.fresh {
		state = "new"
		m.fresh = false
	}
	cmd := exec.Command(EtcdBinary(t),
		"--name", m.Name,
		"--data-dir", filepath.Join(m.dir, "data"),
		"--listen-client-urls", m.URL(),
		"--advertise-client-urls", m.URL(),
		"--listen-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", m.PeerPort),
		"--initial-advertise-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", m.PeerPort),
		"--initial-cluster", m.cluster,
		"--initial-cluster-state", state,
		"--initial-cluster-token", m.token,
		// Fast elections for a loopback cluster; the defaults (100ms,
		// 1s) are for real networks.
		"--heartbeat-interval", "50",
		"--election-timeout", "500",
	)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	m.mu.Lock()
	m.cmd, m.exited = cmd, exited
	m.mu.Unlock()
}

// waitHealthy waits until the member answers /health with a leader.
func (m *EtcdMember) waitHealthy() {
	t := m.t
	t.Helper()
	m.mu.Lock()
	exited := m.exited
	m.mu.Unlock()
	c := http.Client{Timeout: time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := c.Get(m.URL() + "/health")
		if err == nil {
			var b [256]byte
			n, _ := resp.Body.Read(b[:])
			resp.Body.Close()
			if resp.StatusCode == 200 && strings.Contains(string(b[:n]), `"true"`) {
				return
			}
		}
		select {
		case <-exited:
			log, _ := os.ReadFile(filepath.Join(m.dir, "etcd.log"))
			t.Fatalf("etcd %s exited during start-up:\n%s", m.Name, log)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd %s not healthy after 30s", m.Name)
		}
	}
}

// Signal sends sig to the member's process (SIGSTOP cuts it off from its
// peers and clients alike; SIGCONT brings it back).
func (m *EtcdMember) Signal(sig syscall.Signal) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil {
		return fmt.Errorf("etcd %s is not running", m.Name)
	}
	return m.cmd.Process.Signal(sig)
}

// Stop ends the member (SIGTERM, then SIGKILL) and waits for it.
func (m *EtcdMember) Stop() {
	m.mu.Lock()
	cmd, exited := m.cmd, m.exited
	m.cmd = nil
	m.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGCONT) // a stopped process cannot act on SIGTERM
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-exited
	}
}

// EtcdLease returns the lease section of node n using the etcd lease, on
// the given member URLs.
func (n *Node) EtcdLease(urls []string, key string, candidate bool, ttl time.Duration) string {
	var eps strings.Builder
	for _, u := range urls {
		fmt.Fprintf(&eps, "      - %q\n", u)
	}
	return fmt.Sprintf("lease:\n  type: etcd\n  candidate: %t\n  hostname: %s\n  advertise-url: %s\n  reconnect-delay: 200ms\n"+
		"  etcd:\n    endpoints:\n%s    key: %q\n    ttl: %s\n",
		candidate, n.Config.Name, n.URL(), eps.String(), key, ttl)
}
