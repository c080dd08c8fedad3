package sampler

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// MovePart moves a rank's part of a later batch into a batch whose part
// for it is empty (cleared), or that is not cached; the journal replays
// it, and a move that has nothing to move or whose target part holds rows
// changes nothing.
func TestMovePart(t *testing.T) {
	for _, tc := range splitCases {
		t.Run(tc.name, func(t *testing.T) {
			s := tc.make()
			split := s.(engine.SplitBatchDropper)
			var log []func(propSampler)
			j := func(e []byte) { log = append(log, func(f propSampler) { require.NoError(t, f.ApplyEntry(e)) }) }
			req := tc.fresh
			req.Partition, req.Task, req.Journal = "p", "t", j
			var made [2][]uint64
			ready := rows(0, 6) // a fifth ready row closes a token budget's batch 1
			for b := range 2 {
				req.Ready, req.Options = ready, ranked(0, b)
				_, consumed := mustSample(t, s, req)
				require.Len(t, consumed, 2)
				made[b] = consumed
				ready = without(ready, consumed)
			}
			b0, _ := mustSample(t, s, engine.SampleRequest{Partition: "p", Task: "t", BatchSize: 1, TokenBudget: 1, Options: ranked(0, 0)})
			part1 := without(made[0], b0)
			s.ForgetRows("p", part1)
			log = append(log, func(f propSampler) { f.ForgetRows("p", part1) })

			got, err := split.MovePart("p", "t", 1, 0, 1, j)
			require.NoError(t, err)
			assert.Nil(t, got, "rank 1's part of batch 0 is empty: nothing to move")
			b1, _ := mustSample(t, s, engine.SampleRequest{Partition: "p", Task: "t", BatchSize: 1, TokenBudget: 1, Options: ranked(0, 1)})
			got, err = split.MovePart("p", "t", 0, 1, 0, j)
			require.NoError(t, err)
			assert.Nil(t, got, "rank 0's part of batch 0 holds rows: nothing moved")

			want := []uint64(without(made[1], b1))
			got, err = split.MovePart("p", "t", 1, 1, 0, j)
			require.NoError(t, err)
			assert.Equal(t, want, got)
			assert.Equal(t, []int{0, 1}, split.Parts("p", "t", 0))
			assert.Equal(t, []int{0}, split.Parts("p", "t", 1))
			final := engine.SampleRequest{Partition: "p", Task: "t", BatchSize: 1, TokenBudget: 1, Final: true, Ready: engine.ReadySlice{}, Options: ranked(1, 0)}
			sampled, consumed := mustSample(t, s, final)
			assert.Equal(t, want, sampled, "rank 1 asking for batch 0 gets the part moved")
			assert.Equal(t, want, consumed)
			final.Options = ranked(1, 1)
			sampled, _ = mustSample(t, s, final)
			assert.Empty(t, sampled, "rank 1's part of batch 1 is gone")

			// Into a batch not cached; the batch moved from, left with no
			// rows, is dropped.
			got, err = split.MovePart("p", "t", 0, 1, 5, j)
			require.NoError(t, err)
			assert.Equal(t, b1, got)
			assert.Empty(t, split.Parts("p", "t", 1))
			assert.Equal(t, []int{0}, split.Parts("p", "t", 5))
			assert.True(t, s.Cached("p", "t", ranked(1, 5)))

			replayed := tc.make()
			for _, op := range log {
				op(replayed)
			}
			live, err := s.SaveState()
			require.NoError(t, err)
			again, err := replayed.SaveState()
			require.NoError(t, err)
			assert.JSONEq(t, string(live), string(again), "the journal replays the moves")
			loaded := tc.make()
			require.NoError(t, loaded.LoadState(live))
		})
	}
}
