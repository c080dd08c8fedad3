package metrics_test

import (
	"bytes"
	"context"
	"fmt"
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

// BenchmarkMetricsOnOff measures what counting every request costs the
// hot paths, side by side in one run: two in-process clusters (a
// controller and a unit over TCP loopback), one reporting to a registry,
// and each iteration runs the operation once on each, alternating which
// goes first, so that the load of a shared machine hits both alike. It
// reports each one's median time per operation (off-ns/op, on-ns/op) and
// their ratio (on/off).
//
//   - op=kv: a 1 KiB KV put of one key, then a get of it (the small-value
//     path: every request is a small one, so the observer's share is the
//     largest);
//
//   - op=batch: a batch of 64 rows of 9 float32 fields of 4 KiB each
//     (2.25 MiB) put, fetched for a task, read and cleared (the reference
//     flow's shape at 1/128 of its small workload);
//
//   - op=batch/small: the same flow on the small workload itself (1024
//     rows × 9 fields × 32 KiB, 288 MiB).
//
//     go test -run '^$' -bench MetricsOnOff -benchtime 2000x -count 5 ./metrics
//     go test -run '^$' -bench 'MetricsOnOff/op=batch/small' -benchtime 20x -count 5 ./metrics
func BenchmarkMetricsOnOff(b *testing.B) {
	b.Run("op=kv/value=1KiB", func(b *testing.B) {
		val := bytes.Repeat([]byte{7}, 1<<10)
		batch := engine.MustBatch(engine.Field{Name: "v", Col: engine.BytesOf([][]byte{val})})
		keys := []string{"k"}
		sideBySide(b, 16<<20, func(ctx context.Context, c *client.Client, _ int) error {
			kv := kvapi.New(c)
			if _, err := kv.BatchPut(ctx, "p", keys, batch, nil); err != nil {
				return err
			}
			got, err := kv.BatchGetCopy(ctx, "p", keys)
			if err != nil {
				return err
			}
			got.Release()
			return nil
		})
	})
	b.Run("op=batch/rows=64/fields=9/row=4KiB", func(b *testing.B) {
		batchFlow(b, 64, 1024, 64<<20)
	})
	// The small workload itself (bench.Small, simple case: 1024 rows of 9
	// float32 fields of 32 KiB, 288 MiB).
	b.Run("op=batch/small", func(b *testing.B) {
		batchFlow(b, 1024, 8192, 400<<20)
	})
}

// batchFlow puts rows of 9 float32 fields of dim values, fetches them for
// a task, reads them and clears the partition, side by side.
func batchFlow(b *testing.B, rows, dim int, capacity int64) {
	{
		const fields = 9
		var fs []engine.Field
		var names []string
		for f := range fields {
			col, err := engine.DenseOf(make([]float32, rows*dim), dim)
			require.NoError(b, err)
			name := fmt.Sprintf("f%d", f)
			fs = append(fs, engine.Field{Name: name, Col: col})
			names = append(names, name)
		}
		batch := engine.MustBatch(fs...)
		sideBySide(b, capacity, func(ctx context.Context, c *client.Client, i int) error {
			p := fmt.Sprintf("p%d", i)
			if _, err := c.PutNew(ctx, p, batch); err != nil {
				return err
			}
			m, err := c.GetMeta(ctx, client.MetaRequest{Partition: p, Fields: names, BatchSize: rows, Task: "train", Mode: client.Fetch})
			if err != nil {
				return err
			}
			got, err := c.GetCopy(ctx, m)
			if err != nil {
				return err
			}
			got.Release()
			return c.ClearPartition(ctx, p)
		})
	}
}

// sideBySide runs op alternately on a cluster without metrics and one
// with, once each per iteration, and reports their median times.
func sideBySide(b *testing.B, capacity int64, op func(ctx context.Context, c *client.Client, i int) error) {
	ctx := b.Context()
	connect := func(reg *metrics.Registry) *client.Client {
		cl := startCluster(b, controller.Config{}, reg, capacity)
		c, err := client.Connect(ctx, cl.addr, client.ConnectConfig{})
		require.NoError(b, err)
		b.Cleanup(func() { c.Close() })
		return c
	}
	cs := []*client.Client{connect(nil), connect(metrics.New())}
	var times [2][]time.Duration
	i := 0
	for b.Loop() {
		for k := range 2 {
			which := (i + k) % 2
			start := time.Now()
			if err := op(ctx, cs[which], i); err != nil {
				b.Fatal(err)
			}
			times[which] = append(times[which], time.Since(start))
		}
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
