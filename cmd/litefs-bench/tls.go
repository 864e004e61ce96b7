package main

import (
	"fmt"
	"time"

	"github.com/litefs-project/litefs/internal/testutil"
)

// runTLSBench measures what the cluster secret and mutual TLS cost: the
// replication lag and the forwarded HALT rate of a plain pair of nodes and
// of a secured pair, in the same run.
func runTLSBench(h *harness, commits int, d time.Duration) {
	type result struct {
		lags []time.Duration
		fwd  float64
	}
	measure := func(sec *testutil.Secure) result {
		primary, replica := startPair(h, sec)
		defer primary.Stop(h)
		defer replica.Stop(h)
		return result{
			lags: measureLag(h, primary, replica, "lag.db", commits),
			fwd:  forwardedRate(h, primary, replica, "WAL", "NORMAL", d),
		}
	}
	plain := measure(nil)
	secure := measure(&testutil.Secure{Token: "bench-secret", CA: testutil.NewCA(h, "bench")})
	fmt.Printf("cost of the cluster secret and mutual TLS (%d commits for lag; %s of forwarded WAL/NORMAL writes):\n", commits, d)
	for _, r := range []struct {
		name string
		res  result
	}{{"plain HTTP", plain}, {"secret + mutual TLS", secure}} {
		fmt.Printf("  %-20s lag p50 %-10s p99 %-10s forwarded under HALT %6.0f tx/s\n", r.name,
			percentile(r.res.lags, 50), percentile(r.res.lags, 99), r.res.fwd)
	}
	ratio := func(a, b time.Duration) float64 { return float64(a) / float64(b) }
	fmt.Printf("  TLS/plain: lag p50 %.2fx, p99 %.2fx, forwarded rate %.2fx\n",
		ratio(percentile(secure.lags, 50), percentile(plain.lags, 50)),
		ratio(percentile(secure.lags, 99), percentile(plain.lags, 99)),
		secure.fwd/plain.fwd)
}
