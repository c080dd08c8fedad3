package controller

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// genFetch is a fetch of one row of "p" for task "t" asking for gen.
func genFetch(gen uint64) engine.FetchRequest {
	return engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 1, PartitionGen: gen}
}

// TestFetchPartitionGen: a fetch's meta carries the partition's
// generation; a fetch asking for it is served, one asking for another,
// or for one cleared (wait or not) or cleared and made again, fails at
// once with an error naming the partition and the generation that wraps
// ErrDone; a fetch without one is served as before, by the partition
// made again.
func TestFetchPartitionGen(t *testing.T) {
	c := newController(t, DefaultConfig())
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	m := insert(t, c, "p", 3, "x")
	commitDense(t, c, "p", m.Indexes, "x")

	first, err := c.Fetch(ctx, genFetch(0))
	require.NoError(t, err)
	gen := first.PartitionGen
	require.NotZero(t, gen, "the fetch's meta has no generation")
	second, err := c.Fetch(ctx, genFetch(gen))
	require.NoError(t, err)
	assert.Equal(t, 1, second.Len())
	assert.Equal(t, gen, second.PartitionGen)

	_, err = c.Fetch(ctx, genFetch(gen+1))
	require.ErrorIs(t, err, engine.ErrDone)
	assert.Contains(t, err.Error(), `partition "p" generation `)

	_, err = c.ClearPartition("p")
	require.NoError(t, err)
	for _, wait := range []bool{false, true} {
		req := genFetch(gen)
		req.Wait = wait
		_, err = c.Fetch(ctx, req)
		require.ErrorIs(t, err, engine.ErrDone, "wait %v", wait)
		assert.NotErrorIs(t, err, context.DeadlineExceeded)
		assert.Contains(t, err.Error(), `partition "p" generation `+itoa(gen)+` was cleared`)
	}

	// Made again: the old generation is refused, the new one served.
	m = insert(t, c, "p", 2, "x")
	commitDense(t, c, "p", m.Indexes, "x")
	req := genFetch(gen)
	req.Wait = true
	_, err = c.Fetch(ctx, req)
	require.ErrorIs(t, err, engine.ErrDone, "the partition made again served the old generation")
	again, err := c.Fetch(ctx, genFetch(0))
	require.NoError(t, err)
	assert.Equal(t, 1, again.Len())
	assert.NotEqual(t, gen, again.PartitionGen)
	_, err = c.Fetch(ctx, genFetch(again.PartitionGen))
	require.NoError(t, err)
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }

// TestFetchPartitionGenClearWakesTheWait: a fetch with a generation that
// waits for rows ends, with the same error, when its partition is cleared,
// rather than wait for it to be made again.
func TestFetchPartitionGenClearWakesTheWait(t *testing.T) {
	c := newController(t, DefaultConfig())
	m := insert(t, c, "p", 1, "x")
	commitDense(t, c, "p", m.Indexes, "x")
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	first, err := c.Fetch(ctx, genFetch(0))
	require.NoError(t, err)
	gen := first.PartitionGen

	done := make(chan error, 1)
	go func() {
		req := genFetch(gen)
		req.Wait = true
		_, err := c.Fetch(ctx, req)
		done <- err
	}()
	require.Eventually(t, func() bool { return c.blocked.Load() == 1 }, 30*time.Second, time.Millisecond, "the fetch never waited")
	_, err = c.ClearPartition("p")
	require.NoError(t, err)
	err = <-done
	require.ErrorIs(t, err, engine.ErrDone)
	assert.NotErrorIs(t, err, context.DeadlineExceeded, "the clear did not wake the fetch")
	assert.Contains(t, err.Error(), `partition "p" generation `+itoa(gen)+` was cleared`)
}

// TestFetchPartitionGenAskedAgain: a keyed fetch with a generation asked
// again gets the rows the first took from the fetch table, as without it.
func TestFetchPartitionGenAskedAgain(t *testing.T) {
	c := newController(t, DefaultConfig())
	m := insert(t, c, "p", 3, "x")
	commitDense(t, c, "p", m.Indexes, "x")
	first, err := c.Fetch(t.Context(), genFetch(0))
	require.NoError(t, err)
	req := genFetch(first.PartitionGen)
	req.Key = "fetch-1"
	a, err := c.Fetch(t.Context(), req)
	require.NoError(t, err)
	b, err := c.Fetch(t.Context(), req)
	require.NoError(t, err)
	assert.Equal(t, a.Indexes, b.Indexes)
	assert.Equal(t, first.PartitionGen, b.PartitionGen)
}

// TestFetchPartitionGenAcrossRestart: the generation a fetch saw is the
// partition's after a restart (from the log alone, or a snapshot), and a
// partition cleared and made again keeps its new one.
func TestFetchPartitionGenAcrossRestart(t *testing.T) {
	for _, way := range restartWays {
		t.Run(way.name, func(t *testing.T) {
			dir := t.TempDir()
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			c := openDurable(t, dir, Config{})
			// Gens taken by other partitions, one of them cleared.
			insert(t, c, "q", 1, "x")
			_, err := c.ClearPartition("q")
			require.NoError(t, err)
			insert(t, c, "r", 1, "x")
			m := insert(t, c, "p", 4, "x")
			commitDense(t, c, "p", m.Indexes, "x")
			first, err := c.Fetch(ctx, genFetch(0))
			require.NoError(t, err)
			gen := first.PartitionGen
			require.NoError(t, c.WaitDurable(ctx))
			way.stop(t, c)

			c = openDurable(t, dir, Config{})
			got, err := c.Fetch(ctx, genFetch(gen))
			require.NoError(t, err, "the generation changed with the restart")
			assert.Equal(t, gen, got.PartitionGen)

			_, err = c.ClearPartition("p")
			require.NoError(t, err)
			m = insert(t, c, "p", 2, "x")
			commitDense(t, c, "p", m.Indexes, "x")
			again, err := c.Fetch(ctx, genFetch(0))
			require.NoError(t, err)
			require.NotEqual(t, gen, again.PartitionGen)
			require.NoError(t, c.WaitDurable(ctx))
			way.stop(t, c)

			c = openDurable(t, dir, Config{})
			defer c.Close()
			_, err = c.Fetch(ctx, genFetch(gen))
			require.ErrorIs(t, err, engine.ErrDone, "the old generation after the second restart")
			got, err = c.Fetch(ctx, genFetch(again.PartitionGen))
			require.NoError(t, err, "the new generation changed with the restart")
			assert.Equal(t, again.PartitionGen, got.PartitionGen)
		})
	}
}

// TestFetchPartitionGenOfAnotherCluster: a fetch naming a generation of
// another cluster's controller (this one started anew in memory, and its
// "p" has by chance the same generation) is refused as for a partition
// cleared, wait or not, naming both clusters; the same generation of this
// cluster, or one without a cluster, is served.
func TestFetchPartitionGenOfAnotherCluster(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	var gens [2]uint64
	var cs [2]*Controller
	for i := range cs {
		cs[i] = newController(t, DefaultConfig())
		m := insert(t, cs[i], "p", 3, "x")
		commitDense(t, cs[i], "p", m.Indexes, "x")
		first, err := cs[i].Fetch(ctx, genFetch(0))
		require.NoError(t, err)
		gens[i] = first.PartitionGen
	}
	require.Equal(t, gens[0], gens[1], "the test needs the generations to match")
	old, now := cs[0].Info().ClusterID, cs[1].Info().ClusterID
	require.NotEqual(t, old, now)
	for _, wait := range []bool{false, true} {
		req := genFetch(gens[0])
		req.Cluster, req.Wait = old, wait
		_, err := cs[1].Fetch(ctx, req)
		require.ErrorIs(t, err, engine.ErrDone, "wait %v: served a partition of another cluster", wait)
		assert.NotErrorIs(t, err, context.DeadlineExceeded)
		assert.Contains(t, err.Error(), `partition "p" generation `+itoa(gens[0])+` of cluster `+old)
		assert.Contains(t, err.Error(), now)
	}
	for _, cluster := range []string{now, ""} {
		req := genFetch(gens[1])
		req.Cluster = cluster
		m, err := cs[1].Fetch(ctx, req)
		require.NoError(t, err, "cluster %q", cluster)
		assert.Equal(t, 1, m.Len())
	}
}
