package sampler

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/internal/leaktest"
)

// TestMain fails the run when tests leave goroutines behind (those of
// the fuzzing engine are not TQ's).
func TestMain(m *testing.M) { leaktest.Main(m) }

// rows returns the ascending ready set lo, lo+1, …, hi-1.
func rows(lo, hi uint64) engine.ReadySlice {
	var r engine.ReadySlice
	for i := lo; i < hi; i++ {
		r = append(r, i)
	}
	return r
}

// without returns ready minus taken, as the controller's ready set looks
// after it marked taken consumed.
func without(ready engine.ReadySlice, taken []uint64) engine.ReadySlice {
	var out engine.ReadySlice
	for _, i := range ready {
		if !slices.Contains(taken, i) {
			out = append(out, i)
		}
	}
	return out
}

func ranked(rank, batch int) engine.SamplingOptions {
	return engine.SamplingOptions{HasRank: true, DPRank: rank, BatchIndex: batch}
}

// countingReady is the ready set 0, 1, …, n-1 that counts Ascend callbacks.
type countingReady struct {
	n     int
	calls int
}

func (c *countingReady) Len() int { return c.n }

func (c *countingReady) Ascend(fn func(uint64) bool) {
	for i := range c.n {
		c.calls++
		if !fn(uint64(i)) {
			return
		}
	}
}

var equateEmpty = cmpopts.EquateEmpty()

// mustSample calls s and fails the test on an error.
func mustSample(t *testing.T, s engine.Sampler, req engine.SampleRequest) (sampled, consumed []uint64) {
	t.Helper()
	sampled, consumed, err := s.Sample(req)
	if err != nil {
		t.Fatalf("Sample(%+v): got error %v, want nil", req, err)
	}
	return sampled, consumed
}

// wantRows fails unless both sampled and consumed equal want.
func wantRows(t *testing.T, sampled, consumed, want []uint64) {
	t.Helper()
	if d := cmp.Diff(want, sampled, equateEmpty); d != "" {
		t.Errorf("sampled: got %v, want %v (-want +got):\n%s", sampled, want, d)
	}
	if d := cmp.Diff(want, consumed, equateEmpty); d != "" {
		t.Errorf("consumed: got %v, want %v (-want +got):\n%s", consumed, want, d)
	}
}

// wantErr fails unless err wraps target.
func wantErr(t *testing.T, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("got error %v, want one wrapping %v", err, target)
	}
}

// factories builds a fresh sampler of every built-in kind.
var factories = []struct {
	name string
	new  func(t *testing.T) engine.Sampler
}{
	{"sequential", func(*testing.T) engine.Sampler { return NewSequential() }},
	{"grpo", func(t *testing.T) engine.Sampler {
		s, err := NewGRPO(2)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}},
	{"rank_aware", func(*testing.T) engine.Sampler { return NewRankAware() }},
	{"seqlen_balanced", func(t *testing.T) engine.Sampler {
		s, err := NewSeqlenBalanced(2, 2)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}},
}

// TestSamplerIntegration checks that every sampler answers the edge cases
// the same way: no rows (and no error) for an empty ready set or a zero
// batch, and equal sampled and consumed lists no longer than the batch.
func TestSamplerIntegration(t *testing.T) {
	for _, f := range factories {
		t.Run(f.name, func(t *testing.T) {
			opts := ranked(0, 0)
			for _, tc := range []struct {
				name  string
				ready engine.ReadySet
				batch int
			}{
				{"empty ready", engine.ReadySlice{}, 4},
				{"nil ready", nil, 4},
				{"zero batch", rows(0, 4), 0},
				{"empty ready zero batch", engine.ReadySlice{}, 0},
			} {
				t.Run(tc.name, func(t *testing.T) {
					s := f.new(t)
					sampled, consumed := mustSample(t, s, engine.SampleRequest{
						Partition: "p", Task: "t", BatchSize: tc.batch, Ready: tc.ready, Options: opts,
					})
					wantRows(t, sampled, consumed, nil)
					if c, ok := s.(engine.CachingSampler); ok && c.Cached("p", "t", opts) {
						t.Errorf("Cached after an empty answer: got true, want false")
					}
				})
			}
			t.Run("consistent", func(t *testing.T) {
				s := f.new(t)
				sampled, consumed := mustSample(t, s, engine.SampleRequest{
					Partition: "p", Task: "t", BatchSize: 4, Ready: rows(0, 8), Options: opts,
				})
				if len(sampled) == 0 || len(sampled) > 4 {
					t.Errorf("len(sampled): got %d, want 1..4", len(sampled))
				}
				// SeqlenBalanced's first call consumes the whole global
				// batch (every rank's part); the others consume what they
				// sample.
				for _, r := range sampled {
					if !slices.Contains(consumed, r) {
						t.Errorf("sampled row %d not consumed (sampled %v, consumed %v)", r, sampled, consumed)
					}
				}
				if _, whole := s.(*SeqlenBalanced); !whole {
					if d := cmp.Diff(sampled, consumed); d != "" {
						t.Errorf("consumed differs from sampled (-sampled +consumed):\n%s", d)
					}
				}
			})
			t.Run("negative batch", func(t *testing.T) {
				_, _, err := f.new(t).Sample(engine.SampleRequest{
					Partition: "p", Task: "t", BatchSize: -1, Ready: rows(0, 8), Options: opts,
				})
				wantErr(t, err, engine.ErrInvalid)
			})
			t.Run("no aliasing", func(t *testing.T) {
				s := f.new(t)
				req := engine.SampleRequest{Partition: "p", Task: "t", BatchSize: 4, Ready: rows(0, 8), Options: opts}
				sampled, consumed := mustSample(t, s, req)
				want, wantConsumed := slices.Clone(sampled), slices.Clone(consumed)
				for i := range sampled {
					sampled[i] = 999
				}
				if d := cmp.Diff(wantConsumed, consumed); d != "" {
					t.Errorf("writing sampled changed consumed (-want +got):\n%s", d)
				}
				// A cached answer must not change either.
				again, _ := mustSample(t, s, req)
				if _, ok := s.(engine.CachingSampler); ok {
					if d := cmp.Diff(want, again); d != "" {
						t.Errorf("writing sampled changed the cache (-want +got):\n%s", d)
					}
				}
			})
		})
	}
}

// TestConcurrent calls every sampler from several goroutines, each on its
// own partition, while others save state, check the cache and clear it;
// and has several goroutines race on one key, which must give all of them
// the same answer. Run it with -race.
func TestConcurrent(t *testing.T) {
	const workers, rounds = 8, 50
	for _, f := range factories {
		t.Run(f.name, func(t *testing.T) {
			s := f.new(t)
			var wg sync.WaitGroup
			for w := range workers {
				wg.Go(func() {
					part := fmt.Sprintf("p%d", w)
					for i := range rounds {
						ready := rows(uint64(i)*8, uint64(i)*8+8)
						_, _, err := s.Sample(engine.SampleRequest{
							Partition: part, Task: "t", BatchSize: 2, Ready: ready, Options: ranked(w%2, i),
						})
						if err != nil {
							t.Errorf("Sample: %v", err)
							return
						}
						if c, ok := s.(engine.CachingSampler); ok {
							c.Cached(part, "t", ranked(w%2, i))
							if i%10 == 9 {
								c.ClearCache(part)
							}
						}
						if st, ok := s.(engine.StatefulSampler); ok && i%10 == 0 {
							if _, err := st.SaveState(); err != nil {
								t.Errorf("SaveState: %v", err)
							}
						}
					}
				})
			}
			got := make([][]uint64, workers)
			for w := range workers {
				wg.Go(func() {
					// Each racer sees a different ready set; a caching
					// sampler must still answer all of them alike.
					ready := rows(uint64(w), 64)
					sampled, _, err := s.Sample(engine.SampleRequest{
						Partition: "shared", Task: "t", BatchSize: 2, Ready: ready, Options: ranked(0, 0),
					})
					if err != nil {
						t.Errorf("Sample: %v", err)
					}
					got[w] = sampled
				})
			}
			wg.Wait()
			if _, ok := s.(engine.CachingSampler); !ok {
				return
			}
			for w := 1; w < workers; w++ {
				if d := cmp.Diff(got[0], got[w]); d != "" {
					t.Errorf("racer %d got a different batch than racer 0 (-0 +%d):\n%s", w, w, d)
				}
			}
		})
	}
}

// TestState round-trips the state of every caching sampler and checks that
// bad documents are refused without touching the sampler.
func TestState(t *testing.T) {
	type stateful interface {
		engine.CachingSampler
		engine.StatefulSampler
	}
	newGRPO := func(n int) func(t *testing.T) stateful {
		return func(t *testing.T) stateful {
			s, err := NewGRPO(n)
			if err != nil {
				t.Fatal(err)
			}
			return s
		}
	}
	newSeqlen := func(n, dp int) func(t *testing.T) stateful {
		return func(t *testing.T) stateful {
			s, err := NewSeqlenBalanced(n, dp)
			if err != nil {
				t.Fatal(err)
			}
			return s
		}
	}
	for _, tc := range []struct {
		name  string
		new   func(t *testing.T) stateful
		other func(t *testing.T) stateful // same kind, different configuration
		bad   []string                    // well-formed JSON that must be refused
	}{
		{
			name:  "grpo",
			new:   newGRPO(2),
			other: newGRPO(4),
			bad: []string{
				`{"version":1,"sampler":"grpo","n":2,"entries":[{"partition":"p","task":"t","dp_rank":0,"batch_index":0,"rows":[]}]}`,
				`{"version":1,"sampler":"grpo","n":2,"entries":[{"partition":"p","task":"t","dp_rank":-1,"batch_index":0,"rows":[0,1]}]}`,
			},
		},
		{
			name:  "rank_aware",
			new:   func(*testing.T) stateful { return NewRankAware() },
			other: newGRPO(2),
			bad: []string{
				`{"version":1,"sampler":"rank_aware","entries":[{"partition":"p","task":"t","dp_rank":0,"batch_index":0,"rows":[]}]}`,
				`{"version":1,"sampler":"rank_aware","entries":[{"partition":"p","task":"t","dp_rank":0,"batch_index":0,"rows":[2,1,2]}]}`,
				`{"version":1,"sampler":"rank_aware","entries":[{"partition":"p","task":"t","dp_rank":0,"batch_index":0,"rows":[1]},` +
					`{"partition":"p","task":"t","dp_rank":0,"batch_index":0,"rows":[2]}]}`,
				`{"version":1,"sampler":"rank_aware","n":3,"entries":[]}`,
			},
		},
		{
			name:  "seqlen_balanced",
			new:   newSeqlen(2, 2),
			other: newSeqlen(2, 3),
			bad: []string{
				`{"version":1,"sampler":"seqlen_balanced","n":2,"dp_size":2,"entries":[{"partition":"p","task":"t","batch_index":0,"parts":[[0,1]]}]}`,
				`{"version":1,"sampler":"seqlen_balanced","n":2,"dp_size":2,"entries":[{"partition":"p","task":"t","batch_index":0,"parts":[[0,1],[1,2]]}]}`,
				`{"version":1,"sampler":"seqlen_balanced","n":2,"dp_size":2,"entries":[{"partition":"p","task":"t","batch_index":0,"parts":[[],[]]}]}`,
				`{"version":1,"sampler":"seqlen_balanced","n":2,"dp_size":2,"entries":[{"partition":"p","task":"t","batch_index":0,"parts":[[1,0,1],[2]]}]}`,
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := tc.new(t)
			for i, part := range []string{"a", "b"} {
				for batch := range 2 {
					ready := rows(uint64(100*i+10*batch), uint64(100*i+10*batch+8))
					mustSample(t, s, engine.SampleRequest{
						Partition: part, Task: "t", BatchSize: 4, Ready: ready, Options: ranked(1, batch),
					})
				}
			}
			saved, err := s.SaveState()
			if err != nil {
				t.Fatalf("SaveState: %v", err)
			}

			t.Run("round trip", func(t *testing.T) {
				fresh := tc.new(t)
				if err := fresh.LoadState(saved); err != nil {
					t.Fatalf("LoadState: got %v, want nil", err)
				}
				again, err := fresh.SaveState()
				if err != nil {
					t.Fatalf("SaveState: %v", err)
				}
				if d := cmp.Diff(string(saved), string(again)); d != "" {
					t.Errorf("state after round trip differs (-saved +reloaded):\n%s", d)
				}
				for _, part := range []string{"a", "b"} {
					for batch := range 2 {
						if !fresh.Cached(part, "t", ranked(1, batch)) {
							t.Errorf("Cached(%s, batch %d) after LoadState: got false, want true", part, batch)
						}
						req := engine.SampleRequest{
							Partition: part, Task: "t", BatchSize: 4, Ready: engine.ReadySlice{}, Options: ranked(1, batch),
						}
						want, _ := mustSample(t, s, req)
						got, _ := mustSample(t, fresh, req)
						if d := cmp.Diff(want, got); d != "" {
							t.Errorf("answer after LoadState differs (-want +got):\n%s", d)
						}
					}
				}
			})

			t.Run("empty state clears", func(t *testing.T) {
				empty, err := tc.new(t).SaveState()
				if err != nil {
					t.Fatal(err)
				}
				fresh := tc.new(t)
				if err := fresh.LoadState(saved); err != nil {
					t.Fatal(err)
				}
				if err := fresh.LoadState(empty); err != nil {
					t.Fatalf("LoadState(empty): got %v, want nil", err)
				}
				if fresh.Cached("a", "t", ranked(1, 0)) {
					t.Errorf("Cached after loading an empty state: got true, want false")
				}
			})

			otherState, err := tc.other(t).SaveState()
			if err != nil {
				t.Fatal(err)
			}
			bad := append([]string{
				``,
				`not json`,
				`{"version":1`,
				`[]`,
				`{"sampler":"` + tc.name + `","entries":[]}`,
				`{"version":2,"sampler":"` + tc.name + `","entries":[]}`,
				`{"version":1,"sampler":"other","entries":[]}`,
				`{"version":1,"sampler":"` + tc.name + `","entries":[],"extra":true}`,
				`{"version":1,"sampler":"` + tc.name + `","entries":{}}`,
				string(otherState),
			}, tc.bad...)
			for _, doc := range bad {
				t.Run("refuse "+doc, func(t *testing.T) {
					err := s.LoadState([]byte(doc))
					wantErr(t, err, engine.ErrCorrupt)
					after, err := s.SaveState()
					if err != nil {
						t.Fatal(err)
					}
					if d := cmp.Diff(string(saved), string(after)); d != "" {
						t.Errorf("a refused LoadState changed the state (-before +after):\n%s", d)
					}
				})
			}
		})
	}
}

// ForgetTask drops what a caching sampler keeps for one task of one
// partition (every task's for ""), and nothing else: the controller calls
// it when the task's consumption is reset.
func TestForgetTask(t *testing.T) {
	type forgetter interface {
		engine.CachingSampler
		engine.TaskForgetter
	}
	seqlen, err := NewSeqlenBalanced(1, 2)
	require.NoError(t, err)
	budget, err := NewTokenBudget(1, 2)
	require.NoError(t, err)
	for _, s := range []forgetter{NewRankAware(), newGRPO(t, 1), seqlen, budget} {
		t.Run(fmt.Sprintf("%T", s), func(t *testing.T) {
			opts := ranked(0, 0)
			for _, k := range [][2]string{{"p", "t"}, {"p", "u"}, {"q", "t"}} {
				got, _ := mustSample(t, s, engine.SampleRequest{Partition: k[0], Task: k[1], BatchSize: 2, TokenBudget: 2,
					Ready: rows(0, 8), Options: opts, Tags: func(uint64) engine.Tags { return nil }})
				require.NotEmpty(t, got, "%s/%s", k[0], k[1])
			}
			cached := func() [3]bool {
				return [3]bool{s.Cached("p", "t", opts), s.Cached("p", "u", opts), s.Cached("q", "t", opts)}
			}
			s.ForgetTask("p", "t")
			assert.Equal(t, [3]bool{false, true, true}, cached(), "after forgetting p/t: p/t, p/u, q/t cached")
			s.ForgetTask("p", "")
			assert.Equal(t, [3]bool{false, false, true}, cached(), "after forgetting p: p/t, p/u, q/t cached")
		})
	}
}
