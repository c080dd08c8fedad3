package controller

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// holdPending starts a first CommitKeys to partition "new" that will be
// refused (a draining unit) and holds it while its partition is pending:
// the test holds the fences' lock, which the request takes under the
// partition's. It returns once the pending partition is in c.parts, and
// a release that lets the request go and returns its error.
func holdPending(t *testing.T, c *Controller, draining engine.UnitID) (release func() error) {
	t.Helper()
	c.fences.mu.Lock()
	errc := make(chan error, 1)
	go func() {
		_, err := c.CommitKeys(engine.KeysCommit{Partition: "new", Keys: []string{"k"}, Fields: []engine.CommitField{int64Field(draining, 1, 1)}})
		errc <- err
	}()
	require.Eventually(t, func() bool { return c.get("new") != nil }, 5*time.Second, time.Millisecond, "the refused request makes its partition")
	released := false
	t.Cleanup(func() {
		if !released {
			c.fences.mu.Unlock()
		}
	})
	return func() error {
		released = true
		c.fences.mu.Unlock()
		return <-errc
	}
}

// TestPendingRefusedPartitionWakesWaiters: requests that reach a
// partition its first request is still making wait for that request, and
// once it is refused go on as if the partition never existed: a blocking
// fetch waits (it neither spins on the dropped partition nor hangs once
// rows come), and a key put creates the partition.
func TestPendingRefusedPartitionWakesWaiters(t *testing.T) {
	for _, preAlloc := range []int{0, 4} {
		t.Run(map[int]string{0: "prealloc=0", 4: "prealloc=4"}[preAlloc], func(t *testing.T) {
			c := newController(t, Config{PreAlloc: preAlloc})
			ok, draining := refusedSetup(t, c)
			allocated, _ := c.Indexes()
			release := holdPending(t, c, draining)

			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			type result struct {
				m   *engine.BatchMeta
				err error
			}
			fetched := make(chan result, 1)
			go func() {
				m, err := c.Fetch(ctx, engine.FetchRequest{Partition: "new", Task: "t", Fields: []string{"v"}, BatchSize: 1, Wait: true})
				fetched <- result{m, err}
			}()
			require.ErrorIs(t, release(), ErrDraining)

			// The refused partition is gone; the fetch waits for one.
			require.Eventually(t, func() bool { return c.BlockedFetches() == 1 }, 5*time.Second, time.Millisecond)
			assert.Empty(t, c.Partitions())
			now, _ := c.Indexes()
			assert.Equal(t, allocated, now, "the refused partition's indexes went back")
			select {
			case r := <-fetched:
				t.Fatalf("fetch returned before any row: %v, %v", r.m, r.err)
			case <-time.After(50 * time.Millisecond):
			}

			_, err := c.CommitKeys(engine.KeysCommit{Partition: "new", Keys: []string{"k"}, Fields: []engine.CommitField{int64Field(ok, 1, 1)}})
			require.NoError(t, err)
			r := <-fetched
			require.NoError(t, r.err)
			assert.Len(t, r.m.Indexes, 1)
			assert.Equal(t, []string{"new"}, c.Partitions())
		})
	}
}

// TestCreatePartitionRacesRefusedCreator: CreatePartition of a partition
// whose first request is still pending waits for that request; when it is
// refused, CreatePartition makes the partition (true), rather than
// reporting it made already while none is left.
func TestCreatePartitionRacesRefusedCreator(t *testing.T) {
	c := newController(t, Config{PreAlloc: 2})
	_, draining := refusedSetup(t, c)
	release := holdPending(t, c, draining)

	type result struct {
		made bool
		err  error
	}
	created := make(chan result, 1)
	go func() {
		made, err := c.CreatePartition("new")
		created <- result{made, err}
	}()
	select {
	case r := <-created:
		// It answered while the partition was still pending: a wrong
		// answer unless the partition stays.
		require.NoError(t, r.err)
		require.ErrorIs(t, release(), ErrDraining)
		assert.True(t, r.made, "CreatePartition said the partition existed")
	case <-time.After(50 * time.Millisecond):
		require.ErrorIs(t, release(), ErrDraining)
		r := <-created
		require.NoError(t, r.err)
		assert.True(t, r.made, "the refused request made nothing: CreatePartition makes it")
	}
	assert.Equal(t, []string{"new"}, c.Partitions(), "CreatePartition returned and the partition exists")
}
