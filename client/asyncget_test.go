package client_test

import (
	"context"
	"net"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/kvapi"
	"github.com/tqgo/tq/storage"
)

// The batch of an asynchronous get that nobody received (its waiter gave
// up, or never asked, and dropped the future) is released once the future
// is garbage: over shared memory its views used to keep their cells'
// leases, and so the cells' memory, for good. A batch a Wait handed out
// stays the caller's until it releases it.
func TestDroppedGetFutureReleasesItsBatch(t *testing.T) {
	ctx := t.Context()
	ctrl, err := controller.New(controller.Config{UnitTimeout: time.Minute})
	require.NoError(t, err)
	t.Cleanup(func() { ctrl.Close() })
	_, addr := serveController(t, ctrl, controller.ServerConfig{}, "unix")
	cfg := storage.DefaultConfig()
	cfg.Capacity = 16 << 20
	u, err := storage.NewUnit(0, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { u.Close() })
	_, err = storage.AssignID(ctx, addr, u, storage.JoinConfig{})
	require.NoError(t, err)
	sock := filepath.Join(t.TempDir(), "unit.sock")
	srv := storage.NewServer(u, storage.ServerConfig{})
	l, err := net.Listen("unix", sock)
	require.NoError(t, err)
	fl, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock + ".shm", Net: "unix"})
	require.NoError(t, err)
	srv.RegisterShm(fl)
	var wg sync.WaitGroup
	wg.Go(func() { srv.Serve(l) })
	wg.Go(func() { srv.ServeShm(fl) })
	t.Cleanup(func() { srv.Close(); wg.Wait() })
	mem, err := storage.Join(ctx, addr, u, storage.JoinConfig{Addrs: []string{"unix://" + sock, "shm://" + sock + ".shm"}})
	require.NoError(t, err)
	t.Cleanup(func() { mem.Close() })
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
