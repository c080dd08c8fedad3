package sampler

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// TestJournaledEntriesReplay: what a caching sampler reports through
// SampleRequest.Journal, applied to a fresh sampler, gives the fresh one
// the same answers (peers of a data-replica group get identical batches
// after a controller restart), and a cached answer journals nothing.
func TestJournaledEntriesReplay(t *testing.T) {
	grpo, _ := NewGRPO(2)
	grpo2, _ := NewGRPO(2)
	seq, _ := NewSeqlenBalanced(2, 2)
	seq2, _ := NewSeqlenBalanced(2, 2)
	type sampler interface {
		engine.CachingSampler
		engine.JournaledSampler
	}
	for _, tc := range []struct {
		name        string
		live, fresh sampler
	}{
		{"rank-aware", NewRankAware(), NewRankAware()},
		{"grpo", grpo, grpo2},
		{"seqlen", seq, seq2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var entries [][]byte
			req := engine.SampleRequest{
				Partition: "p", Task: "t", BatchSize: 2, Ready: rows(0, 16),
				Options: engine.SamplingOptions{HasRank: true, DPRank: 1, BatchIndex: 3},
				Tags:    func(uint64) engine.Tags { return engine.Tags{"total_lengths": 4} },
				Journal: func(e []byte) { entries = append(entries, e) },
			}
			want, _, err := tc.live.Sample(req)
			require.NoError(t, err)
			require.NotEmpty(t, want)
			require.Len(t, entries, 1, "a new cache entry is journaled once")
			require.True(t, json.Valid(entries[0]))

			again, _, err := tc.live.Sample(req)
			require.NoError(t, err)
			assert.Equal(t, want, again)
			assert.Len(t, entries, 1, "an answer from the cache journals nothing")

			for _, e := range entries {
				require.NoError(t, tc.fresh.ApplyEntry(e))
			}
			assert.True(t, tc.fresh.Cached("p", "t", req.Options), "the replayed entry answers from the cache")
			req.Ready, req.Journal = rows(100, 116), nil // other rows ready now: the cache must win
			got, _, err := tc.fresh.Sample(req)
			require.NoError(t, err)
			assert.Equal(t, want, got)

			require.ErrorIs(t, tc.fresh.ApplyEntry([]byte(`{"bogus":1}`)), engine.ErrCorrupt)
		})
	}
}
