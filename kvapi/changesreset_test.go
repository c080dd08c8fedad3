package kvapi

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/engine"
)

// follower is a reader of the change feed keeping a copy of the keys as
// the docs of ChangeSet.Reset say: at a reset it forgets every key, and
// the reset's pages list every key there is.
type follower struct {
	cursor []byte
	view   map[string]engine.Tags
	resets int
	more   bool // the last answer had more pages
}

// apply takes one answer into the copy.
func (f *follower) apply(cs *ChangeSet) {
	if cs.Reset || f.view == nil {
		f.view = map[string]engine.Tags{}
	}
	if cs.Reset {
		f.resets++
	}
	for _, c := range cs.Changes {
		if c.Cleared {
			delete(f.view, c.Key)
		} else {
			f.view[c.Key] = c.Tags
		}
	}
	f.cursor, f.more = cs.Cursor, cs.More
}

// catchUp follows the feed until its copy holds a key named until and
// the last answer had no more pages.
func (f *follower) catchUp(ctx context.Context, kv *KV, part, until string) error {
	for {
		if _, ok := f.view[until]; ok && !f.more {
			return nil
		}
		cs, err := kv.Changes(ctx, part, f.cursor)
		if err != nil {
			return err
		}
		f.apply(cs)
	}
}

// TestChangesPartitionClearedUnderFollower: writers put and clear keys
// while the whole partition is cleared now and then; a follower that
// forgets every key at a reset ends with exactly the keys the partition
// holds after the last clear.
func TestChangesPartitionClearedUnderFollower(t *testing.T) {
	bothWays(t, func(t *testing.T, kv *KV) {
		for seed := range uint64(3) {
			t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
				part := fmt.Sprintf("wipe%d", seed)
				const writers, ops, nkeys = 3, 150, 12
				ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
				defer cancel()
				var f follower
				readerDone := make(chan error, 1)
				go func() { readerDone <- f.catchUp(ctx, kv, part, "end") }()

				var wg sync.WaitGroup
				for w := range writers + 1 {
					wg.Go(func() {
						rng := rand.New(rand.NewPCG(seed, uint64(w)))
						for n := range ops {
							key := fmt.Sprintf("k%02d", rng.IntN(nkeys))
							var err error
							switch r := rng.IntN(10); {
							case w == writers: // the clearer
								if r < 2 {
									err = kv.Client().ClearPartition(ctx, part)
								}
							case r < 6:
								_, err = kv.Put(ctx, part, key, nil, engine.Tags{"v": fmt.Sprintf("w%d-%d", w, n)})
							case r < 8:
								err = kv.Clear(ctx, part, []string{key})
							default:
								_, _, err = kv.CompareAndSetTag(ctx, part, key, "c", nil, n)
							}
							if !assert.NoError(t, err, "writer %d op %d", w, n) {
								return
							}
						}
					})
				}
				wg.Wait()
				require.False(t, t.Failed())
				_, err := kv.Put(ctx, part, "end", nil, engine.Tags{"v": "end"})
				require.NoError(t, err)
				require.NoError(t, <-readerDone, "the follower")
				assert.Equal(t, listed(t, kv, part), f.view, "after %d resets", f.resets)
			})
		}
	})
}

// TestChangesForgottenClearedKeys: a partition remembers its newest
// 65536 cleared keys. A cursor from before exactly that many clears is
// told each of them; one from before one more is told to reset (never
// given the remembered ones as if they were all), and its reset lists
// exactly the keys there are.
func TestChangesForgottenClearedKeys(t *testing.T) {
	const window, batch = 1 << 16, 1 << 13
	bothWays(t, func(t *testing.T, kv *KV) {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
		defer cancel()
		const part = "forget"
		_, err := kv.Put(ctx, part, "keep", nil, engine.Tags{"v": "keep"})
		require.NoError(t, err)
		var before follower // from before the keys below were made
		require.NoError(t, before.catchUp(ctx, kv, part, "keep"))

		names := func(from, n int) []string {
			keys := make([]string, n)
			for i := range keys {
				keys[i] = fmt.Sprintf("c%06d", from+i)
			}
			return keys
		}
		for from := 0; from < window+1; from += batch {
			keys := names(from, min(batch, window+1-from))
			_, err := kv.BatchPut(ctx, part, keys, nil, make([]engine.Tags, len(keys)))
			require.NoError(t, err)
		}
		var made follower // every key made, none cleared
		require.NoError(t, made.catchUp(ctx, kv, part, "keep"))
		require.Len(t, made.view, window+2)
		edge := follower{cursor: made.cursor, view: made.view}

		// Exactly the window cleared: the cursor from before them is told
		// every one.
		for from := 0; from < window; from += batch {
			require.NoError(t, kv.Clear(ctx, part, names(from, batch)))
		}
		_, err = kv.Put(ctx, part, "mark1", nil, engine.Tags{"v": 1})
		require.NoError(t, err)
		require.NoError(t, edge.catchUp(ctx, kv, part, "mark1"))
		require.Zero(t, edge.resets, "a cursor from before exactly %d cleared keys", window)
		require.Equal(t, listed(t, kv, part), edge.view)

		// One more: that cursor would miss one; it is told to reset.
		require.NoError(t, kv.Clear(ctx, part, names(window, 1)))
		_, err = kv.Put(ctx, part, "mark2", nil, engine.Tags{"v": 2})
		require.NoError(t, err)
		cs, err := kv.Changes(ctx, part, made.cursor)
		require.NoError(t, err)
		require.True(t, cs.Reset, "a cursor from before %d cleared keys", window+1)
		made.apply(cs)
		for cs.More {
			cs, err = kv.Changes(ctx, part, made.cursor)
			require.NoError(t, err)
			made.apply(cs)
		}
		require.Equal(t, listed(t, kv, part), made.view)
		require.Equal(t, []string{"keep", "mark1", "mark2"}, sortedKeys(made.view))

		// The follower from before every key too.
		require.NoError(t, before.catchUp(ctx, kv, part, "mark2"))
		require.Equal(t, 1, before.resets)
		require.Equal(t, listed(t, kv, part), before.view)
	})
}

func sortedKeys(m map[string]engine.Tags) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// TestChangesControllerRestartedUnderFollower: an in-memory controller
// restarts at the same address while a follower waits on its change
// feed; the new one holds the same partition with keys at the same
// change numbers. The follower's cursor is not read as the new
// controller's: its next answer is a reset, or an error, and after it
// the follower holds exactly the new controller's keys.
func TestChangesControllerRestartedUnderFollower(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	const part = "restart"
	// Keys made in the controller itself, the same way in both: the same
	// partition gen and change numbers.
	makeKeys := func(ctrl *controller.Controller, from string, keys ...string) {
		for _, k := range keys {
			_, err := ctrl.CompareAndSetTag(engine.TagSwap{Partition: part, Key: k, Name: "from", New: from})
			require.NoError(t, err)
		}
	}
	sc := newServed(t, nil)
	kv := sc.kv
	makeKeys(sc.ctrl, "A", "a", "b", "c")
	var f follower
	require.NoError(t, f.catchUp(ctx, kv, part, "c"))
	waiting := make(chan error, 1)
	go func() {
		cs, err := kv.Changes(ctx, part, f.cursor)
		if err == nil {
			f.apply(cs)
		}
		waiting <- err
	}()

	sc.srv.Close()
	require.NoError(t, sc.ctrl.Close())
	ctrlB, err := controller.New(controller.DefaultConfig())
	require.NoError(t, err)
	t.Cleanup(func() { ctrlB.Close() })
	// One change more than A made: the old cursor's position is a real
	// one in B.
	makeKeys(ctrlB, "B", "x", "y", "z", "w")
	serveController(t, ctrlB, sc.sock)

	if err := <-waiting; err != nil {
		t.Logf("the waiting call: %v", err)
	}
	require.NoError(t, f.catchUp(ctx, kv, part, "w"))
	assert.Positive(t, f.resets)
	assert.Equal(t, listed(t, kv, part), f.view)
	assert.Equal(t, []string{"w", "x", "y", "z"}, sortedKeys(f.view))
}
