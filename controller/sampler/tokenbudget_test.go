package sampler

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

func lengthsOf(ls map[uint64]int64) func(uint64) engine.Tags {
	return func(i uint64) engine.Tags {
		if l, ok := ls[i]; ok {
			return engine.Tags{LengthTag: l}
		}
		return nil
	}
}

func TestTokenBudget(t *testing.T) {
	s, err := NewTokenBudget(2, 2)
	require.NoError(t, err)
	// Groups (0,1)=30 (2,3)=50 (4,5)=20 (6,7)=40 (8,9)=100.
	ls := map[uint64]int64{0: 10, 1: 20, 2: 25, 3: 25, 4: 10, 5: 10, 6: 20, 7: 20, 8: 50, 9: 50}
	req := engine.SampleRequest{Partition: "p", Task: "t", TokenBudget: 60, Ready: engine.ReadySlice{0, 1, 2, 3, 4, 5, 6, 7, 8, 9},
		Tags: lengthsOf(ls), Options: engine.SamplingOptions{HasRank: true}}
	r0, _, err := s.Sample(req)
	require.NoError(t, err)
	req.Options.DPRank = 1
	r1, _, err := s.Sample(req)
	require.NoError(t, err)
	// Least-loaded placement: (0,1)→0 [30], (2,3)→1 [50], (4,5)→0 [50],
	// (6,7) fits neither's 60 with the least loaded at 50: closed.
	require.Equal(t, []uint64{0, 1, 4, 5}, r0)
	require.Equal(t, []uint64{2, 3}, r1)
	require.True(t, s.Cached("p", "t", req.Options))

	// Not enough for the budget and not final: nothing yet.
	req = engine.SampleRequest{Partition: "p", Task: "t", TokenBudget: 1000, Ready: engine.ReadySlice{6, 7, 8, 9},
		Tags: lengthsOf(ls), Options: engine.SamplingOptions{HasRank: true, BatchIndex: 1}}
	got, _, err := s.Sample(req)
	require.NoError(t, err)
	require.Empty(t, got)
	req.Final = true
	got, _, err = s.Sample(req)
	require.NoError(t, err)
	require.Equal(t, []uint64{6, 7}, got, "final: what there is, balanced")

	// A group longer than the budget goes alone.
	req = engine.SampleRequest{Partition: "q", Task: "t", TokenBudget: 60, Ready: engine.ReadySlice{8, 9},
		Tags: lengthsOf(ls), Options: engine.SamplingOptions{HasRank: true}, Final: true}
	got, _, err = s.Sample(req)
	require.NoError(t, err)
	require.Equal(t, []uint64{8, 9}, got)

	for _, tc := range []struct {
		req  engine.SampleRequest
		want string
	}{
		{engine.SampleRequest{TokenBudget: 10}, "no dp rank"},
		{engine.SampleRequest{Options: engine.SamplingOptions{HasRank: true}}, "token budget 0"},
		{engine.SampleRequest{TokenBudget: 10, BatchSize: 3, Options: engine.SamplingOptions{HasRank: true}}, "not a multiple"},
	} {
		_, _, err := s.Sample(tc.req)
		require.ErrorIs(t, err, engine.ErrInvalid)
		require.ErrorContains(t, err, tc.want)
	}
	_, err = NewTokenBudget(0, 1)
	require.ErrorIs(t, err, engine.ErrInvalid)
}

func TestParseSpec(t *testing.T) {
	for in, want := range map[string]engine.SamplerSpec{
		"sequential":          {Name: "sequential"},
		"rank-aware":          {Name: "rank_aware"},
		"grpo:4":              {Name: "grpo", N: 4},
		"seqlen:4:2":          {Name: "seqlen_balanced", N: 4, DPSize: 2},
		"token_budget:1:8":    {Name: "token_budget", N: 1, DPSize: 8},
		"seqlen_balanced:2:2": {Name: "seqlen_balanced", N: 2, DPSize: 2},
	} {
		got, err := ParseSpec(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
		back, err := ParseSpec(got.String())
		require.NoError(t, err)
		c, _ := Canonical(got)
		cb, _ := Canonical(back)
		require.Equal(t, c, cb, "String round-trips %q", in)
	}
	for in, want := range map[string]string{
		"random":       "want sequential, rank-aware, grpo:N, seqlen:N:DP or token-budget:N:DP",
		"grpo":         "grpo takes 1 parameter (grpo:N), got 0",
		"grpo:x":       `"x" is not a positive number`,
		"grpo:0":       "not a positive number",
		"seqlen:1":     "seqlen takes 2 parameters (seqlen:N:DP), got 1",
		"sequential:1": "sequential takes no parameter, got 1",
	} {
		_, err := ParseSpec(in)
		require.ErrorIs(t, err, engine.ErrInvalid, in)
		require.ErrorContains(t, err, want, in)
	}
}

func TestFinalTakesShortBatches(t *testing.T) {
	g, _ := NewGRPO(2)
	ready := engine.ReadySlice{0, 1, 3, 4, 5}
	got, _, err := g.Sample(engine.SampleRequest{BatchSize: 6, Ready: ready})
	require.NoError(t, err)
	require.Empty(t, got)
	got, _, err = g.Sample(engine.SampleRequest{BatchSize: 6, Ready: ready, Final: true})
	require.NoError(t, err)
	require.Equal(t, []uint64{0, 1, 3, 4}, got, "whole groups only")

	s, _ := NewSeqlenBalanced(1, 3)
	req := engine.SampleRequest{Partition: "p", Task: "t", BatchSize: 2, Ready: engine.ReadySlice{7, 8}, Final: true,
		Options: engine.SamplingOptions{HasRank: true}}
	var parts [][]uint64
	for r := range 3 {
		req.Options.DPRank = r
		got, _, err := s.Sample(req)
		require.NoError(t, err)
		parts = append(parts, got)
		// The first rank's call consumed every part: none is ready after
		// it (a rank with an empty part takes one of its own from what is
		// ready; see TestClearedPartRefills).
		req.Ready = engine.ReadySlice{}
	}
	require.ElementsMatch(t, [][]uint64{{7}, {8}, nil}, parts, "fewer rows than ranks: one each, the last rank none")
}

// TestTokenBudgetStopsEarly: the walk over the ready rows ends with the
// batch, with or without the rows' origins.
func TestTokenBudgetStopsEarly(t *testing.T) {
	for _, withOrigin := range []bool{false, true} {
		s, err := NewTokenBudget(2, 1)
		require.NoError(t, err)
		ready := &countingReady{n: 1_000_000}
		req := engine.SampleRequest{Partition: "p", Task: "t", TokenBudget: 10, Ready: ready, Options: engine.SamplingOptions{HasRank: true}}
		if withOrigin {
			req.Origin = func(gi uint64) engine.RowOrigin {
				return engine.RowOrigin{Created: gi + 1, Pos: uint32(gi % 64), Size: 64}
			}
		}
		sampled, _, err := s.Sample(req)
		require.NoError(t, err)
		require.Len(t, sampled, 10, "origin %v", withOrigin) // 5 groups of 2, 1 token a row
		require.LessOrEqual(t, ready.calls, 12, "origin %v: rows looked at", withOrigin)
	}
}

// Groups of no tokens (total_lengths 0) all went to rank 0, the first of
// the ranks tied at 0 tokens, until its row cap closed the batch: rank 1's
// part of a batch that was not final stayed empty, and its fetch, finding
// that empty part cached, waited for rows it could never get.
func TestTokenBudgetZeroLengthGroupsReachEveryRank(t *testing.T) {
	s, err := NewTokenBudget(1, 2)
	require.NoError(t, err)
	ls := map[uint64]int64{0: 0, 1: 0, 2: 0, 3: 0, 4: 0, 5: 0}
	req := engine.SampleRequest{Partition: "p", Task: "t", BatchSize: 2, TokenBudget: 10, Ready: engine.ReadySlice{0, 1, 2, 3, 4, 5},
		Tags: lengthsOf(ls), Options: engine.SamplingOptions{HasRank: true}}
	r0, _, err := s.Sample(req)
	require.NoError(t, err)
	req.Options.DPRank = 1
	r1, _, err := s.Sample(req)
	require.NoError(t, err)
	require.Len(t, r0, 2, "rank 0")
	require.Len(t, r1, 2, "rank 1: a batch that is not final leaves no rank empty")
}
