package stream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/controller/sampler"
	"github.com/tqgo/tq/embedded"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/storage"
	"github.com/tqgo/tq/transport/shm"
	"github.com/tqgo/tq/wire"
)

func cluster(t *testing.T) *embedded.Cluster {
	t.Helper()
	e, err := embedded.New(embedded.DefaultConfig())
	require.NoError(t, err)
	t.Cleanup(func() { e.Close() })
	return e
}

// produce writes rows lo..lo+n-1 of partition: an int64 "x" equal to the
// row number and a "total_lengths" tag of length(row).
func produce(t *testing.T, c *client.Client, partition string, lo, n int, length func(int) int) {
	t.Helper()
	ctx := context.Background()
	xs := make([]int64, n)
	for i := range xs {
		xs[i] = int64(lo + i)
	}
	col, err := engine.DenseOf(xs, 1)
	require.NoError(t, err)
	m, err := c.PutNew(ctx, partition, engine.MustBatch(engine.Field{Name: "x", Col: col}))
	require.NoError(t, err)
	if length != nil {
		tags := make([]engine.Tags, n)
		for i := range tags {
			tags[i] = engine.Tags{"total_lengths": length(lo + i)}
		}
		require.NoError(t, m.MergeTags(tags))
		require.NoError(t, c.SetTags(ctx, m))
	}
}

// values reads the "x" column of a micro-batch.
func values(t *testing.T, b *Batch) []int64 {
	t.Helper()
	col := b.Data.Col("x")
	require.NotNil(t, col)
	xs, err := engine.Values[int64](col)
	require.NoError(t, err)
	return slices.Clone(xs)
}

func collect(t *testing.T, ctx context.Context, l *Loader) (batches [][]int64) {
	t.Helper()
	for b, err := range l.All(ctx) {
		require.NoError(t, err)
		batches = append(batches, values(t, b))
	}
	return batches
}

func flat(bs [][]int64) []int64 { return slices.Concat(bs...) }

func upTo(n int) []int64 {
	out := make([]int64, n)
	for i := range out {
		out[i] = int64(i)
	}
	return out
}

func config(parts ...string) Config {
	cfg := DefaultConfig()
	cfg.Partitions, cfg.Task, cfg.Fields, cfg.MicroBatchSize = parts, "train", []string{"x"}, 4
	return cfg
}

func TestFiniteEndsWithShortLastBatch(t *testing.T) {
	for _, prefetch := range []int{0, 1, 3} {
		for _, smp := range []string{engine.SamplerRankAware, engine.SamplerSequential} {
			t.Run(smp, func(t *testing.T) {
				e := cluster(t)
				produce(t, e.Client, "p", 0, 10, nil)
				require.NoError(t, e.Client.MarkDone(context.Background(), "p"))
				cfg := config("p")
				cfg.Prefetch, cfg.Sampler = prefetch, engine.SamplerSpec{Name: smp}
				l, err := New(e.Client, cfg)
				require.NoError(t, err)
				got := collect(t, context.Background(), l)
				require.Equal(t, [][]int64{{0, 1, 2, 3}, {4, 5, 6, 7}, {8, 9}}, got, "prefetch %d", prefetch)
				require.Equal(t, Position{Step: 1}, l.Next(), "past the last partition")
			})
		}
	}
}

func TestStepsThroughPartitions(t *testing.T) {
	e := cluster(t)
	ctx := context.Background()
	l, err := New(e.Client, config("s0", "s1", "s2"))
	require.NoError(t, err)
	done := make(chan [][]int64)
	go func() { done <- collect(t, ctx, l) }()
	for s, part := range []string{"s0", "s1", "s2"} {
		produce(t, e.Client, part, 100*s, 8, nil)
		require.NoError(t, e.Client.MarkDone(ctx, part))
	}
	select {
	case got := <-done:
		require.Equal(t, [][]int64{{0, 1, 2, 3}, {4, 5, 6, 7}, {100, 101, 102, 103}, {104, 105, 106, 107},
			{200, 201, 202, 203}, {204, 205, 206, 207}}, got)
	case <-time.After(20 * time.Second):
		t.Fatal("the loader did not finish")
	}
}

func TestContinuousFollowsTheProducer(t *testing.T) {
	e := cluster(t)
	cfg := config("p")
	cfg.Continuous = true
	l, err := New(e.Client, cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var got []int64
	produce(t, e.Client, "p", 0, 8, nil)
	produced := 8
	for b, err := range l.All(ctx) {
		require.NoError(t, err)
		got = append(got, values(t, b)...)
		if len(got) == produced && produced < 40 {
			produce(t, e.Client, "p", produced, 8, nil)
			produced += 8
			if produced == 24 {
				// Done marks no end in continuous mode.
				require.NoError(t, e.Client.MarkDone(ctx, "p"))
			}
		}
		if len(got) == 40 {
			break
		}
	}
	require.Equal(t, upTo(40), got)
}

func TestContinuousWaitsForTheFirstRows(t *testing.T) {
	e := cluster(t)
	cfg := config("p")
	cfg.Continuous = true
	l, err := New(e.Client, cfg)
	require.NoError(t, err)
	go func() {
		time.Sleep(50 * time.Millisecond)
		produce(t, e.Client, "p", 0, 4, nil)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for b, err := range l.All(ctx) {
		require.NoError(t, err)
		require.Equal(t, upTo(4), values(t, b))
		break
	}
}

// A rank that breaks out early loses nothing: private fetches it never
// yielded go back to the task; a shared sampler keeps them for the
// group's batch index, and the rank restarts at Next.
func TestBreakLosesNothing(t *testing.T) {
	for _, smp := range []string{engine.SamplerSequential, engine.SamplerRankAware} {
		t.Run(smp, func(t *testing.T) {
			e := cluster(t)
			ctx := context.Background()
			produce(t, e.Client, "p", 0, 64, nil)
			require.NoError(t, e.Client.MarkDone(ctx, "p"))
			cfg := config("p")
			cfg.Sampler, cfg.Prefetch = engine.SamplerSpec{Name: smp}, 4
			l, err := New(e.Client, cfg)
			require.NoError(t, err)
			var got []int64
			for b, err := range l.All(ctx) {
				require.NoError(t, err)
				got = append(got, values(t, b)...)
				if len(got) == 8 {
					// Let the prefetcher fill its slots.
					time.Sleep(50 * time.Millisecond)
					break
				}
			}
			next := l.Next()
			require.Equal(t, Position{Index: 2}, Position{Step: next.Step, Index: next.Index})
			require.NotZero(t, next.Gen, "the generation of the partition it read")
			// Restart: a new loader at Next, as a restarted process would.
			cfg.Start = l.Next()
			again, err := New(e.Client, cfg)
			require.NoError(t, err)
			got = append(got, flat(collect(t, ctx, again))...)
			require.Equal(t, upTo(64), got, "every row once, in order")
		})
	}
}

func TestCancelStopsThePrefetcher(t *testing.T) {
	e := cluster(t)
	produce(t, e.Client, "p", 0, 8, nil)
	cfg := config("p")
	cfg.Sampler, cfg.Prefetch = engine.SamplerSpec{Name: engine.SamplerSequential}, 2
	l, err := New(e.Client, cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n := 0
	var last error
	for b, err := range l.All(ctx) {
		if err != nil {
			last = err
			break
		}
		n += b.Data.Rows()
		if n == 8 {
			cancel() // the prefetcher is blocked waiting for rows
		}
	}
	require.ErrorIs(t, last, context.Canceled)
	// Nothing was taken after the cancel: a new consumer finds no rows.
	st, err := e.Client.ConsumptionStatus(context.Background(), "p", "train")
	require.NoError(t, err)
	consumed := 0
	for _, c := range st.Consumed {
		if c {
			consumed++
		}
	}
	require.Equal(t, 8, consumed)
}

// Two DP groups of two ranks each: ranks of a group see identical
// micro-batches, groups disjoint ones, every row reaches one group.
func TestGroups(t *testing.T) {
	for _, smp := range []engine.SamplerSpec{{Name: engine.SamplerRankAware}, {Name: engine.SamplerSeqlenBalanced}} {
		t.Run(smp.Name, func(t *testing.T) {
			e := cluster(t)
			ctx := context.Background()
			produce(t, e.Client, "p", 0, 64, func(i int) int { return 1 + i%7*10 })
			require.NoError(t, e.Client.MarkDone(ctx, "p"))
			got := make([][][]int64, 4)
			var wg sync.WaitGroup
			for r := range 4 {
				cfg := config("p")
				cfg.DPRank, cfg.DPSize, cfg.Sampler = r/2, 2, smp
				l, err := New(e.Client, cfg)
				require.NoError(t, err)
				wg.Go(func() { got[r] = collect(t, ctx, l) })
			}
			wg.Wait()
			require.Equal(t, got[0], got[1], "ranks of group 0")
			require.Equal(t, got[2], got[3], "ranks of group 1")
			all := append(flat(got[0]), flat(got[2])...)
			slices.Sort(all)
			require.Equal(t, upTo(64), all, "every row to exactly one group")
		})
	}
}

func TestTokenBudget(t *testing.T) {
	e := cluster(t)
	ctx := context.Background()
	length := func(i int) int { return 10 + i%4*10 } // 10, 20, 30, 40
	produce(t, e.Client, "p", 0, 32, length)
	require.NoError(t, e.Client.MarkDone(ctx, "p"))
	cfg := config("p")
	cfg.MicroBatchSize, cfg.TokenBudget, cfg.Sampler = 0, 100, engine.SamplerSpec{Name: engine.SamplerTokenBudget}
	l, err := New(e.Client, cfg)
	require.NoError(t, err)
	var all []int64
	for _, b := range collect(t, ctx, l) {
		sum := 0
		for _, x := range b {
			sum += length(int(x))
		}
		assert.LessOrEqual(t, sum, 100, "micro-batch %v", b)
		all = append(all, b...)
	}
	require.Equal(t, upTo(32), all)
}

func TestBadConfig(t *testing.T) {
	e := cluster(t)
	for _, tc := range []struct {
		mod  func(*Config)
		want string
	}{
		{func(c *Config) { c.Partitions = nil }, "no partitions"},
		{func(c *Config) { c.Partitions = []string{"a", ""} }, "empty partition name"},
		{func(c *Config) { c.Task = "" }, "no task"},
		{func(c *Config) { c.Fields = nil }, "no fields"},
		{func(c *Config) { c.MicroBatchSize = 0 }, "micro-batch size 0 without a token budget"},
		{func(c *Config) { c.MicroBatchSize = -1 }, "micro-batch size -1"},
		{func(c *Config) { c.DPSize = 0 }, "dp size 0"},
		{func(c *Config) { c.DPRank = 2; c.DPSize = 2 }, "dp rank 2 out of range [0, 2)"},
		{func(c *Config) { c.Prefetch = -1 }, "prefetch depth -1"},
		{func(c *Config) { c.Start.Index = -1 }, "start position"},
		{func(c *Config) { c.Start = Position{Step: 1, Gen: 3, GenOf: "p"} }, "start position {Step:1 Index:0 Gen:3 GenOf:p Cluster:} names a generation past the 1 partitions"},
		{func(c *Config) { c.Start.Cluster = "c1" }, "start position {Step:0 Index:0 Gen:0 GenOf: Cluster:c1} names a cluster without a generation"},
		{func(c *Config) { c.Start.GenOf = "p" }, "start position {Step:0 Index:0 Gen:0 GenOf:p Cluster:} names the partition of a generation without one"},
		{func(c *Config) { c.Start = Position{Gen: 3, GenOf: "q"} }, `step 0 is partition "p", but generation 3 is of partition "q"`},
		{func(c *Config) { c.Sampler.Name = "random" }, `sampler "random" is not a built-in one`},
		{func(c *Config) { c.TokenBudget = 10 }, "a token budget needs the token_budget sampler"},
		{func(c *Config) { c.Sampler.Name = engine.SamplerTokenBudget }, "needs a token budget"},
		{func(c *Config) { c.DPSize = 2; c.Sampler.Name = engine.SamplerSequential }, "hands each fetch to one rank"},
		{func(c *Config) {
			c.DPSize = 2
			c.Sampler = engine.SamplerSpec{Name: engine.SamplerSeqlenBalanced, DPSize: 3}
		}, "dp size 3, the loader 2"},
		{func(c *Config) { c.Sampler = engine.SamplerSpec{Name: engine.SamplerRankAware, N: 3} }, "sampler rank_aware takes no group size (got 3)"},
		{func(c *Config) { c.Sampler = engine.SamplerSpec{Name: engine.SamplerSequential, N: 2} }, "sampler sequential takes no group size (got 2)"},
		{func(c *Config) { c.Sampler = engine.SamplerSpec{Name: engine.SamplerGRPO, N: 3} }, "micro-batch size 4 is not a multiple of the grpo sampler's group size 3"},
		{func(c *Config) { c.Sampler = engine.SamplerSpec{Name: engine.SamplerSeqlenBalanced, N: 3} }, "micro-batch size 4 is not a multiple of the seqlen_balanced sampler's group size 3"},
		{func(c *Config) {
			c.TokenBudget = 100
			c.Sampler = engine.SamplerSpec{Name: engine.SamplerTokenBudget, N: 3}
		}, "micro-batch size 4 is not a multiple of the token_budget sampler's group size 3"},
		{func(c *Config) {
			c.MicroBatchSize = 1 << 17
			c.Sampler = engine.SamplerSpec{Name: engine.SamplerGRPO, N: 1 << 17}
		}, "sampler grpo group size 131072 above 65536"},
		{func(c *Config) {
			c.DPSize = 1<<16 + 1
			c.Sampler = engine.SamplerSpec{Name: engine.SamplerSeqlenBalanced}
		}, "sampler seqlen_balanced dp size 65537 above 65536"},
	} {
		cfg := config("p")
		tc.mod(&cfg)
		_, err := New(e.Client, cfg)
		require.ErrorIs(t, err, engine.ErrInvalid, tc.want)
		require.ErrorContains(t, err, tc.want)
	}
	_, err := New(nil, config("p"))
	require.ErrorContains(t, err, "no client")
	require.Equal(t, sampler.MaxSpecParam, maxSamplerParam, "the bound the controller's samplers check")

	// A field that does not exist is the server's to refuse... or to wait
	// for: a loader waits for rows that may come.
	l, err := New(e.Client, config("p"))
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	for _, err := range l.All(ctx) {
		require.True(t, errors.Is(err, context.DeadlineExceeded), "got %v", err)
	}
	// One iteration at a time.
	produce(t, e.Client, "p", 0, 8, nil)
	for _, err := range l.All(context.Background()) {
		require.NoError(t, err)
		for _, err := range l.All(context.Background()) {
			require.ErrorContains(t, err, "already iterating")
		}
		break
	}
}

// With pre-allocated rows, a partition ends once every row is produced
// and consumed, without the done marker.
func TestEndWhenConsumed(t *testing.T) {
	cfg := embedded.DefaultConfig()
	cfg.Controller.PreAlloc = 16
	e, err := embedded.New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { e.Close() })
	lcfg := config("p")
	lcfg.EndWhenConsumed, lcfg.PollInterval = true, 20*time.Millisecond
	l, err := New(e.Client, lcfg)
	require.NoError(t, err)
	done := make(chan [][]int64, 1)
	go func() { done <- collect(t, context.Background(), l) }()
	produce(t, e.Client, "p", 0, 8, nil)
	time.Sleep(100 * time.Millisecond) // the loader drained these and waits: 8 rows are still reserved
	select {
	case <-done:
		t.Fatal("ended with pre-allocated rows not produced yet")
	default:
	}
	produce(t, e.Client, "p", 8, 8, nil)
	select {
	case got := <-done:
		require.Equal(t, upTo(16), flat(got))
	case <-time.After(20 * time.Second):
		t.Fatal("the loader did not end")
	}
}

// With EndWhenConsumed and a pre-allocated step whose size is not a
// multiple of the micro-batch size (10 rows, micro-batches of 4), the
// last 2 rows come as a short last micro-batch, as the reference yields
// them, though nobody marked the partition done: the loader's fetches
// tell the controller the rows there are are all there will be. They
// used to be never fetched, and the loader never ended.
func TestEndWhenConsumedShortRemainder(t *testing.T) {
	cfg := embedded.DefaultConfig()
	cfg.Controller.PreAlloc = 10
	e, err := embedded.New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { e.Close() })
	lcfg := config("p")
	lcfg.EndWhenConsumed, lcfg.PollInterval = true, 20*time.Millisecond
	l, err := New(e.Client, lcfg)
	require.NoError(t, err)
	produce(t, e.Client, "p", 0, 10, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	var got []int64
	for b, err := range l.All(ctx) {
		require.NoError(t, err, "after rows %v (the loader never ended)", got)
		got = append(got, values(t, b)...)
	}
	require.Equal(t, upTo(10), got)
}

// A partition marked done whose pre-allocated rows were not all produced
// (PreAlloc set to a step's usual size; the producer wrote 10 of 16, then
// MarkDone) ends with a short last micro-batch: the reserved rows that
// will never be produced used to hold back rows 8 and 9, and the loader
// never ended.
func TestDoneWithUnproducedReservedRows(t *testing.T) {
	for _, smp := range []string{engine.SamplerRankAware, engine.SamplerSequential} {
		t.Run(smp, func(t *testing.T) {
			cfg := embedded.DefaultConfig()
			cfg.Controller.PreAlloc = 16
			e, err := embedded.New(cfg)
			require.NoError(t, err)
			t.Cleanup(func() { e.Close() })
			ctx := context.Background()
			produce(t, e.Client, "p", 0, 10, nil)
			require.NoError(t, e.Client.MarkDone(ctx, "p"))
			lcfg := config("p")
			lcfg.Sampler = engine.SamplerSpec{Name: smp}
			l, err := New(e.Client, lcfg)
			require.NoError(t, err)
			tctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			defer cancel()
			var got []int64
			for b, err := range l.All(tctx) {
				require.NoError(t, err, "after rows %v (the loader never ended)", got)
				got = append(got, values(t, b)...)
			}
			require.Equal(t, upTo(10), got)
		})
	}
}

// streamOps is a wrapped metadata service with its stream operations,
// which client.MetaService does not carry, forwarded to it.
type streamOps struct{ client.MetaService }

func (s streamOps) Unconsume(ctx context.Context, partition, task, key string) error {
	return s.MetaService.(client.StreamService).Unconsume(ctx, partition, task, key)
}

func (s streamOps) UnconsumeRows(ctx context.Context, partition, task, key string, indexes []uint64) error {
	return s.MetaService.(client.StreamService).UnconsumeRows(ctx, partition, task, key, indexes)
}

func (s streamOps) Acknowledge(ctx context.Context, partition, task, key string) error {
	return s.MetaService.(client.StreamService).Acknowledge(ctx, partition, task, key)
}

func (s streamOps) MarkDone(ctx context.Context, partition string) error {
	return s.MetaService.(client.StreamService).MarkDone(ctx, partition)
}

// hookMeta runs before once, on the first ConsumptionStatus call.
type hookMeta struct {
	streamOps
	before func()
	once   sync.Once
}

func (h *hookMeta) ConsumptionStatus(ctx context.Context, partition, task string) (engine.ConsumptionStatus, error) {
	h.once.Do(h.before)
	return h.MetaService.ConsumptionStatus(ctx, partition, task)
}

// With EndWhenConsumed, a rank whose wait for a micro-batch timed out
// while its DP peer (same DPRank) took that micro-batch, consuming the
// last rows, still gets it: it used to see "all consumed" and end without
// it, and the peers disagreed on the number of micro-batches.
func TestEndWhenConsumedGetsTheBatchAPeerTook(t *testing.T) {
	ecfg := embedded.DefaultConfig()
	ecfg.Controller.PreAlloc = 4
	e, err := embedded.New(ecfg)
	require.NoError(t, err)
	t.Cleanup(func() { e.Close() })
	ctx := context.Background()
	var peer []uint64
	h := &hookMeta{streamOps: streamOps{embedded.Meta(e.Controller, e.Units...)}}
	h.before = func() { // between this rank's timed-out wait and its check
		produce(t, e.Client, "p", 0, 4, nil)
		m, err := e.Client.GetMeta(ctx, client.MetaRequest{
			Mode: client.Fetch, Partition: "p", Task: "train", Fields: []string{"x"}, BatchSize: 4,
			Sampler: engine.SamplerSpec{Name: engine.SamplerRankAware},
			Options: engine.SamplingOptions{HasRank: true, DPRank: 0, BatchIndex: 0},
		})
		require.NoError(t, err)
		peer = m.Indexes
	}
	var dus []client.DataUnit
	for _, u := range e.Units {
		dus = append(dus, embedded.Unit(u))
	}
	cb, err := client.New(h, dus, client.DefaultConfig())
	require.NoError(t, err)
	t.Cleanup(func() { cb.Close() })

	lcfg := config("p")
	lcfg.EndWhenConsumed, lcfg.PollInterval = true, 20*time.Millisecond
	l, err := New(cb, lcfg)
	require.NoError(t, err)
	tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var got [][]uint64
	for b, err := range l.All(tctx) {
		require.NoError(t, err)
		got = append(got, b.Meta.Indexes)
	}
	require.Len(t, peer, 4, "the peer got micro-batch 0")
	require.Equal(t, [][]uint64{peer}, got, "the rank must get the micro-batch its peer got")
}

// TestPanicInTheLoopReleasesTheBatch: a loop body that panics, recovered
// by its caller, leaves no lease on the units behind, and the rows it
// never finished are handed out again from Next.
func TestPanicInTheLoopReleasesTheBatch(t *testing.T) {
	ctx := context.Background()
	c, u := shmCluster(t)
	// Rows of 32 KiB: read as views (leases), not copied as small reads are.
	col, err := engine.DenseOf(make([]int64, 16*4096), 4096)
	require.NoError(t, err)
	_, err = c.PutNew(ctx, "p", engine.MustBatch(engine.Field{Name: "x", Col: col}))
	require.NoError(t, err)
	require.NoError(t, c.MarkDone(ctx, "p"))
	l, err := New(c, config("p"))
	require.NoError(t, err)
	func() {
		defer func() { require.Equal(t, "body failed", recover()) }()
		for b, err := range l.All(ctx) {
			require.NoError(t, err)
			require.True(t, b.Data.Aliased(), "a view of the units' bytes")
			panic("body failed")
		}
	}()
	// A lease goes back to the unit in a message of its own, answered
	// later; the prefetcher's batches go back as it stops.
	assert.Eventually(t, func() bool { return u.Stats().Leases == 0 }, 10*time.Second, 10*time.Millisecond,
		"leases left on the unit")
}

// shmCluster is a client of an in-memory controller and one storage unit
// it reaches over shared memory, whose gets are views holding leases.
func shmCluster(t *testing.T) (*client.Client, *storage.Unit) {
	t.Helper()
	u, err := storage.NewUnit(7, storage.DefaultConfig())
	require.NoError(t, err)
	t.Cleanup(func() { u.Close() })
	srv := storage.NewServer(u, storage.ServerConfig{})
	dir := t.TempDir()
	l, err := net.Listen("unix", filepath.Join(dir, "unit.sock"))
	require.NoError(t, err)
	fl, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, "unit.sock.shm"), Net: "unix"})
	require.NoError(t, err)
	var served sync.WaitGroup
	served.Go(func() { srv.Serve(l) })
	srv.RegisterShm(fl)
	served.Go(func() { srv.ServeShm(fl) })
	t.Cleanup(func() { srv.Close(); served.Wait() })
	tr := shm.New(shm.DefaultConfig())
	t.Cleanup(func() { tr.Close() })
	conn, err := tr.DialConn(t.Context(), engine.PeerInfo{Unit: u.ID(), Addr: wire.FormatAddr("unix", l.Addr().String())})
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	ctrl, err := controller.New(controller.DefaultConfig())
	require.NoError(t, err)
	t.Cleanup(func() { ctrl.Close() })
	c, err := client.New(embedded.Meta(ctrl), []client.DataUnit{client.ShmUnit(u.ID(), client.HostID(), conn)}, client.DefaultConfig())
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c, u
}

// Two DP groups balanced by sequence length over a done partition of 12
// rows, micro-batches of 4: the first balanced batch takes 8 rows, and the
// last 4 come as a short final batch (they were never handed out, and
// both loaders waited for ever).
func TestSeqlenDoneRemainderDelivered(t *testing.T) {
	e := cluster(t)
	produce(t, e.Client, "p", 0, 12, func(i int) int { return 1 + i })
	require.NoError(t, e.Client.MarkDone(context.Background(), "p"))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var mu sync.Mutex
	var rows []int64
	var wg sync.WaitGroup
	for r := range 2 {
		cfg := config("p")
		cfg.DPRank, cfg.DPSize, cfg.Sampler = r, 2, engine.SamplerSpec{Name: engine.SamplerSeqlenBalanced}
		l, err := New(e.Client, cfg)
		require.NoError(t, err)
		wg.Go(func() {
			for b, err := range l.All(ctx) {
				if !assert.NoError(t, err, "rank %d", r) {
					return
				}
				mu.Lock()
				rows = append(rows, values(t, b)...)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	slices.Sort(rows)
	require.Equal(t, upTo(12), rows)
}

// A loader without prefetch whose loop body outlasts the controller's
// KeptBatchTTL gets each row once: it asks for micro-batch k+1 only when
// done with k, which is then consumed, not left behind.
func TestSlowBodyGetsEachRowOnce(t *testing.T) {
	cfg := embedded.DefaultConfig()
	cfg.Controller.KeptBatchTTL = 50 * time.Millisecond
	e, err := embedded.New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { e.Close() })
	produce(t, e.Client, "p", 0, 12, nil)
	require.NoError(t, e.Client.MarkDone(context.Background(), "p"))
	lcfg := config("p")
	lcfg.Prefetch = 0
	l, err := New(e.Client, lcfg)
	require.NoError(t, err)
	var got []int64
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for b, err := range l.All(ctx) {
		require.NoError(t, err, "after rows %v", got)
		got = append(got, values(t, b)...)
		time.Sleep(100 * time.Millisecond) // a training step
	}
	require.Equal(t, upTo(12), got)
}

// lateMeta makes the first fetch that waits with a deadline behave as a
// remote one whose reply came just after its deadline: the controller
// took rows for it, the caller got the deadline, and the client gives the
// rows back in the background (RemoteMeta.giveBack), here only once the
// test lets it.
type lateMeta struct {
	streamOps
	late func(req engine.FetchRequest) // takes the rows, as the timed-out fetch did
	once sync.Once
}

func (m *lateMeta) Fetch(ctx context.Context, req engine.FetchRequest) (*engine.BatchMeta, error) {
	if _, ok := ctx.Deadline(); ok && req.Wait {
		first := false
		m.once.Do(func() { first = true })
		if first {
			<-ctx.Done()
			m.late(req)
			return nil, ctx.Err()
		}
	}
	return m.MetaService.Fetch(ctx, req)
}

// With EndWhenConsumed and a private sampler, rows that a fetch took as
// its wait timed out (a remote reply that came after the deadline; the
// client gives them back in the background) are not lost: the loader
// used to find them consumed, end the partition, and never see them
// once they were given back.
func TestEndWhenConsumedGetsRowsOfALateFetch(t *testing.T) {
	ecfg := embedded.DefaultConfig()
	ecfg.Controller.PreAlloc = 4
	e, err := embedded.New(ecfg)
	require.NoError(t, err)
	t.Cleanup(func() { e.Close() })
	ctx := context.Background()
	inner := embedded.Meta(e.Controller, e.Units...)
	take, release := takeGivenBackLater(t, e, inner, 0)
	cb := clientOver(t, e, &lateMeta{streamOps: streamOps{inner}, late: take})

	lcfg := config("p")
	lcfg.Sampler, lcfg.Prefetch = engine.SamplerSpec{Name: engine.SamplerSequential}, 0
	lcfg.EndWhenConsumed, lcfg.PollInterval = true, 20*time.Millisecond
	l, err := New(cb, lcfg)
	require.NoError(t, err)
	tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var got []int64
	for b, err := range l.All(tctx) {
		require.NoError(t, err)
		got = append(got, values(t, b)...)
	}
	release()
	require.Equal(t, upTo(4), got, "the rows the late fetch took")
}

// takeGivenBackLater returns what a fetch whose caller never saw its
// reply does: produce rows from..from+4 of "p" and take them with the
// fetch's request, then give them back in the background, as a remote
// client does, only once release is called (at the test's end at the
// latest).
func takeGivenBackLater(t *testing.T, e *embedded.Cluster, inner client.MetaService, from int) (take func(engine.FetchRequest), release func()) {
	ctx := context.Background()
	giveBack := make(chan struct{})
	release = sync.OnceFunc(func() { close(giveBack) })
	var bg sync.WaitGroup
	t.Cleanup(bg.Wait)
	t.Cleanup(release)
	take = func(req engine.FetchRequest) {
		produce(t, e.Client, "p", from, 4, nil)
		req.Wait = false
		took, err := inner.Fetch(ctx, req)
		require.NoError(t, err)
		require.Equal(t, 4, took.Len(), "the fetch took the rows")
		bg.Go(func() {
			<-giveBack
			inner.(client.StreamService).Unconsume(ctx, req.Partition, req.Task, req.Key)
		})
	}
	return take, release
}

// clientOver is a client of e's units whose metadata service is m.
func clientOver(t *testing.T, e *embedded.Cluster, m client.MetaService) *client.Client {
	var dus []client.DataUnit
	for _, u := range e.Units {
		dus = append(dus, embedded.Unit(u))
	}
	cb, err := client.New(m, dus, client.DefaultConfig())
	require.NoError(t, err)
	t.Cleanup(func() { cb.Close() })
	return cb
}

// cutMeta makes the second fetch that waits behave as a remote one the
// caller canceled just as the controller took rows for it: the caller
// gets the cancellation, and the client gives the rows back in the
// background (RemoteMeta.giveBack), here only once the test lets it.
type cutMeta struct {
	streamOps
	cut   func(req engine.FetchRequest) // takes the rows, as the canceled fetch did
	waits atomic.Int32
}

func (m *cutMeta) Fetch(ctx context.Context, req engine.FetchRequest) (*engine.BatchMeta, error) {
	if req.Wait && m.waits.Add(1) == 2 {
		<-ctx.Done()
		m.cut(req)
		return nil, ctx.Err()
	}
	return m.MetaService.Fetch(ctx, req)
}

// A private fetch canceled with the loop (a context canceled mid-fetch)
// whose rows the controller took is given back before All returns: a
// loader restarted at Next over the partition, now done, gets those rows.
// They used to come back only in the background, after the restarted
// loader had found the partition consumed and ended without them.
func TestCanceledFetchGivenBackBeforeAllReturns(t *testing.T) {
	for _, prefetch := range []int{0, 1} {
		e := cluster(t)
		ctx := context.Background()
		inner := embedded.Meta(e.Controller, e.Units...)
		take, release := takeGivenBackLater(t, e, inner, 4)
		cb := clientOver(t, e, &cutMeta{streamOps: streamOps{inner}, cut: take})
		produce(t, e.Client, "p", 0, 4, nil)

		cfg := config("p")
		cfg.Sampler, cfg.Prefetch = engine.SamplerSpec{Name: engine.SamplerSequential}, prefetch
		l, err := New(cb, cfg)
		require.NoError(t, err)
		cctx, cancel := context.WithCancel(ctx)
		var got []int64
		var last error
		for b, err := range l.All(cctx) {
			if err != nil {
				last = err
				break
			}
			got = append(got, values(t, b)...)
			cancel() // the next fetch is waiting, or soon will be
		}
		cancel()
		require.ErrorIs(t, last, context.Canceled, "prefetch %d", prefetch)
		require.NoError(t, e.Client.MarkDone(ctx, "p"))
		cfg.Start = l.Next()
		again, err := New(cb, cfg)
		require.NoError(t, err)
		tctx, tcancel := context.WithTimeout(ctx, 10*time.Second)
		got = append(got, flat(collect(t, tctx, again))...)
		tcancel()
		release()
		require.Equal(t, upTo(8), got, "prefetch %d: every row once", prefetch)
	}
}

// A canceled ctx ends the iteration even when the prefetcher's queue holds
// batches fetched before the cancel: the next step yields ctx's error, not
// one of them (the queue and ctx.Done are both ready, and a select picks
// either), and they go back to the task. Each round used to yield a
// prefetched batch after the cancel half of the time.
func TestCancelYieldsNoPrefetchedBatch(t *testing.T) {
	e := cluster(t)
	for round := range 16 {
		part := fmt.Sprintf("p%d", round)
		produce(t, e.Client, part, 0, 64, nil)
		require.NoError(t, e.Client.MarkDone(context.Background(), part))
		cfg := config(part)
		cfg.Sampler, cfg.Prefetch = engine.SamplerSpec{Name: engine.SamplerSequential}, 4
		l, err := New(e.Client, cfg)
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		var got []int64
		var last error
		for b, err := range l.All(ctx) {
			if err != nil {
				last = err
				break
			}
			require.NoError(t, ctx.Err(), "round %d: a batch %v yielded after the cancel", round, values(t, b))
			got = append(got, values(t, b)...)
			// The prefetcher fetches its 4 micro-batches ahead; then the
			// cancel.
			require.Eventually(t, func() bool { return consumedRows(t, e, part) == 20 }, 10*time.Second, time.Millisecond)
			cancel()
		}
		require.ErrorIs(t, last, context.Canceled, "round %d", round)
		require.Equal(t, upTo(4), got, "round %d", round)
		require.NoError(t, l.Err())
		require.Equal(t, 4, consumedRows(t, e, part), "round %d: the prefetched rows go back", round)
		cancel()
	}
}
