package testutil

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	lhttp "github.com/litefs-project/litefs/http"
	"github.com/litefs-project/litefs/ltx"
)

// T is the part of testing.TB the helpers use, so that programs other
// than tests (the benchmark) can use them too.
type T interface {
	Helper()
	Cleanup(func())
	TempDir() string
	Failed() bool
	Logf(format string, args ...any)
	Errorf(format string, args ...any)
	Fatal(args ...any)
	Fatalf(format string, args ...any)
}

var (
	buildMu    sync.Mutex
	buildDir   string
	buildPaths = map[bool]string{} // by race detector on/off
)

// Main runs a package's tests with a litefs binary built for them (with
// the race detector when the tests use it), then removes it and detaches
// any mount a crashed test left behind.
func Main(m interface{ Run() int }) int {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	DetachStaleMounts()
	return code
}

// BinaryPath, when set, is used instead of building the binary. It
// defaults to $LITEFS_TEST_BINARY.
var BinaryPath = os.Getenv("LITEFS_TEST_BINARY")

// Binary returns the path of the litefs binary under test, built with the
// race detector when the tests run with it.
func Binary(t T) string {
	t.Helper()
	if BinaryPath != "" {
		return BinaryPath
	}
	return build(t, raceEnabled)
}

// FastBinary returns a litefs binary built without the race detector, for
// tests whose volume of data would make an instrumented binary too slow.
func FastBinary(t T) string {
	t.Helper()
	if BinaryPath != "" {
		return BinaryPath
	}
	return build(t, false)
}

func build(t T, race bool) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if p := buildPaths[race]; p != "" {
		return p
	}
	if buildDir == "" {
		dir, err := os.MkdirTemp("", "litefs-test-bin-")
		if err != nil {
			t.Fatal(err)
		}
		buildDir = dir
	}
	path := filepath.Join(buildDir, "litefs")
	args := []string{"build", "-o"}
	if race {
		path += "-race"
		args = append(args, path, "-race")
	} else {
		args = append(args, path)
	}
	cmd := exec.Command("go", append(args, "./cmd/litefs")...)
	cmd.Dir = moduleRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build litefs: %v\n%s", err, out)
	}
	buildPaths[race] = path
	return path
}

// moduleRoot finds the repository root from this source file's location.
func moduleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// DetachStaleMounts lazily unmounts litefs mounts under the temporary
// directory whose daemon is gone (a killed test process can leave one
// behind). Live mounts, of tests running in another process, are left alone.
func DetachStaleMounts() {
	b, err := os.ReadFile("/proc/mounts")
	if err != nil {
		return
	}
	tmp := os.TempDir()
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 2 && f[2] == "fuse.litefs" && strings.HasPrefix(f[1], tmp) {
			if !disconnected(f[1]) {
				continue // its daemon still answers, or may
			}
			_ = exec.Command("fusermount3", "-u", "-z", f[1]).Run()
		}
	}
}

// disconnected reports whether the FUSE mount at dir has lost its daemon.
// A daemon that does not answer within a second is given the benefit of
// the doubt.
func disconnected(dir string) bool {
	res := make(chan error, 1)
	go func() {
		_, err := os.Stat(dir)
		res <- err
	}()
	select {
	case err := <-res:
		return errors.Is(err, syscall.ENOTCONN)
	case <-time.After(time.Second):
		return false
	}
}

// NodeConfig describes a litefs node to run.
type NodeConfig struct {
	Name  string // used in log output and directory names
	Extra string // more YAML, appended to the generated config
	Args  []string

	// Retention and RetentionMonitorInterval set data.retention and
	// data.retention-monitor-interval when non-zero.
	Retention                time.Duration
	RetentionMonitorInterval time.Duration

	// Production leaves out the test settings (strict verification after
	// every commit, debug logs), for benchmarks.
	Production bool

	// Fast runs a binary built without the race detector.
	Fast bool

	// HTTP is more YAML under http:, each line indented by two spaces.
	HTTP string

	// Secure, if set, gives the node a cluster secret and, with a CA,
	// mutual TLS; the test's own requests (Client, API) present them.
	Secure *Secure
}

// Secure is a node's API security in a test.
type Secure struct {
	Token string
	CA    *CA // nil: plain HTTP
}

// Node is a litefs process with its mount and data directory.
type Node struct {
	Config   NodeConfig
	HTTPAddr string // loopback address of its API
	Root     string
	Mnt      string
	DataDir  string
	CfgPath  string
	LogPath  string

	clientTLS *lhttp.TLS // the test's own certificate, with Secure.CA

	mu     sync.Mutex
	client *http.Client     // built once for the config written last
	api    *lhttp.APIClient // the same
	cmd    *exec.Cmd
	exited chan struct{}
	t      T
}

// StartNode writes a config for a primary with a static lease (plus
// cfg.Extra) and starts it. The node is stopped and unmounted when the
// test ends, and its log is printed if the test failed.
func StartNode(t T, cfg NodeConfig) *Node {
	t.Helper()
	n := NewNode(t, cfg)
	n.WriteConfig(t, fmt.Sprintf("lease:\n  type: static\n  candidate: true\n  hostname: %s\n%s", cfg.Name, cfg.Extra))
	n.Start(t)
	return n
}

// StartReplica starts a node that replicates from primary with a static
// lease.
func StartReplica(t T, primary *Node, cfg NodeConfig) *Node {
	t.Helper()
	n := NewNode(t, cfg)
	n.WriteConfig(t, n.ReplicaLease(primary)+cfg.Extra)
	n.Start(t)
	return n
}

// ReplicaLease returns the lease section of a static replica of primary.
func (n *Node) ReplicaLease(primary *Node) string {
	return fmt.Sprintf("lease:\n  type: static\n  candidate: false\n  hostname: %s\n  advertise-url: %s\n", primary.Config.Name, primary.URL())
}

// URL returns the base URL of the node's API.
func (n *Node) URL() string {
	if s := n.Config.Secure; s != nil && s.CA != nil {
		return "https://" + n.HTTPAddr
	}
	return "http://" + n.HTTPAddr
}

// Security returns the credentials the test presents to the node: its
// secret and a certificate from its CA.
func (n *Node) Security() *lhttp.Security {
	s := n.Config.Secure
	if s == nil {
		return nil
	}
	sec := &lhttp.Security{Tokens: lhttp.NewTokens(s.Token, "", time.Time{})}
	if s.CA != nil {
		sec.ClientTLS = n.clientTLS
	}
	return sec
}

// Client returns an HTTP client for the node's API that presents the
// test's credentials. It is shared: its connections are reused across the
// polls of a test rather than left idle on the node, one per call.
func (n *Node) Client() *http.Client {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.client == nil {
		n.client = &http.Client{Timeout: 5 * time.Second, Transport: n.Security().Client(&http.Transport{})}
	}
	return n.client
}

// API returns an API client that presents the test's credentials, shared
// like Client's.
func (n *Node) API() *lhttp.APIClient {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.api == nil {
		n.api = lhttp.NewAPIClient(n.Security())
	}
	return n.api
}

// httpSettings returns the YAML under http: that Secure asks for.
func (n *Node) httpSettings(t T) string {
	s := n.Config.Secure
	if s == nil {
		return n.Config.HTTP
	}
	out := n.Config.HTTP + fmt.Sprintf("  auth-token: %q\n", s.Token)
	if s.CA != nil {
		cert, key := s.CA.Issue(t, n.Config.Name)
		out += fmt.Sprintf("  tls:\n    cert-file: %q\n    key-file: %q\n    ca-file: %q\n    client-ca-file: %q\n", cert, key, s.CA.CAFile, s.CA.CAFile)
		n.clientTLS = s.CA.ClientTLS(t, n.Config.Name+"-client")
	}
	return out
}

// FreeAddr returns a loopback address whose port is free right now.
func FreeAddr(t T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// NewNode prepares a node's directories without starting it.
func NewNode(t T, cfg NodeConfig) *Node {
	t.Helper()
	RequireFUSE(t)
	if cfg.Name == "" {
		cfg.Name = "node"
	}
	root := t.TempDir()
	n := &Node{
		Config:   cfg,
		HTTPAddr: FreeAddr(t),
		Root:     root,
		Mnt:      filepath.Join(root, "mnt"),
		DataDir:  filepath.Join(root, "data"),
		CfgPath:  filepath.Join(root, "litefs.yml"),
		LogPath:  filepath.Join(root, "litefs.log"),
		t:        t,
	}
	t.Cleanup(func() {
		n.Stop(t)
		if t.Failed() {
			if b, err := os.ReadFile(n.LogPath); err == nil {
				t.Logf("log of %s:\n%s", cfg.Name, b)
			}
		}
	})
	return n
}

// WriteConfig writes the node's litefs.yml: mount and data directories,
// strict verification and debug logs (unless Production), then body.
func (n *Node) WriteConfig(t T, body string) {
	t.Helper()
	settings := "strict-verify: true\nlog:\n  debug: true\n  timestamp: true\n"
	if n.Config.Production {
		settings = "log:\n  timestamp: true\n"
	}
	data := fmt.Sprintf("data:\n  dir: %q\n", n.DataDir)
	if d := n.Config.Retention; d > 0 {
		data += fmt.Sprintf("  retention: %s\n", d)
	}
	if d := n.Config.RetentionMonitorInterval; d > 0 {
		data += fmt.Sprintf("  retention-monitor-interval: %s\n", d)
	}
	cfg := fmt.Sprintf("fuse:\n  dir: %q\n%shttp:\n  addr: %q\n%s%s%s", n.Mnt, data, n.HTTPAddr, n.httpSettings(t), settings, body)
	n.mu.Lock()
	n.client, n.api = nil, nil // the credentials may have changed
	n.mu.Unlock()
	if err := os.WriteFile(n.CfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
}

// Start runs the node and waits until its mount is ready.
func (n *Node) Start(t T) {
	t.Helper()
	logf, err := os.OpenFile(n.LogPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	fmt.Fprintf(logf, "---- start %s\n", time.Now().Format(time.RFC3339Nano))
	args := append([]string{"mount", "-config", n.CfgPath}, n.Config.Args...)
	bin := Binary(t)
	if n.Config.Fast {
		bin = FastBinary(t)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "GORACE=halt_on_error=1")
	// A test process that dies (a timeout, a signal) takes its nodes with
	// it; the next run detaches the mounts they leave.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	n.mu.Lock()
	n.cmd, n.exited = cmd, exited
	n.mu.Unlock()

	deadline := time.Now().Add(30 * time.Second)
	for !n.Mounted() {
		select {
		case <-exited:
			b, _ := os.ReadFile(n.LogPath)
			t.Fatalf("litefs %s exited during start-up: %v\n%s", n.Config.Name, cmd.ProcessState, b)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("litefs %s did not mount within 30s", n.Config.Name)
		}
	}
}

// Mounted reports whether the node's filesystem is mounted and answering.
func (n *Node) Mounted() bool {
	b, err := os.ReadFile("/proc/mounts")
	if err != nil || !strings.Contains(string(b), " "+n.Mnt+" fuse.litefs ") {
		return false
	}
	_, err = os.Stat(filepath.Join(n.Mnt, ".lag"))
	return err == nil
}

// PID returns the process ID of the running node, or 0.
func (n *Node) PID() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return 0
	}
	return n.cmd.Process.Pid
}

// Running reports whether the node's process is alive.
func (n *Node) Running() bool {
	n.mu.Lock()
	exited := n.exited
	n.mu.Unlock()
	if exited == nil {
		return false
	}
	select {
	case <-exited:
		return false
	default:
		return true
	}
}

// Signal sends sig to the node's process.
func (n *Node) Signal(sig os.Signal) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return errors.New("not running")
	}
	return n.cmd.Process.Signal(sig)
}

// Wait waits for the process to exit and returns its exit code.
func (n *Node) Wait(t T, timeout time.Duration) int {
	t.Helper()
	n.mu.Lock()
	cmd, exited := n.cmd, n.exited
	n.mu.Unlock()
	if cmd == nil {
		t.Fatal("node not started")
	}
	select {
	case <-exited:
	case <-time.After(timeout):
		t.Fatalf("litefs %s did not exit within %s", n.Config.Name, timeout)
	}
	return cmd.ProcessState.ExitCode()
}

// Stop shuts the node down with SIGTERM (SIGKILL after 15 s) and makes
// sure its mount is gone. Safe to call when not running.
func (n *Node) Stop(t T) {
	t.Helper()
	if n.Running() {
		_ = n.Signal(syscall.SIGTERM)
		n.mu.Lock()
		exited := n.exited
		n.mu.Unlock()
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			t.Errorf("litefs %s ignored SIGTERM for 15s; killing it", n.Config.Name)
			_ = n.Signal(syscall.SIGKILL)
			<-exited
		}
	}
	n.detach()
}

// Kill stops the node with SIGKILL, as a crash would, and detaches the
// mount it leaves behind.
func (n *Node) Kill(t T) {
	t.Helper()
	if !n.Running() {
		t.Fatalf("litefs %s is not running", n.Config.Name)
	}
	_ = n.Signal(syscall.SIGKILL)
	n.mu.Lock()
	exited := n.exited
	n.mu.Unlock()
	<-exited
	n.detach()
}

func (n *Node) detach() {
	if b, err := os.ReadFile("/proc/mounts"); err == nil && strings.Contains(string(b), " "+n.Mnt+" ") {
		_ = exec.Command("fusermount3", "-u", "-z", n.Mnt).Run()
	}
}

// Restart stops and starts the node.
func (n *Node) Restart(t T) {
	t.Helper()
	n.Stop(t)
	n.Start(t)
}

// Path returns the path of a file in the mount.
func (n *Node) Path(name string) string { return filepath.Join(n.Mnt, name) }

// LogDir returns the directory of a database's changeset log.
func (n *Node) LogDir(db string) string { return filepath.Join(n.DataDir, "dbs", db, "log") }

// Pos reads a database's position from its -pos file.
func (n *Node) Pos(t T, db string) ltx.Pos {
	t.Helper()
	b, err := os.ReadFile(n.Path(db + "-pos"))
	if err != nil {
		t.Fatal(err)
	}
	s := strings.TrimSuffix(string(b), "\n")
	pos, err := ltx.ParsePos(s)
	if err != nil {
		t.Fatalf("parse %s-pos %q: %v", db, b, err)
	}
	return pos
}

// LogContains reports whether the node's log has a line containing s.
func (n *Node) LogContains(s string) bool {
	f, err := os.Open(n.LogPath)
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if strings.Contains(sc.Text(), s) {
			return true
		}
	}
	return false
}

// WaitPos waits until db on n reaches pos, failing the test after timeout.
func (n *Node) WaitPos(t T, db string, pos ltx.Pos, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		b, err := os.ReadFile(n.Path(db + "-pos"))
		if err == nil && strings.TrimSpace(string(b)) == pos.String() {
			return
		}
		last = fmt.Sprintf("%q (%v)", b, err)
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s: %s did not reach %s within %s; last seen %s", n.Config.Name, db, pos, timeout, last)
}

// WaitLog waits until the node's log has a line containing s.
func (n *Node) WaitLog(t T, s string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !n.LogContains(s) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: no log line containing %q within %s", n.Config.Name, s, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
