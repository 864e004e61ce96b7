package main

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	lhttp "github.com/litefs-project/litefs/http"
)

// startProxy runs the HTTP proxy in front of the application, if
// configured. Other nodes' proxies forward writes to it through this
// node's API, under lhttp.ProxyPrefix.
func (d *daemon) startProxy() error {
	c := d.cfg.Proxy
	if c.Target == "" {
		return nil
	}
	cache := &proxyCache{client: lhttp.NewAPIClient(d.security)}
	d.proxy = lhttp.NewProxy(d.store, lhttp.ProxyOptions{
		Addr:           c.Addr,
		Target:         c.Target,
		DB:             c.DB,
		MaxLag:         c.MaxLag,
		Passthrough:    c.Passthrough,
		AlwaysForward:  c.AlwaysForward,
		PrimaryTimeout: c.PrimaryRedirectTimeout,
		IsPrimary:      d.node.IsPrimary,
		PrimaryProxy: func(ctx context.Context) (string, error) {
			u, _ := d.node.PrimaryURL()
			return cache.get(ctx, u)
		},
		Forward: d.security.ProxyClient(&http.Transport{
			Proxy:               nil,
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 15 * time.Second}).DialContext,
			MaxIdleConnsPerHost: 16,
			IdleConnTimeout:     time.Minute,
		}),
		ReadTimeout:       c.ReadTimeout,
		ReadHeaderTimeout: c.ReadHeaderTimeout,
		WriteTimeout:      c.WriteTimeout,
		IdleTimeout:       c.IdleTimeout,
		Debug:             c.Debug,
		Lag:               d.node.Lag,
		Logger:            d.logger,
	})
	d.http.Handle(lhttp.ProxyPrefix+"/", http.HandlerFunc(d.proxy.ServeForwarded))
	if err := d.proxy.Listen(); err != nil {
		return err
	}
	host := d.hostname
	if u, err := url.Parse(d.advertiseURL); err == nil && u.Hostname() != "" {
		host = u.Hostname()
	}
	d.node.SetProxyURL("http://" + net.JoinHostPort(host, strconv.Itoa(d.proxy.Addr().(*net.TCPAddr).Port)))
	d.logger.Info("proxy listening", "addr", d.proxy.Addr().String(), "target", c.Target, "db", c.DB)
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		if err := d.proxy.Serve(); err != nil {
			d.logger.Error("proxy", "err", err)
		}
	}()
	return nil
}

// proxyCache remembers which primary API was seen to run a proxy: writes
// are forwarded through that API, which passes them to its proxy.
type proxyCache struct {
	client *lhttp.APIClient
	mu     sync.Mutex
	api    string // the last primary API seen with a proxy
}

func (c *proxyCache) get(ctx context.Context, api string) (string, error) {
	if api == "" {
		return "", errors.New("no primary is known")
	}
	c.mu.Lock()
	known := c.api == api
	c.mu.Unlock()
	if known {
		return api, nil
	}
	info, err := c.client.Info(ctx, api)
	if err != nil {
		return "", err
	}
	if info.ProxyURL == "" {
		return "", errors.New("the primary runs no proxy")
	}
	c.mu.Lock()
	c.api = api
	c.mu.Unlock()
	return api, nil
}
