package testutil

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ConsulBinary returns the path of a real Consul agent: $LITEFS_CONSUL, or
// the one scripts/install-consul.sh builds and caches (a cold build takes
// minutes; `make test` runs it first).
func ConsulBinary(t T) string {
	t.Helper()
	return installed(t, "LITEFS_CONSUL", "install-consul.sh")
}

var (
	installMu sync.Mutex
	installs  = map[string]string{} // by environment variable
)

// installed returns the path a program's environment variable names, or
// the one its install script (in scripts/) prints on its last line, once
// per test process.
func installed(t T, env, script string) string {
	t.Helper()
	installMu.Lock()
	defer installMu.Unlock()
	if p := installs[env]; p != "" {
		return p
	}
	if p := os.Getenv(env); p != "" {
		installs[env] = p
		return p
	}
	cmd := exec.Command("bash", filepath.Join(moduleRoot(), "scripts", script))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: %v\n%s", script, err, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	p := strings.TrimSpace(lines[len(lines)-1])
	installs[env] = p
	return p
}

// Consul is a `consul agent -dev` on loopback ports of its own. Its state
// lives in memory: a restart starts from an empty KV store.
type Consul struct {
	HTTPPort int
	ports    [3]int // serf LAN, server RPC, and spare
	dir      string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	t      T
}

// StartConsul starts a dev agent and waits until it has a leader. It is
// stopped when the test ends.
func StartConsul(t T) *Consul {
	t.Helper()
	c := &Consul{dir: t.TempDir(), t: t}
	c.HTTPPort = freePort(t)
	for i := range c.ports {
		c.ports[i] = freePort(t)
	}
	t.Cleanup(func() {
		c.Stop()
		if t.Failed() {
			if b, err := os.ReadFile(filepath.Join(c.dir, "consul.log")); err == nil && len(b) > 0 {
				if len(b) > 8<<10 {
					b = b[len(b)-8<<10:]
				}
				t.Logf("consul log (tail):\n%s", b)
			}
		}
	})
	c.Start()
	return c
}

func freePort(t T) int {
	_, port, err := net.SplitHostPort(FreeAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	p, _ := strconv.Atoi(port)
	return p
}

// URL is the agent's HTTP API.
func (c *Consul) URL() string { return fmt.Sprintf("http://127.0.0.1:%d", c.HTTPPort) }

// Start runs the agent (again) on the same ports.
func (c *Consul) Start() {
	t := c.t
	t.Helper()
	logf, err := os.OpenFile(filepath.Join(c.dir, "consul.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	ports := fmt.Sprintf("ports { http = %d, dns = -1, grpc = -1, grpc_tls = -1, serf_lan = %d, serf_wan = -1, server = %d }",
		c.HTTPPort, c.ports[0], c.ports[1])
	cmd := exec.Command(ConsulBinary(t), "agent", "-dev", "-bind", "127.0.0.1", "-client", "127.0.0.1",
		"-node", fmt.Sprintf("test-%d", c.HTTPPort),
		"-hcl", `session_ttl_min = "1s"`, "-hcl", ports)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start consul: %v", err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	c.mu.Lock()
	c.cmd, c.exited = cmd, exited
	c.mu.Unlock()

	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(c.URL() + "/v1/status/leader")
		if err == nil {
			var b [128]byte
			n, _ := resp.Body.Read(b[:])
			resp.Body.Close()
			if resp.StatusCode == 200 && len(strings.Trim(strings.TrimSpace(string(b[:n])), `"`)) > 0 {
				return
			}
		}
		select {
		case <-exited:
			log, _ := os.ReadFile(filepath.Join(c.dir, "consul.log"))
			t.Fatalf("consul exited during start-up:\n%s", log)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("consul has no leader after 30s")
		}
	}
}

// Stop ends the agent (SIGTERM, then SIGKILL) and waits for it.
func (c *Consul) Stop() {
	c.mu.Lock()
	cmd, exited := c.cmd, c.exited
	c.cmd = nil
	c.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-exited
	}
}

// ConsulLease returns the lease section of node n using the Consul lease.
func (n *Node) ConsulLease(c *Consul, key string, candidate bool, ttl, lockDelay time.Duration) string {
	return fmt.Sprintf("lease:\n  type: consul\n  candidate: %t\n  hostname: %s\n  advertise-url: %s\n  reconnect-delay: 200ms\n"+
		"  consul:\n    url: %q\n    key: %q\n    ttl: %s\n    lock-delay: %s\n",
		candidate, n.Config.Name, n.URL(), c.URL(), key, ttl, lockDelay)
}
