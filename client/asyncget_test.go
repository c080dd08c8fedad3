package client_test

import (
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/kvapi"
)

// The batch of an asynchronous get that nobody received (its waiter gave
// up, or never asked, and dropped the future) is released once the future
// is garbage: over shared memory its views used to keep their cells'
// leases, and so the cells' memory, for good. A batch a Wait handed out
// stays the caller's until it releases it.
func TestDroppedGetFutureReleasesItsBatch(t *testing.T) {
	ctx := t.Context()
	addr, su := shmUnitCluster(t)
	defer su.serve(t)()
	u := su.u
	c, err := client.Connect(ctx, addr, client.ConnectConfig{Transport: client.TransportShm})
	require.NoError(t, err)
	defer c.Close()
	kv := kvapi.New(c)
	keys := keyRange("k", 64)
	_, err = kv.BatchPut(ctx, "p", keys, bigRows(t, 64), nil) // big enough to be lent, not copied
	require.NoError(t, err)
	gone, cancel := context.WithCancel(context.Background())
	cancel()

	func() {
		f := kv.BatchGetAsync(ctx, "p", keys)
		<-f.Done()
		require.NotZero(t, u.Stats().Leases, "a get's views hold leases")
		if _, err := f.Wait(gone); err == nil {
			t.Skip("the give-up raced the result and lost") // select picked the result
		}
	}()
	require.Eventually(t, func() bool { runtime.GC(); return u.Stats().Leases == 0 }, 5*time.Second, 10*time.Millisecond,
		"leases of a dropped future's batch")

	f := kv.BatchGetAsync(ctx, "p", keys)
	b, err := f.Wait(ctx)
	require.NoError(t, err)
	f = nil
	for range 5 {
		runtime.GC()
		time.Sleep(5 * time.Millisecond)
	}
	require.NotZero(t, u.Stats().Leases, "the leases of a batch handed out")
	b.Release()
	require.Eventually(t, func() bool { return u.Stats().Leases == 0 }, 5*time.Second, 10*time.Millisecond)
}
