package tests

import (
	"context"
	"testing"
	"time"

	lhttp "github.com/litefs-project/litefs/http"
	"github.com/litefs-project/litefs/internal/testutil"
)

// waitUntil polls cond until it holds, failing the test after timeout.
func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// metricNow scrapes one sample of a node's metrics.
func metricNow(t *testing.T, n *testutil.Node, name string, labels ...string) float64 {
	t.Helper()
	return metricValue(t, scrape(t, n), name, labels...)
}

// waitMetric waits until a sample of a node's metrics satisfies ok.
func waitMetric(t *testing.T, n *testutil.Node, timeout time.Duration, ok func(float64) bool, name string, labels ...string) float64 {
	t.Helper()
	var v float64
	waitUntil(t, timeout, n.Config.Name+": "+name, func() bool {
		v = metricNow(t, n, name, labels...)
		return ok(v)
	})
	return v
}

func atLeast(min float64) func(float64) bool { return func(v float64) bool { return v >= min } }

// apiInfo asks a node's API what it is.
func apiInfo(t *testing.T, n *testutil.Node) lhttp.Info {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	info, err := n.API().Info(ctx, n.URL())
	if err != nil {
		t.Fatalf("info of %s: %v", n.Config.Name, err)
	}
	return info
}
