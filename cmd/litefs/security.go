package main

import (
	"flag"
	"net/url"
	"os"
	"time"

	lhttp "github.com/litefs-project/litefs/http"
	"github.com/litefs-project/litefs/internal/config"
)

// AuthTokenEnv gives the CLI the cluster secret when no -config is given.
const AuthTokenEnv = "LITEFS_AUTH_TOKEN"

// newSecurity loads the cluster secret and TLS files the configuration
// names. The previous secret's overlap counts from now: the node's start.
func newSecurity(h config.HTTPConfig) (*lhttp.Security, error) {
	current, previous, err := h.Tokens()
	if err != nil {
		return nil, err
	}
	sec := &lhttp.Security{Tokens: lhttp.NewTokens(current, previous, time.Now().Add(h.AuthTokenOverlap))}
	t := h.TLS
	if t != (config.HTTPTLSConfig{}) {
		tls, err := lhttp.LoadTLS(lhttp.TLSFiles{CertFile: t.CertFile, KeyFile: t.KeyFile, CAFile: t.CAFile, ClientCAFile: t.ClientCAFile})
		if err != nil {
			return nil, err
		}
		sec.ClientTLS = tls
		if tls.Serves() {
			sec.ServerTLS = tls
		}
	}
	return sec, nil
}

// cliSecurity is what a CLI command presents to a node: the secret and TLS
// files of the configuration at path if one is given, else the secret in
// $LITEFS_AUTH_TOKEN.
func cliSecurity(path string) (*lhttp.Security, error) {
	if path == "" {
		return &lhttp.Security{Tokens: lhttp.NewTokens(os.Getenv(AuthTokenEnv), "", time.Time{})}, nil
	}
	c, _, err := config.Load(path, true)
	if err != nil {
		return nil, err
	}
	return newSecurity(c.HTTP)
}

// allowedHosts are the names other nodes and admins reach this node by:
// the configured ones, the node's hostname and its advertise URL's host.
func allowedHosts(c config.Config) []string {
	hosts := append([]string(nil), c.HTTP.AllowedHosts...)
	if c.Lease.Hostname != "" {
		hosts = append(hosts, c.Lease.Hostname)
	}
	if h, err := os.Hostname(); err == nil {
		hosts = append(hosts, h)
	}
	if u, err := url.Parse(c.Lease.AdvertiseURL); err == nil && u.Hostname() != "" {
		hosts = append(hosts, u.Hostname())
	}
	return hosts
}

// apiFlags are the flags of a CLI command that calls a node's API.
type apiFlags struct {
	url    string
	config string
}

func (a *apiFlags) register(fs *flag.FlagSet, what string) {
	fs.StringVar(&a.url, "url", defaultURL(), what+" (or $LITEFS_URL)")
	fs.StringVar(&a.config, "config", "", "the node's litefs.yml, for its cluster secret and TLS files (else $"+AuthTokenEnv+")")
}

// client returns an API client presenting the credentials the flags name.
func (a *apiFlags) client() (*lhttp.APIClient, error) {
	sec, err := cliSecurity(a.config)
	if err != nil {
		return nil, err
	}
	return lhttp.NewAPIClient(sec), nil
}
