package sampler

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/tqgo/tq/engine"
)

func newSeqlen(t *testing.T, n, dp int) *SeqlenBalanced {
	t.Helper()
	s, err := NewSeqlenBalanced(n, dp)
	if err != nil {
		t.Fatalf("NewSeqlenBalanced(%d, %d): %v", n, dp, err)
	}
	return s
}

// lengthTags serves the "total_lengths" tag from a map (rows not in it have
// no tags).
func lengthTags(lengths map[uint64]any) func(uint64) engine.Tags {
	return func(i uint64) engine.Tags {
		l, ok := lengths[i]
		if !ok {
			return nil
		}
		return engine.Tags{LengthTag: l}
	}
}

// allRanks calls the sampler for every rank in turn, as the controller would
// (marking each answer consumed), and returns the per-rank answers.
func allRanks(t *testing.T, s *SeqlenBalanced, batch int, ready engine.ReadySlice, tags func(uint64) engine.Tags) [][]uint64 {
	t.Helper()
	parts := make([][]uint64, s.DPSize())
	for rank := range parts {
		sampled, consumed := mustSample(t, s, engine.SampleRequest{
			Partition: "p", Task: "t", BatchSize: batch, Ready: ready, Options: ranked(rank, 0), Tags: tags,
		})
		// The first rank's call consumes the whole batch (every rank's
		// part); the others consume their own part again.
		if rank > 0 {
			if d := cmp.Diff(sampled, consumed); d != "" {
				t.Errorf("rank %d: consumed differs from sampled (-sampled +consumed):\n%s", rank, d)
			}
		}
		ready = without(ready, consumed)
		parts[rank] = sampled
	}
	return parts
}

func sumLengths(rows []uint64, lengths map[uint64]any) int64 {
	var sum int64
	for _, r := range rows {
		l, ok := engine.Tags{LengthTag: lengths[r]}.Int(LengthTag)
		if !ok {
			l = 1
		}
		sum += l
	}
	return sum
}

func TestSeqlenBalancedSampler(t *testing.T) {
	for _, tc := range []struct {
		name      string
		n, dp     int
		batch     int
		ready     engine.ReadySlice
		lengths   map[uint64]any // nil: no Tags function
		want      [][]uint64
		wantSums  []int64
		wantGroup bool // every part holds whole groups of n consecutive rows
	}{
		{
			// The reference splits contiguously when it has no partition
			// object; we balance on length 1 per row instead.
			name: "no tags", n: 1, dp: 2, batch: 2, ready: rows(0, 8),
			want: [][]uint64{{0, 3}, {1, 2}},
		},
		{
			name: "rows without the tag count 1", n: 1, dp: 2, batch: 2, ready: rows(0, 8),
			lengths: map[uint64]any{}, want: [][]uint64{{0, 3}, {1, 2}},
		},
		{
			name: "dp size 1", n: 2, dp: 1, batch: 4, ready: rows(0, 8),
			lengths: map[uint64]any{0: 5, 1: 7, 2: 1, 3: 100},
			want:    [][]uint64{{0, 1, 2, 3}}, wantSums: []int64{113},
		},
		{
			name: "balanced by total_lengths", n: 1, dp: 2, batch: 2, ready: rows(0, 8),
			lengths: map[uint64]any{0: 10, 1: 1, 2: 9, 3: 2},
			want:    [][]uint64{{2, 3}, {0, 1}}, wantSums: []int64{11, 11},
		},
		{
			name: "lengths decoded from JSON", n: 1, dp: 2, batch: 2, ready: rows(0, 8),
			lengths: map[uint64]any{0: 10.0, 1: 1.0, 2: 9.0, 3: 2.0},
			want:    [][]uint64{{2, 3}, {0, 1}}, wantSums: []int64{11, 11},
		},
		{
			// Groups (0,1) (2,3) (4,5) (6,7) weigh 100, 100, 60, 40. Row by
			// row, 10 90 | 50 50 | … would be split across ranks; whole
			// groups give 160 and 140.
			name: "groups stay intact", n: 2, dp: 2, batch: 4, ready: rows(0, 8),
			lengths: map[uint64]any{0: 10, 1: 90, 2: 50, 3: 50, 4: 30, 5: 30, 6: 20, 7: 20},
			want:    [][]uint64{{0, 1, 4, 5}, {2, 3, 6, 7}}, wantSums: []int64{160, 140}, wantGroup: true,
		},
		{
			name: "groups found past gaps", n: 2, dp: 2, batch: 2, ready: engine.ReadySlice{0, 2, 3, 5, 7, 8, 9},
			lengths: map[uint64]any{2: 1, 3: 1, 7: 3, 8: 3},
			want:    [][]uint64{{7, 8}, {2, 3}}, wantSums: []int64{6, 2}, wantGroup: true,
		},
		{
			name: "three ranks", n: 2, dp: 3, batch: 4, ready: rows(0, 12),
			lengths:   map[uint64]any{0: 8, 1: 8, 2: 1, 3: 1, 4: 5, 5: 5, 6: 4, 7: 4, 8: 2, 9: 2, 10: 7, 11: 7},
			wantGroup: true,
		},
		{
			name: "not enough ready", n: 2, dp: 2, batch: 4, ready: rows(0, 6),
			want: [][]uint64{nil, nil},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSeqlen(t, tc.n, tc.dp)
			var tags func(uint64) engine.Tags
			if tc.lengths != nil {
				tags = lengthTags(tc.lengths)
			}
			parts := allRanks(t, s, tc.batch, tc.ready, tags)
			if tc.want != nil {
				if d := cmp.Diff(tc.want, parts, equateEmpty); d != "" {
					t.Errorf("parts: got %v, want %v (-want +got):\n%s", parts, tc.want, d)
				}
			}
			if tc.wantSums != nil {
				var sums []int64
				for _, p := range parts {
					sums = append(sums, sumLengths(p, tc.lengths))
				}
				if d := cmp.Diff(tc.wantSums, sums); d != "" {
					t.Errorf("length sums: got %v, want %v", sums, tc.wantSums)
				}
			}
			if len(parts[0]) == 0 {
				return
			}
			var all []uint64
			for rank, p := range parts {
				if len(p) != tc.batch {
					t.Errorf("rank %d: got %d rows, want %d", rank, len(p), tc.batch)
				}
				if !slices.IsSorted(p) {
					t.Errorf("rank %d: rows %v not ascending", rank, p)
				}
				if tc.wantGroup {
					for i := 0; i < len(p); i += tc.n {
						if p[i+tc.n-1]-p[i] != uint64(tc.n-1) {
							t.Errorf("rank %d: rows %v split a group at %d", rank, p, i)
						}
					}
				}
				all = append(all, p...)
			}
			slices.Sort(all)
			if got := len(slices.Compact(all)); got != tc.batch*tc.dp {
				t.Errorf("distinct rows over all ranks: got %d, want %d", got, tc.batch*tc.dp)
			}
		})
	}
}

func TestSeqlenBalancedErrors(t *testing.T) {
	for _, tc := range []struct{ n, dp int }{{1, 0}, {1, -1}, {0, 2}, {-1, 2}} {
		if _, err := NewSeqlenBalanced(tc.n, tc.dp); err == nil {
			t.Errorf("NewSeqlenBalanced(%d, %d): got nil error, want ErrInvalid", tc.n, tc.dp)
		} else {
			wantErr(t, err, engine.ErrInvalid)
		}
	}
	for _, tc := range []struct {
		name  string
		batch int
		opts  engine.SamplingOptions
		tags  func(uint64) engine.Tags
	}{
		{name: "batch not a multiple of n", batch: 3, opts: ranked(0, 0)},
		{name: "negative batch", batch: -2, opts: ranked(0, 0)},
		{name: "no rank", batch: 2, opts: engine.SamplingOptions{}},
		{name: "negative rank", batch: 2, opts: ranked(-1, 0)},
		{name: "negative length", batch: 2, opts: ranked(0, 0), tags: lengthTags(map[uint64]any{1: -5})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSeqlen(t, 2, 2)
			_, _, err := s.Sample(engine.SampleRequest{
				Partition: "p", Task: "t", BatchSize: tc.batch, Ready: rows(0, 8), Options: tc.opts, Tags: tc.tags,
			})
			wantErr(t, err, engine.ErrInvalid)
			if s.Cached("p", "t", ranked(0, 0)) {
				t.Errorf("Cached after an error: got true, want false")
			}
		})
	}
}

func TestSeqlenBalancedCache(t *testing.T) {
	lengths := map[uint64]any{0: 10, 1: 1, 2: 9, 3: 2, 4: 3, 5: 3, 6: 4, 7: 4}
	tags := lengthTags(lengths)
	req := func(partition string, ready engine.ReadySlice, opts engine.SamplingOptions) engine.SampleRequest {
		return engine.SampleRequest{Partition: partition, Task: "t", BatchSize: 2, Ready: ready, Options: opts, Tags: tags}
	}

	t.Run("same batch returns the same parts", func(t *testing.T) {
		s := newSeqlen(t, 1, 2)
		first, _ := mustSample(t, s, req("p", rows(0, 8), ranked(0, 0)))
		wantRows(t, first, first, []uint64{2, 3})
		// Rank 1 polls after rank 0 consumed its rows: the controller asks
		// because Cached says yes, though fewer than 2×2 rows are ready.
		if !s.Cached("p", "t", ranked(1, 0)) {
			t.Fatalf("Cached(rank 1): got false, want true")
		}
		sampled, consumed := mustSample(t, s, req("p", engine.ReadySlice{0, 1}, ranked(1, 0)))
		wantRows(t, sampled, consumed, []uint64{0, 1})
		sampled, consumed = mustSample(t, s, req("p", engine.ReadySlice{}, ranked(0, 0)))
		wantRows(t, sampled, consumed, []uint64{2, 3})
	})

	t.Run("different batch index is not cached", func(t *testing.T) {
		s := newSeqlen(t, 1, 2)
		mustSample(t, s, req("p", rows(0, 8), ranked(0, 0)))
		if s.Cached("p", "t", ranked(0, 1)) {
			t.Errorf("Cached(batch 1): got true, want false")
		}
		sampled, _ := mustSample(t, s, req("p", rows(4, 8), ranked(0, 1)))
		if len(sampled) != 2 || sampled[0] < 4 {
			t.Errorf("batch 1: got %v, want two rows from 4..7", sampled)
		}
	})

	t.Run("cached for every rank", func(t *testing.T) {
		s := newSeqlen(t, 1, 3)
		// Rank 2 is first to call; every rank below dp size is cached.
		mustSample(t, s, req("p", rows(0, 8), ranked(2, 5)))
		for _, tc := range []struct {
			name string
			task string
			opts engine.SamplingOptions
			want bool
		}{
			{"rank 0", "t", ranked(0, 5), true},
			{"rank 1", "t", ranked(1, 5), true},
			{"rank 2", "t", ranked(2, 5), true},
			{"rank at dp size", "t", ranked(3, 5), false},
			{"negative rank", "t", ranked(-1, 5), false},
			{"no rank", "t", engine.SamplingOptions{BatchIndex: 5}, false},
			{"other batch", "t", ranked(0, 4), false},
			{"other task", "u", ranked(0, 5), false},
		} {
			if got := s.Cached("p", tc.task, tc.opts); got != tc.want {
				t.Errorf("%s: Cached: got %v, want %v", tc.name, got, tc.want)
			}
		}
	})

	t.Run("clear cache only that partition", func(t *testing.T) {
		s := newSeqlen(t, 1, 2)
		mustSample(t, s, req("p", rows(0, 8), ranked(0, 0)))
		mustSample(t, s, req("q", rows(0, 8), ranked(0, 0)))
		s.ClearCache("p")
		if s.Cached("p", "t", ranked(1, 0)) {
			t.Errorf("Cached(p) after ClearCache(p): got true, want false")
		}
		if !s.Cached("q", "t", ranked(1, 0)) {
			t.Errorf("Cached(q) after ClearCache(p): got false, want true")
		}
		// p balances afresh over what is ready now.
		sampled, _ := mustSample(t, s, req("p", rows(4, 8), ranked(0, 0)))
		if len(sampled) != 2 || sampled[0] < 4 {
			t.Errorf("after ClearCache: got %v, want two rows from 4..7", sampled)
		}
	})

	t.Run("insufficient ready is not cached", func(t *testing.T) {
		s := newSeqlen(t, 1, 2)
		sampled, consumed := mustSample(t, s, req("p", rows(0, 3), ranked(0, 0)))
		wantRows(t, sampled, consumed, nil)
		if s.Cached("p", "t", ranked(0, 0)) {
			t.Errorf("Cached: got true, want false")
		}
	})

	t.Run("rank at or past dp size is refused", func(t *testing.T) {
		// The reference's sampler gave it nothing, after balancing (and
		// consuming) a batch for the real ranks; a waiting fetch of it
		// then waited for ever.
		s := newSeqlen(t, 1, 2)
		for _, rank := range []int{2, 7} {
			_, _, err := s.Sample(req("p", rows(0, 8), ranked(rank, 0)))
			if !errors.Is(err, engine.ErrInvalid) || !strings.Contains(err.Error(), fmt.Sprintf("dp rank %d out of range [0, 2)", rank)) {
				t.Errorf("rank %d: %v, want ErrInvalid naming the range", rank, err)
			}
		}
		sampled, _ := mustSample(t, s, req("p", rows(0, 8), ranked(0, 0)))
		wantRows(t, sampled, sampled, []uint64{2, 3})
	})
}

// splitCases are the samplers that split a batch between two DP ranks,
// each with a request for a fresh batch of one row per rank.
var splitCases = []struct {
	name  string
	make  func() propSampler
	fresh engine.SampleRequest
}{
	{"seqlen", func() propSampler { s, _ := NewSeqlenBalanced(1, 2); return s }, engine.SampleRequest{BatchSize: 1}},
	{"token_budget", func() propSampler { s, _ := NewTokenBudget(1, 2); return s }, engine.SampleRequest{BatchSize: 1, TokenBudget: 1}},
}

// TestClearedPartRefills: a rank whose part of a cached batch was cleared
// before it fetched it (the first rank's call consumed every part) gets a
// part of its own from the rows ready now, as a group whose cached batch
// was cleared does (RankAware, GRPO). It used to get nothing, forever:
// the controller asks a cached batch again and again, and an empty answer
// means "not yet" (ErrDone once the partition is done, though later
// batches hold the rank's rows).
func TestClearedPartRefills(t *testing.T) {
	for _, tc := range splitCases {
		t.Run(tc.name, func(t *testing.T) {
			s := tc.make()
			req := tc.fresh
			req.Partition, req.Task, req.Ready, req.Options = "p", "t", rows(0, 4), ranked(0, 0)
			var entries [][]byte
			req.Journal = func(e []byte) { entries = append(entries, e) }
			sampled, consumed := mustSample(t, s, req)
			if len(sampled) != 1 || len(consumed) != 2 {
				t.Fatalf("rank 0: got sampled %v, consumed %v; want a row, and both ranks' rows", sampled, consumed)
			}
			part1 := without(consumed, sampled)
			s.ForgetRows("p", part1)

			ready := without(rows(0, 4), consumed)
			req.Ready, req.Options = ready, ranked(1, 0)
			sampled, consumed = mustSample(t, s, req)
			if len(sampled) != 1 || !slices.Contains(ready, sampled[0]) {
				t.Fatalf("rank 1 after its part was cleared: got %v, want one of the ready rows %v", sampled, ready)
			}
			wantRows(t, sampled, consumed, sampled)
			again, _ := mustSample(t, s, req)
			wantRows(t, again, again, sampled) // its peers get the same part

			// The journal, with the clear, makes the same state.
			replayed := tc.make()
			for i, e := range entries {
				if err := replayed.ApplyEntry(e); err != nil {
					t.Fatalf("ApplyEntry(%d): %v", i, err)
				}
				if i == 0 {
					replayed.ForgetRows("p", part1)
				}
			}
			want, _ := s.SaveState()
			got, _ := replayed.SaveState()
			if d := cmp.Diff(string(want), string(got)); d != "" {
				t.Errorf("replayed state (-live +replayed):\n%s", d)
			}
		})
	}
}
