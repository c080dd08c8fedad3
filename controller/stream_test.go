package controller

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/controller/sampler"
	"github.com/tqgo/tq/engine"
)

// Tests of what the streaming loader needs from the controller: samplers
// chosen per fetch, token budgets, the done marker, and sampler caches
// that learn about cleared rows and reset consumption.

func specFetch(spec engine.SamplerSpec, group, batch, size int) engine.FetchRequest {
	return engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: size, Sampler: spec,
		Options: engine.SamplingOptions{HasRank: true, DPRank: group, BatchIndex: batch}}
}

func TestSamplerPerFetch(t *testing.T) {
	c := newController(t, DefaultConfig()) // sequential by default
	m := insert(t, c, "p", 12, "x")
	commitDense(t, c, "p", m.Indexes, "x")
	ctx := context.Background()
	ra := engine.SamplerSpec{Name: engine.SamplerRankAware}

	a, err := c.Fetch(ctx, specFetch(ra, 0, 0, 4))
	require.NoError(t, err)
	b, err := c.Fetch(ctx, specFetch(ra, 0, 0, 4)) // the group's peer
	require.NoError(t, err)
	require.Equal(t, a.Indexes, b.Indexes, "ranks of a group get identical batches")
	other, err := c.Fetch(ctx, specFetch(ra, 1, 0, 4))
	require.NoError(t, err)
	require.Len(t, other.Indexes, 4)
	require.NotContains(t, a.Indexes, other.Indexes[0], "groups get disjoint batches")

	// The server's own sampler ignores ranks: no cache, the next rows.
	seq, err := c.Fetch(ctx, specFetch(engine.SamplerSpec{}, 0, 0, 4))
	require.NoError(t, err)
	require.Len(t, seq.Indexes, 4)
	require.NotEqual(t, a.Indexes, seq.Indexes)

	for _, tc := range []struct {
		spec engine.SamplerSpec
		want string
	}{
		{engine.SamplerSpec{Name: "random"}, `"random": unknown`},
		{engine.SamplerSpec{Name: engine.SamplerGRPO, N: -1}, "negative group size"},
		{engine.SamplerSpec{Name: engine.SamplerRankAware, N: 3}, "takes no group size"},
		{engine.SamplerSpec{Name: engine.SamplerSeqlenBalanced, N: 2, DPSize: 1 << 20}, "above"},
	} {
		_, err := c.Fetch(ctx, specFetch(tc.spec, 0, 0, 4))
		require.ErrorIs(t, err, engine.ErrInvalid, "spec %+v", tc.spec)
		require.ErrorContains(t, err, tc.want)
	}
	_, err = c.Fetch(ctx, engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, TokenBudget: 10})
	require.ErrorIs(t, err, engine.ErrInvalid)
	require.ErrorContains(t, err, "needs the token_budget sampler")
	_, err = c.Fetch(ctx, engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 1, TokenBudget: -1})
	require.ErrorContains(t, err, "token budget -1")
	_, err = c.Fetch(ctx, engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}})
	require.ErrorContains(t, err, "batch size 0")
}

// setLengths gives rows their "total_lengths" tags.
func setLengths(t *testing.T, c *Controller, idx []uint64, lengths ...int) {
	t.Helper()
	tags := make([]engine.Tags, len(idx))
	for i := range idx {
		tags[i] = engine.Tags{"total_lengths": lengths[i%len(lengths)]}
	}
	require.NoError(t, c.SetTags("p", idx, tags))
}

func TestTokenBudgetFetch(t *testing.T) {
	c := newController(t, DefaultConfig())
	m := insert(t, c, "p", 16, "x")
	setLengths(t, c, m.Indexes, 10, 30, 20, 40)
	commitDense(t, c, "p", m.Indexes, "x")
	ctx := context.Background()
	spec := engine.SamplerSpec{Name: engine.SamplerTokenBudget, DPSize: 2}
	tokens := func(rows []uint64) (sum int) {
		for _, r := range rows {
			sum += []int{10, 30, 20, 40}[int(r-m.Indexes[0])%4]
		}
		return sum
	}
	var seen []uint64
	for batch := 0; ; batch++ {
		req := specFetch(spec, 0, batch, 0)
		req.TokenBudget = 60
		r0, err := c.Fetch(ctx, req)
		require.NoError(t, err)
		if r0.Empty() {
			break
		}
		req.Options.DPRank = 1
		r1, err := c.Fetch(ctx, req)
		require.NoError(t, err)
		assert.LessOrEqual(t, tokens(r0.Indexes), 60, "batch %d rank 0", batch)
		assert.LessOrEqual(t, tokens(r1.Indexes), 60, "batch %d rank 1", batch)
		seen = append(append(seen, r0.Indexes...), r1.Indexes...)
	}
	require.NotEmpty(t, seen)
	require.Less(t, len(seen), 16, "the tail waits for the budget to fill (the partition is not done)")

	// Done: the tail is flushed, then the end.
	require.NoError(t, c.MarkDone("p"))
	for batch := 0; ; batch++ {
		req := specFetch(spec, 0, 100+batch, 0)
		req.TokenBudget = 60
		r0, err := c.Fetch(ctx, req)
		if err != nil {
			require.ErrorIs(t, err, engine.ErrDone)
			break
		}
		seen = append(seen, r0.Indexes...)
		req.Options.DPRank = 1
		if r1, err := c.Fetch(ctx, req); err == nil {
			seen = append(seen, r1.Indexes...)
		} else {
			require.ErrorIs(t, err, engine.ErrDone, "a rank whose part of the last batch is empty")
		}
	}
	require.ElementsMatch(t, m.Indexes, seen, "every row once")
}

func TestMarkDone(t *testing.T) {
	c := newController(t, DefaultConfig())
	m := insert(t, c, "p", 10, "x")
	commitDense(t, c, "p", m.Indexes[:8], "x")
	ctx := context.Background()
	req := engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 4, Wait: true}
	got := fetch(t, c, "p", "t", 4, "x")
	require.Len(t, got.Indexes, 4)
	got = fetch(t, c, "p", "t", 4, "x")
	require.Len(t, got.Indexes, 4)

	// Two rows not produced yet: a done partition still waits for them.
	require.NoError(t, c.MarkDone("p"))
	require.NoError(t, c.MarkDone("p"), "idempotent")
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	_, err := c.Fetch(short, req)
	cancel()
	require.ErrorIs(t, err, context.DeadlineExceeded)

	// A waiting fetch takes the short last batch once they are.
	res := make(chan *engine.BatchMeta, 1)
	go func() {
		m, err := c.Fetch(ctx, req)
		assert.NoError(t, err)
		res <- m
	}()
	time.Sleep(20 * time.Millisecond)
	commitDense(t, c, "p", m.Indexes[8:], "x")
	select {
	case last := <-res:
		require.Equal(t, m.Indexes[8:], last.Indexes)
	case <-time.After(5 * time.Second):
		t.Fatal("the fetch did not take the last two rows")
	}
	_, err = c.Fetch(ctx, req)
	require.ErrorIs(t, err, engine.ErrDone)
	require.ErrorContains(t, err, `partition "p" has nothing left for task "t"`)
	_, err = c.Fetch(ctx, engine.FetchRequest{Partition: "p", Task: "other", Fields: []string{"x"}, BatchSize: 64})
	require.NoError(t, err, "another task still gets every row, in one short batch")

	// A blocked fetch is woken by MarkDone.
	m2 := insert(t, c, "q", 3, "x")
	commitDense(t, c, "q", m2.Indexes, "x")
	errs := make(chan error, 1)
	go func() {
		_, err := c.Fetch(ctx, engine.FetchRequest{Partition: "q", Task: "t", Fields: []string{"x"}, BatchSize: 4, Wait: true})
		errs <- err
	}()
	time.Sleep(20 * time.Millisecond)
	require.NoError(t, c.MarkDone("q"))
	select {
	case err := <-errs:
		require.NoError(t, err, "3 rows of 4: the short last batch")
	case <-time.After(5 * time.Second):
		t.Fatal("MarkDone did not wake the fetch")
	}
	st, err := c.Stats("q")
	require.NoError(t, err)
	require.True(t, st.Done)
}

func TestSamplerCachesForgetClearedRows(t *testing.T) {
	for _, spec := range []engine.SamplerSpec{
		{Name: engine.SamplerRankAware},
		{Name: engine.SamplerGRPO, N: 2},
		{Name: engine.SamplerSeqlenBalanced, N: 2, DPSize: 1},
	} {
		t.Run(spec.String(), func(t *testing.T) {
			c := newController(t, DefaultConfig())
			m := insert(t, c, "p", 8, "x")
			commitDense(t, c, "p", m.Indexes, "x")
			ctx := context.Background()
			first, err := c.Fetch(ctx, specFetch(spec, 0, 0, 4))
			require.NoError(t, err)
			require.Len(t, first.Indexes, 4)
			_, err = c.ClearRows("p", first.Indexes[:2])
			require.NoError(t, err)
			peer, err := c.Fetch(ctx, specFetch(spec, 0, 0, 4))
			require.NoError(t, err)
			require.Equal(t, first.Indexes[2:], peer.Indexes, "the cached batch without the cleared rows")

			// Every row of the batch cleared: the batch is gone from the
			// cache (a stale entry would name rows that are not there).
			// The group's ranks took it, so batch 0 is not made again
			// from other rows: asked again, it is refused, naming it,
			// and the rows left go to the next batch.
			_, err = c.ClearRows("p", first.Indexes[2:])
			require.NoError(t, err)
			_, err = c.Fetch(ctx, specFetch(spec, 0, 0, 4))
			require.ErrorIs(t, err, engine.ErrNotFound, "batch 0 was taken, then cleared")
			require.ErrorContains(t, err, "batch 0 of DP rank 0")
			again, err := c.Fetch(ctx, specFetch(spec, 0, 1, 4))
			require.NoError(t, err)
			require.Equal(t, m.Indexes[4:], again.Indexes, "a fresh batch of the rows left")
		})
	}
}

func TestDurableDoneAndSamplerPerFetch(t *testing.T) {
	dir := t.TempDir()
	c := openDurable(t, dir, Config{SnapshotBytes: 1 << 40})
	m := insert(t, c, "p", 8, "x")
	commitDense(t, c, "p", m.Indexes, "x")
	ctx := context.Background()
	ra := engine.SamplerSpec{Name: engine.SamplerRankAware}
	first, err := c.Fetch(ctx, specFetch(ra, 0, 0, 4))
	require.NoError(t, err)
	require.NoError(t, c.MarkDone("p"))
	want := stateBytes(t, c)
	require.NoError(t, c.WaitDurable(ctx))
	crash(t, c)

	for _, snapshot := range []bool{false, true} {
		d := openDurable(t, dir, Config{})
		assert.Equal(t, want, stateBytes(t, d), "snapshot %v", snapshot)
		st, err := d.Stats("p")
		require.NoError(t, err)
		require.True(t, st.Done, "done survives a restart (snapshot %v)", snapshot)
		peer, err := d.Fetch(ctx, specFetch(ra, 0, 0, 4))
		require.NoError(t, err)
		require.Equal(t, first.Indexes, peer.Indexes, "the peer gets the batch from before the restart (snapshot %v)", snapshot)
		want = stateBytes(t, d)       // the peer's fetch is followed (keptbatches.go)
		require.NoError(t, d.Close()) // a clean close writes a snapshot
	}
}

// A keyed fetch of a batch a sampler keeps for a DP group, given back,
// leaves the rows with the group: other groups never get them, the peer
// and the rank itself still do.
func TestGiveBackKeepsGroupBatches(t *testing.T) {
	c := newController(t, DefaultConfig())
	m := insert(t, c, "p", 8, "x")
	commitDense(t, c, "p", m.Indexes, "x")
	ctx := context.Background()
	ra := engine.SamplerSpec{Name: engine.SamplerRankAware}
	req := specFetch(ra, 0, 0, 4)
	req.Key = "k0"
	first, err := c.Fetch(ctx, req)
	require.NoError(t, err)
	require.NoError(t, c.Unconsume("p", "t", "k0"))
	other, err := c.Fetch(ctx, specFetch(ra, 1, 0, 8))
	require.NoError(t, err)
	require.Empty(t, other.Indexes, "group 1 cannot take group 0's rows: only 4 are free")
	again, err := c.Fetch(ctx, specFetch(ra, 0, 0, 4))
	require.NoError(t, err)
	require.Equal(t, first.Indexes, again.Indexes, "group 0 still gets its batch")

	// A private fetch given back goes back to the task.
	req = engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 4, Key: "k1"}
	priv, err := c.Fetch(ctx, req)
	require.NoError(t, err)
	require.Len(t, priv.Indexes, 4)
	require.NoError(t, c.Unconsume("p", "t", "k1"))
	back := fetch(t, c, "p", "t", 4, "x")
	require.Equal(t, priv.Indexes, back.Indexes)
}

func TestSamplersPerFetchAreBounded(t *testing.T) {
	c := newController(t, DefaultConfig())
	for n := 1; n <= maxNamedSamplers; n++ {
		_, err := c.samplerFor(engine.SamplerSpec{Name: engine.SamplerGRPO, N: n})
		require.NoError(t, err)
	}
	_, err := c.samplerFor(engine.SamplerSpec{Name: engine.SamplerGRPO, N: maxNamedSamplers + 1})
	require.ErrorIs(t, err, engine.ErrInvalid)
	require.ErrorContains(t, err, "already keeps the 256 samplers")
	_, err = c.samplerFor(engine.SamplerSpec{Name: engine.SamplerGRPO, N: 3})
	require.NoError(t, err, "one made before is still there")
}

// A reset kept the batches caching samplers keep for DP groups: in the
// new round a group whose batch was not kept took rows fresh, among them
// rows still kept for another group, which then got its old batch again,
// so two groups got the same rows in one round. The reset now forgets the
// task's kept batches, on the controller that made it and on one that
// replays it; another task's stay.
func TestResetForgetsKeptBatches(t *testing.T) {
	type at struct{ group, batch int }
	for _, tc := range []struct {
		name       string
		cfg        Config
		spec       engine.SamplerSpec
		fresh, old at // asked in the new round: fresh was not kept, old was
	}{
		{"rank_aware configured", Config{Sampler: sampler.NewRankAware()}, engine.SamplerSpec{}, at{1, 0}, at{0, 0}},
		{"grpo", DefaultConfig(), engine.SamplerSpec{Name: engine.SamplerGRPO, N: 1}, at{1, 0}, at{0, 0}},
		{"seqlen_balanced", DefaultConfig(), engine.SamplerSpec{Name: engine.SamplerSeqlenBalanced, N: 1, DPSize: 2}, at{0, 1}, at{0, 0}},
	} {
		for _, restart := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/restart=%v", tc.name, restart), func(t *testing.T) {
				ctx := context.Background()
				dir := t.TempDir()
				c := openDurable(t, dir, tc.cfg)
				t.Cleanup(func() { c.Close() }) // the controller c is at the end
				get := func(task string, a at) []uint64 {
					t.Helper()
					req := specFetch(tc.spec, a.group, a.batch, 2)
					req.Task = task
					m, err := c.Fetch(ctx, req)
					require.NoError(t, err)
					require.Len(t, m.Indexes, 2)
					return m.Indexes
				}
				m := insert(t, c, "p", 8, "x")
				commitDense(t, c, "p", m.Indexes, "x")
				get("t", tc.old)
				other := get("u", tc.old)
				require.NoError(t, c.ResetConsumption("p", "t"))
				if restart {
					require.NoError(t, c.WaitDurable(ctx))
					want := stateBytes(t, c)
					crash(t, c)
					c = openDurable(t, dir, tc.cfg)
					require.Equal(t, want, stateBytes(t, c), "the replayed state differs")
				}
				fresh := get("t", tc.fresh)
				old := get("t", tc.old)
				for _, gi := range fresh {
					assert.NotContains(t, old, gi, "row %d handed out twice in one round (%v and %v)", gi, fresh, old)
				}
				assert.Equal(t, other, get("u", tc.old), "task u, not reset, keeps its batch")
			})
		}
	}
}
