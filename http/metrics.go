package http

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// NodeStatus is what /metrics reports of the node as a whole.
type NodeStatus interface {
	IsPrimary() bool
	// Epoch is the term this node holds or follows, 0 if none.
	Epoch() uint64
	Lag() time.Duration
	// Terms is how many terms this node has held as primary.
	Terms() int64
	// HandoffInProgress reports whether a handoff holds or waits for writes.
	HandoffInProgress() bool
	// LeaseStats returns the lease's successful and failed renewals.
	LeaseStats() (renewals, failures int64)
}

// metrics are the Prometheus metrics this server updates as it works; the
// rest are read from the store and the node when scraped.
type metrics struct {
	registry         *prometheus.Registry
	streamed         *prometheus.CounterVec
	snapshots        *prometheus.CounterVec
	snapshotDuration *prometheus.HistogramVec
	fuseOps          *prometheus.HistogramVec
	refusedRequests  *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		streamed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "litefs_stream_bytes_total",
			Help: "Bytes of changesets and snapshots sent to replicas, by database.",
		}, []string{"db"}),
		snapshots: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "litefs_snapshots_total",
			Help: "Snapshots sent to replicas, by database.",
		}, []string{"db"}),
		snapshotDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "litefs_snapshot_duration_seconds",
			Help:    "Time to send a snapshot to a replica, by database.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}, []string{"db"}),
		fuseOps: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "litefs_fuse_operation_duration_seconds",
			Help:    "Time the FUSE server spent on each request, by kind.",
			Buckets: prometheus.ExponentialBuckets(1e-6, 4, 10),
		}, []string{"op"}),
		refusedRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "litefs_http_requests_refused_total",
			Help: "API requests refused before reaching an endpoint, by status: 401 without the cluster secret, 403 from a web page, 415 of a type no endpoint takes, 421 for a host this node is not.",
		}, []string{"code"}),
	}
	m.registry.MustRegister(m.streamed, m.snapshots, m.snapshotDuration, m.fuseOps, m.refusedRequests,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// refused counts a request the guard refused.
func (m *metrics) refused(code int) {
	m.refusedRequests.WithLabelValues(strconv.Itoa(code)).Inc()
}

// ObserveFUSE records the duration of one FUSE request; see fuse.Options.
func (s *Server) ObserveFUSE(op string, d time.Duration) {
	s.metrics.fuseOps.WithLabelValues(op).Observe(d.Seconds())
}

// EnableMetrics serves /metrics, reporting node and rep (the replicator,
// if the node has one) through it.
func (s *Server) EnableMetrics(node NodeStatus, rep *Replicator) {
	s.metrics.registry.MustRegister(&stateCollector{s: s, node: node, rep: rep})
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.registry, promhttp.HandlerOpts{}))
}

// stateCollector reads the store and node at scrape time.
type stateCollector struct {
	s    *Server
	node NodeStatus
	rep  *Replicator
}

var (
	descTXID = prometheus.NewDesc("litefs_db_txid",
		"The database's current transaction ID.", []string{"db"}, nil)
	descCommits = prometheus.NewDesc("litefs_db_commits_total",
		"Transactions committed through this node's mount.", []string{"db"}, nil)
	descChangesets = prometheus.NewDesc("litefs_db_changesets_total",
		"Changesets appended to the database's log: local commits and applied ones.", []string{"db"}, nil)
	descChangesetBytes = prometheus.NewDesc("litefs_db_changeset_bytes_total",
		"Bytes of LTX appended to the database's log.", []string{"db"}, nil)
	descHaltHeld = prometheus.NewDesc("litefs_db_halt_lock_held",
		"1 while a HALT lock is held on the database, here or for a replica.", []string{"db"}, nil)
	descHaltQueued = prometheus.NewDesc("litefs_db_halt_requests_waiting",
		"HALT lock requests waiting for the database's lock on this node: replicas' on the primary, and local ones.", []string{"db"}, nil)
	descPrimary = prometheus.NewDesc("litefs_is_primary",
		"1 if this node is the primary.", nil, nil)
	descReplicas = prometheus.NewDesc("litefs_replicas_connected",
		"Replicas streaming from this node.", nil, nil)
	descLag = prometheus.NewDesc("litefs_replication_lag_seconds",
		"How far this node is behind the primary (0 on the primary).", nil, nil)
	descHaltWaiting = prometheus.NewDesc("litefs_halt_lock_waiting",
		"HALT lock requests waiting on this node.", nil, nil)
	descEpoch = prometheus.NewDesc("litefs_epoch",
		"The term this node holds (as primary) or follows (as replica); 0 if none.", nil, nil)
	descHaltEnded = prometheus.NewDesc("litefs_halt_grants_ended_total",
		"HALT locks this node granted that have ended, by reason: released, expired, disconnected, term-ended, preempted.", []string{"reason"}, nil)
	descHandoff = prometheus.NewDesc("litefs_handoff_in_progress",
		"1 while a handoff of the lease is waiting for or holding this primary's writes.", nil, nil)
	descHoldsWaiting = prometheus.NewDesc("litefs_write_holds_waiting",
		"Write holds (handoffs, imports, HALT grants) waiting for the writers they keep out.", nil, nil)
	descTerms = prometheus.NewDesc("litefs_terms_total",
		"Terms this node has held as the primary.", nil, nil)
	descReplicaSnapshots = prometheus.NewDesc("litefs_replica_snapshots_applied_total",
		"Snapshots from the primary installed on this node, by database.", []string{"db"}, nil)
	descReplicaDiscarded = prometheus.NewDesc("litefs_replica_discarded_transactions_total",
		"Local transactions a snapshot from the primary discarded because the primary never had them, by database.", []string{"db"}, nil)
	descReplicaRefused = prometheus.NewDesc("litefs_replica_frames_refused_total",
		"Frames from the primary this node refused (corrupt, or not fitting the database), by database.", []string{"db"}, nil)
	descRenewals = prometheus.NewDesc("litefs_lease_renewals_total",
		"Successful renewals of the primary's lease.", nil, nil)
	descRenewalFailures = prometheus.NewDesc("litefs_lease_renewal_failures_total",
		"Failed renewals of the primary's lease.", nil, nil)
)

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descTXID, descCommits, descChangesets, descChangesetBytes, descHaltHeld, descHaltQueued,
		descPrimary, descReplicas, descLag, descHaltWaiting, descEpoch, descHaltEnded, descTerms, descHandoff, descHoldsWaiting,
		descReplicaSnapshots, descReplicaDiscarded, descReplicaRefused, descRenewals, descRenewalFailures} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	for _, db := range c.s.store.DBs() {
		name := db.Name()
		st := db.Stats()
		ch <- prometheus.MustNewConstMetric(descTXID, prometheus.GaugeValue, float64(db.Pos().TXID), name)
		ch <- prometheus.MustNewConstMetric(descCommits, prometheus.CounterValue, float64(st.Commits), name)
		ch <- prometheus.MustNewConstMetric(descChangesets, prometheus.CounterValue, float64(st.Changesets), name)
		ch <- prometheus.MustNewConstMetric(descChangesetBytes, prometheus.CounterValue, float64(st.ChangesetBytes), name)
		ch <- prometheus.MustNewConstMetric(descHaltHeld, prometheus.GaugeValue, boolValue(st.HaltHeld), name)
		ch <- prometheus.MustNewConstMetric(descHaltQueued, prometheus.GaugeValue, float64(st.HaltWaiting), name)
	}
	ch <- prometheus.MustNewConstMetric(descPrimary, prometheus.GaugeValue, boolValue(c.node.IsPrimary()))
	c.s.mu.Lock()
	replicas := len(c.s.streams)
	c.s.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(descReplicas, prometheus.GaugeValue, float64(replicas))
	ch <- prometheus.MustNewConstMetric(descLag, prometheus.GaugeValue, c.node.Lag().Seconds())
	ch <- prometheus.MustNewConstMetric(descHaltWaiting, prometheus.GaugeValue, float64(c.s.store.HaltWaiting()))
	ch <- prometheus.MustNewConstMetric(descEpoch, prometheus.GaugeValue, float64(c.node.Epoch()))
	ch <- prometheus.MustNewConstMetric(descTerms, prometheus.CounterValue, float64(c.node.Terms()))
	ch <- prometheus.MustNewConstMetric(descHandoff, prometheus.GaugeValue, boolValue(c.node.HandoffInProgress()))
	ch <- prometheus.MustNewConstMetric(descHoldsWaiting, prometheus.GaugeValue, float64(c.s.store.HoldsWaiting()))
	if c.rep != nil {
		for name, st := range c.rep.Stats() {
			ch <- prometheus.MustNewConstMetric(descReplicaSnapshots, prometheus.CounterValue, float64(st.Snapshots), name)
			ch <- prometheus.MustNewConstMetric(descReplicaDiscarded, prometheus.CounterValue, float64(st.Discarded), name)
			ch <- prometheus.MustNewConstMetric(descReplicaRefused, prometheus.CounterValue, float64(st.RefusedFrames), name)
		}
	}
	for why, n := range c.s.store.HaltEnds() {
		ch <- prometheus.MustNewConstMetric(descHaltEnded, prometheus.CounterValue, float64(n), why)
	}
	renewals, failures := c.node.LeaseStats()
	ch <- prometheus.MustNewConstMetric(descRenewals, prometheus.CounterValue, float64(renewals))
	ch <- prometheus.MustNewConstMetric(descRenewalFailures, prometheus.CounterValue, float64(failures))
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
