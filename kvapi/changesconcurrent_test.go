package kvapi

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// feedOp is one writer's call, between two ticks of the test's clock.
type feedOp struct {
	key        string
	start, end int64
	// changed: the call surely changed the key (a put, a swap that
	// swapped), so the feed must report it; a call that may have changed
	// it (a clear, a tag removal) only excuses a second report.
	changed bool
	// excuses: the call may have changed the key (not a swap that did
	// not swap, which the docs say changes nothing).
	excuses bool
}

// feedAnswer is one answer of the reader, between two ticks.
type feedAnswer struct {
	start, end int64
	cs         *ChangeSet
}

// TestChangesConcurrentWriters has writers put, clear, remove tags from
// and swap tags of random keys of one partition while a reader follows
// its change feed with waiting Changes calls, and checks every answer
// against the writers' calls, in the order a shared clock gives them:
// a key a call surely changed after an answer was handed out and before
// the next call began is reported by that call (or the pages it starts);
// no answer reports a key twice, and a key is reported again only when a
// call that may have changed it ran after the earlier report's call
// began; no answer is a reset; and the reader's copy of the keys ends
// equal to the partition's.
func TestChangesConcurrentWriters(t *testing.T) {
	bothWays(t, func(t *testing.T, kv *KV) {
		for seed := range uint64(2) {
			t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
				testChangesConcurrent(t, kv, fmt.Sprintf("feed%d", seed), seed)
			})
		}
	})
}

func testChangesConcurrent(t *testing.T, kv *KV, part string, seed uint64) {
	const writers, opsPerWriter, nkeys = 4, 250, 16
	ctx := t.Context()
	var clock atomic.Int64
	keyName := func(i int) string { return fmt.Sprintf("k%02d", i) }

	// Some keys before the first cursor.
	for i := range nkeys / 2 {
		_, err := kv.Put(ctx, part, keyName(i), nil, engine.Tags{"v": "init", "w": "init"})
		require.NoError(t, err)
	}
	first, err := kv.Changes(ctx, part, nil)
	require.NoError(t, err)
	require.False(t, first.More)
	view := map[string]engine.Tags{}
	for _, c := range first.Changes {
		require.False(t, c.Cleared, "the first listing tells no cleared key")
		view[c.Key] = c.Tags
	}

	var answers []feedAnswer
	readerDone := make(chan error, 1)
	// A bounded wait: a feed that misses the last change fails the test
	// rather than hanging it.
	readCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	go func() {
		cursor, sawEnd := first.Cursor, false
		for {
			start := clock.Add(1)
			cs, err := kv.Changes(readCtx, part, cursor)
			if err != nil {
				readerDone <- err
				return
			}
			if cs.Reset {
				readerDone <- fmt.Errorf("answer %d is a reset", len(answers))
				return
			}
			answers = append(answers, feedAnswer{start: start, end: clock.Add(1), cs: cs})
			cursor = cs.Cursor
			for _, c := range cs.Changes {
				sawEnd = sawEnd || c.Key == "end"
			}
			if sawEnd && !cs.More {
				readerDone <- nil
				return
			}
		}
	}()

	opsOf := make([][]feedOp, writers)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			for n := range opsPerWriter {
				key := keyName(rng.IntN(nkeys))
				stamp := fmt.Sprintf("w%d-%d", w, n)
				op := feedOp{key: key, start: clock.Add(1), excuses: true}
				var err error
				switch r := rng.IntN(10); {
				case r < 4: // a tag-only put
					_, err = kv.Put(ctx, part, key, nil, engine.Tags{"v": stamp, "w": stamp})
					op.changed = true
				case r < 5: // a put of a field
					_, err = kv.Put(ctx, part, key, engine.MustBatch(engine.Field{Name: "x", Col: col(t, []int64{int64(n)})}), engine.Tags{"v": stamp})
					op.changed = true
				case r < 7: // a clear of one or two keys
					keys := []string{key}
					if other := keyName(rng.IntN(nkeys)); other != key {
						keys = append(keys, other)
						opsOf[w] = append(opsOf[w], feedOp{key: other, start: op.start, excuses: true})
					}
					err = kv.Clear(ctx, part, keys)
				case r < 8: // a tag removed
					_, err = kv.DeleteTags(ctx, part, []string{key}, "w")
					if errors.Is(err, engine.ErrNotFound) {
						err, op.excuses = nil, false // cleared by another writer
					}
				default: // a swap, once more from the value that did not match
					var swapped bool
					var cur any
					swapped, cur, err = kv.CompareAndSetTag(ctx, part, key, "c", nil, stamp)
					if err == nil && !swapped {
						swapped, _, err = kv.CompareAndSetTag(ctx, part, key, "c", cur, stamp)
					}
					op.changed, op.excuses = swapped, swapped
				}
				op.end = clock.Add(1)
				if !assert.NoError(t, err, "writer %d op %d on %s", w, n, key) {
					return
				}
				for i := range opsOf[w] {
					if opsOf[w][i].start == op.start {
						opsOf[w][i].end = op.end
					}
				}
				opsOf[w] = append(opsOf[w], op)
			}
		})
	}
	wg.Wait()
	require.False(t, t.Failed())
	// The last change: the reader stops at the answer that reports it.
	_, err = kv.Put(ctx, part, "end", nil, engine.Tags{"v": "end"})
	require.NoError(t, err)
	require.NoError(t, <-readerDone, "the reader")

	var ops []feedOp
	for _, o := range opsOf {
		ops = append(ops, o...)
	}
	// runEnd[j]: the last answer of the pages answer j starts or belongs to.
	runEnd := make([]int, len(answers))
	for j := len(answers) - 1; j >= 0; j-- {
		runEnd[j] = j
		if answers[j].cs.More && j+1 < len(answers) {
			runEnd[j] = runEnd[j+1]
		}
	}
	// reported[key]: the answers that report key.
	reported := map[string][]int{}
	for j, a := range answers {
		require.False(t, a.cs.Reset, "answer %d is a reset", j)
		seen := map[string]bool{}
		for _, c := range a.cs.Changes {
			require.False(t, seen[c.Key], "answer %d reports %s twice", j, c.Key)
			seen[c.Key] = true
			reported[c.Key] = append(reported[c.Key], j)
			if c.Cleared {
				delete(view, c.Key)
			} else {
				view[c.Key] = c.Tags
			}
		}
	}

	// Never missed: an op that surely changed its key, after answer i
	// was handed out and before answer j was asked for, is reported by an
	// answer after i up to the last page of j's.
	for _, op := range ops {
		if !op.changed {
			continue
		}
		i := -1 // the last answer handed out before the op began (-1: first)
		for k, a := range answers {
			if a.end < op.start {
				i = k
			}
		}
		// The first answer asked for after the op ended; else the last,
		// which reports the put after every op.
		j := len(answers) - 1
		for k, a := range answers {
			if a.start > op.end {
				j = k
				break
			}
		}
		found := false
		for _, k := range reported[op.key] {
			found = found || k > i && k <= runEnd[j]
		}
		assert.True(t, found, "%s changed in ticks %d-%d: not reported by answers %d to %d", op.key, op.start, op.end, i+1, runEnd[j])
	}

	// Not reported again: a key reported by answers i and j (i < j) needs
	// an op that may have changed it, ending after i began and starting
	// before j ended.
	for key, js := range reported {
		for n := 1; n < len(js); n++ {
			i, j := answers[js[n-1]], answers[js[n]]
			excused := false
			for _, op := range ops {
				excused = excused || op.key == key && op.excuses && op.end > i.start && op.start < j.end
			}
			assert.True(t, excused, "%s reported by answers %d and %d with no change between", key, js[n-1], js[n])
		}
	}

	// The reader's copy is the partition.
	assert.Equal(t, listed(t, kv, part), view)
}
