package bench

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/tqgo/tq/embedded"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/kvapi"
)

// workload is a batch of float32 fields, the reference's simple case.
type workload struct {
	name   string
	batch  int // rows
	fields int
	seq    int // float32 values per row per field
}

// small is the reference "small" workload: 1024 × 9 fields × 8192 float32
// = 288 MiB.
var small = workload{"small", 1024, 9, 8192}

func (w workload) bytes() int64 { return int64(w.batch) * int64(w.fields) * int64(w.seq) * 4 }

func (w workload) make(tb testing.TB) (*engine.Batch, []string) {
	tb.Helper()
	fs := make([]engine.Field, w.fields)
	for f := range fs {
		vals := make([]float32, w.batch*w.seq)
		for i := range vals {
			vals[i] = float32(i%4093) * float32(f+1)
		}
		c, err := engine.DenseOf(vals, w.seq)
		if err != nil {
			tb.Fatal(err)
		}
		fs[f] = engine.Field{Name: fmt.Sprintf("field_%02d", f), Col: c}
	}
	keys := make([]string, w.batch)
	for i := range keys {
		keys[i] = fmt.Sprintf("test_key_%d", i)
	}
	return engine.MustBatch(fs...), keys
}

func newEmbedded(tb testing.TB, capacity int64) *embedded.Cluster {
	tb.Helper()
	cfg := embedded.DefaultConfig()
	cfg.Storage.Capacity = capacity
	e, err := embedded.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { e.Close() })
	return e
}

// copier is the baseline: copy() of the batch's bytes into a pre-faulted
// destination, column by column.
type copier struct{ dst []byte }

func newCopier(n int64) *copier {
	c := &copier{dst: make([]byte, n)}
	for i := 0; i < len(c.dst); i += 4096 {
		c.dst[i] = 1
	}
	return c
}

func (c *copier) run(b *engine.Batch) time.Duration {
	t0 := time.Now()
	at := 0
	for _, f := range b.Fields() {
		at += copy(c.dst[at:], f.Col.Data())
	}
	return time.Since(t0)
}

// side records an operation's time and its copy() baseline's time over
// the iterations, and reports both bandwidths and their ratio.
type side struct {
	op, base time.Duration
	n        int
}

func (s *side) report(b *testing.B, bytes int64, name string) {
	gbps := func(d time.Duration) float64 { return float64(bytes) * float64(s.n) / d.Seconds() / 1e9 }
	b.ReportMetric(gbps(s.op), name+"_GB/s")
	b.ReportMetric(gbps(s.base), "copy_GB/s")
	b.ReportMetric(s.base.Seconds()/s.op.Seconds(), name+"/copy")
}

// BenchmarkInProcess runs the reference flow (batch put, list, batch get,
// clear) through the KV API in one process and times put and get next to
// a copy() of the same bytes in the same iteration.
//
// Targets: put ≥ 0.8× copy (one copy in); get as views ≥ 10× copy (no
// copy at all).
func BenchmarkInProcess(b *testing.B) {
	w := small
	batch, keys := w.make(b)
	ctx := context.Background()
	for _, op := range []string{"put", "get_view", "get_copy"} {
		b.Run(fmt.Sprintf("workload=%s/op=%s", w.name, op), func(b *testing.B) {
			e := newEmbedded(b, 1<<30)
			kv := kvapi.New(e.Client)
			cp := newCopier(w.bytes())
			// Warm up: map and fault the segments once.
			if _, err := kv.BatchPut(ctx, "train_0", keys, batch, nil); err != nil {
				b.Fatal(err)
			}
			if op == "put" {
				if err := kv.Clear(ctx, "train_0", keys); err != nil {
					b.Fatal(err)
				}
			}
			var s side
			b.SetBytes(w.bytes())
			b.ReportAllocs()
			for b.Loop() {
				switch op {
				case "put":
					t0 := time.Now()
					if _, err := kv.BatchPut(ctx, "train_0", keys, batch, nil); err != nil {
						b.Fatal(err)
					}
					s.op += time.Since(t0)
					if _, err := kv.List(ctx, "train_0"); err != nil {
						b.Fatal(err)
					}
					if err := kv.Clear(ctx, "train_0", keys); err != nil {
						b.Fatal(err)
					}
				case "get_view":
					t0 := time.Now()
					v, err := kv.BatchGetView(ctx, "train_0", keys)
					if err != nil {
						b.Fatal(err)
					}
					s.op += time.Since(t0)
					if v.Rows() != w.batch || v.NumFields() != w.fields {
						b.Fatalf("view of %d rows × %d fields", v.Rows(), v.NumFields())
					}
					v.Release()
				case "get_copy":
					t0 := time.Now()
					got, err := kv.BatchGetCopy(ctx, "train_0", keys)
					if err != nil {
						b.Fatal(err)
					}
					s.op += time.Since(t0)
					if got.Rows() != w.batch {
						b.Fatalf("got %d rows", got.Rows())
					}
				}
				s.base += cp.run(batch)
				s.n++
			}
			s.report(b, w.bytes(), op)
		})
	}
}

// BenchmarkFieldCount puts and gets the same bytes as 1 field and as 32
// fields: many fields must cost no more per byte than one (target ≥ 0.9×).
func BenchmarkFieldCount(b *testing.B) {
	const rows = 1024
	const total = 9 * 8192 // float32 values per row, as in "small"
	ctx := context.Background()
	for _, fields := range []int{1, 32} {
		w := workload{fmt.Sprintf("fields%d", fields), rows, fields, total / fields}
		batch, keys := w.make(b)
		b.Run(fmt.Sprintf("fields=%d", fields), func(b *testing.B) {
			e := newEmbedded(b, 1<<30)
			kv := kvapi.New(e.Client)
			cp := newCopier(w.bytes())
			if _, err := kv.BatchPut(ctx, "p", keys, batch, nil); err != nil {
				b.Fatal(err)
			}
			if err := kv.Clear(ctx, "p", keys); err != nil {
				b.Fatal(err)
			}
			var put, get side
			b.SetBytes(w.bytes())
			for b.Loop() {
				t0 := time.Now()
				if _, err := kv.BatchPut(ctx, "p", keys, batch, nil); err != nil {
					b.Fatal(err)
				}
				put.op += time.Since(t0)
				t0 = time.Now()
				v, err := kv.BatchGetView(ctx, "p", keys)
				if err != nil {
					b.Fatal(err)
				}
				get.op += time.Since(t0)
				v.Release()
				if err := kv.Clear(ctx, "p", keys); err != nil {
					b.Fatal(err)
				}
				d := cp.run(batch)
				put.base += d
				get.base += d
				put.n++
				get.n++
			}
			put.report(b, w.bytes(), "put")
			b.ReportMetric(float64(w.bytes())*float64(get.n)/get.op.Seconds()/1e9, "get_view_GB/s")
		})
	}
}
