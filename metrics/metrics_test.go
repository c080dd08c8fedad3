package metrics_test

import (
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/metrics"
	"github.com/tqgo/tq/storage"
	"github.com/tqgo/tq/storage/storagetest"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// cluster is a controller and one storage unit served over TCP, both
// reporting to one registry.
type cluster struct {
	reg  *metrics.Registry
	addr string
	unit *storage.Unit
	ctrl *controller.Controller
}

func serve(t testing.TB, serveFn func(net.Listener) error, closeFn func() error) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan struct{})
	go func() { serveFn(l); close(done) }()
	t.Cleanup(func() { closeFn(); <-done })
	return l.Addr().String()
}

func newCluster(t testing.TB, ccfg controller.Config) *cluster {
	return startCluster(t, ccfg, metrics.New(), 16<<20)
}

// startCluster starts the cluster reporting to reg, or to nothing when reg
// is nil.
func startCluster(t testing.TB, ccfg controller.Config, reg *metrics.Registry, capacity int64) *cluster {
	t.Helper()
	ctx := t.Context()
	var ctrlObs, unitObs wire.Observer
	if reg != nil {
		ccfg.OnJournalWrite = reg.OnJournalWrite
		ctrlObs, unitObs = reg.Observer(metrics.RoleController), reg.Observer(metrics.RoleUnit)
	}
	ctrl, err := controller.New(ccfg)
	require.NoError(t, err)
	t.Cleanup(func() { ctrl.Close() })
	cs := controller.NewServer(ctrl, controller.ServerConfig{Observer: ctrlObs, MetricsAddrs: []string{"http://127.0.0.1:1/metrics"}})
	addr := "tcp://" + serve(t, cs.Serve, cs.Close)
	if reg != nil {
		reg.AddController(ctrl, cs)
	}

	ucfg := storage.DefaultConfig()
	ucfg.Capacity = capacity
	u, err := storage.NewUnit(0, ucfg)
	require.NoError(t, err)
	t.Cleanup(func() { u.Close() })
	_, err = storage.AssignID(ctx, addr, u, storage.JoinConfig{})
	require.NoError(t, err)
	us := storage.NewServer(u, storage.ServerConfig{Observer: unitObs})
	uaddr := serve(t, us.Serve, us.Close)
	if reg != nil {
		reg.AddUnit(u, us)
	}
	mem, err := storage.Join(ctx, addr, u, storage.JoinConfig{Addrs: []string{"tcp://" + uaddr, "http://127.0.0.2:2/metrics"}})
	require.NoError(t, err)
	t.Cleanup(func() { mem.Close() })
	return &cluster{reg: reg, addr: addr, unit: u, ctrl: ctrl}
}

// value returns the one series of name whose labels include want
// (name="value" pairs), or fails.
func (c *cluster) value(t *testing.T, name string, want ...string) float64 {
	t.Helper()
	mfs, err := c.reg.Gatherer().Gather()
	require.NoError(t, err)
	var got []float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for i := 0; i < len(want); i += 2 {
				if have[want[i]] != want[i+1] {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				got = append(got, m.Counter.GetValue())
			case m.Gauge != nil:
				got = append(got, m.Gauge.GetValue())
			case m.Histogram != nil:
				got = append(got, float64(m.Histogram.GetSampleCount()))
			}
		}
	}
	require.Len(t, got, 1, "series %s%v", name, want)
	return got[0]
}

// After known work, the counters and gauges say exactly that work.
func TestCountersAfterKnownWork(t *testing.T) {
	ctx := t.Context()
	cl := newCluster(t, controller.Config{Dir: t.TempDir()})
	c, err := client.Connect(ctx, cl.addr, client.ConnectConfig{})
	require.NoError(t, err)
	defer c.Close()

	const rows = 100
	vals := make([]int64, rows)
	col, err := engine.DenseOf(vals)
	require.NoError(t, err)
	_, err = c.PutNew(ctx, "train", engine.MustBatch(engine.Field{Name: "x", Col: col}))
	require.NoError(t, err)
	meta, err := c.GetMeta(ctx, client.MetaRequest{Partition: "train", Fields: []string{"x"}, BatchSize: 40, Task: "ref", Mode: client.Fetch})
	require.NoError(t, err)
	got, err := c.Get(ctx, meta)
	require.NoError(t, err)
	got.Release()
	// A loader's fetch ahead: 5 rows held for a second task.
	_, err = c.GetMeta(ctx, client.MetaRequest{Partition: "train", Fields: []string{"x"}, BatchSize: 5, Task: "judge", Mode: client.Fetch, Key: "k", Hold: true})
	require.NoError(t, err)
	_, err = c.Meta().(*client.RemoteMeta).Stats(ctx, "no-such-partition")
	require.Error(t, err)

	id := strconv.FormatUint(uint64(cl.unit.ID()), 10)
	for _, tc := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"tq_partitions", nil, 1},
		{"tq_partition_rows", []string{"partition", "train"}, rows},
		{"tq_partition_produced_rows", []string{"partition", "train"}, rows},
		{"tq_partition_field_produced_rows", []string{"partition", "train", "field", "x"}, rows},
		{"tq_task_consumed_rows", []string{"partition", "train", "task", "ref"}, 40},
		{"tq_task_held_rows", []string{"partition", "train", "task", "ref"}, 0},
		{"tq_task_consumed_rows", []string{"partition", "train", "task", "judge"}, 5},
		{"tq_task_held_rows", []string{"partition", "train", "task", "judge"}, 5},
		{"tq_global_indexes", []string{"state", "allocated"}, rows},
		{"tq_units", []string{"state", "alive"}, 1},
		{"tq_fetches_blocked", nil, 0},
		{"tq_unit_data_bytes_total", []string{"unit", id, "transport", "tcp", "direction", "write"}, rows * 8},
		{"tq_unit_data_bytes_total", []string{"unit", id, "transport", "tcp", "direction", "read"}, 40 * 8},
		{"tq_unit_data_operations_total", []string{"unit", id, "transport", "tcp", "direction", "write"}, 1},
		{"tq_unit_data_operations_total", []string{"unit", id, "transport", "tcp", "direction", "read"}, 1},
		{"tq_unit_data_bytes_total", []string{"unit", id, "transport", "shm", "direction", "write"}, 0},
		{"tq_unit_capacity_bytes", []string{"unit", id}, 16 << 20},
		{"tq_unit_reservations", []string{"unit", id}, 0},
		{"tq_unit_leases", []string{"unit", id}, 0},
		{"tq_request_duration_seconds", []string{"server", "unit", "op", "WRITE", "network", "tcp"}, 1},
		{"tq_request_duration_seconds", []string{"server", "unit", "op", "READ", "network", "tcp"}, 1},
		{"tq_request_duration_seconds", []string{"server", "controller", "op", "STATS", "network", "tcp"}, 1},
		{"tq_request_errors_total", []string{"server", "controller", "op", "STATS", "code", "not_found"}, 1},
		{"tq_request_received_bytes_total", []string{"server", "unit", "op", "WRITE", "network", "tcp"}, -1},
	} {
		t.Run(tc.name+strings.Join(tc.labels, ","), func(t *testing.T) {
			got := cl.value(t, tc.name, tc.labels...)
			if tc.want < 0 {
				require.Greater(t, got, float64(rows*8+wire.HeaderSize), "a WRITE carries its payload")
				return
			}
			require.Equal(t, tc.want, got)
		})
	}
	require.Greater(t, cl.value(t, "tq_journal_records_written_total"), 0.0)
	require.Greater(t, cl.value(t, "tq_journal_write_seconds"), 0.0)
	lint, err := testutil.GatherAndLint(cl.reg.Gatherer())
	require.NoError(t, err)
	require.Empty(t, lint, "metric names and help follow the Prometheus conventions")

	eps, err := c.MetricsEndpoints(ctx)
	require.NoError(t, err)
	require.Equal(t, []string{"http://127.0.0.1:1/metrics", "http://127.0.0.2:2/metrics"}, eps)
}

// Requests with op numbers the server does not know, which an
// authenticated peer may send at will, share one "unknown" op label:
// they do not make a set of series each.
func TestUnknownOpsShareOneSeries(t *testing.T) {
	ctx := t.Context()
	cl := newCluster(t, controller.Config{})
	conn, _, err := wire.Dial(ctx, cl.addr, &wirepb.Hello{Version: wire.Version, Name: "unknown-ops"}, wire.ConnConfig{})
	require.NoError(t, err)
	defer conn.Close()
	var ops []wire.Op
	for op := 120; op < 128; op++ { // within the observer's table
		ops = append(ops, wire.Op(op))
	}
	for op := 1000; op < 1200; op++ { // beyond it
		ops = append(ops, wire.Op(op))
	}
	for _, op := range ops {
		require.Error(t, conn.Do(ctx, op, &wirepb.Hello{}, nil, &wirepb.Hello{}, nil), "op %d", op)
	}
	// The server observes a request after its reply went out: the last
	// one may be counted a moment after its caller returned.
	require.Eventually(t, func() bool {
		return cl.value(t, "tq_request_duration_seconds", "server", "controller", "op", "unknown", "network", "tcp") == float64(len(ops)) &&
			cl.value(t, "tq_request_errors_total", "server", "controller", "op", "unknown") == float64(len(ops))
	}, 10*time.Second, time.Millisecond, "every unknown op counted under op=\"unknown\"")
	mfs, err := cl.reg.Gatherer().Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "op" {
					require.False(t, strings.HasPrefix(lp.GetValue(), "OP_"), "%s has a series for op %s", mf.GetName(), lp.GetValue())
				}
			}
		}
	}
}

// A unit's gauges show the bytes and sessions it holds in quarantine (a
// same-host session that ended without a goodbye, its client alive)
// while the quarantine lasts, and 0 once it ended.
func TestUnitQuarantineGauges(t *testing.T) {
	ucfg := storage.DefaultConfig()
	ucfg.Capacity = 16 << 20
	u, err := storage.NewUnit(1, ucfg)
	require.NoError(t, err)
	defer u.Close()
	us := storage.NewServer(u, storage.ServerConfig{Quarantine: time.Hour})
	sock := filepath.Join(t.TempDir(), "unit.sock")
	l, err := net.Listen("unix", sock)
	require.NoError(t, err)
	served := make(chan struct{})
	go func() { defer close(served); us.Serve(l) }()
	defer func() { <-served }()
	defer us.Close()
	cl := &cluster{reg: metrics.New(), unit: u}
	cl.reg.AddUnit(u, us)

	storagetest.Quarantine(t, u, "unix://"+sock, 64<<10)
	assert.Equal(t, float64(64<<10), cl.value(t, "tq_unit_quarantined_bytes", "unit", "1"), "quarantined bytes")
	assert.Equal(t, 1.0, cl.value(t, "tq_unit_quarantined_sessions", "unit", "1"), "quarantined sessions")

	require.NoError(t, us.Close()) // ends the quarantine
	assert.Zero(t, cl.value(t, "tq_unit_quarantined_bytes", "unit", "1"), "quarantined bytes after the quarantine")
	assert.Zero(t, cl.value(t, "tq_unit_quarantined_sessions", "unit", "1"), "quarantined sessions after the quarantine")
	lint, err := testutil.GatherAndLint(cl.reg.Gatherer())
	require.NoError(t, err)
	assert.Empty(t, lint, "metric names and help follow the Prometheus conventions")
}

// The global index gauges are the controller's, whatever partitions
// exist: once the last partition is cleared, its rows' indexes wait for
// reuse and tq_global_indexes says so (it read 0 allocated and 0 free
// with no partition left to ask).
func TestGlobalIndexesWithoutPartitions(t *testing.T) {
	ctx := t.Context()
	cl := newCluster(t, controller.Config{})
	c, err := client.Connect(ctx, cl.addr, client.ConnectConfig{})
	require.NoError(t, err)
	defer c.Close()

	const rows = 10
	col, err := engine.DenseOf(make([]int64, rows))
	require.NoError(t, err)
	_, err = c.PutNew(ctx, "train", engine.MustBatch(engine.Field{Name: "x", Col: col}))
	require.NoError(t, err)
	assert.Equal(t, float64(rows), cl.value(t, "tq_global_indexes", "state", "allocated"), "allocated, with the partition")
	assert.Equal(t, 0.0, cl.value(t, "tq_global_indexes", "state", "free"), "free, with the partition")

	require.NoError(t, c.ClearPartition(ctx, "train"))
	assert.Equal(t, 0.0, cl.value(t, "tq_partitions"), "partitions")
	assert.Equal(t, 0.0, cl.value(t, "tq_global_indexes", "state", "allocated"), "allocated, once cleared")
	assert.Equal(t, float64(rows), cl.value(t, "tq_global_indexes", "state", "free"), "free, once cleared")
}

// A storage unit that stopped heartbeating (a unit process that exited:
// its next run registers under a new id) leaves no tq_unit_draining
// series behind unless it was draining: ids are never reused and the
// controller lists dead units until its registry fills, so every restart
// of a unit would add a series for good. tq_units{state="gone"} counts
// them (dead, holding no cells).
func TestDeadUnitsLeaveNoDrainingSeries(t *testing.T) {
	ctrl, cl, join := unitsCluster(t)
	reg := cl.reg
	alive, stop := join()
	defer stop()
	var gone []engine.UnitID
	for range 3 { // a unit process that restarts three times
		id, stop := join()
		stop()
		gone = append(gone, id)
	}
	drained, stop := join()
	_, err := ctrl.DrainUnit(drained, true)
	require.NoError(t, err)
	stop()

	require.Eventually(t, func() bool {
		return cl.value(t, "tq_units", "state", "gone") == 4
	}, 10*time.Second, 10*time.Millisecond, "the stopped units are dead, holding no cells")
	assert.Equal(t, 0.0, cl.value(t, "tq_units", "state", "dead"), "dead units holding cells")
	name := func(id engine.UnitID) string { return strconv.FormatUint(uint64(id), 10) }
	assert.Equal(t, 0.0, cl.value(t, "tq_unit_draining", "unit", name(alive)), "the live unit")
	assert.Equal(t, 1.0, cl.value(t, "tq_unit_draining", "unit", name(drained)), "the dead unit that was draining")
	mfs, err := reg.Gatherer().Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != "tq_unit_draining" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				for _, id := range gone {
					assert.NotEqual(t, name(id), lp.GetValue(), "a series for dead unit %d", id)
				}
			}
		}
	}
}

// unitsCluster serves a controller that takes a unit for dead 300 ms
// after its last heartbeat, its metrics in cl; join makes a storage unit
// of 1 MiB that joins it and returns its id and what stops it.
func unitsCluster(t *testing.T) (ctrl *controller.Controller, cl *cluster, join func() (engine.UnitID, func())) {
	t.Helper()
	ctx := t.Context()
	reg := metrics.New()
	ctrl, err := controller.New(controller.Config{UnitTimeout: 300 * time.Millisecond})
	require.NoError(t, err)
	t.Cleanup(func() { ctrl.Close() })
	cs := controller.NewServer(ctrl, controller.ServerConfig{HeartbeatInterval: 20 * time.Millisecond})
	addr := "tcp://" + serve(t, cs.Serve, cs.Close)
	reg.AddController(ctrl, cs)
	join = func() (engine.UnitID, func()) {
		ucfg := storage.DefaultConfig()
		ucfg.Capacity = 1 << 20
		u, err := storage.NewUnit(0, ucfg)
		require.NoError(t, err)
		id, err := storage.AssignID(ctx, addr, u, storage.JoinConfig{})
		require.NoError(t, err)
		mem, err := storage.Join(ctx, addr, u, storage.JoinConfig{Addrs: []string{"tcp://127.0.0.1:1"}})
		require.NoError(t, err)
		return id, func() { mem.Close(); u.Close() }
	}
	return ctrl, &cluster{reg: reg}, join
}
