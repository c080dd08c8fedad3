package sampler

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/tqgo/tq/engine"
)

func newGRPO(t testing.TB, n int) *GRPO {
	t.Helper()
	g, err := NewGRPO(n)
	if err != nil {
		t.Fatalf("NewGRPO(%d): %v", n, err)
	}
	return g
}

func TestGRPOGroupNSampler(t *testing.T) {
	for _, tc := range []struct {
		name  string
		n     int
		ready engine.ReadySet
		batch int
		opts  engine.SamplingOptions
		want  []uint64
	}{
		{name: "basic", n: 4, ready: rows(0, 8), batch: 8, want: rows(0, 8)},
		{name: "partial batch", n: 4, ready: rows(0, 12), batch: 8, want: rows(0, 8)},
		{name: "groups of 2", n: 2, ready: rows(0, 16), batch: 8, want: rows(0, 8)},
		{name: "groups of 8", n: 8, ready: rows(0, 16), batch: 8, want: rows(0, 8)},
		{name: "insufficient ready", n: 4, ready: rows(0, 4), batch: 8, want: nil},
		{name: "exact multiple", n: 4, ready: rows(0, 8), batch: 8, want: rows(0, 8)},
		{name: "zero batch", n: 2, ready: rows(0, 4), batch: 0, want: nil},
		{name: "empty ready", n: 2, ready: engine.ReadySlice{}, batch: 4, want: nil},
		{name: "single sample per prompt", n: 1, ready: rows(0, 6), batch: 3, want: []uint64{0, 1, 2}},
		{name: "large group", n: 10, ready: rows(0, 20), batch: 20, want: rows(0, 20)},
		{
			name: "options ignored", n: 4, ready: rows(0, 8), batch: 8,
			opts: engine.SamplingOptions{Params: map[string]any{"extra": "ignored", "another": 42}},
			want: rows(0, 8),
		},
		{
			name: "non-sequential indexes", n: 4, ready: engine.ReadySlice{3, 4, 5, 6, 9, 10, 11, 12}, batch: 8,
			want: []uint64{3, 4, 5, 6, 9, 10, 11, 12},
		},
		{name: "no complete groups", n: 3, ready: engine.ReadySlice{0, 1, 3, 4, 6, 7}, batch: 6, want: nil},
		{
			name: "mixed groups", n: 3, ready: engine.ReadySlice{0, 1, 3, 4, 5, 6, 7, 9, 10, 11}, batch: 6,
			want: []uint64{3, 4, 5, 9, 10, 11},
		},
		{
			name: "groups not aligned to n", n: 2, ready: engine.ReadySlice{0, 2, 3, 5, 6, 7}, batch: 4,
			want: []uint64{2, 3, 5, 6},
		},
		{name: "fewer groups than wanted", n: 4, ready: rows(0, 16), batch: 20, want: nil},
		{name: "some of the groups", n: 4, ready: rows(0, 16), batch: 12, want: rows(0, 12)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sampled, consumed := mustSample(t, newGRPO(t, tc.n), engine.SampleRequest{
				Partition: "p", Task: "t", BatchSize: tc.batch, Ready: tc.ready, Options: tc.opts,
			})
			wantRows(t, sampled, consumed, tc.want)
		})
	}
}

func TestGRPOErrors(t *testing.T) {
	for _, n := range []int{0, -2} {
		if _, err := NewGRPO(n); !errors.Is(err, engine.ErrInvalid) {
			t.Errorf("NewGRPO(%d): got error %v, want one wrapping ErrInvalid", n, err)
		}
	}
	for _, tc := range []struct {
		name  string
		ready engine.ReadySet
		batch int
		opts  engine.SamplingOptions
	}{
		{name: "batch not a multiple of n", ready: rows(0, 8), batch: 7},
		{name: "negative batch", ready: rows(0, 8), batch: -4},
		{name: "negative rank", ready: rows(0, 8), batch: 4, opts: ranked(-1, 0)},
		// The reference sorts its input; our ready sets are ascending by
		// contract, and one that is not is refused rather than misread.
		{name: "ready set out of order", ready: engine.ReadySlice{10, 11, 12, 5, 6, 7, 8, 9}, batch: 8},
		{name: "duplicate ready rows", ready: engine.ReadySlice{0, 1, 1, 2, 3}, batch: 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sampled, consumed, err := newGRPO(t, 4).Sample(engine.SampleRequest{
				Partition: "p", Task: "t", BatchSize: tc.batch, Ready: tc.ready, Options: tc.opts,
			})
			wantErr(t, err, engine.ErrInvalid)
			if sampled != nil || consumed != nil {
				t.Errorf("got %v, %v with the error, want nil, nil", sampled, consumed)
			}
		})
	}
}

// TestGRPOStopsEarly checks that GRPO stops walking the ready set once it
// has enough groups.
func TestGRPOStopsEarly(t *testing.T) {
	ready := &countingReady{n: 1_000_000}
	sampled, _ := mustSample(t, newGRPO(t, 4), engine.SampleRequest{BatchSize: 8, Ready: ready})
	wantRows(t, sampled, sampled, rows(0, 8))
	if ready.calls != 8 {
		t.Errorf("Ascend callbacks: got %d, want 8", ready.calls)
	}
	// So it does by the rows' origin while the indexes are in the order
	// the rows were made.
	ready = &countingReady{n: 1_000_000}
	sampled, _ = mustSample(t, newGRPO(t, 4), engine.SampleRequest{BatchSize: 8, Ready: ready,
		Origin: func(gi uint64) engine.RowOrigin {
			return engine.RowOrigin{Created: gi + 1, Pos: uint32(gi % 16), Size: 16}
		}})
	wantRows(t, sampled, sampled, rows(0, 8))
	if ready.calls != 8 {
		t.Errorf("Ascend callbacks with origins: got %d, want 8", ready.calls)
	}
}

func TestGRPOCache(t *testing.T) {
	req := func(ready engine.ReadySlice, opts engine.SamplingOptions) engine.SampleRequest {
		return engine.SampleRequest{Partition: "p", Task: "t", BatchSize: 4, Ready: ready, Options: opts}
	}
	t.Run("same key returns the cached batch", func(t *testing.T) {
		g := newGRPO(t, 2)
		if g.Cached("p", "t", ranked(0, 0)) {
			t.Fatalf("Cached before any call: got true, want false")
		}
		first, _ := mustSample(t, g, req(rows(0, 8), ranked(0, 0)))
		wantRows(t, first, first, rows(0, 4))
		if !g.Cached("p", "t", ranked(0, 0)) {
			t.Errorf("Cached after the first call: got false, want true")
		}
		// A peer of the group calls after the rows were consumed.
		sampled, consumed := mustSample(t, g, req(rows(4, 8), ranked(0, 0)))
		wantRows(t, sampled, consumed, rows(0, 4))
	})
	t.Run("different batch index samples anew", func(t *testing.T) {
		g := newGRPO(t, 2)
		mustSample(t, g, req(rows(0, 8), ranked(0, 0)))
		sampled, consumed := mustSample(t, g, req(rows(4, 8), ranked(0, 1)))
		wantRows(t, sampled, consumed, rows(4, 8))
	})
	t.Run("no rank, no cache", func(t *testing.T) {
		g := newGRPO(t, 2)
		mustSample(t, g, req(rows(0, 8), engine.SamplingOptions{}))
		if g.Cached("p", "t", engine.SamplingOptions{}) || g.Cached("p", "t", ranked(0, 0)) {
			t.Errorf("Cached after a call without rank: got true, want false")
		}
		sampled, consumed := mustSample(t, g, req(rows(4, 8), engine.SamplingOptions{}))
		wantRows(t, sampled, consumed, rows(4, 8))
	})
	t.Run("not enough is not cached", func(t *testing.T) {
		g := newGRPO(t, 2)
		sampled, consumed := mustSample(t, g, req(engine.ReadySlice{0, 2, 4, 6}, ranked(0, 0)))
		wantRows(t, sampled, consumed, nil)
		if g.Cached("p", "t", ranked(0, 0)) {
			t.Errorf("Cached after an empty answer: got true, want false")
		}
	})
	t.Run("clear cache only that partition", func(t *testing.T) {
		g := newGRPO(t, 2)
		for _, p := range []string{"p", "q"} {
			mustSample(t, g, engine.SampleRequest{Partition: p, Task: "t", BatchSize: 4, Ready: rows(0, 8), Options: ranked(0, 0)})
		}
		g.ClearCache("p")
		if g.Cached("p", "t", ranked(0, 0)) {
			t.Errorf("Cached(p) after ClearCache(p): got true, want false")
		}
		if !g.Cached("q", "t", ranked(0, 0)) {
			t.Errorf("Cached(q) after ClearCache(p): got false, want true")
		}
	})
}

// puts builds the origin of rows made by a sequence of puts, each the
// global indexes it got, in its order: the rows of the first put are made
// first.
func puts(ps ...[]uint64) func(uint64) engine.RowOrigin {
	m := map[uint64]engine.RowOrigin{}
	made := uint64(0)
	for _, p := range ps {
		for i, gi := range p {
			made++
			m[gi] = engine.RowOrigin{Created: made, Pos: uint32(i), Size: uint32(len(p))}
		}
	}
	return func(gi uint64) engine.RowOrigin { return m[gi] }
}

// TestGRPOGroupsByPut: a group is n rows one put made together, whatever
// indexes it got, and never two puts' rows; rows put fewer than n at a
// time are grouped in the order they were made.
func TestGRPOGroupsByPut(t *testing.T) {
	for _, tc := range []struct {
		name  string
		n     int
		puts  [][]uint64
		ready engine.ReadySlice // nil: every row put
		batch int
		final bool
		want  []uint64
	}{
		{
			// A put that reused a freed index (0) ahead of fresh ones:
			// by index the windows would pair 2 3 and 4 5.
			name: "reused index", n: 2, puts: [][]uint64{{0, 2, 3, 4, 5, 6}}, batch: 4,
			want: []uint64{0, 2, 3, 4},
		},
		{
			name: "freed indexes in release order", n: 2, puts: [][]uint64{{7, 3, 5, 1}}, batch: 4,
			want: []uint64{5, 1, 7, 3}, // the walk by index finds 5 1 whole first
		},
		{
			// Two puts of two groups each, interleaved indexes: groups stay
			// within their put, in the order the walk by index finds them.
			name: "interleaved puts", n: 2, puts: [][]uint64{{1, 3, 5, 7}, {0, 2, 4, 6}}, batch: 8,
			want: []uint64{0, 2, 1, 3, 4, 6, 5, 7},
		},
		{
			// Consecutive indexes across two puts are not a group: the
			// first put's odd row has no partner.
			name: "no group across puts", n: 2, puts: [][]uint64{{0, 1, 2}, {3, 4}}, batch: 4,
			want: []uint64{0, 1, 3, 4},
		},
		{
			name: "a member not ready", n: 2, puts: [][]uint64{{0, 1, 2, 3, 4, 5}}, ready: engine.ReadySlice{0, 2, 3, 4, 5}, batch: 4,
			want: []uint64{2, 3, 4, 5},
		},
		{
			// Not aligned from the put's first row: 1 2 is half of two groups.
			name: "aligned within the put", n: 2, puts: [][]uint64{{0, 1, 2, 3}}, ready: engine.ReadySlice{1, 2}, batch: 2, final: true,
			want: nil,
		},
		{
			// Responses put one at a time: grouped in the order they were
			// made (5 was made before 2), as the reference groups indexes.
			name: "one per put", n: 2, puts: [][]uint64{{5}, {2}, {9}, {1}}, batch: 4,
			want: []uint64{5, 2, 9, 1},
		},
		{
			name: "one per put, a gap", n: 3, puts: [][]uint64{{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9}, {10}, {11}},
			ready: engine.ReadySlice{0, 1, 3, 4, 5, 6, 7, 9, 10, 11}, batch: 6,
			want: []uint64{3, 4, 5, 9, 10, 11},
		},
		{
			// A small put next to a put of whole groups does not take its rows.
			name: "small put beside a whole one", n: 2, puts: [][]uint64{{0}, {1, 2}, {3}}, batch: 4, final: true,
			want: []uint64{1, 2},
		},
		{
			name: "final takes the whole groups there are", n: 2, puts: [][]uint64{{4, 0, 1}, {2, 3}}, batch: 6, final: true,
			want: []uint64{2, 3, 4, 0},
		},
		{name: "not enough groups", n: 2, puts: [][]uint64{{4, 0, 1}, {2, 3}}, batch: 6, want: nil},
		{
			// The walk meets 5 (made third) last: rows put one at a time
			// pair in the order they were put all the same.
			name: "one per put, met out of order", n: 2, puts: [][]uint64{{0}, {1}, {5}, {2}, {3}, {4}},
			batch: 6, final: true, want: []uint64{0, 1, 5, 2, 3, 4},
		},
		{
			// Two prompts' responses put one at a time on reused indexes
			// 7 0 1 8: by index 0 1 looked like a pair.
			name: "one per put, reused indexes", n: 2, puts: [][]uint64{{7}, {0}, {1}, {8}},
			batch: 4, want: []uint64{7, 0, 1, 8},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ready := tc.ready
			if ready == nil {
				for _, p := range tc.puts {
					ready = append(ready, p...)
				}
				slices.Sort(ready)
			}
			sampled, consumed := mustSample(t, newGRPO(t, tc.n), engine.SampleRequest{
				Partition: "p", Task: "t", BatchSize: tc.batch, Ready: ready, Origin: puts(tc.puts...), Final: tc.final,
			})
			wantRows(t, sampled, consumed, tc.want)
		})
	}
}

// TestGRPOUnknownOrigin: rows whose origin is not known form no group.
func TestGRPOUnknownOrigin(t *testing.T) {
	origin := puts([]uint64{0, 1, 2, 3})
	sampled, _ := mustSample(t, newGRPO(t, 2), engine.SampleRequest{
		Partition: "p", Task: "t", BatchSize: 2, Ready: engine.ReadySlice{0, 1, 2, 3, 8, 9}, Final: true,
		Origin: func(gi uint64) engine.RowOrigin {
			if gi >= 2 {
				return engine.RowOrigin{}
			}
			return origin(gi)
		},
	})
	if !slices.Equal(sampled, []uint64{0, 1}) {
		t.Fatalf("sampled %v, want [0 1]", sampled)
	}
}

// TestBalancedSamplersKeepPutGroupsWhole: the samplers built on GRPO's
// groups (sequence-length balancing, the token budget) give each rank
// whole groups of one put, in the order they were put, when the put's
// indexes are not consecutive.
func TestBalancedSamplersKeepPutGroupsWhole(t *testing.T) {
	put := []uint64{0, 2, 3, 4, 5, 6, 7, 8} // 0 reused, then fresh ones
	origin := puts(put)
	ready := slices.Sorted(slices.Values(put))
	groups := map[uint64]int{} // row → its group: positions 0-1, 2-3, ...
	for i, gi := range put {
		groups[gi] = i / 2
	}
	tb, err := NewTokenBudget(2, 2)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		s    engine.Sampler
		req  engine.SampleRequest
	}{
		{"seqlen_balanced", newSeqlen(t, 2, 2), engine.SampleRequest{BatchSize: 4}},
		{"token_budget", tb, engine.SampleRequest{TokenBudget: 4, Final: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var all []uint64
			for rank := range 2 {
				req := tc.req
				req.Partition, req.Task, req.Ready, req.Origin, req.Options = "p", "t", engine.ReadySlice(ready), origin, ranked(rank, 0)
				sampled, _ := mustSample(t, tc.s, req)
				if len(sampled)%2 != 0 {
					t.Fatalf("rank %d: %v is not whole groups of 2", rank, sampled)
				}
				for i := 0; i < len(sampled); i += 2 {
					a, b := sampled[i], sampled[i+1]
					if groups[a] != groups[b] || slices.Index(put, a) > slices.Index(put, b) {
						t.Errorf("rank %d: %v pairs %d with %d, not a group of the put %v in its order", rank, sampled, a, b, put)
					}
				}
				all = append(all, sampled...)
			}
			if len(all) != len(put) {
				t.Errorf("ranks got %v, want all of %v", all, put)
			}
		})
	}
}

// BenchmarkGRPO takes a batch of 256 rows in groups of 8 from ready sets
// of 10k and 1M rows, put 64 at a time (put=64) or one at a time (put=1),
// with the rows' indexes in the order they were made (made: fresh
// indexes), in reverse (reversed: freed indexes reused in the order they
// were freed) or with each put's rows spread over the whole index space
// (strided, the worst case for whole puts: no group is whole until the
// walk nears its end). callbacks/op is how many ready rows a call looked
// at: the batch's worth when groups of whole puts are found as the walk
// goes; every ready row for rows put one at a time, whose groups follow
// the order they were made, which only the whole walk knows.
func BenchmarkGRPO(b *testing.B) {
	const batch, n = 256, 8
	for _, bc := range []struct {
		order string
		put   uint64
	}{{"made", 64}, {"reversed", 64}, {"strided", 64}, {"made", 1}, {"reversed", 1}} {
		for _, size := range []uint64{10_000, 1_000_000} {
			b.Run(fmt.Sprintf("put=%d/order=%s/ready=%d", bc.put, bc.order, size), func(b *testing.B) {
				g := newGRPO(b, n)
				origin := func(gi uint64) engine.RowOrigin {
					made := gi
					switch bc.order {
					case "reversed":
						made = size - 1 - gi
					case "strided":
						made = gi%1000*(size/1000) + gi/1000
					}
					return engine.RowOrigin{Created: made + 1, Pos: uint32(made % bc.put), Size: uint32(bc.put)}
				}
				ready := &countingReady{n: int(size)}
				req := engine.SampleRequest{Partition: "p", Task: "t", BatchSize: batch, Ready: ready, Origin: origin}
				b.ReportAllocs()
				ops := 0
				for b.Loop() {
					if s, _, err := g.Sample(req); err != nil || len(s) != batch {
						b.Fatalf("sampled %d rows, %v", len(s), err)
					}
					ops++
				}
				b.ReportMetric(float64(ready.calls)/float64(ops), "callbacks/op")
			})
		}
	}
}
