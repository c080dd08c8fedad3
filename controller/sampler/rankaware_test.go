package sampler

import (
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/tqgo/tq/engine"
)

func TestRankAwareSampler(t *testing.T) {
	type call struct {
		partition, task string
		ready           engine.ReadySet
		batch           int
		opts            engine.SamplingOptions
		want            []uint64
	}
	for _, tc := range []struct {
		name  string
		calls []call
	}{
		{"basic", []call{
			{"p", "t", rows(0, 6), 3, ranked(0, 0), []uint64{0, 1, 2}},
		}},
		{"same batch index is cached", []call{
			{"p", "t", rows(0, 6), 3, ranked(0, 0), []uint64{0, 1, 2}},
			{"p", "t", rows(0, 6), 3, ranked(0, 0), []uint64{0, 1, 2}},
		}},
		{"different batch index samples anew", []call{
			// The reference test passes the same ready list twice; both
			// batches start at its beginning.
			{"p", "t", rows(0, 8), 2, ranked(0, 0), []uint64{0, 1}},
			{"p", "t", rows(0, 8), 2, ranked(0, 1), []uint64{0, 1}},
		}},
		{"different ranks sample anew", []call{
			{"p", "t", rows(0, 8), 2, ranked(0, 0), []uint64{0, 1}},
			{"p", "t", rows(0, 8), 2, ranked(1, 0), []uint64{0, 1}},
		}},
		{"cached batch survives a changed ready list", []call{
			{"p", "t", rows(0, 6), 3, ranked(0, 0), []uint64{0, 1, 2}},
			{"p", "t", engine.ReadySlice{3, 4, 5}, 3, ranked(0, 0), []uint64{0, 1, 2}},
			{"p", "t", engine.ReadySlice{}, 3, ranked(0, 0), []uint64{0, 1, 2}},
		}},
		{"empty ready", []call{
			{"p", "t", engine.ReadySlice{}, 3, ranked(0, 0), nil},
		}},
		{"batch larger than ready", []call{
			{"p", "t", engine.ReadySlice{0, 1}, 5, ranked(0, 0), nil},
			// Nothing was cached: a later call with enough rows samples.
			{"p", "t", rows(0, 5), 5, ranked(0, 0), rows(0, 5)},
		}},
		{"zero batch", []call{
			{"p", "t", rows(0, 4), 0, ranked(0, 0), nil},
			{"p", "t", rows(0, 4), 2, ranked(0, 0), []uint64{0, 1}},
		}},
		{"per-task state", []call{
			{"p", "task0", rows(0, 8), 2, ranked(0, 0), []uint64{0, 1}},
			{"p", "task1", rows(2, 8), 2, ranked(0, 0), []uint64{2, 3}},
			{"p", "task0", rows(4, 8), 2, ranked(0, 0), []uint64{0, 1}},
			{"p", "task1", rows(4, 8), 2, ranked(0, 0), []uint64{2, 3}},
		}},
		{"per-partition state", []call{
			{"partition0", "t", rows(0, 6), 2, ranked(0, 0), []uint64{0, 1}},
			{"partition1", "t", rows(2, 6), 2, ranked(0, 0), []uint64{2, 3}},
			{"partition0", "t", rows(4, 6), 2, ranked(0, 0), []uint64{0, 1}},
			{"partition1", "t", rows(4, 6), 2, ranked(0, 0), []uint64{2, 3}},
		}},
		{"options params ignored", []call{
			{"p", "t", rows(0, 6), 2, engine.SamplingOptions{
				HasRank: true, Params: map[string]any{"extra": "ignored", "another": 42},
			}, []uint64{0, 1}},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := NewRankAware()
			for i, c := range tc.calls {
				sampled, consumed := mustSample(t, r, engine.SampleRequest{
					Partition: c.partition, Task: c.task, BatchSize: c.batch, Ready: c.ready, Options: c.opts,
				})
				if !cmp.Equal(c.want, sampled, equateEmpty) || !cmp.Equal(c.want, consumed, equateEmpty) {
					t.Errorf("call %d: got %v, %v, want %v for both", i, sampled, consumed, c.want)
				}
			}
		})
	}
}

// TestRankAwareGroups plays the controller: every answer is marked
// consumed, so two data-replica groups get disjoint batches while the peers
// within a group get identical ones.
func TestRankAwareGroups(t *testing.T) {
	r := NewRankAware()
	ready := rows(0, 8)
	fetch := func(rank, batch int) []uint64 {
		t.Helper()
		opts := ranked(rank, batch)
		if ready.Len() < 2 && !r.Cached("p", "t", opts) {
			return nil // the controller would not call the sampler
		}
		sampled, consumed := mustSample(t, r, engine.SampleRequest{
			Partition: "p", Task: "t", BatchSize: 2, Ready: ready, Options: opts,
		})
		ready = without(ready, consumed)
		return sampled
	}
	for _, tc := range []struct {
		rank, batch int
		want        []uint64
	}{
		{0, 0, []uint64{0, 1}}, // group 0, first peer
		{1, 0, []uint64{2, 3}}, // group 1, first peer
		{0, 0, []uint64{0, 1}}, // group 0, second peer
		{0, 1, []uint64{4, 5}},
		{1, 1, []uint64{6, 7}},
		{1, 0, []uint64{2, 3}}, // group 1, second peer, nothing ready
		{1, 1, []uint64{6, 7}},
		{0, 1, []uint64{4, 5}},
		{0, 2, nil}, // all consumed
	} {
		got := fetch(tc.rank, tc.batch)
		wantRows(t, got, got, tc.want)
	}
}

func TestRankAwareErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		batch int
		opts  engine.SamplingOptions
	}{
		{name: "negative dp rank", batch: 2, opts: ranked(-1, 0)},
		{name: "no rank", batch: 2, opts: engine.SamplingOptions{}},
		{name: "negative batch", batch: -1, opts: ranked(0, 0)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := NewRankAware().Sample(engine.SampleRequest{
				Partition: "p", Task: "t", BatchSize: tc.batch, Ready: rows(0, 4), Options: tc.opts,
			})
			wantErr(t, err, engine.ErrInvalid)
		})
	}
}

func TestRankAwareCached(t *testing.T) {
	r := NewRankAware()
	mustSample(t, r, engine.SampleRequest{Partition: "p", Task: "t", BatchSize: 2, Ready: rows(0, 4), Options: ranked(1, 3)})
	mustSample(t, r, engine.SampleRequest{Partition: "q", Task: "t", BatchSize: 2, Ready: rows(0, 4), Options: ranked(1, 3)})
	for _, tc := range []struct {
		name            string
		partition, task string
		opts            engine.SamplingOptions
		want            bool
	}{
		{"same key", "p", "t", ranked(1, 3), true},
		{"no rank", "p", "t", engine.SamplingOptions{DPRank: 1, BatchIndex: 3}, false},
		{"other rank", "p", "t", ranked(0, 3), false},
		{"other batch", "p", "t", ranked(1, 4), false},
		{"other task", "p", "u", ranked(1, 3), false},
		{"other partition", "x", "t", ranked(1, 3), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := r.Cached(tc.partition, tc.task, tc.opts); got != tc.want {
				t.Errorf("Cached: got %v, want %v", got, tc.want)
			}
		})
	}
	t.Run("clear cache only that partition", func(t *testing.T) {
		r.ClearCache("p")
		if r.Cached("p", "t", ranked(1, 3)) {
			t.Errorf("Cached(p) after ClearCache(p): got true, want false")
		}
		if !r.Cached("q", "t", ranked(1, 3)) {
			t.Errorf("Cached(q) after ClearCache(p): got false, want true")
		}
		// p samples afresh.
		sampled, consumed := mustSample(t, r, engine.SampleRequest{
			Partition: "p", Task: "t", BatchSize: 2, Ready: rows(2, 4), Options: ranked(1, 3),
		})
		wantRows(t, sampled, consumed, []uint64{2, 3})
	})
}

// DropBatch takes one group's batch out of the cache (the others stay),
// returns its rows and journals the drop: a sampler that replays the
// journal ends with the same cache, and the next call for the batch takes
// fresh rows.
func TestDropBatch(t *testing.T) {
	for _, s := range []interface {
		engine.JournaledSampler
		engine.CachingSampler
		engine.BatchDropper
	}{NewRankAware(), newGRPO(t, 1)} {
		var log [][]byte
		j := func(e []byte) { log = append(log, e) }
		sample := func(rank, batch int, ready engine.ReadySet) []uint64 {
			got, _ := mustSample(t, s, engine.SampleRequest{Partition: "p", Task: "t", BatchSize: 2, Ready: ready, Options: ranked(rank, batch), Journal: j})
			return got
		}
		if got := sample(0, 0, rows(0, 8)); !slices.Equal(got, []uint64{0, 1}) {
			t.Fatalf("%T: group 0 got %v, want [0 1]", s, got)
		}
		if got := sample(1, 0, rows(2, 8)); !slices.Equal(got, []uint64{2, 3}) {
			t.Fatalf("%T: group 1 got %v, want [2 3]", s, got)
		}
		got, err := s.DropBatch("p", "t", ranked(0, 0), j)
		if err != nil || !slices.Equal(got, []uint64{0, 1}) {
			t.Fatalf("%T: DropBatch = %v, %v; want [0 1]", s, got, err)
		}
		if got, err := s.DropBatch("p", "t", ranked(0, 0), j); err != nil || got != nil {
			t.Fatalf("%T: DropBatch again = %v, %v; want nothing", s, got, err)
		}
		if s.Cached("p", "t", ranked(0, 0)) || !s.Cached("p", "t", ranked(1, 0)) {
			t.Fatalf("%T: after the drop: group 0 cached %v (want false), group 1 %v (want true)", s, s.Cached("p", "t", ranked(0, 0)), s.Cached("p", "t", ranked(1, 0)))
		}
		if got := sample(0, 0, rows(4, 8)); !slices.Equal(got, []uint64{4, 5}) {
			t.Fatalf("%T: group 0 after the drop got %v, want fresh rows [4 5]", s, got)
		}
		want, err := s.SaveState()
		if err != nil {
			t.Fatal(err)
		}
		var replayed interface {
			engine.JournaledSampler
		}
		switch s.(type) {
		case *RankAware:
			replayed = NewRankAware()
		default:
			replayed = newGRPO(t, 1)
		}
		for _, e := range log {
			if err := replayed.ApplyEntry(e); err != nil {
				t.Fatalf("%T: replay %s: %v", s, e, err)
			}
		}
		got2, err := replayed.SaveState()
		if err != nil || string(got2) != string(want) {
			t.Fatalf("%T: replayed state\n%s\nwant\n%s (%v)", s, got2, want, err)
		}
	}
}
