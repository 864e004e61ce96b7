package config

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const minimalYAML = "fuse:\n  dir: /mnt/litefs\ndata:\n  dir: /var/lib/litefs\nlease:\n  type: static\n"

func TestAuthTokenFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	current := write("current", "  new-secret\n")
	previous := write("previous", "old-secret\n")
	empty := write("empty", " \n")

	tests := []struct {
		name          string
		http          string
		current, prev string
		err           string // in the error of Parse or Tokens
	}{
		{"inline", "auth-token: abc", "abc", "", ""},
		{"files", fmt.Sprintf("auth-token-file: %s\n  previous-auth-token-file: %s", current, previous), "new-secret", "old-secret", ""},
		{"none", "addr: ':1'", "", "", ""},
		{"both current", fmt.Sprintf("auth-token: abc\n  auth-token-file: %s", current), "", "", "http.auth-token and http.auth-token-file are alternatives"},
		{"both previous", fmt.Sprintf("auth-token: abc\n  previous-auth-token: x\n  previous-auth-token-file: %s", previous), "", "", "alternatives"},
		{"previous alone", "previous-auth-token: x", "", "", "http.previous-auth-token is set without http.auth-token"},
		{"missing file", "auth-token-file: " + filepath.Join(dir, "nope"), "", "", "http.auth-token-file: open"},
		{"empty file", "auth-token-file: " + empty, "", "", "is empty"},
		{"bad public endpoint", "public-endpoints: ['/export']", "", "", `invalid http.public-endpoints entry "/export"`},
		{"zero overlap", "auth-token: a\n  auth-token-overlap: 0s", "", "", "http.auth-token-overlap must be positive"},
		{"cert without key", "tls:\n    cert-file: /x.pem", "", "", "http.tls.cert-file and http.tls.key-file go together"},
		{"client CA without TLS", "tls:\n    client-ca-file: /ca.pem", "", "", "http.tls.client-ca-file needs http.tls.cert-file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(minimalYAML+"http:\n  "+tt.http+"\n"), false)
			var cur, prev string
			if err == nil {
				cur, prev, err = c.HTTP.Tokens()
			}
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want one containing %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cur != tt.current || prev != tt.prev {
				t.Fatalf("tokens = %q, %q; want %q, %q", cur, prev, tt.current, tt.prev)
			}
		})
	}
}

// TestSecretNeverPrinted: a configuration printed or encoded in any way
// does not show the secret.
func TestSecretNeverPrinted(t *testing.T) {
	c, err := Parse([]byte(minimalYAML+"http:\n  auth-token: hunter2-cluster\n  previous-auth-token: hunter1-cluster\n"), false)
	if err != nil {
		t.Fatal(err)
	}
	js, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, out := range []string{fmt.Sprint(c), fmt.Sprintf("%+v", c), fmt.Sprintf("%#v", c), string(js), fmt.Sprint(c.HTTP.AuthToken)} {
		if strings.Contains(out, "hunter") {
			t.Errorf("secret shown in %s", out)
		}
	}
	if cur, _, _ := c.HTTP.Tokens(); cur != "hunter2-cluster" {
		t.Fatalf("Tokens() = %q", cur)
	}
}

func TestSize(t *testing.T) {
	tests := []struct {
		in   string
		want Size
		err  bool
	}{
		{"4096", 4096, false}, {"4GiB", 4 << 30, false}, {"512 KiB", 512 << 10, false}, {"3MB", 3e6, false},
		{"10B", 10, false}, {"-1", 0, true}, {"1.5GiB", 0, true}, {"lots", 0, true}, {"9999999999GiB", 0, true},
	}
	for _, tt := range tests {
		c, err := Parse([]byte(minimalYAML+"http:\n  max-import-size: "+tt.in+"\n"), false)
		if tt.err {
			if err == nil || !strings.Contains(err.Error(), "invalid size") {
				t.Errorf("%q: err = %v, want an invalid size", tt.in, err)
			}
			continue
		}
		if err != nil || c.HTTP.MaxImportSize != tt.want {
			t.Errorf("%q: %d, %v; want %d", tt.in, c.HTTP.MaxImportSize, err, tt.want)
		}
	}
	if _, err := Parse([]byte(minimalYAML+"http:\n  max-connections: 0\n"), false); err == nil || !strings.Contains(err.Error(), "http.max-connections must be positive") {
		t.Errorf("max-connections 0: %v", err)
	}
}
