package stream

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestRestartedRankEndsWithAClearedPartition: rank 1 of two DP groups
// reads its first micro-batch of "p" and stops; while it is away, rank 0
// reads all it has of "p" and clears it (and, in the "made again" case, a
// producer makes a "p" again). Rank 1 restarts, as a new process would, at
// the Next its previous run ended at: its first fetch ends "p" as a
// drained partition, and it reads "q". It used to wait for "p" for good (a
// partition that does not exist is waited for), or read the new "p"'s rows
// as the rest of the old one's: its start position did not carry the
// generation of the partition it had read.
func TestRestartedRankEndsWithAClearedPartition(t *testing.T) {
	for _, remote := range []bool{false, true} {
		for _, again := range []bool{false, true} {
			t.Run(fmt.Sprintf("remote=%v/made_again=%v", remote, again), func(t *testing.T) {
				e, _, c := doneRemote(t) // "p": rows 0..31, done
				if !remote {
					c = e.Client
				}
				produce(t, e.Client, "q", 100, 8, nil)
				require.NoError(t, e.Client.MarkDone(context.Background(), "q"))
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				rank := func(r int, start Position, parts ...string) *Loader {
					cfg := config(parts...)
					cfg.DPRank, cfg.DPSize, cfg.Prefetch, cfg.Start = r, 2, 2, start
					l, err := New(c, cfg)
					require.NoError(t, err)
					return l
				}
				first := rank(1, Position{}, "p", "q")
				for b, err := range first.All(ctx) {
					require.NoError(t, err)
					require.Equal(t, "p", b.Partition)
					break
				}
				pos := first.Next()
				require.Equal(t, 0, pos.Step)
				require.Equal(t, 1, pos.Index)
				require.NotZero(t, pos.Gen, "Next names the generation of the partition it read: %+v", pos)
				peerClears(t, ctx, e, rank(0, Position{}, "p"), again)
				restarted := rank(1, pos, "p", "q")
				var got [][]int64
				var parts []string
				for b, err := range restarted.All(ctx) {
					require.NoError(t, err)
					got, parts = append(got, values(t, b)), append(parts, b.Partition)
				}
				require.NoError(t, ctx.Err(), "the restarted rank waited for the partition cleared")
				require.NotEmpty(t, parts)
				for i, p := range parts {
					assert.Equal(t, "q", p, "micro-batch %d %v: of the partition cleared (or made again)", i, got[i])
				}
				assert.Equal(t, Position{Step: 2}, restarted.Next())
			})
		}
	}
}

// TestRestartedLoaderEndsAPartitionOfAControllerStartedAnew: a loader
// reads its first micro-batch of "p" and stops; the controller, which
// keeps its state in memory, starts anew (another cluster), and a producer
// makes a "p" there whose generation is by chance the one the loader read
// (each cluster numbers its partitions from 1). A loader restarted at the
// first one's Next ends "p" as a cleared partition: the old "p" cannot
// exist in the new cluster. It used to read the new "p"'s rows as the rest
// of the old one's.
func TestRestartedLoaderEndsAPartitionOfAControllerStartedAnew(t *testing.T) {
	e, s, c := doneRemote(t) // "p": rows 0..31, done
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := config("p")
	l, err := New(c, cfg)
	require.NoError(t, err)
	for b, err := range l.All(ctx) {
		require.NoError(t, err)
		require.Equal(t, "p", b.Partition)
		break
	}
	pos := l.Next()
	require.NotZero(t, pos.Gen, "Next names the generation of the partition it read: %+v", pos)
	require.Equal(t, e.Controller.Info().ClusterID, pos.Cluster, "Next names the generation's cluster: %+v", pos)
	startAnew(t, ctx, s, pos.Gen)

	cfg.Start = pos
	again, err := New(c, cfg)
	require.NoError(t, err)
	got := collect(t, ctx, again)
	require.NoError(t, ctx.Err(), "the restarted loader waited")
	assert.Empty(t, got, "micro-batches of the new cluster's \"p\"")
	assert.Equal(t, Position{Step: 1}, again.Next())
}
