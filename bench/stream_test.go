package bench

// The streaming loader against the loop it replaces, through a server
// process (a controller over TCP, a storage unit reached over shared
// memory, as a trainer on the unit's host reads):
//
//   - BenchmarkStreamLoader: consuming a partition of 1024 rows in
//     micro-batches of 64 with stream.Loader (no prefetch, and prefetch
//     2) and with the hand-written loop (GetMeta, Get, Release until the
//     partition is drained). The loader's overhead is the difference;
//     impl=paired runs both in turn in every iteration and reports the
//     ratio (loader/manual), which a busy shared machine disturbs less.
//   - BenchmarkStreamTrainer: a simulated trainer that computes for a
//     fixed time per micro-batch (a sleep: the accelerator works, the CPU
//     waits), with and without prefetch; ns/step is the step time,
//     wait-ns/step the part of it the loop waited for its next
//     micro-batch, and baseline the compute alone. (On a machine with
//     few cores the prefetcher's CPU work can delay the sleeping loop's
//     wake-ups: wait-ns/step shows what prefetch hides.)
//
//	go test -run '^$' -bench 'Stream' -count 6 ./bench | tee new.txt
//	benchstat new.txt

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/stream"
)

const (
	streamRows  = 1024
	streamMicro = 64
	streamWidth = 512 // int32 tokens per row: 2 KiB
)

// streamParts numbers the benchmarks' partitions: -count runs each
// sub-benchmark again against the same server process.
var streamParts atomic.Int64

// streamSetup fills a fresh partition of streamRows rows of a 2 KiB
// "tokens" field, marks it done, and returns its name; it is cleared when
// the benchmark ends.
func streamSetup(b *testing.B, c *client.Client, name string) string {
	b.Helper()
	ctx := context.Background()
	part := fmt.Sprintf("%s_%d", name, streamParts.Add(1))
	b.Cleanup(func() { c.ClearPartition(context.Background(), part) })
	toks := make([]int32, streamRows*streamWidth)
	for i := range toks {
		toks[i] = int32(i)
	}
	col, err := engine.DenseOf(toks, streamWidth)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := c.PutNew(ctx, part, engine.MustBatch(engine.Field{Name: "tokens", Col: col})); err != nil {
		b.Fatal(err)
	}
	if err := c.MarkDone(ctx, part); err != nil {
		b.Fatal(err)
	}
	return part
}

// touch reads every 1024th byte of a micro-batch, as a trainer's copy to
// its device would start to.
func touch(d *engine.Batch) (sum byte) {
	data := d.Col("tokens").Data()
	for i := 0; i < len(data); i += 1024 {
		sum += data[i]
	}
	return sum
}

func streamClient(b *testing.B) *client.Client {
	b.Helper()
	srv := startBenchServer(b)
	c, err := connectOwned(b, srv.ctrl, client.TransportAuto, 1)
	if err != nil {
		b.Fatal(err)
	}
	return c
}

// drainLoader consumes part with a loader; compute runs per micro-batch.
func drainLoader(b *testing.B, c *client.Client, part string, prefetch int, compute func(*engine.Batch)) int {
	cfg := stream.DefaultConfig()
	cfg.Partitions, cfg.Task, cfg.Fields, cfg.MicroBatchSize = []string{part}, "train", []string{"tokens"}, streamMicro
	cfg.Sampler, cfg.Prefetch = engine.SamplerSpec{Name: engine.SamplerSequential}, prefetch
	l, err := stream.New(c, cfg)
	if err != nil {
		b.Fatal(err)
	}
	steps := 0
	for mb, err := range l.All(context.Background()) {
		if err != nil {
			b.Fatal(err)
		}
		compute(mb.Data)
		steps++
	}
	return steps
}

// drainManual consumes part with the hand-written loop.
func drainManual(b *testing.B, c *client.Client, part string, compute func(*engine.Batch)) int {
	ctx := context.Background()
	steps := 0
	for {
		m, err := c.GetMeta(ctx, client.MetaRequest{Partition: part, Task: "train", Fields: []string{"tokens"},
			BatchSize: streamMicro, Sampler: engine.SamplerSpec{Name: engine.SamplerSequential}})
		if errors.Is(err, engine.ErrDone) || (err == nil && m.Empty()) {
			return steps
		}
		if err != nil {
			b.Fatal(err)
		}
		d, err := c.Get(ctx, m)
		if err != nil {
			b.Fatal(err)
		}
		compute(d)
		d.Release()
		steps++
	}
}

func BenchmarkStreamLoader(b *testing.B) {
	c := streamClient(b)
	var sink byte
	compute := func(d *engine.Batch) { sink += touch(d) }
	for _, impl := range []struct {
		name  string
		drain func(b *testing.B, part string) int
	}{
		{"manual", func(b *testing.B, part string) int { return drainManual(b, c, part, compute) }},
		{"loader/prefetch=0", func(b *testing.B, part string) int { return drainLoader(b, c, part, 0, compute) }},
		{"loader/prefetch=2", func(b *testing.B, part string) int { return drainLoader(b, c, part, 2, compute) }},
	} {
		b.Run("impl="+impl.name, func(b *testing.B) {
			part := streamSetup(b, c, "loader")
			ctx := context.Background()
			b.SetBytes(streamRows * streamWidth * 4)
			b.ReportAllocs()
			for b.Loop() {
				if steps := impl.drain(b, part); steps != streamRows/streamMicro {
					b.Fatalf("%d micro-batches, want %d", steps, streamRows/streamMicro)
				}
				b.StopTimer()
				if err := c.ResetConsumption(ctx, part, "train"); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*streamRows), "ns/row")
		})
	}
	// Paired: the manual loop and the loader take turns on two
	// partitions in every iteration, so a load that comes and goes on a
	// shared machine hits both alike; loader/manual is the ratio of their
	// times.
	b.Run("impl=paired", func(b *testing.B) {
		pm, pl := streamSetup(b, c, "paired_manual"), streamSetup(b, c, "paired_loader")
		ctx := context.Background()
		var tm, tl time.Duration
		for b.Loop() {
			start := time.Now()
			drainManual(b, c, pm, compute)
			mid := time.Now()
			drainLoader(b, c, pl, 0, compute)
			tm, tl = tm+mid.Sub(start), tl+time.Since(mid)
			b.StopTimer()
			if err := errors.Join(c.ResetConsumption(ctx, pm, "train"), c.ResetConsumption(ctx, pl, "train")); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
		b.ReportMetric(float64(tm.Nanoseconds())/float64(b.N*streamRows), "manual-ns/row")
		b.ReportMetric(float64(tl.Nanoseconds())/float64(b.N*streamRows), "loader-ns/row")
		b.ReportMetric(float64(tl)/float64(tm), "loader/manual")
	})
	_ = sink
}

func BenchmarkStreamTrainer(b *testing.B) {
	c := streamClient(b)
	for _, compute := range []time.Duration{500 * time.Microsecond, 2 * time.Millisecond} {
		// The floor: the compute alone (a sleep overshoots its duration).
		b.Run(fmt.Sprintf("compute=%v/baseline", compute), func(b *testing.B) {
			steps := 0
			for b.Loop() {
				for range streamRows / streamMicro {
					time.Sleep(compute)
					steps++
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(steps), "ns/step")
		})
		for _, prefetch := range []int{0, 2} {
			b.Run(fmt.Sprintf("compute=%v/prefetch=%d", compute, prefetch), func(b *testing.B) {
				part := streamSetup(b, c, "trainer")
				ctx := context.Background()
				var (
					sink   byte
					waited time.Duration // the loop waiting for its next micro-batch
					last   time.Time
				)
				step := func(d *engine.Batch) {
					waited += time.Since(last)
					sink += touch(d)
					time.Sleep(compute)
					last = time.Now()
				}
				steps := 0
				for b.Loop() {
					last = time.Now()
					steps += drainLoader(b, c, part, prefetch, step)
					b.StopTimer()
					if err := c.ResetConsumption(ctx, part, "train"); err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(steps), "ns/step")
				b.ReportMetric(float64(waited.Nanoseconds())/float64(steps), "wait-ns/step")
				_ = sink
			})
		}
	}
}
