package main

import (
	"context"
	"errors"
	"net"
	"net/url"
	"strconv"
	"sync"

	lhttp "github.com/litefs-project/litefs/http"
)

// startProxy runs the HTTP proxy in front of the application, if
// configured. Other nodes reach it on the host of this node's advertise
// URL and the proxy's port.
func (n *node) startProxy() error {
	c := n.cfg.Proxy
	if c.Target == "" {
		return nil
	}
	cache := &proxyCache{}
	n.proxy = lhttp.NewProxy(n.store, lhttp.ProxyOptions{
		Addr:           c.Addr,
		Target:         c.Target,
		DB:             c.DB,
		MaxLag:         c.MaxLag,
		Passthrough:    c.Passthrough,
		AlwaysForward:  c.AlwaysForward,
		PrimaryTimeout: c.PrimaryRedirectTimeout,
		IsPrimary:      n.IsPrimary,
		PrimaryProxy:   func(ctx context.Context) (string, error) { return cache.get(ctx, n.primaryURL()) },
		Lag:            n.Lag,
		Logger:         n.logger,
	})
	if err := n.proxy.Listen(); err != nil {
		return err
	}
	host := n.hostname
	if u, err := url.Parse(n.advertiseURL); err == nil && u.Hostname() != "" {
		host = u.Hostname()
	}
	n.proxyURL = "http://" + net.JoinHostPort(host, strconv.Itoa(n.proxy.Addr().(*net.TCPAddr).Port))
	n.logger.Info("proxy listening", "addr", n.proxy.Addr().String(), "target", c.Target, "db", c.DB)
	go func() {
		if err := n.proxy.Serve(); err != nil {
			n.logger.Error("proxy", "err", err)
		}
	}()
	return nil
}

// proxyCache remembers the proxy URL of the primary at an API URL.
type proxyCache struct {
	mu       sync.Mutex
	api, url string
}

func (c *proxyCache) get(ctx context.Context, api string) (string, error) {
	if api == "" {
		return "", errors.New("no primary is known")
	}
	c.mu.Lock()
	if c.api == api {
		defer c.mu.Unlock()
		return c.url, nil
	}
	c.mu.Unlock()
	var info Info
	if err := getJSON(ctx, api+"/info", &info); err != nil {
		return "", err
	}
	if info.ProxyURL == "" {
		return "", errors.New("the primary runs no proxy")
	}
	c.mu.Lock()
	c.api, c.url = api, info.ProxyURL
	c.mu.Unlock()
	return info.ProxyURL, nil
}
