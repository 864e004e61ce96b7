package config

import (
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// static is a lease section alone: enough for the tests decided before
// validation (unknown keys, YAML errors), and the start of those that
// set the directories themselves.
const static = "lease:\n  type: static\n"

// dirs sets fuse.dir and data.dir, which have no defaults.
const dirs = "fuse:\n  dir: /mnt/litefs\ndata:\n  dir: /var/lib/litefs\n"

// minimal is the smallest configuration that validates.
const minimal = static + dirs

// addDirs adds the fuse and data sections of dirs to a test
// configuration that has no such section.
func addDirs(in string) string {
	has := func(section string) bool {
		return strings.HasPrefix(in, section+":") || strings.Contains(in, "\n"+section+":")
	}
	if !has("fuse") {
		in += "fuse:\n  dir: /mnt/litefs\n"
	}
	if !has("data") {
		in += "data:\n  dir: /var/lib/litefs\n"
	}
	return in
}

func TestNewDefaults(t *testing.T) {
	c := New()
	for _, tc := range []struct {
		name      string
		got, want any
	}{
		{"exit-on-error", c.ExitOnError, true},
		{"skip-sync", c.SkipSync, false},
		{"strict-verify", c.StrictVerify, false},
		{"exec", len(c.Exec), 0},
		{"data.dir", c.Data.Dir, ""}, // required
		{"data.compress", c.Data.Compress, true},
		{"data.retention", c.Data.Retention, 10 * time.Minute},
		{"data.retention-monitor-interval", c.Data.RetentionMonitorInterval, time.Minute},
		{"fuse.dir", c.FUSE.Dir, ""}, // required
		{"fuse.allow-other", c.FUSE.AllowOther, false},
		{"fuse.debug", c.FUSE.Debug, false},
		{"http.addr", c.HTTP.Addr, ":20202"},
		{"http.snapshot-timeout", c.HTTP.SnapshotTimeout, time.Duration(0)},
		{"lease.type", c.Lease.Type, ""},
		{"lease.candidate", c.Lease.Candidate, true},
		{"lease.promote", c.Lease.Promote, false},
		{"lease.reconnect-delay", c.Lease.ReconnectDelay, time.Second},
		{"lease.demote-delay", c.Lease.DemoteDelay, 10 * time.Second},
		{"lease.halt-ttl", c.Lease.HaltTTL, 5 * time.Second},
		{"lease.databases", len(c.Lease.Databases), 0},
		{"lease.consul.ttl", c.Lease.Consul.TTL, 10 * time.Second},
		{"lease.consul.lock-delay", c.Lease.Consul.LockDelay, time.Second},
		{"lease.consul.url", c.Lease.Consul.URL, ""},
		{"lease.consul.key", c.Lease.Consul.Key, ""},
		{"log.format", c.Log.Format, "text"},
		{"log.timestamp", c.Log.Timestamp, false},
		{"log.debug", c.Log.Debug, false},
		{"proxy.addr", c.Proxy.Addr, ""},
		{"proxy.max-lag", c.Proxy.MaxLag, 10 * time.Second},
		{"proxy.primary-redirect-timeout", c.Proxy.PrimaryRedirectTimeout, 5 * time.Second},
		{"proxy.read-timeout", c.Proxy.ReadTimeout, time.Duration(0)},
		{"proxy.read-header-timeout", c.Proxy.ReadHeaderTimeout, 10 * time.Second},
		{"proxy.write-timeout", c.Proxy.WriteTimeout, time.Duration(0)},
		{"proxy.idle-timeout", c.Proxy.IdleTimeout, 30 * time.Second},
		{"tracing.enabled", c.Tracing.Enabled, true},
		{"tracing.max-size", c.Tracing.MaxSize, 64},
		{"tracing.max-count", c.Tracing.MaxCount, 8},
		{"tracing.compress", c.Tracing.Compress, true},
		{"backup.type", c.Backup.Type, ""},
	} {
		if !reflect.DeepEqual(tc.got, tc.want) {
			t.Errorf("New().%s = %v, want %v", tc.name, tc.got, tc.want)
		}
	}

	// The defaults alone lack the directories.
	if err := c.Validate(); err == nil || err.Error() != "fuse.dir is required" {
		t.Errorf("New().Validate() = %v, want fuse.dir is required", err)
	}
}

func TestParseMinimalKeepsDefaults(t *testing.T) {
	c, err := Parse([]byte(minimal), false)
	if err != nil {
		t.Fatal(err)
	}
	want := New()
	want.Lease.Type = "static"
	want.FUSE.Dir, want.Data.Dir = "/mnt/litefs", "/var/lib/litefs"
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("Parse(minimal) =\n%+v\nwant\n%+v", c, want)
	}
}

func TestParseEmpty(t *testing.T) {
	for _, in := range []string{"", "\n", "# just a comment\n"} {
		_, err := Parse([]byte(in), false)
		if err == nil || err.Error() != "fuse.dir is required" {
			t.Errorf("Parse(%q) error = %v, want fuse.dir is required", in, err)
		}
	}
}

// fullYAML sets every key litefs knows, each to a non-default value where
// one is accepted (data.compress has only its default).
const fullYAML = `
exec:
  - cmd: "migrate --up"
    if-candidate: true
  - cmd: "app serve"
exit-on-error: false
skip-sync: true
strict-verify: true

data:
  dir: /data/litefs
  compress: true
  retention: 1h
  retention-monitor-interval: 30s

fuse:
  dir: /mnt/litefs
  allow-other: true
  debug: true

http:
  addr: ":30303"
  snapshot-timeout: 2m
  auth-token: "s3cret"
  previous-auth-token: "old-s3cret"
  auth-token-overlap: 10m
  public-endpoints: ["/health"]
  allowed-hosts: ["node-1.internal"]
  pprof: true
  tls:
    cert-file: /etc/litefs/node.pem
    key-file: /etc/litefs/node-key.pem
    ca-file: /etc/litefs/ca.pem
    client-ca-file: /etc/litefs/ca.pem
  max-import-size: 2GiB
  max-request-body: 512KiB
  max-connections: 100
  connection-wait: 2s
  read-header-timeout: 3s
  idle-timeout: 4m
  body-read-timeout: 5s
  min-body-rate: 1MB
  write-timeout: 6s
  export-write-timeout: 7s

lease:
  type: consul
  hostname: node-1
  advertise-url: http://node-1:30303
  candidate: false
  promote: true
  reconnect-delay: 3s
  demote-delay: 45s
  halt-ttl: 7s
  databases:
    - app.db
    - other.db
  consul:
    url: http://consul:8500
    key: litefs/primary
    ttl: 15s
    lock-delay: 250ms
  etcd:
    endpoints:
      - https://etcd-1:2379
      - https://etcd-2:2379
    key: litefs/etcd-primary
    ttl: 3s
    username: litefs
    password: hunter2
    tls:
      ca-file: /etc/litefs/ca.pem
      cert-file: /etc/litefs/client.pem
      key-file: /etc/litefs/client-key.pem
      server-name: etcd.internal
      insecure-skip-verify: true

log:
  format: json
  timestamp: true
  debug: true

proxy:
  addr: ":8080"
  target: "localhost:8081"
  db: app.db
  max-lag: 20s
  debug: true
  passthrough:
    - "/static/*"
    - "*.png"
  always-forward:
    - "/admin"
  primary-redirect-timeout: 7s
  read-timeout: 11s
  read-header-timeout: 12s
  write-timeout: 13s
  idle-timeout: 14s

tracing:
  enabled: false
  path: /var/log/litefs/trace.log
  max-size: 128
  max-count: 3
  compress: false

backup:
  type: ""
  path: /backups
  url: https://backup.example.com
  cluster: prod
  auth-token: secret
`

func TestParseFull(t *testing.T) {
	c, err := Parse([]byte(fullYAML), false)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Exec: ExecConfigs{
			{Cmd: "migrate --up", IfCandidate: true},
			{Cmd: "app serve"},
		},
		ExitOnError:  false,
		SkipSync:     true,
		StrictVerify: true,
		Data: DataConfig{
			Dir:                      "/data/litefs",
			Compress:                 true,
			Retention:                time.Hour,
			RetentionMonitorInterval: 30 * time.Second,
		},
		FUSE: FUSEConfig{Dir: "/mnt/litefs", AllowOther: true, Debug: true},
		HTTP: HTTPConfig{
			Addr: ":30303", SnapshotTimeout: 2 * time.Minute,
			AuthToken: "s3cret", PreviousAuthToken: "old-s3cret", AuthTokenOverlap: 10 * time.Minute,
			PublicEndpoints: []string{"/health"}, AllowedHosts: []string{"node-1.internal"}, Pprof: true,
			TLS:           HTTPTLSConfig{CertFile: "/etc/litefs/node.pem", KeyFile: "/etc/litefs/node-key.pem", CAFile: "/etc/litefs/ca.pem", ClientCAFile: "/etc/litefs/ca.pem"},
			MaxImportSize: 2 << 30, MaxRequestBody: 512 << 10, MaxConnections: 100, ConnectionWait: 2 * time.Second,
			ReadHeaderTimeout: 3 * time.Second, IdleTimeout: 4 * time.Minute, BodyReadTimeout: 5 * time.Second,
			MinBodyRate: 1e6, WriteTimeout: 6 * time.Second, ExportWriteTimeout: 7 * time.Second,
		},
		Lease: LeaseConfig{
			Type:           "consul",
			Hostname:       "node-1",
			AdvertiseURL:   "http://node-1:30303",
			Candidate:      false,
			Promote:        true,
			ReconnectDelay: 3 * time.Second,
			DemoteDelay:    45 * time.Second,
			HaltTTL:        7 * time.Second,
			Databases:      []string{"app.db", "other.db"},
			Consul: ConsulConfig{
				URL:       "http://consul:8500",
				Key:       "litefs/primary",
				TTL:       15 * time.Second,
				LockDelay: 250 * time.Millisecond,
			},
			Etcd: EtcdConfig{
				Endpoints: []string{"https://etcd-1:2379", "https://etcd-2:2379"},
				Key:       "litefs/etcd-primary",
				TTL:       3 * time.Second,
				Username:  "litefs",
				Password:  "hunter2",
				TLS: EtcdTLSConfig{
					CAFile:             "/etc/litefs/ca.pem",
					CertFile:           "/etc/litefs/client.pem",
					KeyFile:            "/etc/litefs/client-key.pem",
					ServerName:         "etcd.internal",
					InsecureSkipVerify: true,
				},
			},
		},
		Log: LogConfig{Format: "json", Timestamp: true, Debug: true},
		Proxy: ProxyConfig{
			Addr:                   ":8080",
			Target:                 "localhost:8081",
			DB:                     "app.db",
			MaxLag:                 20 * time.Second,
			Debug:                  true,
			Passthrough:            []string{"/static/*", "*.png"},
			AlwaysForward:          []string{"/admin"},
			PrimaryRedirectTimeout: 7 * time.Second,
			ReadTimeout:            11 * time.Second,
			ReadHeaderTimeout:      12 * time.Second,
			WriteTimeout:           13 * time.Second,
			IdleTimeout:            14 * time.Second,
		},
		Tracing: TracingConfig{
			Enabled:  false,
			Path:     "/var/log/litefs/trace.log",
			MaxSize:  128,
			MaxCount: 3,
			Compress: false,
		},
		Backup: BackupConfig{
			Path:      "/backups",
			URL:       "https://backup.example.com",
			Cluster:   "prod",
			AuthToken: "secret",
		},
	}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("Parse(fullYAML) =\n%+v\nwant\n%+v", c, want)
	}
}

// alternativeKeys cannot be set together with a key fullYAML sets; each
// has a test of its own.
var alternativeKeys = map[string]bool{
	"http.auth-token-file":          true, // TestAuthTokenFiles
	"http.previous-auth-token-file": true,
}

// TestFullYAMLCoversEveryKey walks the Config struct's yaml tags and checks
// that fullYAML sets each of them, so a key added to Config without a test
// is noticed.
func TestFullYAMLCoversEveryKey(t *testing.T) {
	var root yaml.Node
	if err := yaml.Unmarshal([]byte(fullYAML), &root); err != nil {
		t.Fatal(err)
	}
	var walk func(n *yaml.Node, typ reflect.Type, prefix string)
	walk = func(n *yaml.Node, typ reflect.Type, prefix string) {
		if typ == reflect.TypeOf(ExecConfigs{}) {
			if n.Kind != yaml.SequenceNode || len(n.Content) == 0 {
				t.Errorf("%s: want a non-empty list", prefix)
				return
			}
			walk(n.Content[0], reflect.TypeOf(ExecConfig{}), prefix+"[]")
			return
		}
		if typ.Kind() != reflect.Struct {
			return
		}
		if n.Kind != yaml.MappingNode {
			t.Errorf("%s: want a mapping", prefix)
			return
		}
		for i := 0; i < typ.NumField(); i++ {
			tag := strings.Split(typ.Field(i).Tag.Get("yaml"), ",")[0]
			name := strings.TrimPrefix(prefix+"."+tag, ".")
			var val *yaml.Node
			for j := 0; j+1 < len(n.Content); j += 2 {
				if n.Content[j].Value == tag {
					val = n.Content[j+1]
				}
			}
			if val == nil && !alternativeKeys[name] {
				t.Errorf("fullYAML does not set %s", name)
				continue
			}
			walk(val, typ.Field(i).Type, name)
		}
	}
	walk(root.Content[0], reflect.TypeOf(Config{}), "")
}

func TestParseUnknownKey(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     string // exact error text, or a prefix ending in "..."
	}{
		{"top level", static + "bogus: 1\n", `unknown key "bogus" at line 3`},
		{"typo in fuse", "lease:\n  type: static\nfuse:\n  dri: /mnt\n", `unknown key "fuse.dri" at line 4`},
		{"fuse.dri on line 3", "fuse:\n  dir: /mnt\n  dri: /x\nlease:\n  type: static\n", `unknown key "fuse.dri" at line 3`},
		{"nested consul", "lease:\n  type: consul\n  consul:\n    url: http://x\n    keys: k\n", `unknown key "lease.consul.keys" at line 5`},
		{"data", static + "data:\n  dir: /d\n  retension: 1m\n", `unknown key "data.retension" at line 5`},
		{"proxy", static + "proxy:\n  adr: :8080\n", `unknown key "proxy.adr" at line 4`},
		{"tracing", static + "tracing:\n  max_size: 3\n", `unknown key "tracing.max_size" at line 4`},
		{"backup", static + "backup:\n  token: x\n", `unknown key "backup.token" at line 4`},
		{"http", static + "http:\n  address: :1\n", `unknown key "http.address" at line 4`},
		{"log", static + "log:\n  level: debug\n", `unknown key "log.level" at line 4`},
		{"underscore variant of a known key", static + "exit_on_error: true\n", `unknown key "exit_on_error" at line 3`},
		{"duplicate section", static + "lease:\n  type: static\n", "mapping key \"lease\" already defined..."},
		{"first unknown of several is reported", static + "fuse:\n  dri: /a\n  dbg: true\n", `unknown key "fuse.dri" at line 4`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.in), false)
			if err == nil {
				t.Fatalf("Parse succeeded, want error %q", tc.want)
			}
			if p, ok := strings.CutSuffix(tc.want, "..."); ok {
				if !strings.Contains(err.Error(), p) {
					t.Fatalf("error = %q, want it to contain %q", err, p)
				}
				return
			}
			if err.Error() != tc.want {
				t.Fatalf("error = %q, want %q", err, tc.want)
			}
		})
	}
}

func TestParseUnknownKeyInExecList(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		key      string
		line     string
	}{
		{"first item", static + "exec:\n  - cmd: a\n    if-candidat: true\n", "if-candidat", "line 5"},
		{"second item", static + "exec:\n  - cmd: a\n  - cmd: b\n    if_candidate: true\n", "if_candidate", "line 6"},
		{"flow style", static + "exec: [{cmd: a}, {command: b}]\n", "command", "line 3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.in), false)
			if err == nil {
				t.Fatal("Parse succeeded with an unknown key in an exec item")
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, `unknown key "exec`) || !strings.Contains(msg, tc.key+`"`) || !strings.HasSuffix(msg, "at line "+strings.TrimPrefix(tc.line, "line ")) {
				t.Fatalf("error = %q, want unknown key exec...%s at %s", msg, tc.key, tc.line)
			}
		})
	}
}

func TestParseExec(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     ExecConfigs
		wantErr  string
	}{
		{"string", `exec: "myapp -addr :8081"`, ExecConfigs{{Cmd: "myapp -addr :8081"}}, ""},
		{"plain string", `exec: myapp serve`, ExecConfigs{{Cmd: "myapp serve"}}, ""},
		{"block string", "exec: |\n  myapp\n", ExecConfigs{{Cmd: "myapp\n"}}, ""},
		{"list", "exec:\n  - cmd: migrate\n    if-candidate: true\n  - cmd: serve\n",
			ExecConfigs{{Cmd: "migrate", IfCandidate: true}, {Cmd: "serve"}}, ""},
		{"list with one item", "exec:\n  - cmd: serve\n", ExecConfigs{{Cmd: "serve"}}, ""},
		{"flow list", "exec: [{cmd: a, if-candidate: false}, {cmd: b, if-candidate: true}]",
			ExecConfigs{{Cmd: "a"}, {Cmd: "b", IfCandidate: true}}, ""},
		{"empty list", "exec: []", ExecConfigs{}, ""},
		{"mapping is invalid", "exec:\n  cmd: serve\n", nil, "exec must be"},
		{"list of strings is invalid", "exec:\n  - serve\n", nil, "invalid value"},
		{"bad if-candidate", "exec:\n  - cmd: a\n    if-candidate: maybe\n", nil, "invalid value"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(minimal+tc.in), false)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Parse error = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(c.Exec) != len(tc.want) || (len(tc.want) > 0 && !reflect.DeepEqual(c.Exec, tc.want)) {
				t.Fatalf("Exec = %#v, want %#v", c.Exec, tc.want)
			}
		})
	}
}

func TestExecInvalidTypeMentionsLine(t *testing.T) {
	_, err := Parse([]byte(static+"exec:\n  cmd: serve\n"), false)
	if err == nil || !strings.Contains(err.Error(), "line 4") {
		t.Fatalf("error = %v, want it to name line 4", err)
	}
}

func TestParseValues(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		check    func(Config) any
		want     any
		wantErr  string
	}{
		{"seconds", "data:\n  dir: /d\n  retention: 10s\n", func(c Config) any { return c.Data.Retention }, 10 * time.Second, ""},
		{"compound", "data:\n  dir: /d\n  retention: 1h30m5s\n", func(c Config) any { return c.Data.Retention }, time.Hour + 30*time.Minute + 5*time.Second, ""},
		{"millis", "lease:\n  type: static\n  demote-delay: 1500ms\n", func(c Config) any { return c.Lease.DemoteDelay }, 1500 * time.Millisecond, ""},
		{"zero", "proxy:\n  max-lag: 0s\n", func(c Config) any { return c.Proxy.MaxLag }, time.Duration(0), ""},
		{"quoted", "http:\n  snapshot-timeout: \"90s\"\n", func(c Config) any { return c.HTTP.SnapshotTimeout }, 90 * time.Second, ""},
		{"bad unit", "data:\n  dir: /d\n  retention: 10 parsecs\n", nil, nil, "invalid value"},
		{"bare integer duration", "lease:\n  type: static\n  reconnect-delay: 10\n", nil, nil, "invalid value"},
		{"negative retention", "data:\n  dir: /d\n  retention: -1s\n", nil, nil, "data.retention must be greater than zero, not -1s"},
		{"negative monitor interval", "data:\n  dir: /d\n  retention-monitor-interval: -1m\n", nil, nil, "data.retention-monitor-interval must be greater than zero, not -1m0s"},
		// Zero would silently become the store's default.
		{"zero retention", "data:\n  dir: /d\n  retention: 0s\n", nil, nil, "data.retention must be greater than zero, not 0s"},
		{"zero monitor interval", "data:\n  dir: /d\n  retention-monitor-interval: 0s\n", nil, nil, "data.retention-monitor-interval must be greater than zero, not 0s"},
		// Changesets are always compressed: false cannot be honoured.
		{"compress true", "data:\n  dir: /d\n  compress: true\n", func(c Config) any { return c.Data.Compress }, true, ""},
		{"compress false", "data:\n  dir: /d\n  compress: false\n", nil, nil, "data.compress: false is not supported"},
		{"bool yes", "fuse:\n  dir: /m\n  allow-other: yes\n", func(c Config) any { return c.FUSE.AllowOther }, true, ""}, // YAML 1.1 form accepted by yaml.v3
		{"bool false", "exit-on-error: false\n", func(c Config) any { return c.ExitOnError }, false, ""},
		{"bad bool", "fuse:\n  dir: /m\n  allow-other: maybe\n", nil, nil, "invalid value"},
		{"int", "tracing:\n  max-count: many\n", nil, nil, "invalid value"},
		{"section as scalar", "fuse: /mnt\n", nil, nil, "invalid value"},
		{"list as scalar", "proxy:\n  passthrough: /static\n", nil, nil, "invalid value"},
		{"invalid yaml", "fuse:\n  dir: [unterminated\n", nil, nil, "invalid YAML"},
		{"tab indentation", "fuse:\n\tdir: /x\n", nil, nil, "invalid YAML"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := tc.in
			if !strings.HasPrefix(in, "lease:") {
				in = static + in
			}
			in = addDirs(in)
			c, err := Parse([]byte(in), false)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Parse error = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := tc.check(c); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      string        // given the directories, unless it sets them
		mod     func(*Config) // applied to New() and the directories when in is empty
		wantErr string        // "" means valid
	}{
		{name: "static candidate", in: "lease:\n  type: static\n"},
		{name: "static non-candidate with advertise-url", in: "lease:\n  type: static\n  candidate: false\n  advertise-url: http://primary:20202\n"},
		{name: "static non-candidate without advertise-url", in: "lease:\n  type: static\n  candidate: false\n", wantErr: "lease.advertise-url"},
		{name: "consul complete", in: "lease:\n  type: consul\n  consul:\n    url: http://c:8500\n    key: k\n"},
		{name: "consul without key", in: "lease:\n  type: consul\n  consul:\n    url: http://c:8500\n", wantErr: "lease.consul.key"},
		{name: "consul without url", in: "lease:\n  type: consul\n  consul:\n    key: k\n", wantErr: "lease.consul.url"},
		{name: "consul without either", in: "lease:\n  type: consul\n", wantErr: "lease.consul"},
		{name: "missing lease.type", in: "fuse:\n  dir: /mnt\n", wantErr: "lease.type is required"},
		{name: "bad lease.type", in: "lease:\n  type: raft\n", wantErr: `invalid lease.type "raft"`},
		{name: "etcd without endpoints", in: "lease:\n  type: etcd\n  etcd:\n    key: k\n", wantErr: `lease.etcd.endpoints`},
		{name: "etcd without key", in: "lease:\n  type: etcd\n  etcd:\n    endpoints: [http://127.0.0.1:2379]\n", wantErr: `lease.etcd.key is required`},
		{name: "etcd bad endpoint", in: "lease:\n  type: etcd\n  etcd:\n    endpoints: [127.0.0.1:2379]\n    key: k\n", wantErr: `invalid lease.etcd.endpoints entry "127.0.0.1:2379"`},
		{name: "etcd fractional ttl", in: "lease:\n  type: etcd\n  etcd:\n    endpoints: [http://127.0.0.1:2379]\n    key: k\n    ttl: 1500ms\n", wantErr: `whole seconds`},
		{name: "etcd cert without key", in: "lease:\n  type: etcd\n  etcd:\n    endpoints: [https://e:2379]\n    key: k\n    tls:\n      cert-file: c.pem\n", wantErr: `go together`},
		{name: "etcd user without password", in: "lease:\n  type: etcd\n  etcd:\n    endpoints: [http://e:2379]\n    key: k\n    username: u\n", wantErr: `go together`},
		{name: "lease.type case matters", in: "lease:\n  type: Static\n", wantErr: `invalid lease.type "Static"`},
		{name: "log json", in: minimal + "log:\n  format: json\n"},
		{name: "bad log.format", in: minimal + "log:\n  format: logfmt\n", wantErr: `invalid log.format "logfmt"`},
		{name: "empty log.format", in: minimal + "log:\n  format: \"\"\n", wantErr: "invalid log.format"},
		{name: "proxy complete", in: minimal + "proxy:\n  addr: :8080\n  target: localhost:8081\n  db: app.db\n"},
		{name: "proxy without addr", in: minimal + "proxy:\n  target: localhost:8081\n  db: app.db\n", wantErr: "proxy.addr"},
		{name: "proxy without db", in: minimal + "proxy:\n  addr: :8080\n  target: localhost:8081\n", wantErr: "proxy.db"},
		{name: "proxy addr without target is not checked", in: minimal + "proxy:\n  addr: :8080\n"},
		{name: "backup.type set", in: minimal + "backup:\n  type: litefs-cloud\n", wantErr: `backup.type "litefs-cloud" is not supported`},
		{name: "backup fields without type", in: minimal + "backup:\n  url: https://x\n"},
		{name: "databases on a candidate", in: "lease:\n  type: static\n  databases: [app.db]\n", wantErr: "lease.databases"},
		{name: "databases on a non-candidate", in: "lease:\n  type: static\n  candidate: false\n  advertise-url: http://p\n  databases: [app.db]\n"},
		{name: "empty databases on a candidate", in: "lease:\n  type: static\n  databases: []\n"},
		{name: "empty fuse.dir", in: static + "fuse:\n  dir: \"\"\n", wantErr: "fuse.dir is required"},
		{name: "empty data.dir", in: static + "data:\n  dir: \"\"\n", wantErr: "data.dir is required"},
		{name: "struct: negative retention", mod: func(c *Config) { c.Lease.Type = "static"; c.Data.Retention = -time.Second }, wantErr: "data.retention must be greater than zero"},
		{name: "struct: valid", mod: func(c *Config) { c.Lease.Type = "static" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			if tc.mod != nil {
				c := New()
				c.FUSE.Dir, c.Data.Dir = "/mnt/litefs", "/var/lib/litefs"
				tc.mod(&c)
				err = c.Validate()
			} else {
				_, err = Parse([]byte(addDirs(tc.in)), false)
			}
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error = %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestParseMergeKeys checks YAML merge keys ("<<"), which yaml.v3 resolves
// while decoding. LiteFS decodes litefs.yml with yaml.v3 and KnownFields,
// which accepts them, so a LiteFS configuration using them must parse here.
func TestParseMergeKeys(t *testing.T) {
	for _, tc := range []struct {
		name  string
		in    string
		check func(Config) bool
	}{
		{
			name: "merge into an exec item",
			in:   minimal + "exec:\n  - &m\n    cmd: migrate\n    if-candidate: true\n  - <<: *m\n    cmd: serve\n",
			check: func(c Config) bool {
				return reflect.DeepEqual(c.Exec, ExecConfigs{{Cmd: "migrate", IfCandidate: true}, {Cmd: "serve", IfCandidate: true}})
			},
		},
		{
			name:  "merge of an inline mapping into a section",
			in:    addDirs(static + "fuse:\n  <<: {debug: true}\n  dir: /x\n"),
			check: func(c Config) bool { return c.FUSE.Debug && c.FUSE.Dir == "/x" },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(tc.in), false)
			if err != nil {
				t.Fatal(err)
			}
			if !tc.check(c) {
				t.Fatalf("merged config wrong: exec=%+v fuse=%+v", c.Exec, c.FUSE)
			}
		})
	}
}

// TestExampleFile checks that litefs.yml.example parses and documents
// exactly the defaults.
func TestExampleFile(t *testing.T) {
	c, _, err := Load("../../litefs.yml.example", false)
	if err != nil {
		t.Fatal(err)
	}
	want := New()
	want.Lease.Type = "static"
	want.FUSE.Dir, want.Data.Dir = "/litefs", "/var/lib/litefs" // required: the example's own
	want.Exec = ExecConfigs{{Cmd: ""}}
	want.Lease.Databases = []string{}
	want.Lease.Etcd.Endpoints = []string{}
	want.Proxy.Passthrough, want.Proxy.AlwaysForward = []string{}, []string{}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("litefs.yml.example does not match the defaults:\n got %+v\nwant %+v", c, want)
	}
}
