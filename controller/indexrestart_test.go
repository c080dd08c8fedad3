package controller

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// allocView is what of a controller's index allocator a restart must
// keep: its state file's part, the loose indexes, the counts, and the
// indexes the next inserts get (from a copy).
type allocView struct {
	st          indexState
	loose       []uint64
	used, free  int
	nextInserts []uint64
}

func viewAlloc(t *testing.T, c *Controller) allocView {
	t.Helper()
	a := c.idx
	a.mu.Lock()
	cp := &indexAllocator{next: a.next, reusable: slices.Clone(a.reusable), head: a.head,
		loose: slices.Clone(a.loose), looseHead: a.looseHead, inUse: slices.Clone(a.inUse), used: a.used}
	a.mu.Unlock()
	v := allocView{st: a.snapshot(), loose: looseOf(a)}
	v.used, v.free = a.stats()
	var err error
	v.nextInserts, err = cp.alloc(v.free + 3)
	require.NoError(t, err)
	return v
}

// TestRestartKeepsTheIndexesAfterRefusedNewPartitions runs a durable
// controller whose new partitions' first requests are refused while other
// partitions insert and clear rows (their pre-allocations taken from the
// queue, the loose indexes and the counter, given back in any order), and
// requires that a restart (the log from the last snapshot, with or
// without one) and a checkpoint saved and loaded leave the index
// allocator as the live one has it: the same queue, loose indexes, next,
// counts, and the same indexes for the next inserts.
func TestRestartKeepsTheIndexesAfterRefusedNewPartitions(t *testing.T) {
	for seed := range uint64(8) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { restartIndexes(t, seed) })
	}
}

func restartIndexes(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 11))
	dir := t.TempDir()
	cfg := Config{PreAlloc: 2, SnapshotBytes: 1 << 40}
	c := openDurable(t, dir, cfg)
	defer func() { c.Close() }()
	ctx := context.Background()
	parts := []string{"a", "b", "c"}
	rows := map[string][]uint64{}
	var pending []*partition
	made := 0
	settle := func(k int) { // a pending new partition: refused mostly, else kept
		p := pending[k]
		pending = slices.Delete(pending, k, k+1)
		if rng.IntN(4) == 0 {
			if ops := c.keep(p); len(ops) > 0 {
				c.log(ops...)
			}
			parts = append(parts, p.id)
		}
		c.unlockNew(p)
	}
	for round := range 5 {
		for range 80 {
			p := parts[rng.IntN(len(parts))]
			switch op := rng.IntN(10); {
			case op < 3:
				m, err := c.Insert(p, 1+rng.IntN(3), nil)
				require.NoError(t, err)
				rows[p] = append(rows[p], m.Indexes...)
			case op < 5 && len(rows[p]) > 0:
				idx := rows[p]
				rng.Shuffle(len(idx), func(i, j int) { idx[i], idx[j] = idx[j], idx[i] })
				n := 1 + rng.IntN(len(idx))
				_, err := c.ClearRows(p, idx[:n])
				require.NoError(t, err)
				rows[p] = idx[n:]
			case op < 6 && rng.IntN(3) == 0:
				_, err := c.ClearPartition(p)
				require.NoError(t, err)
				delete(rows, p)
			case op < 8: // a new partition whose first request is in flight
				made++
				np, err := c.lockOrCreate(fmt.Sprint("n", made))
				require.NoError(t, err)
				pending = append(pending, np)
			case op < 9 && len(pending) > 0:
				settle(rng.IntN(len(pending)))
			case op < 10: // a refused first request, start to end
				made++
				_, _, err := c.ResolveKeysCreated(fmt.Sprint("n", made), []string{"k"}, []string{"f"}, true)
				require.ErrorIs(t, err, engine.ErrNotFound)
			}
		}
		for len(pending) > 0 { // a snapshot or checkpoint takes every lock
			settle(rng.IntN(len(pending)))
		}
		if rng.IntN(2) == 0 {
			require.NoError(t, c.snapshot())
		}
		want := viewAlloc(t, c)
		cp := filepath.Join(t.TempDir(), "cp")
		require.NoError(t, c.Save(cp))
		l, err := New(Config{PreAlloc: 2})
		require.NoError(t, err)
		_, err = l.Load(cp)
		require.NoError(t, err)
		require.Equal(t, want, viewAlloc(t, l), "round %d: the allocator after a checkpoint save and load, against the live one", round)
		require.NoError(t, l.Close())
		require.NoError(t, c.WaitDurable(ctx))
		crash(t, c)
		c = openDurable(t, dir, cfg)
		require.Equal(t, want, viewAlloc(t, c), "round %d: the allocator after a restart, against the live one", round)
	}
}
