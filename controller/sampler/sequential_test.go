package sampler

import (
	"testing"

	"github.com/tqgo/tq/engine"
)

func TestSequentialSampler(t *testing.T) {
	for _, tc := range []struct {
		name  string
		ready engine.ReadySet
		batch int
		opts  engine.SamplingOptions
		want  []uint64
	}{
		{name: "basic", ready: rows(0, 6), batch: 3, want: []uint64{0, 1, 2}},
		{name: "empty ready", ready: engine.ReadySlice{}, batch: 3, want: nil},
		{name: "nil ready", ready: nil, batch: 3, want: nil},
		{name: "batch larger than ready", ready: engine.ReadySlice{0, 1}, batch: 5, want: []uint64{0, 1}},
		{name: "zero batch", ready: rows(0, 4), batch: 0, want: nil},
		{name: "exact", ready: rows(0, 4), batch: 4, want: []uint64{0, 1, 2, 3}},
		// The ready set's order is ascending by contract; Sequential passes
		// on whatever order it yields, as the reference does.
		{name: "set order kept", ready: engine.ReadySlice{10, 5, 15, 20, 8}, batch: 3, want: []uint64{10, 5, 15}},
		{name: "duplicates kept", ready: engine.ReadySlice{0, 1, 0, 2, 1, 3}, batch: 4, want: []uint64{0, 1, 0, 2}},
		{
			name: "options ignored", ready: rows(0, 4), batch: 2,
			opts: engine.SamplingOptions{HasRank: true, DPRank: 3, BatchIndex: 7, Params: map[string]any{"extra": "ignored"}},
			want: []uint64{0, 1},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sampled, consumed := mustSample(t, NewSequential(), engine.SampleRequest{
				Partition: "p", Task: "t", BatchSize: tc.batch, Ready: tc.ready, Options: tc.opts,
			})
			wantRows(t, sampled, consumed, tc.want)
		})
	}
}

// TestSequentialNegativeBatch pins where we differ from the reference, which
// follows Python slicing (ready[:-1] drops the last row): a negative batch
// size is an error.
func TestSequentialNegativeBatch(t *testing.T) {
	sampled, consumed, err := NewSequential().Sample(engine.SampleRequest{BatchSize: -1, Ready: rows(0, 4)})
	wantErr(t, err, engine.ErrInvalid)
	if sampled != nil || consumed != nil {
		t.Errorf("got %v, %v with the error, want nil, nil", sampled, consumed)
	}
}

// TestSequentialWalksOnlyTheBatch checks that Sequential stops walking the
// ready set once it has the batch.
func TestSequentialWalksOnlyTheBatch(t *testing.T) {
	for _, tc := range []struct {
		name       string
		ready      int
		batch      int
		wantCalls  int
		wantLength int
	}{
		{name: "large set", ready: 1_000_000, batch: 8, wantCalls: 8, wantLength: 8},
		{name: "small set", ready: 3, batch: 8, wantCalls: 3, wantLength: 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ready := &countingReady{n: tc.ready}
			sampled, _ := mustSample(t, NewSequential(), engine.SampleRequest{BatchSize: tc.batch, Ready: ready})
			if len(sampled) != tc.wantLength {
				t.Errorf("len(sampled): got %d, want %d", len(sampled), tc.wantLength)
			}
			if ready.calls != tc.wantCalls {
				t.Errorf("Ascend callbacks: got %d, want %d", ready.calls, tc.wantCalls)
			}
		})
	}
}

// BenchmarkSequential shows that a call costs the same however many rows
// are ready: callbacks/op stays at the batch size.
func BenchmarkSequential(b *testing.B) {
	const batch = 256
	for _, bc := range []struct {
		name  string
		ready int
	}{
		{"ready=10k", 10_000},
		{"ready=1M", 1_000_000},
	} {
		b.Run(bc.name, func(b *testing.B) {
			s := NewSequential()
			ready := &countingReady{n: bc.ready}
			req := engine.SampleRequest{Partition: "p", Task: "t", BatchSize: batch, Ready: ready}
			b.ReportAllocs()
			ops := 0
			for b.Loop() {
				if _, _, err := s.Sample(req); err != nil {
					b.Fatal(err)
				}
				ops++
			}
			b.ReportMetric(float64(ready.calls)/float64(ops), "callbacks/op")
		})
	}
}
