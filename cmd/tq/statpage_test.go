package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

const statTestToken = "stat-test-token"

// opCounter is a wire.Observer that counts the requests a server answered,
// by op.
type opCounter struct {
	mu  sync.Mutex
	ops map[wire.Op]int
}

func (o *opCounter) Observe(r wire.Served) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.ops == nil {
		o.ops = map[wire.Op]int{}
	}
	o.ops[r.Op]++
}

func (o *opCounter) counts() map[wire.Op]int {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := map[wire.Op]int{}
	for op, n := range o.ops {
		out[op] = n
	}
	return out
}

// startStatController serves an in-process controller (no storage units)
// holding the partitions rows names, each with that many rows, and
// returns its address.
func startStatController(t testing.TB, rows map[string]int, obs wire.Observer) string {
	t.Helper()
	ctrl, err := controller.New(controller.Config{})
	require.NoError(t, err)
	for name, n := range rows {
		_, err := ctrl.Insert(name, n, nil)
		require.NoError(t, err)
	}
	srv := controller.NewServer(ctrl, controller.ServerConfig{Token: statTestToken, Observer: obs})
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "c.sock"))
	require.NoError(t, err)
	served := make(chan struct{})
	go func() { srv.Serve(l); close(served) }()
	t.Cleanup(func() { srv.Close(); <-served; ctrl.Close() })
	return "unix://" + l.Addr().String()
}

// runStat runs tq stat in-process against addr.
func runStat(t *testing.T, addr string, args ...string) (string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	err := stat(t.Context(), append(append([]string{"--token", statTestToken}, args...), addr), &out, &errb)
	return out.String(), err
}

// tq stat of a controller with thousands of partitions takes a few round
// trips: STATS_PAGE pages, no STATS per partition. It used to ask STATS
// of each, one round trip at a time.
func TestStatTakesFewRoundTrips(t *testing.T) {
	const n = 5000
	rows := map[string]int{}
	for i := range n {
		rows[fmt.Sprintf("p-%05d", i)] = 1
	}
	var obs opCounter
	addr := startStatController(t, rows, &obs)
	out, err := runStat(t, addr)
	require.NoError(t, err)
	assert.Contains(t, out, fmt.Sprintf("%d partitions", n))
	ops := obs.counts()
	t.Logf("requests by op: %v", ops)
	assert.Zero(t, ops[wire.OpStats], "STATS per partition")
	assert.Equal(t, 2, ops[wire.OpStatsPage], "pages of 4096")
	total := 0
	for _, k := range ops {
		total += k
	}
	assert.LessOrEqual(t, total, 8, "requests in all: %v", ops)
}

// Against a controller that predates STATS_PAGE (it answers
// CODE_NOT_SUPPORTED), tq stat lists the partitions and asks STATS of
// each, as it did before.
func TestStatFallsBackToStatsPerPartition(t *testing.T) {
	srv := wire.NewServer(wire.ServerConfig{Hello: &wirepb.Hello{Role: "controller"}})
	srv.Handle(wire.OpPartitions, func(_ context.Context, _ *wire.Request, rw *wire.ReplyWriter) {
		rw.Reply(&wirepb.PartitionsReply{Partitions: []string{"a", "b"}}, nil, nil)
	})
	srv.Handle(wire.OpStats, func(_ context.Context, req *wire.Request, rw *wire.ReplyWriter) {
		var pr wirepb.PartitionRequest
		if err := req.Decode(&pr); err != nil {
			rw.Error(err)
			return
		}
		rw.Reply(&wirepb.PartitionStats{Partition: pr.Partition, Rows: int64(len(pr.Partition)) + 6}, nil, nil)
	})
	srv.Handle(wire.OpUnits, func(_ context.Context, _ *wire.Request, rw *wire.ReplyWriter) {
		rw.Reply(&wirepb.UnitsReply{}, nil, nil)
	})
	addr, m := dialFakeController(t, srv)
	s, err := takeSnapshot(t.Context(), m, addr, "")
	require.NoError(t, err)
	require.Len(t, s.parts, 2)
	assert.Equal(t, "a", s.parts[0].Partition)
	assert.Equal(t, 7, s.parts[0].Rows)
	assert.Equal(t, "b", s.parts[1].Partition)
}

// Every field of tq stat --json, decoded by its name, against the
// controller's state as STATS and UNITS give it and the units' own
// UNIT_STATS: a renamed, dropped or swapped field fails.
func TestStatJSONFieldsMatchTheController(t *testing.T) {
	s := startInProcess(t, "--name", "box-1")
	ctx := t.Context()
	c, err := client.Connect(ctx, s.local, client.ConnectConfig{WaitForUnits: true, Name: "stat-test"})
	require.NoError(t, err)
	defer c.Close()
	col, err := engine.DenseOf(make([]int64, 30))
	require.NoError(t, err)
	_, err = c.PutNew(ctx, "train", engine.MustBatch(engine.Field{Name: "x", Col: col}))
	require.NoError(t, err)
	_, err = c.Meta().Insert(ctx, "train", 4, []string{"x"}) // rows not produced yet
	require.NoError(t, err)
	_, err = c.GetMeta(ctx, client.MetaRequest{Partition: "train", Fields: []string{"x"}, BatchSize: 10, Task: "actor", Mode: client.Fetch})
	require.NoError(t, err)
	_, err = c.GetMeta(ctx, client.MetaRequest{Partition: "train", Fields: []string{"x"}, BatchSize: 3, Task: "critic", Mode: client.Fetch, Key: "held-fetch", Hold: true})
	require.NoError(t, err)
	kcol, err := engine.DenseOf([]float32{1, 2})
	require.NoError(t, err)
	_, err = c.PutKeys(ctx, "kv", []string{"k1", "k2"}, engine.MustBatch(engine.Field{Name: "v", Col: kcol}), nil)
	require.NoError(t, err)

	var out, errb bytes.Buffer
	require.NoError(t, stat(ctx, []string{"--json", s.local}, &out, &errb), errb.String())
	var got map[string]any
	require.NoError(t, json.Unmarshal(out.Bytes(), &got), out.String())

	m, err := client.DialMeta(ctx, s.local, client.RemoteConfig{Name: "stat-test"})
	require.NoError(t, err)
	defer m.Close()
	names, err := m.Partitions(ctx)
	require.NoError(t, err)
	require.Equal(t, []string{"kv", "train"}, names)
	var parts []any
	for _, name := range names {
		st, err := m.Stats(ctx, name)
		require.NoError(t, err)
		fields, tasks := []any{}, []any{}
		for _, f := range st.Fields {
			fields = append(fields, map[string]any{"name": f.Name, "dtype": f.DType.String(), "produced": float64(f.Produced)})
		}
		for _, tk := range st.Tasks {
			tasks = append(tasks, map[string]any{"task": tk.Task, "consumed": float64(tk.Consumed), "held": float64(tk.Held)})
		}
		parts = append(parts, map[string]any{
			"partition": st.Partition, "rows": float64(st.Rows), "reserved": float64(st.Reserved), "keys": float64(st.Keys),
			"produced": float64(st.Produced), "fields": fields, "tasks": tasks,
		})
	}
	units, err := m.Units(ctx)
	require.NoError(t, err)
	fresh := freshUnitStats(ctx, units, "")
	var us []any
	for _, u := range units {
		st, ok := fresh[u.ID]
		require.True(t, ok, "unit %d answered UNIT_STATS", u.ID)
		addrs := []any{}
		for _, a := range u.Addrs {
			addrs = append(addrs, a)
		}
		us = append(us, map[string]any{
			"id": float64(u.ID), "name": u.Name, "alive": u.Alive, "draining": u.Draining,
			"used_bytes": float64(st.Used), "capacity_bytes": float64(st.Capacity), "segments": float64(st.Segments),
			"addresses": addrs, "quarantined_bytes": float64(st.Quarantined), "quarantined_sessions": float64(st.QuarantinedSessions),
		})
	}
	ci, err := m.ClusterInfo(ctx)
	require.NoError(t, err)
	metrics := []any{}
	for _, e := range ci.Metrics {
		metrics = append(metrics, e)
	}
	cluster := map[string]any{"cluster_id": ci.ClusterId, "epoch": float64(ci.Epoch), "durable": ci.Durable, "log_bytes_since_snapshot": float64(ci.LogBytes)}
	if ci.Fsync != "" {
		cluster["fsync"] = ci.Fsync
	}
	want := map[string]any{
		"time": got["time"], "controller": s.local, "cluster": cluster, "metrics": metrics,
		"partitions": parts, "units": us,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("tq stat --json (-controller +json):\n%s", diff)
	}
	// The state is what the workload made, not zeros on both sides.
	train := parts[1].(map[string]any)
	assert.Equal(t, 34.0, train["rows"])
	assert.Equal(t, 30.0, train["produced"])
	assert.Equal(t, []any{
		map[string]any{"task": "actor", "consumed": 10.0, "held": 0.0},
		map[string]any{"task": "critic", "consumed": 3.0, "held": 3.0},
	}, train["tasks"])
	assert.Equal(t, 2.0, parts[0].(map[string]any)["keys"])
	tm, ok := got["time"].(string)
	require.True(t, ok, "time: %v", got["time"])
	_, err = time.Parse(time.RFC3339Nano, tm)
	assert.NoError(t, err, "time")
}

// BenchmarkStatPartitions: the partitions' stats of a controller holding
// 5000, as tq stat takes them (STATS_PAGE) and as it did (PARTITIONS,
// then STATS per partition), over a unix socket.
func BenchmarkStatPartitions(b *testing.B) {
	const n = 5000
	rows := map[string]int{}
	for i := range n {
		rows[fmt.Sprintf("p-%05d", i)] = 1
	}
	addr := startStatController(b, rows, nil)
	m, err := client.DialMeta(b.Context(), addr, client.RemoteConfig{Token: statTestToken})
	require.NoError(b, err)
	defer m.Close()
	b.Run(fmt.Sprintf("partitions=%d/way=page", n), func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			all, err := m.AllStats(b.Context())
			if err != nil || len(all) != n {
				b.Fatal(len(all), err)
			}
		}
	})
	b.Run(fmt.Sprintf("partitions=%d/way=each", n), func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			names, err := m.Partitions(b.Context())
			if err != nil {
				b.Fatal(err)
			}
			for _, p := range names {
				if _, err := m.Stats(b.Context(), p); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
}

// dialFakeController serves srv, a stand-in controller, on a unix socket
// and dials it (a lost call is not repeated); both close at the test's
// end.
func dialFakeController(t *testing.T, srv *wire.Server) (string, *client.RemoteMeta) {
	t.Helper()
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "c.sock"))
	require.NoError(t, err)
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	addr := "unix://" + l.Addr().String()
	m, err := client.DialMeta(t.Context(), addr, client.RemoteConfig{RetryFor: time.Millisecond})
	require.NoError(t, err)
	t.Cleanup(func() { m.Close() })
	return addr, m
}
