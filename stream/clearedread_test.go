package stream

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/embedded"
	"github.com/tqgo/tq/engine"
)

// clearAfterFetch clears the partition of the n-th fetch that returns
// rows right after the controller answered it, before the caller reads
// them: a DP peer that finished first clears the partition between a
// lagging rank's FETCH and its GET.
type clearAfterFetch struct {
	streamOps
	e *embedded.Cluster
	n atomic.Int32
}

func (m *clearAfterFetch) Fetch(ctx context.Context, req engine.FetchRequest) (*engine.BatchMeta, error) {
	b, err := m.MetaService.Fetch(ctx, req)
	if err == nil && !b.Empty() && m.n.Add(-1) == 0 {
		if cerr := m.e.Client.ClearPartition(context.Background(), req.Partition); cerr != nil {
			return nil, cerr
		}
	}
	return b, err
}

// TestLaggingRankEndsWhenItsReadMeetsTheClear: a lagging rank's second
// fetch of "p" gets its rows, and the partition is cleared (a peer that
// finished first) before the rank reads them. The rank moves on to the
// next partition, as it does when its fetch is told of the clear: the
// partition ended for it. Its read used to fail and end the iteration
// with an error.
func TestLaggingRankEndsWhenItsReadMeetsTheClear(t *testing.T) {
	for _, smp := range []string{engine.SamplerRankAware, engine.SamplerSequential} {
		for _, prefetch := range []int{0, 2} {
			t.Run(fmt.Sprintf("%s/prefetch=%d", smp, prefetch), func(t *testing.T) {
				e := cluster(t)
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				produce(t, e.Client, "p", 0, 32, nil)
				require.NoError(t, e.Client.MarkDone(ctx, "p"))
				produce(t, e.Client, "q", 100, 8, nil)
				require.NoError(t, e.Client.MarkDone(ctx, "q"))
				m := &clearAfterFetch{streamOps: streamOps{embedded.Meta(e.Controller, e.Units...)}, e: e}
				m.n.Store(2)
				c := clientOver(t, e, m)
				cfg := config("p", "q")
				cfg.Sampler, cfg.Prefetch = engine.SamplerSpec{Name: smp}, prefetch
				l, err := New(c, cfg)
				require.NoError(t, err)
				var got [][]int64
				var parts []string
				for b, err := range l.All(ctx) {
					require.NoError(t, err, "after %v", got)
					got, parts = append(got, values(t, b)), append(parts, b.Partition)
				}
				require.NoError(t, ctx.Err())
				assert.Equal(t, []string{"p", "q", "q"}, parts, "micro-batches %v", got)
				assert.Equal(t, Position{Step: 2}, l.Next())
			})
		}
	}
}

// failingReads is a unit whose reads fail, as one that lost its cells.
type failingReads struct {
	client.DataUnit
	reads atomic.Int32
}

func (u *failingReads) Acquire(ctx context.Context, addrs []engine.RemoteAddr) (client.Lease, error) {
	u.reads.Add(1)
	return nil, fmt.Errorf("unit %d: cells lost: %w", u.ID(), engine.ErrLost)
}

func (u *failingReads) ReadInto(ctx context.Context, addrs []engine.RemoteAddr, dst [][]byte) error {
	u.reads.Add(1)
	return fmt.Errorf("unit %d: cells lost: %w", u.ID(), engine.ErrLost)
}

// A read that fails while the partition stays as it was (not cleared) is
// asked again once and then ends the iteration with the read's error,
// naming the partition and the task; a private fetch's rows go back to
// the task.
func TestReadFailureWithoutAClearEnds(t *testing.T) {
	for _, smp := range []string{engine.SamplerRankAware, engine.SamplerSequential} {
		t.Run(smp, func(t *testing.T) {
			e := cluster(t)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			produce(t, e.Client, "p", 0, 8, nil)
			require.NoError(t, e.Client.MarkDone(ctx, "p"))
			u := &failingReads{DataUnit: embedded.Unit(e.Units[0])}
			c, err := client.New(embedded.Meta(e.Controller, e.Units...), []client.DataUnit{u}, client.DefaultConfig())
			require.NoError(t, err)
			defer c.Close()
			cfg := config("p")
			cfg.Sampler = engine.SamplerSpec{Name: smp}
			l, err := New(c, cfg)
			require.NoError(t, err)
			var last error
			for _, err := range l.All(ctx) {
				require.Error(t, err)
				last = err
			}
			require.ErrorIs(t, last, engine.ErrLost)
			require.ErrorContains(t, last, `stream: read 4 rows of "p" for task "train": `)
			require.NoError(t, ctx.Err())
			if smp == engine.SamplerSequential {
				require.Zero(t, consumedRows(t, e, "p"), "the rows went back to the task")
			}
		})
	}
}
