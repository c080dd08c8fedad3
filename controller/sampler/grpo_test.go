package sampler

import (
	"errors"
	"testing"

	"github.com/tqgo/tq/engine"
)

func newGRPO(t *testing.T, n int) *GRPO {
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
