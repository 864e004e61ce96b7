package http

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/litefs-project/litefs/ltx"
)

// The node's own API: what a node reports of itself and the steps of a
// handoff. The handlers live with the role logic (package node); these
// types and the client are shared by it, the CLI and the tests.

// Info is the body of GET /info.
type Info struct {
	NodeID       string             `json:"nodeID"`
	Hostname     string             `json:"hostname"`
	AdvertiseURL string             `json:"advertiseURL"`
	IsPrimary    bool               `json:"isPrimary"`
	Candidate    bool               `json:"candidate"`
	Epoch        uint64             `json:"epoch"`                // the term this node holds or follows; 0 if none
	Primary      string             `json:"primary,omitempty"`    // the primary's hostname, on replicas
	PrimaryURL   string             `json:"primaryURL,omitempty"` // the primary's API, on replicas
	ProxyURL     string             `json:"proxyURL,omitempty"`   // this node's proxy, if it runs one
	Databases    map[string]ltx.Pos `json:"databases"`
}

// HandoffRequest is the body of POST /handoff and /handoff/release: the
// candidate taking over, and the term it takes over from.
type HandoffRequest struct {
	Hostname string `json:"hostname"`
	Epoch    uint64 `json:"epoch"`
}

// HandoffResponse answers POST /handoff: the primary's positions once its
// writes are held.
type HandoffResponse struct {
	Positions map[string]ltx.Pos `json:"positions"`
	Epoch     uint64             `json:"epoch"`
}

// PromoteRequest is the body of POST /promote. Epoch, if set, is the term
// of the primary that asks; the candidate refuses if it follows another.
type PromoteRequest struct {
	Epoch uint64 `json:"epoch,omitempty"`
}

// APIClient calls the node API of other nodes. Every call is bounded by
// its context; the client adds a dial timeout.
type APIClient struct {
	HTTP *http.Client
}

// NewAPIClient returns a client with its own connection pool, presenting
// sec's credentials (nil for none).
func NewAPIClient(sec *Security) *APIClient {
	return &APIClient{HTTP: &http.Client{Transport: sec.Client(&http.Transport{
		Proxy:                 nil,
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConnsPerHost:   4,
		IdleConnTimeout:       time.Minute,
		ExpectContinueTimeout: time.Second,
	})}}
}

// Info asks the node at base what it is.
func (c *APIClient) Info(ctx context.Context, base string) (Info, error) {
	var info Info
	err := c.call(ctx, http.MethodGet, base+"/info", nil, &info)
	return info, err
}

// Promote asks the candidate at base to take the lease by handoff.
func (c *APIClient) Promote(ctx context.Context, base string, req PromoteRequest) (Info, error) {
	var info Info
	err := c.call(ctx, http.MethodPost, base+"/promote", req, &info)
	return info, err
}

// Demote asks the primary at base to hand its lease to a candidate.
func (c *APIClient) Demote(ctx context.Context, base string) (Info, error) {
	var info Info
	err := c.call(ctx, http.MethodPost, base+"/demote", struct{}{}, &info)
	return info, err
}

// Handoff asks the primary at base to hold its writes for a handoff.
func (c *APIClient) Handoff(ctx context.Context, base string, req HandoffRequest) (HandoffResponse, error) {
	var resp HandoffResponse
	err := c.call(ctx, http.MethodPost, base+"/handoff", req, &resp)
	return resp, err
}

// ReleaseHandoff asks the primary at base to pass the lease.
func (c *APIClient) ReleaseHandoff(ctx context.Context, base string, req HandoffRequest) error {
	return c.call(ctx, http.MethodPost, base+"/handoff/release", req, nil)
}

// Import uploads a database file of size bytes (-1 if unknown) to the
// primary at base, for its term of epoch, and returns the position it is
// imported at. With the size known, the primary refuses a file it would
// not take before any of it is sent.
func (c *APIClient) Import(ctx context.Context, base, name string, epoch uint64, body io.Reader, size int64) (string, error) {
	u := fmt.Sprintf("%s/import?name=%s&epoch=%d", base, url.QueryEscape(name), epoch)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, body)
	if err != nil {
		return "", err
	}
	req.ContentLength = size
	if size == 0 {
		req.Body = http.NoBody
	}
	// The primary answers a refusal before the upload starts.
	req.Header.Set("Expect", "100-continue")
	req.Header.Set("Content-Type", ContentTypeSQLite)
	var out struct {
		Pos string `json:"pos"`
	}
	err = c.do(req, &out)
	return out.Pos, err
}

// call sends body as JSON (none if nil) and decodes a 200 answer into out
// (if not nil); any other answer becomes a *StatusError with the node's
// message.
func (c *APIClient) call(ctx context.Context, method, u string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(u, "/"), rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", ContentTypeJSON)
	}
	return c.do(req, out)
}

func (c *APIClient) do(req *http.Request, out any) error {
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return err
	}
	defer func() {
		// A connection goes back to the pool only once its answer is read
		// to the end; without that every call would dial (and, over TLS,
		// handshake) anew.
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
	}()
	if err := CheckResponse(resp); err != nil {
		return fmt.Errorf("%s: %w", req.URL.Redacted(), err)
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}
