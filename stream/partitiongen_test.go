package stream

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/embedded"
)

// TestLaggingRankEndsWithAClearedPartition: two DP ranks read a done
// partition; rank 1 takes its first micro-batch, and while its loop body
// runs, rank 0 reads all it has and clears the partition (and, in the
// "made again" case, a producer makes one of the same id). Rank 1's next
// fetch ends the partition, as a drained one does, and the loader goes on
// to the next: it used to wait for the partition for ever, or read the
// new partition's rows as the old one's. In process and over the wire.
func TestLaggingRankEndsWithAClearedPartition(t *testing.T) {
	for _, remote := range []bool{false, true} {
		for _, again := range []bool{false, true} {
			t.Run(fmt.Sprintf("remote=%v/made_again=%v", remote, again), func(t *testing.T) {
				e, _, c := doneRemote(t) // "p": rows 0..31, done
				if !remote {
					c = e.Client
				}
				produce(t, e.Client, "q", 100, 8, nil)
				require.NoError(t, e.Client.MarkDone(context.Background(), "q"))
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				rank := func(r int, parts ...string) *Loader {
					cfg := config(parts...)
					cfg.DPRank, cfg.DPSize, cfg.Prefetch = r, 2, 0
					l, err := New(c, cfg)
					require.NoError(t, err)
					return l
				}
				lag := rank(1, "p", "q")
				var got [][]int64
				var parts []string
				for b, err := range lag.All(ctx) {
					require.NoError(t, err)
					got, parts = append(got, values(t, b)), append(parts, b.Partition)
					if len(got) > 1 {
						continue
					}
					peerClears(t, ctx, e, rank(0, "p"), again)
				}
				require.NoError(t, ctx.Err(), "the lagging rank waited")
				require.GreaterOrEqual(t, len(got), 2)
				assert.Equal(t, "p", parts[0])
				for i, p := range parts[1:] {
					assert.Equal(t, "q", p, "micro-batch %d %v: of the partition cleared (or made again)", i+1, got[i+1])
				}
				assert.Equal(t, Position{Step: 2}, lag.Next())
			})
		}
	}
}

// TestLoaderEndsAPartitionOfAControllerStartedAnew: a loader reads its
// first micro-batch of "p" from a controller that keeps its state in
// memory; the controller starts anew (another cluster) and a producer
// makes a "p" there, whose generation is by chance the one the loader
// remembers (each cluster numbers its partitions from 1). The loader's
// next fetch ends the partition, as a cleared one: the old "p" cannot
// exist in the new cluster. It used to be served the new "p"'s rows as
// the rest of the old one's.
func TestLoaderEndsAPartitionOfAControllerStartedAnew(t *testing.T) {
	_, s, c := doneRemote(t) // "p": rows 0..31, done
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg := config("p")
	cfg.Prefetch = 0
	l, err := New(c, cfg)
	require.NoError(t, err)
	var got [][]int64
	for b, err := range l.All(ctx) {
		require.NoError(t, err)
		got = append(got, values(t, b))
		if len(got) > 1 {
			continue
		}
		gen := b.Meta.PartitionGen
		require.NotZero(t, gen)
		startAnew(t, ctx, s, gen)
	}
	require.NoError(t, ctx.Err(), "the loader waited")
	require.NoError(t, l.Err())
	assert.Len(t, got, 1, "micro-batches of the new cluster's \"p\": %v", got[1:])
	assert.Equal(t, Position{Step: 1}, l.Next())
}

// peerClears has rank 0 (peer, of partition "p") read all it has, then
// clears "p"; with again, a producer makes a "p" of 32 rows again, done.
func peerClears(t *testing.T, ctx context.Context, e *embedded.Cluster, peer *Loader, again bool) {
	t.Helper()
	var got []int64
	for b, err := range peer.All(ctx) {
		require.NoError(t, err)
		got = append(got, values(t, b)...)
	}
	require.NotEmpty(t, got)
	require.NoError(t, e.Client.ClearPartition(ctx, "p"))
	if again {
		produce(t, e.Client, "p", 1000, 32, nil)
		require.NoError(t, e.Client.MarkDone(ctx, "p"))
	}
}

// startAnew stops s's controller and serves at its address a new
// in-memory cluster (without the last one's state) whose "p", 32 rows
// and done, has generation gen, as the first "p" of a cluster does.
func startAnew(t *testing.T, ctx context.Context, s *ctrlServer, gen uint64) {
	t.Helper()
	s.stop()
	next, err := embedded.New(embedded.DefaultConfig())
	require.NoError(t, err)
	t.Cleanup(func() { next.Close() })
	produce(t, next.Client, "p", 1000, 32, nil)
	require.NoError(t, next.Client.MarkDone(ctx, "p"))
	m, err := next.Client.GetMeta(ctx, client.MetaRequest{Mode: client.Fetch, Partition: "p", Task: "peek",
		Fields: []string{"x"}, BatchSize: 1})
	require.NoError(t, err)
	require.Equal(t, gen, m.PartitionGen, "the new cluster's \"p\" has another generation: the test shows nothing")
	s.e = next
	s.start()
}
