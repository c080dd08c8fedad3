package controller

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// TestFetchPartitionMustExist: a fetch with PartitionMustExist of a
// partition the controller does not have fails at once, waiting or not,
// with an error naming it that wraps ErrInvalid (not ErrNotFound, which
// loaders read as "no batch yet"); without the flag it still gets an
// empty meta (or waits for a producer to make the partition).
func TestFetchPartitionMustExist(t *testing.T) {
	c := newController(t, DefaultConfig())
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	req := engine.FetchRequest{Partition: "trian_0", Task: "t", Fields: []string{"x"}, BatchSize: 1, PartitionMustExist: true}

	for _, wait := range []bool{false, true} {
		req.Wait = wait
		_, err := c.Fetch(ctx, req)
		require.ErrorIs(t, err, engine.ErrInvalid, "wait %v", wait)
		assert.NotErrorIs(t, err, engine.ErrNotFound)
		assert.NotErrorIs(t, err, context.DeadlineExceeded, "the fetch waited")
		assert.Contains(t, err.Error(), `partition "trian_0" does not exist`)
	}

	req.Wait, req.PartitionMustExist = false, false
	m, err := c.Fetch(ctx, req)
	require.NoError(t, err)
	assert.True(t, m.Empty())

	// A partition that existed and was cleared does not exist.
	insert(t, c, "gone", 1, "x")
	_, err = c.ClearPartition("gone")
	require.NoError(t, err)
	req.Partition, req.PartitionMustExist, req.Wait = "gone", true, true
	_, err = c.Fetch(ctx, req)
	require.ErrorIs(t, err, engine.ErrInvalid)
	assert.Contains(t, err.Error(), `partition "gone" does not exist`)
}

// TestFetchPartitionMustExistAtTheRequest: the flag counts at the time of
// the request. A fetch that found the partition and waits for rows goes
// on waiting when it is cleared, and is served once it is made again.
func TestFetchPartitionMustExistAtTheRequest(t *testing.T) {
	c := newController(t, DefaultConfig())
	_, err := c.CreatePartition("p")
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	type result struct {
		m   *engine.BatchMeta
		err error
	}
	done := make(chan result, 1)
	go func() {
		m, err := c.Fetch(ctx, engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 1, Wait: true, PartitionMustExist: true})
		done <- result{m, err}
	}()
	require.Eventually(t, func() bool { return c.blocked.Load() == 1 }, 30*time.Second, time.Millisecond, "the fetch never waited")
	_, err = c.ClearPartition("p")
	require.NoError(t, err)
	m := insert(t, c, "p", 1, "x")
	commitDense(t, c, "p", m.Indexes, "x")
	r := <-done
	require.NoError(t, r.err)
	assert.Equal(t, m.Indexes, r.m.Indexes)
}

// TestFetchPartitionMustExistAskedAgain: a keyed fetch with the flag asked
// again (its reply lost with a connection) gets the rows the first took
// from the fetch table, as without it.
func TestFetchPartitionMustExistAskedAgain(t *testing.T) {
	c := newController(t, DefaultConfig())
	m := insert(t, c, "p", 2, "x")
	commitDense(t, c, "p", m.Indexes, "x")
	req := engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 1, Key: "fetch-1", PartitionMustExist: true}
	first, err := c.Fetch(t.Context(), req)
	require.NoError(t, err)
	require.Equal(t, 1, first.Len())
	again, err := c.Fetch(t.Context(), req)
	require.NoError(t, err)
	assert.Equal(t, first.Indexes, again.Indexes)
}
