package metrics_test

import (
	"bytes"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/kvapi"
	"github.com/tqgo/tq/metrics"
	"github.com/tqgo/tq/wire"
)

// BenchmarkKVMetrics is the small-value KV path (a 1 KiB put of one key,
// then a get of it, over TCP loopback to an in-process controller and
// unit) with metrics off and on, side by side in one run: two clusters,
// one reporting to a registry, and each iteration does one put+get on
// each, alternating, so that the load of a shared machine hits both
// alike. It reports each one's time per put+get (off-ns/op, on-ns/op:
// the median of the iterations) and their ratio (on/off).
//
//	go test -run '^$' -bench KVMetrics -benchtime 5000x -count 5 ./metrics
func BenchmarkKVMetrics(b *testing.B) {
	ctx := b.Context()
	val := bytes.Repeat([]byte{7}, 1<<10)
	batch := engine.MustBatch(engine.Field{Name: "v", Col: engine.BytesOf([][]byte{val})})
	keys := []string{"k"}
	kvOf := func(reg *metrics.Registry) *kvapi.KV {
		cl := startCluster(b, controller.Config{}, reg)
		c, err := client.Connect(ctx, cl.addr, client.ConnectConfig{})
		require.NoError(b, err)
		b.Cleanup(func() { c.Close() })
		return kvapi.New(c)
	}
	kvs := []*kvapi.KV{kvOf(nil), kvOf(metrics.New())}
	op := func(kv *kvapi.KV) time.Duration {
		start := time.Now()
		if _, err := kv.BatchPut(ctx, "p", keys, batch, nil); err != nil {
			b.Fatal(err)
		}
		got, err := kv.BatchGetCopy(ctx, "p", keys)
		if err != nil {
			b.Fatal(err)
		}
		got.Release()
		return time.Since(start)
	}
	var times [2][]time.Duration
	i := 0
	for b.Loop() {
		// Alternate which goes first, too.
		first := i % 2
		times[first] = append(times[first], op(kvs[first]))
		times[1-first] = append(times[1-first], op(kvs[1-first]))
		i++
	}
	med := func(d []time.Duration) float64 {
		slices.Sort(d)
		return float64(d[len(d)/2])
	}
	off, on := med(times[0]), med(times[1])
	b.ReportMetric(off, "off-ns/op")
	b.ReportMetric(on, "on-ns/op")
	b.ReportMetric(on/off, "on/off")
}

// BenchmarkObserve is the observer's cost per request, alone.
func BenchmarkObserve(b *testing.B) {
	o := metrics.New().Observer(metrics.RoleUnit)
	s := wire.Served{Op: wire.OpRead, Network: "unix", Duration: 40 * time.Microsecond, In: 100, Out: 4096}
	b.ReportAllocs()
	for b.Loop() {
		o.Observe(s)
	}
}
