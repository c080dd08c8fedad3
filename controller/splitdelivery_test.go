package controller

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// TestSplitSamplerDeliversEveryRow drives the samplers that split a batch
// between DP ranks (seqlen_balanced, token_budget) with ranks that fetch
// their batches in their own time while rows are put and cleared, then
// marks the partition done and lets every rank fetch until it is told
// ErrDone. Every rank stays to the end, so nothing is left behind: each
// row still in the partition must have been served to exactly one rank,
// whatever the kept-batch TTL (none: batches are never given back).
// Seeded; no real time passes (synctest), so no TTL runs out.
func TestSplitSamplerDeliversEveryRow(t *testing.T) {
	specs := []engine.SamplerSpec{
		{Name: engine.SamplerSeqlenBalanced, N: 1, DPSize: 2},
		{Name: engine.SamplerSeqlenBalanced, N: 1, DPSize: 3},
		{Name: engine.SamplerTokenBudget, N: 1, DPSize: 2},
		{Name: engine.SamplerTokenBudget, N: 1, DPSize: 3},
	}
	ttls := []struct {
		name string
		ttl  time.Duration
	}{{"ttl=default", 0}, {"ttl=never", -1}}
	for _, spec := range specs {
		for _, tt := range ttls {
			t.Run(spec.String()+"/"+tt.name, func(t *testing.T) {
				for seed := range uint64(40) {
					synctest.Test(t, func(t *testing.T) {
						splitDeliveryRun(t, spec, Config{KeptBatchTTL: tt.ttl}, seed)
					})
				}
			})
		}
	}
}

func splitDeliveryRun(t *testing.T, spec engine.SamplerSpec, cfg Config, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 0xde11))
	c := newController(t, cfg)
	ctx := context.Background()
	dp := spec.DPSize
	req := func(rank, batch int) engine.FetchRequest {
		if spec.Name == engine.SamplerTokenBudget {
			r := specFetch(spec, rank, batch, 0)
			r.TokenBudget = 2
			return r
		}
		return specFetch(spec, rank, batch, spec.N)
	}
	next := make([]int, dp)
	ended := make([]bool, dp)
	servedTo := map[uint64]int{} // row: the rank it was served to
	var rows []uint64
	var trace []string
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("%s seed %d: %s\ntrace:\n%s", spec, seed, fmt.Sprintf(format, args...), "  "+strings.Join(trace, "\n  "))
	}
	step := func(rank int) {
		b := next[rank]
		m, err := c.Fetch(ctx, req(rank, b))
		switch {
		case errors.Is(err, engine.ErrDone):
			trace = append(trace, fmt.Sprintf("rank %d batch %d: done", rank, b))
			ended[rank] = true
			return
		case err != nil:
			fail("rank %d batch %d: %v", rank, b, err)
		case m == nil || m.Len() == 0:
			trace = append(trace, fmt.Sprintf("rank %d batch %d: not ready", rank, b))
			return
		}
		trace = append(trace, fmt.Sprintf("rank %d batch %d: %v", rank, b, m.Indexes))
		for _, gi := range m.Indexes {
			if r, ok := servedTo[gi]; ok {
				fail("row %d served to rank %d and again to rank %d (batch %d)", gi, r, rank, b)
			}
			servedTo[gi] = rank
		}
		next[rank]++
	}
	// A cleared row's index may be given to a later row.
	clearOne := func() {
		if len(rows) == 0 {
			return
		}
		i := rng.IntN(len(rows))
		gi := rows[i]
		_, err := c.ClearRows("p", []uint64{gi})
		require.NoError(t, err)
		rows = slices.Delete(rows, i, i+1)
		delete(servedTo, gi)
		trace = append(trace, fmt.Sprintf("clear %d", gi))
	}

	for range 30 + rng.IntN(30) {
		switch x := rng.IntN(10); {
		case x < 3:
			m := insert(t, c, "p", 1+rng.IntN(4), "x")
			commitDense(t, c, "p", m.Indexes, "x")
			rows = append(rows, m.Indexes...)
			trace = append(trace, fmt.Sprintf("put %v", m.Indexes))
		case x < 4:
			clearOne()
		default:
			step(rng.IntN(dp))
		}
	}
	require.NoError(t, c.MarkDone("p"))
	trace = append(trace, "done")
	for round := 0; slices.Contains(ended, false); round++ {
		if round > 10*len(rows)+20 {
			fail("ranks still fetching after %d rounds: %v ended", round, ended)
		}
		// In a random order, and now and then a clear: the ranks are not
		// in step at the end either.
		if rng.IntN(8) == 0 {
			clearOne()
		}
		if r := rng.IntN(dp); !ended[r] {
			step(r)
		}
	}
	st, err := c.ConsumptionStatus("p", "t")
	require.NoError(t, err)
	for _, gi := range st.Indexes {
		if _, ok := servedTo[gi]; !ok {
			fail("every rank ended, and row %d was never served", gi)
		}
	}
}
