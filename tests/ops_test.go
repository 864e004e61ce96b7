package tests

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	"github.com/litefs-project/litefs/internal/testutil"
)

// scrape fetches and parses a node's /metrics.
func scrape(t *testing.T, n *testutil.Node) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := n.Client().Get(n.URL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %s", resp.Status)
	}
	var p expfmt.TextParser
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics of %s: %v", n.Config.Name, err)
	}
	for name, f := range fams {
		if f.GetHelp() == "" {
			t.Errorf("metric %s has no help text", name)
		}
	}
	return fams
}

// metricValue returns the value of the sample of family name whose labels
// include labels (name=value pairs).
func metricValue(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	t.Helper()
	f := fams[name]
	if f == nil {
		t.Fatalf("no metric %s", name)
	}
	for _, m := range f.Metric {
		match := true
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, l := range m.Label {
				if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
					found = true
				}
			}
			match = match && found
		}
		if !match {
			continue
		}
		switch {
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		}
	}
	t.Fatalf("no sample of %s with labels %v", name, labels)
	return 0
}

// dbCounter reads a per-database counter of a node: 0 while the node has
// no sample of it for db (a counter that never moved is not exported).
func dbCounter(t *testing.T, n *testutil.Node, name, db string) float64 {
	t.Helper()
	f := scrape(t, n)[name]
	if f == nil {
		return 0
	}
	for _, m := range f.Metric {
		for _, l := range m.Label {
			if l.GetName() == "db" && l.GetValue() == db {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// TestMetrics scrapes a primary and a replica after a workload.
func TestMetrics(t *testing.T) {
	primary := testutil.StartNode(t, testutil.NodeConfig{Name: "primary"})
	replica := testutil.StartReplica(t, primary, testutil.NodeConfig{Name: "replica"})
	conn := testutil.OpenDB(t, primary.Path("m.db"), "WAL")
	testutil.Exec(t, conn, "CREATE TABLE t (v)")
	const txns = 25
	for i := 0; i < txns; i++ {
		testutil.Exec(t, conn, "INSERT INTO t VALUES (?)", i)
	}
	pos := primary.Pos(t, "m.db")
	replica.WaitPos(t, "m.db", pos, syncTimeout)

	p := scrape(t, primary)
	checks := []struct {
		fams   map[string]*dto.MetricFamily
		name   string
		labels []string
		want   float64
	}{
		{p, "litefs_db_txid", []string{"db", "m.db"}, float64(pos.TXID)},
		{p, "litefs_db_commits_total", []string{"db", "m.db"}, float64(pos.TXID)}, // every transaction, the switch to WAL included
		{p, "litefs_db_changesets_total", []string{"db", "m.db"}, float64(pos.TXID)},
		{p, "litefs_is_primary", nil, 1},
		{p, "litefs_replicas_connected", nil, 1},
		{p, "litefs_replication_lag_seconds", nil, 0},
		{p, "litefs_db_halt_lock_held", []string{"db", "m.db"}, 0},
	}
	r := scrape(t, replica)
	checks = append(checks, []struct {
		fams   map[string]*dto.MetricFamily
		name   string
		labels []string
		want   float64
	}{
		{r, "litefs_db_txid", []string{"db", "m.db"}, float64(pos.TXID)},
		{r, "litefs_db_commits_total", []string{"db", "m.db"}, 0},
		{r, "litefs_db_changesets_total", []string{"db", "m.db"}, float64(pos.TXID)},
		{r, "litefs_is_primary", nil, 0},
		{r, "litefs_replicas_connected", nil, 0},
	}...)
	for _, c := range checks {
		if got := metricValue(t, c.fams, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if v := metricValue(t, p, "litefs_db_changeset_bytes_total", "db", "m.db"); v <= 0 {
		t.Errorf("primary wrote %v changeset bytes", v)
	}
	if v := metricValue(t, p, "litefs_stream_bytes_total", "db", "m.db"); v <= 0 {
		t.Errorf("primary streamed %v bytes", v)
	}
	if v := metricValue(t, p, "litefs_fuse_operation_duration_seconds", "op", "write"); v < txns {
		t.Errorf("%v FUSE writes observed, want at least %d", v, txns)
	}
	if v := metricValue(t, r, "litefs_lease_renewals_total"); v != 0 {
		t.Errorf("static lease renewals = %v", v)
	}
}

type event struct {
	Type string          `json:"type"`
	DB   string          `json:"db"`
	Data json.RawMessage `json:"data"`
}

// followEvents reads n's /events into a channel until the test ends.
func followEvents(t *testing.T, n *testutil.Node) <-chan event {
	t.Helper()
	req, err := http.NewRequest("GET", n.URL()+"/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	ch := make(chan event, 1024)
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			var e event
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				t.Errorf("event %q: %v", sc.Text(), err)
				return
			}
			ch <- e
		}
	}()
	return ch
}

func nextEvent(t *testing.T, ch <-chan event) event {
	t.Helper()
	select {
	case e, ok := <-ch:
		if !ok {
			t.Fatal("event stream ended")
		}
		return e
	case <-time.After(30 * time.Second):
		t.Fatal("no event within 30s")
	}
	return event{}
}

// TestEventsFollowCluster: a client following /events on a node of a
// three-node Consul cluster gets init, every TXID in order, and the
// primary's change on a handoff.
func TestEventsFollowCluster(t *testing.T) {
	c := testutil.StartConsul(t)
	a, b, n3 := startConsulCluster(t, c)
	waitPrimary(t, []*testutil.Node{a, b, n3}, failoverLimit)
	createTable(t, a, "db")
	b.WaitPos(t, "db", a.Pos(t, "db"), syncTimeout)
	n3.WaitPos(t, "db", a.Pos(t, "db"), syncTimeout)
	start := a.Pos(t, "db").TXID

	events := followEvents(t, n3)
	init := nextEvent(t, events)
	var role struct {
		IsPrimary bool   `json:"isPrimary"`
		Hostname  string `json:"hostname"`
	}
	if init.Type != "init" || json.Unmarshal(init.Data, &role) != nil || role.IsPrimary || role.Hostname != "a" {
		t.Fatalf("first event %s %s, want init naming primary a", init.Type, init.Data)
	}
	const txns = 30
	for i := 0; i < txns; i++ {
		if err := tryWrite(a, "db", fmt.Sprintf("e%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	want := start + 1
	for want <= start+txns {
		e := nextEvent(t, events)
		if e.Type != "tx" || e.DB != "db" {
			t.Fatalf("unexpected event %s %s %s", e.Type, e.DB, e.Data)
		}
		var tx struct {
			TXID string `json:"txID"`
		}
		json.Unmarshal(e.Data, &tx)
		got, err := strconv.ParseUint(tx.TXID, 16, 64)
		if err != nil || got != uint64(want) {
			t.Fatalf("tx event %s, want txid %d", e.Data, want)
		}
		want++
	}

	if out, code := runLiteFS(t, "run", "-url", b.URL(), "-promote"); code != 0 {
		t.Fatalf("promote b: %s", out)
	}
	for {
		e := nextEvent(t, events)
		if e.Type != "primaryChange" {
			continue
		}
		if json.Unmarshal(e.Data, &role) != nil || role.IsPrimary || role.Hostname != "b" {
			continue // the stream may pass through "no primary" first
		}
		break
	}
}
