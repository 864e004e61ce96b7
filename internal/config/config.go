// Package config reads litefs.yml. The keys are those of LiteFS, so an
// existing configuration works unchanged; a key litefs does not know is an
// error that names it and its line.
package config

import (
	"errors"
	"fmt"
	"math"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	lhttp "github.com/litefs-project/litefs/http"
	"github.com/litefs-project/litefs/lease"
	"github.com/litefs-project/litefs/node"
	"github.com/litefs-project/litefs/store"
)

// Config is the whole configuration file.
type Config struct {
	Exec         ExecConfigs `yaml:"exec"`
	ExitOnError  bool        `yaml:"exit-on-error"`
	SkipSync     bool        `yaml:"skip-sync"`
	StrictVerify bool        `yaml:"strict-verify"`

	Data    DataConfig    `yaml:"data"`
	FUSE    FUSEConfig    `yaml:"fuse"`
	HTTP    HTTPConfig    `yaml:"http"`
	Lease   LeaseConfig   `yaml:"lease"`
	Log     LogConfig     `yaml:"log"`
	Proxy   ProxyConfig   `yaml:"proxy"`
	Tracing TracingConfig `yaml:"tracing"`
	Backup  BackupConfig  `yaml:"backup"`
}

// DataConfig is where databases and changeset logs are kept. Dir is
// required, outside FUSEConfig.Dir, and locked by the running node.
type DataConfig struct {
	Dir                      string        `yaml:"dir"`
	Compress                 bool          `yaml:"compress"`
	Retention                time.Duration `yaml:"retention"`
	RetentionMonitorInterval time.Duration `yaml:"retention-monitor-interval"`
}

// FUSEConfig is the mount. Dir is required.
type FUSEConfig struct {
	Dir        string `yaml:"dir"`
	AllowOther bool   `yaml:"allow-other"`
	Debug      bool   `yaml:"debug"`
}

// HTTPConfig is the inter-node API server.
type HTTPConfig struct {
	Addr            string        `yaml:"addr"`
	SnapshotTimeout time.Duration `yaml:"snapshot-timeout"`

	// The cluster secret: every inter-node and admin request carries it.
	// Empty for an open API, as LiteFS has.
	AuthToken     Secret `yaml:"auth-token"`
	AuthTokenFile string `yaml:"auth-token-file"`
	// During a rotation, the previous secret is accepted (and tried
	// against peers that refuse the new one) for AuthTokenOverlap after
	// start-up.
	PreviousAuthToken     Secret        `yaml:"previous-auth-token"`
	PreviousAuthTokenFile string        `yaml:"previous-auth-token-file"`
	AuthTokenOverlap      time.Duration `yaml:"auth-token-overlap"`
	// PublicEndpoints are served without the secret: "/metrics" and
	// "/health" are the only ones allowed.
	PublicEndpoints []string `yaml:"public-endpoints"`
	// AllowedHosts are the names, besides IP literals and localhost,
	// that requests may address this node by; "*" for any.
	AllowedHosts []string      `yaml:"allowed-hosts"`
	Pprof        bool          `yaml:"pprof"`
	TLS          HTTPTLSConfig `yaml:"tls"`

	// Limits of requests and connections (see http.ServerOptions).
	MaxImportSize      Size          `yaml:"max-import-size"`
	MaxRequestBody     Size          `yaml:"max-request-body"`
	MaxConnections     int           `yaml:"max-connections"`
	ConnectionWait     time.Duration `yaml:"connection-wait"`
	ReadHeaderTimeout  time.Duration `yaml:"read-header-timeout"`
	IdleTimeout        time.Duration `yaml:"idle-timeout"`
	BodyReadTimeout    time.Duration `yaml:"body-read-timeout"`
	MinBodyRate        Size          `yaml:"min-body-rate"` // bytes a second
	WriteTimeout       time.Duration `yaml:"write-timeout"`
	ExportWriteTimeout time.Duration `yaml:"export-write-timeout"`
}

// Size is a number of bytes: an integer, or one with a unit (KB, MB, GB,
// KiB, MiB, GiB).
type Size int64

// UnmarshalYAML reads a size with or without its unit.
func (s *Size) UnmarshalYAML(n *yaml.Node) error {
	v := strings.TrimSpace(n.Value)
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if num, ok := strings.CutSuffix(v, u.suffix); ok {
			v, mult = strings.TrimSpace(num), u.mult
			break
		}
	}
	num, err := strconv.ParseInt(v, 10, 64)
	if err != nil || num < 0 || num > math.MaxInt64/mult {
		return fmt.Errorf("line %d: invalid size %q: want a number of bytes, optionally with KiB, MiB, GiB, KB, MB or GB", n.Line, n.Value)
	}
	*s = Size(num * mult)
	return nil
}

// HTTPTLSConfig serves the API over TLS and verifies peers.
type HTTPTLSConfig struct {
	CertFile     string `yaml:"cert-file"`
	KeyFile      string `yaml:"key-file"`
	CAFile       string `yaml:"ca-file"`
	ClientCAFile string `yaml:"client-ca-file"`
}

// Secret is a configured secret: it is never printed, logged or encoded.
type Secret string

// String hides the secret.
func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return "[redacted]"
}

// GoString hides the secret from %#v.
func (s Secret) GoString() string { return s.String() }

// MarshalJSON hides the secret.
func (s Secret) MarshalJSON() ([]byte, error) { return []byte(`"` + s.String() + `"`), nil }

// Reveal returns the secret itself, for the code that uses it.
func (s Secret) Reveal() string { return string(s) }

// Tokens returns the current and previous cluster secrets, read from the
// configuration or the files it names. A file's surrounding whitespace is
// not part of the secret.
func (h HTTPConfig) Tokens() (current, previous string, err error) {
	if current, err = readSecret("http.auth-token", h.AuthToken, h.AuthTokenFile); err != nil {
		return "", "", err
	}
	if previous, err = readSecret("http.previous-auth-token", h.PreviousAuthToken, h.PreviousAuthTokenFile); err != nil {
		return "", "", err
	}
	if previous != "" && current == "" {
		return "", "", errors.New("http.previous-auth-token is set without http.auth-token")
	}
	return current, previous, nil
}

func readSecret(key string, value Secret, file string) (string, error) {
	if file == "" {
		return value.Reveal(), nil
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("%s-file: %w", key, err)
	}
	s := strings.TrimSpace(string(data))
	if s == "" {
		return "", fmt.Errorf("%s-file %s is empty", key, file)
	}
	return s, nil
}

// LeaseConfig chooses how the primary is elected.
type LeaseConfig struct {
	Type           string        `yaml:"type"`
	Hostname       string        `yaml:"hostname"`
	AdvertiseURL   string        `yaml:"advertise-url"`
	Candidate      bool          `yaml:"candidate"`
	Promote        bool          `yaml:"promote"`
	ReconnectDelay time.Duration `yaml:"reconnect-delay"`
	DemoteDelay    time.Duration `yaml:"demote-delay"`
	HaltTTL        time.Duration `yaml:"halt-ttl"`
	Databases      []string      `yaml:"databases"`
	Consul         ConsulConfig  `yaml:"consul"`
	Etcd           EtcdConfig    `yaml:"etcd"`
}

// ConsulConfig is the Consul lease.
type ConsulConfig struct {
	URL       string        `yaml:"url"`
	Key       string        `yaml:"key"`
	TTL       time.Duration `yaml:"ttl"`
	LockDelay time.Duration `yaml:"lock-delay"`
}

// EtcdConfig is the etcd lease.
type EtcdConfig struct {
	Endpoints []string      `yaml:"endpoints"`
	Key       string        `yaml:"key"`
	TTL       time.Duration `yaml:"ttl"`
	Username  string        `yaml:"username"`
	Password  string        `yaml:"password"`
	TLS       EtcdTLSConfig `yaml:"tls"`
}

// EtcdTLSConfig secures the connection to etcd: the CA that signs the
// members' certificates, and this node's client certificate, if etcd asks
// for one.
type EtcdTLSConfig struct {
	CAFile             string `yaml:"ca-file"`
	CertFile           string `yaml:"cert-file"`
	KeyFile            string `yaml:"key-file"`
	ServerName         string `yaml:"server-name"`
	InsecureSkipVerify bool   `yaml:"insecure-skip-verify"`
}

// Enabled reports whether any TLS setting is given.
func (t EtcdTLSConfig) Enabled() bool {
	return t != EtcdTLSConfig{}
}

// LogConfig is the daemon's log output.
type LogConfig struct {
	Format    string `yaml:"format"`
	Timestamp bool   `yaml:"timestamp"`
	Debug     bool   `yaml:"debug"`
}

// ProxyConfig is the HTTP proxy in front of the application.
type ProxyConfig struct {
	Addr                   string        `yaml:"addr"`
	Target                 string        `yaml:"target"`
	DB                     string        `yaml:"db"`
	MaxLag                 time.Duration `yaml:"max-lag"`
	Debug                  bool          `yaml:"debug"`
	Passthrough            []string      `yaml:"passthrough"`
	AlwaysForward          []string      `yaml:"always-forward"`
	PrimaryRedirectTimeout time.Duration `yaml:"primary-redirect-timeout"`
	ReadTimeout            time.Duration `yaml:"read-timeout"`
	ReadHeaderTimeout      time.Duration `yaml:"read-header-timeout"`
	WriteTimeout           time.Duration `yaml:"write-timeout"`
	IdleTimeout            time.Duration `yaml:"idle-timeout"`
}

// TracingConfig is accepted for compatibility with LiteFS configurations;
// litefs writes no trace file and says so at start-up.
type TracingConfig struct {
	Enabled  bool   `yaml:"enabled"`
	Path     string `yaml:"path"`
	MaxSize  int    `yaml:"max-size"`
	MaxCount int    `yaml:"max-count"`
	Compress bool   `yaml:"compress"`
}

// BackupConfig is accepted for compatibility; no backup service is
// supported, so a non-empty type is refused.
type BackupConfig struct {
	Type      string `yaml:"type"`
	Path      string `yaml:"path"`
	URL       string `yaml:"url"`
	Cluster   string `yaml:"cluster"`
	AuthToken string `yaml:"auth-token"`
}

// ExecConfig is one command run after mounting.
type ExecConfig struct {
	Cmd         string `yaml:"cmd"`
	IfCandidate bool   `yaml:"if-candidate"`
}

// ExecConfigs is the "exec" key: a single command string, or a list of
// commands of which all but the last must succeed before the last starts.
type ExecConfigs []ExecConfig

// UnmarshalYAML accepts both forms of "exec".
func (e *ExecConfigs) UnmarshalYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.ScalarNode:
		*e = ExecConfigs{{Cmd: n.Value}}
		return nil
	case yaml.SequenceNode:
		var list []ExecConfig
		if err := n.Decode(&list); err != nil {
			return err
		}
		*e = list
		return nil
	}
	return fmt.Errorf("line %d: exec must be a command string or a list of {cmd, if-candidate}", n.Line)
}

// Defaults used when a key is not set. Those of settings a package owns
// are that package's. fuse.dir and data.dir have none: a configuration
// names both.
const (
	DefaultHTTPAddr                 = ":20202"
	DefaultRetention                = store.DefaultRetention
	DefaultRetentionMonitorInterval = store.DefaultRetentionMonitorInterval
	DefaultConsulTTL                = lease.DefaultConsulTTL
	DefaultConsulLockDelay          = lease.DefaultConsulLockDelay
	DefaultEtcdTTL                  = lease.DefaultEtcdTTL
	DefaultReconnectDelay           = node.DefaultReconnectDelay
	DefaultDemoteDelay              = 10 * time.Second
	DefaultHaltTTL                  = store.DefaultHaltTTL
	DefaultMaxLag                   = 10 * time.Second
	DefaultPrimaryRedirectTimeout   = 5 * time.Second
	DefaultReadHeaderTimeout        = 10 * time.Second
	DefaultIdleTimeout              = 30 * time.Second
	DefaultAuthTokenOverlap         = time.Hour
)

// New returns a configuration holding the defaults.
func New() Config {
	return Config{
		ExitOnError: true,
		Data: DataConfig{
			Compress:                 true,
			Retention:                DefaultRetention,
			RetentionMonitorInterval: DefaultRetentionMonitorInterval,
		},
		HTTP: HTTPConfig{
			Addr:             DefaultHTTPAddr,
			AuthTokenOverlap: DefaultAuthTokenOverlap,

			MaxImportSize:      lhttp.DefaultMaxImportSize,
			MaxRequestBody:     lhttp.DefaultMaxRequestBody,
			MaxConnections:     lhttp.DefaultMaxConnections,
			ConnectionWait:     lhttp.DefaultConnectionWait,
			ReadHeaderTimeout:  lhttp.DefaultReadHeaderTimeout,
			IdleTimeout:        lhttp.DefaultIdleTimeout,
			BodyReadTimeout:    lhttp.DefaultBodyReadTimeout,
			MinBodyRate:        lhttp.DefaultMinBodyRate,
			WriteTimeout:       lhttp.DefaultWriteTimeout,
			ExportWriteTimeout: lhttp.DefaultExportWriteTimeout,
			PublicEndpoints:    append([]string(nil), lhttp.DefaultPublicPaths...),
		},
		Lease: LeaseConfig{
			Candidate:      true,
			ReconnectDelay: DefaultReconnectDelay,
			DemoteDelay:    DefaultDemoteDelay,
			HaltTTL:        DefaultHaltTTL,
			Consul:         ConsulConfig{TTL: DefaultConsulTTL, LockDelay: DefaultConsulLockDelay},
			Etcd:           EtcdConfig{TTL: DefaultEtcdTTL},
		},
		Log: LogConfig{Format: "text"},
		Proxy: ProxyConfig{
			MaxLag:                 DefaultMaxLag,
			PrimaryRedirectTimeout: DefaultPrimaryRedirectTimeout,
			ReadHeaderTimeout:      DefaultReadHeaderTimeout,
			IdleTimeout:            DefaultIdleTimeout,
		},
		Tracing: TracingConfig{Enabled: true, MaxSize: 64, MaxCount: 8, Compress: true},
	}
}

// SearchPaths returns where the configuration is looked for when no path is
// given, in order: the working directory, the home directory, /etc.
func SearchPaths() []string {
	var paths []string
	if p, err := filepath.Abs("litefs.yml"); err == nil {
		paths = append(paths, p)
	}
	if home, err := os.UserHomeDir(); err == nil {
		paths = append(paths, filepath.Join(home, "litefs.yml"))
	}
	return append(paths, "/etc/litefs.yml")
}

// ErrNotFound is returned when no configuration file exists.
var ErrNotFound = errors.New("config file not found")

// Load reads the configuration at path, or the first that exists among
// SearchPaths when path is empty. It returns the path it read.
func Load(path string, expandEnv bool) (Config, string, error) {
	paths := []string{path}
	if path == "" {
		paths = SearchPaths()
	}
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if os.IsNotExist(err) && path == "" {
			continue
		} else if err != nil {
			return Config{}, p, fmt.Errorf("cannot read config file at %s: %w", p, err)
		}
		c, err := Parse(data, expandEnv)
		if err != nil {
			return Config{}, p, fmt.Errorf("config file %s: %w", p, err)
		}
		return c, p, nil
	}
	return Config{}, "", fmt.Errorf("%w (searched %s)", ErrNotFound, strings.Join(paths, ", "))
}

// Parse decodes and validates a configuration file's contents.
func Parse(data []byte, expandEnv bool) (Config, error) {
	if expandEnv {
		data = []byte(ExpandEnv(string(data)))
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return Config{}, fmt.Errorf("invalid YAML: %w", err)
	}
	c := New()
	if len(root.Content) == 0 {
		return c, c.Validate()
	}
	if err := checkKeys(root.Content[0], configType, ""); err != nil {
		return Config{}, err
	}
	if err := root.Content[0].Decode(&c); err != nil {
		return Config{}, fmt.Errorf("invalid value: %w", err)
	}
	return c, c.Validate()
}

// Validate checks the configuration for missing or contradictory settings.
func (c *Config) Validate() error {
	if err := c.validateDirs(); err != nil {
		return err
	}
	switch {
	case !c.Data.Compress:
		return errors.New("data.compress: false is not supported: changesets are always LZ4-compressed")
	case c.Data.Retention <= 0:
		return fmt.Errorf("data.retention must be greater than zero, not %s", c.Data.Retention)
	case c.Data.RetentionMonitorInterval <= 0:
		return fmt.Errorf("data.retention-monitor-interval must be greater than zero, not %s", c.Data.RetentionMonitorInterval)
	}
	switch c.Lease.Type {
	case "static":
		if !c.Lease.Candidate && c.Lease.AdvertiseURL == "" {
			return errors.New("lease.advertise-url must name the primary's URL when lease.type is static and lease.candidate is false")
		}
	case "consul":
		if c.Lease.Consul.Key == "" {
			return errors.New("lease.consul.key is required when lease.type is consul")
		}
		if c.Lease.Consul.URL == "" {
			return errors.New("lease.consul.url is required when lease.type is consul")
		}
	case "etcd":
		e := c.Lease.Etcd
		switch {
		case len(e.Endpoints) == 0:
			return errors.New("lease.etcd.endpoints (a list of client URLs) is required when lease.type is etcd")
		case e.Key == "":
			return errors.New("lease.etcd.key is required when lease.type is etcd")
		case e.TTL < time.Second || e.TTL%time.Second != 0:
			return fmt.Errorf("lease.etcd.ttl %s: etcd leases are whole seconds, at least 1s", e.TTL)
		case (e.TLS.CertFile == "") != (e.TLS.KeyFile == ""):
			return errors.New("lease.etcd.tls.cert-file and lease.etcd.tls.key-file go together")
		case (e.Username == "") != (e.Password == ""):
			return errors.New("lease.etcd.username and lease.etcd.password go together")
		}
		for _, ep := range e.Endpoints {
			if u, err := url.Parse(ep); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				return fmt.Errorf("invalid lease.etcd.endpoints entry %q: want http://host:port or https://host:port", ep)
			}
		}
	case "":
		return errors.New("lease.type is required: \"static\", \"consul\" or \"etcd\"")
	default:
		return fmt.Errorf("invalid lease.type %q, must be \"static\", \"consul\" or \"etcd\"", c.Lease.Type)
	}
	if c.Lease.Candidate && len(c.Lease.Databases) > 0 {
		return errors.New("lease.databases (a replication filter) cannot be set on a candidate node")
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		return fmt.Errorf("invalid log.format %q, must be \"text\" or \"json\"", c.Log.Format)
	}
	if c.Proxy.Target != "" {
		if c.Proxy.Addr == "" {
			return errors.New("proxy.addr is required when proxy.target is set")
		}
		if c.Proxy.DB == "" {
			return errors.New("proxy.db is required when proxy.target is set")
		}
	}
	if err := c.HTTP.validate(); err != nil {
		return err
	}
	if c.Backup.Type != "" {
		return fmt.Errorf("backup.type %q is not supported", c.Backup.Type)
	}
	return nil
}

// validate checks the API's security settings.
func (h HTTPConfig) validate() error {
	switch {
	case h.AuthToken != "" && h.AuthTokenFile != "":
		return errors.New("http.auth-token and http.auth-token-file are alternatives: set one")
	case h.PreviousAuthToken != "" && h.PreviousAuthTokenFile != "":
		return errors.New("http.previous-auth-token and http.previous-auth-token-file are alternatives: set one")
	case h.AuthTokenOverlap <= 0:
		return errors.New("http.auth-token-overlap must be positive")
	case (h.TLS.CertFile == "") != (h.TLS.KeyFile == ""):
		return errors.New("http.tls.cert-file and http.tls.key-file go together")
	case h.TLS.ClientCAFile != "" && h.TLS.CertFile == "":
		return errors.New("http.tls.client-ca-file needs http.tls.cert-file and http.tls.key-file: client certificates are asked for only over TLS")
	}
	limits := []struct {
		key string
		v   int64
	}{
		{"max-import-size", int64(h.MaxImportSize)}, {"max-request-body", int64(h.MaxRequestBody)},
		{"max-connections", int64(h.MaxConnections)}, {"connection-wait", int64(h.ConnectionWait)},
		{"read-header-timeout", int64(h.ReadHeaderTimeout)}, {"idle-timeout", int64(h.IdleTimeout)},
		{"body-read-timeout", int64(h.BodyReadTimeout)}, {"min-body-rate", int64(h.MinBodyRate)},
		{"write-timeout", int64(h.WriteTimeout)}, {"export-write-timeout", int64(h.ExportWriteTimeout)},
	}
	for _, l := range limits {
		if l.v <= 0 {
			return fmt.Errorf("http.%s must be positive", l.key)
		}
	}
	for _, p := range h.PublicEndpoints {
		if p != lhttp.PathMetrics && p != lhttp.PathHealth {
			return fmt.Errorf("invalid http.public-endpoints entry %q: only %q and %q may be served without the secret", p, lhttp.PathMetrics, lhttp.PathHealth)
		}
	}
	return nil
}
