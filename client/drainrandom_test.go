package client_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/kvapi"
	"github.com/tqgo/tq/storage"
)

// joinUnitGrace is joinUnit with quick reconciles: every interval, with
// the given grace.
func joinUnitGrace(t *testing.T, ctrlAddr string, interval, grace time.Duration) *servedUnit {
	t.Helper()
	ctx := t.Context()
	cfg := storage.DefaultConfig()
	cfg.Capacity = 16 << 20
	u, err := storage.NewUnit(0, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { u.Close() })
	jc := storage.JoinConfig{ReconcileInterval: interval, ReconcileGrace: grace}
	_, err = storage.AssignID(ctx, ctrlAddr, u, jc)
	require.NoError(t, err)
	s := &servedUnit{u: u, srv: storage.NewServer(u, storage.ServerConfig{})}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s.addr = l.Addr().String()
	s.serve(t, l)
	t.Cleanup(func() { s.stop() })
	jc.Addrs = []string{"tcp://" + s.addr}
	s.mem, err = storage.Join(ctx, ctrlAddr, u, jc)
	require.NoError(t, err)
	t.Cleanup(func() { s.mem.Close() })
	return s
}

// TestDrainRebalanceReconcileRandom runs puts (new keys and overwrites),
// reads and clears of other partitions while one unit drains, the others
// rebalance, and every unit reconciles every 20 ms with a 200 ms grace:
// every acknowledged put reads back as written (a read racing a put sees
// the old value or the new), the drain finishes and leaves nothing on its
// unit, which gives back every byte.
func TestDrainRebalanceReconcileRandom(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	ctx := t.Context()
	ctrl, err := controller.New(controller.Config{})
	require.NoError(t, err)
	t.Cleanup(func() { ctrl.Close() })
	_, addr := serveController(t, ctrl, controller.ServerConfig{}, "unix")
	units := []*servedUnit{joinUnitGrace(t, addr, 20*time.Millisecond, 200*time.Millisecond)}
	c, err := client.Connect(ctx, addr, client.ConnectConfig{Client: client.Config{Placement: client.Hash}})
	require.NoError(t, err)
	defer c.Close()
	kv := kvapi.New(c)

	const nkeys = 64
	var mu sync.Mutex
	acked := map[string]int64{}   // last acknowledged value
	pending := map[string]int64{} // value being put
	put := func(k string, v int64) {
		mu.Lock()
		pending[k] = v
		mu.Unlock()
		_, err := kv.BatchPut(ctx, "p", []string{k}, ints(t, "x", []int64{v}), nil)
		require.NoError(t, err, "put %s", k)
		mu.Lock()
		acked[k] = v
		delete(pending, k)
		mu.Unlock()
	}
	for i := range nkeys / 2 {
		put(fmt.Sprint("k", i), int64(i))
	}
	for range 2 {
		units = append(units, joinUnitGrace(t, addr, 20*time.Millisecond, 200*time.Millisecond))
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	wrng := rand.New(rand.NewPCG(rng.Uint64(), 2))
	wg.Go(func() { // puts: new keys and overwrites
		for n := int64(1000); ; n++ {
			select {
			case <-stop:
				return
			default:
			}
			put(fmt.Sprint("k", wrng.IntN(nkeys)), n)
		}
	})
	wg.Go(func() { // puts and clears of another partition
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			q := fmt.Sprint("q", i%3)
			_, err := kv.BatchPut(ctx, q, keyRange("c", 8), xBatch(t, 8), nil)
			require.NoError(t, err)
			require.NoError(t, c.ClearPartition(ctx, q))
		}
	})
	wg.Go(func() { // reads
		for {
			select {
			case <-stop:
				return
			default:
			}
			k := fmt.Sprint("k", rng.IntN(nkeys/2))
			mu.Lock()
			before, inflight := acked[k], pending[k]
			mu.Unlock()
			got, err := kv.BatchGetCopy(ctx, "p", []string{k})
			require.NoError(t, err, "get %s", k)
			v := values(t, got, "x")[0]
			mu.Lock()
			after := acked[k]
			mu.Unlock()
			assert.Contains(t, []int64{before, inflight, after}, v, "key %s read %d", k, v)
		}
	})
	drained := make(chan error, 1)
	go func() {
		_, err := c.Drain(ctx, units[0].u.ID(), client.DrainConfig{PageCells: 4, Settle: 300 * time.Millisecond})
		drained <- err
	}()
	_, err = c.Rebalance(ctx, client.RebalanceConfig{PageCells: 3})
	assert.NoError(t, err, "rebalance")
	select {
	case err = <-drained:
	case <-time.After(10 * time.Second):
		err = context.DeadlineExceeded
	}
	close(stop)
	wg.Wait()
	require.NoError(t, err, "drain")

	m := c.Meta().(*client.RemoteMeta)
	cells, _, err := m.UnitCells(ctx, units[0].u.ID(), nil, 0, 0)
	require.NoError(t, err)
	assert.Empty(t, cells, "cells left on the drained unit")
	for k, v := range acked {
		got, err := kv.BatchGetCopy(ctx, "p", []string{k})
		require.NoError(t, err, "get %s", k)
		assert.Equal(t, v, values(t, got, "x")[0], "key %s", k)
	}
	require.Eventually(t, func() bool { return units[0].u.Stats().Used == 0 }, 5*time.Second, 20*time.Millisecond,
		"the drained unit frees every byte")
}
