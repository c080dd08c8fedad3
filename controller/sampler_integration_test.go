package controller

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/controller/sampler"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire/wirepb"
)

func rankFetch(t *testing.T, c *Controller, dpRank, batchIndex, n int) *engine.BatchMeta {
	t.Helper()
	m, err := c.Fetch(context.Background(), engine.FetchRequest{
		Partition: "train", Task: "actor", Fields: []string{"x"}, BatchSize: n,
		Options: engine.SamplingOptions{HasRank: true, DPRank: dpRank, BatchIndex: batchIndex},
	})
	if err != nil {
		t.Fatalf("fetch rank %d batch %d: %v", dpRank, batchIndex, err)
	}
	return m
}

// Ranks of one data-replica group see identical batches; groups get
// disjoint ones; a late peer still gets its group's batch from the cache
// when too few rows are left for a fresh one (polling mode).
func TestRankAwareThroughController(t *testing.T) {
	c := newController(t, Config{Sampler: sampler.NewRankAware()})
	m := insert(t, c, "train", 8, "x")
	commitDense(t, c, "train", m.Indexes, "x")

	g0a := rankFetch(t, c, 0, 0, 4) // group 0, first rank
	g1a := rankFetch(t, c, 1, 0, 4) // group 1 takes the other 4
	g0b := rankFetch(t, c, 0, 0, 4) // group 0, second rank: nothing ready, served from the cache
	g1b := rankFetch(t, c, 1, 0, 4)
	if diff := cmp.Diff(g0a.Indexes, g0b.Indexes); diff != "" {
		t.Fatalf("ranks of group 0 differ (-first +second):\n%s", diff)
	}
	if diff := cmp.Diff(g1a.Indexes, g1b.Indexes); diff != "" {
		t.Fatalf("ranks of group 1 differ (-first +second):\n%s", diff)
	}
	for _, gi := range g0a.Indexes {
		if slices.Contains(g1a.Indexes, gi) {
			t.Fatalf("row %d went to both groups: %v %v", gi, g0a.Indexes, g1a.Indexes)
		}
	}
	if got := rankFetch(t, c, 0, 1, 4); got.Len() != 0 {
		t.Fatalf("next batch with nothing ready: %v", got.Indexes)
	}
	if !c.CheckConsumption("train", "actor") {
		t.Fatal("not all consumed after both groups fetched")
	}
	// Clearing the partition clears the sampler's cache.
	c.ClearPartition("train")
	m = insert(t, c, "train", 4, "x")
	commitDense(t, c, "train", m.Indexes, "x")
	if got := rankFetch(t, c, 0, 0, 4); got.Len() != 4 {
		t.Fatalf("after clear: %v", got.Indexes)
	}
}

// Sequence-length balancing reads the "total_lengths" tag through the
// controller and splits whole groups across DP ranks.
func TestSeqlenBalancedThroughController(t *testing.T) {
	s, err := sampler.NewSeqlenBalanced(2, 2)
	if err != nil {
		t.Fatal(err)
	}
	c := newController(t, Config{Sampler: s})
	m := insert(t, c, "train", 8, "x")
	commitDense(t, c, "train", m.Indexes, "x")
	lengths := []int{100, 100, 90, 90, 1, 1, 5, 5}
	tags := make([]engine.Tags, len(lengths))
	for i, l := range lengths {
		tags[i] = engine.Tags{"total_lengths": l}
	}
	if err := c.SetTags("train", m.Indexes, tags); err != nil {
		t.Fatal(err)
	}
	r0 := rankFetch(t, c, 0, 0, 4)
	r1 := rankFetch(t, c, 1, 0, 4)
	sum := func(idx []uint64) (n int) {
		for _, gi := range idx {
			n += lengths[gi]
		}
		return n
	}
	// Groups hold 200, 180, 2 and 10 tokens. A contiguous split would give
	// 380 against 12; the balanced one pairs {200, 2} with {180, 10}.
	a, b := sum(r0.Indexes), sum(r1.Indexes)
	if min(a, b) != 190 || max(a, b) != 202 {
		t.Fatalf("token sums %d and %d (rows %v, %v), want 202 and 190", a, b, r0.Indexes, r1.Indexes)
	}
	for _, idx := range [][]uint64{r0.Indexes, r1.Indexes} {
		for i := 0; i < len(idx); i += 2 {
			if idx[i]%2 != 0 || idx[i+1] != idx[i]+1 {
				t.Fatalf("prompt groups split: %v", idx)
			}
		}
	}
}

// Sampler state travels in checkpoints.
func TestCheckpointSamplerState(t *testing.T) {
	c := newController(t, Config{Sampler: sampler.NewRankAware()})
	m := insert(t, c, "train", 4, "x")
	commitDense(t, c, "train", m.Indexes, "x")
	first := rankFetch(t, c, 0, 0, 4)
	dir := t.TempDir() + "/ck"
	if err := c.Save(dir); err != nil {
		t.Fatal(err)
	}
	d := newController(t, Config{Sampler: sampler.NewRankAware()})
	if _, err := d.Load(dir); err != nil {
		t.Fatal(err)
	}
	again := rankFetch(t, d, 0, 0, 4)
	if diff := cmp.Diff(first.Indexes, again.Indexes); diff != "" {
		t.Fatalf("cached batch after load (-before +after):\n%s", diff)
	}
}

// grpoFetch takes a batch of n rows of "train" by GRPO groups of 2.
func grpoFetch(t *testing.T, c *Controller, task string, n int) []uint64 {
	t.Helper()
	m, err := c.Fetch(context.Background(), engine.FetchRequest{
		Partition: "train", Task: task, Fields: []string{"x"}, BatchSize: n, Sampler: engine.SamplerSpec{Name: engine.SamplerGRPO, N: 2},
	})
	if err != nil {
		t.Fatalf("fetch: %v", err)
	}
	return m.Indexes
}

// TestGRPOTakesAPutsGroups: a put that reuses a freed index gets
// indexes that are not consecutive ([0, 2, 3, ...]); GRPO still groups
// its rows as they were put, and so it does after a restart replays the
// log and after a checkpoint is loaded. By index it paired 2 with 3: the
// second response of one prompt with the first of the next.
func TestGRPOTakesAPutsGroups(t *testing.T) {
	dir := t.TempDir()
	c := openDurable(t, dir, DefaultConfig())
	old := insert(t, c, "old", 2, "x")
	if _, err := c.ClearRows("old", old.Indexes[:1]); err != nil {
		t.Fatal(err)
	}
	m := insert(t, c, "train", 8, "x")
	commitDense(t, c, "train", m.Indexes, "x")
	if m.Indexes[0]+1 == m.Indexes[1] {
		t.Fatalf("the put's first indexes %v are consecutive: no freed index was reused", m.Indexes)
	}
	want := m.Indexes[:4] // the first two groups: rows 0-1 and 2-3 of the put
	if got := grpoFetch(t, c, "live", 4); !slices.Equal(got, want) {
		t.Fatalf("GRPO took %v of the put %v, want %v", got, m.Indexes, want)
	}
	ck := t.TempDir() + "/ck"
	require.NoError(t, c.Save(ck))
	crash(t, c)

	c = openDurable(t, dir, DefaultConfig())
	defer c.Close()
	if got := grpoFetch(t, c, "replayed", 4); !slices.Equal(got, want) {
		t.Fatalf("after a restart GRPO took %v of the put %v, want %v", got, m.Indexes, want)
	}
	d := newController(t, DefaultConfig())
	_, err := d.Load(ck)
	require.NoError(t, err)
	if got := grpoFetch(t, d, "loaded", 4); !slices.Equal(got, want) {
		t.Fatalf("after a checkpoint load GRPO took %v of the put %v, want %v", got, m.Indexes, want)
	}
	// Inserts after a load go on from the partition's last creation
	// number: a new put's groups stay its own.
	n := insert(t, d, "train", 2, "x")
	commitDense(t, d, "train", n.Indexes, "x")
	if got := grpoFetch(t, d, "loaded", 6); !slices.Equal(got, append(slices.Clone(m.Indexes[4:]), n.Indexes...)) {
		t.Fatalf("next batch %v, want the rest of %v then %v", got, m.Indexes, n.Indexes)
	}
}

// TestGRPOOnAStateWithoutOrigins: a checkpoint written before rows kept
// their insert (no creation numbers) loads with global-index order for
// insert order, as GRPO grouped before.
func TestGRPOOnAStateWithoutOrigins(t *testing.T) {
	c := newController(t, DefaultConfig())
	m := insert(t, c, "train", 6, "x")
	commitDense(t, c, "train", m.Indexes, "x")
	ck := t.TempDir() + "/ck"
	require.NoError(t, c.Save(ck))
	// Strip what the older format lacked.
	path := filepath.Join(ck, stateFile)
	head, parts, rows := readStateMessages(t, path)
	require.Len(t, parts, 1)
	parts[0].Made = 0
	for _, r := range rows[0] {
		r.Made, r.InsertPos, r.InsertLen = 0, 0, 0
	}
	writeStateFile(t, path, head, parts, rows, nil)

	d := newController(t, DefaultConfig())
	_, err := d.Load(ck)
	require.NoError(t, err)
	// With row 0 cleared, the old grouping pairs 1-2 and 3-4 by index;
	// by the put it would be 2-3 and 4-5.
	_, err = d.ClearRows("train", m.Indexes[:1])
	require.NoError(t, err)
	if got := grpoFetch(t, d, "t", 4); !slices.Equal(got, m.Indexes[1:5]) {
		t.Fatalf("GRPO took %v, want %v", got, m.Indexes[1:5])
	}
	n := insert(t, d, "train", 2, "x")
	commitDense(t, d, "train", n.Indexes, "x")
	if got := grpoFetch(t, d, "t", 2); !slices.Equal(got, n.Indexes) {
		t.Fatalf("a put after the load: GRPO took %v, want %v", got, n.Indexes)
	}
}

// readStateMessages reads a state file's messages as writeStateFile takes
// them.
func readStateMessages(t *testing.T, path string) (*wirepb.StateHeader, []*wirepb.StatePartition, [][]*wirepb.StateRow) {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	sr := newStateReader(bytes.NewReader(b), int64(len(b)), 1<<16)
	head := &wirepb.StateHeader{}
	require.NoError(t, sr.next(head, "header"))
	var parts []*wirepb.StatePartition
	var rows [][]*wirepb.StateRow
	for range head.Partitions {
		sp := &wirepb.StatePartition{}
		require.NoError(t, sr.next(sp, "partition"))
		var rs []*wirepb.StateRow
		for uint64(len(rs)) < sp.Rows {
			chunk := &wirepb.StateRows{}
			require.NoError(t, sr.next(chunk, "rows"))
			rs = append(rs, chunk.Rows...)
		}
		parts, rows = append(parts, sp), append(rows, rs)
	}
	return head, parts, rows
}

// TestGRPOOnPreAllocatedRows: a commit straight to pre-allocated rows is
// the insert that made them: GRPO groups them, alike after a crash (a
// snapshot holds the first commit, the log's tail the second and an
// insert) and after a checkpoint load.
func TestGRPOOnPreAllocatedRows(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{PreAlloc: 4, SnapshotBytes: 1 << 40}
	c := openDurable(t, dir, cfg)
	_, err := c.CreatePartition("train")
	require.NoError(t, err)
	st, err := c.ConsumptionStatus("train", "t")
	require.NoError(t, err)
	reserved := st.Indexes
	require.Len(t, reserved, 4)
	commitDense(t, c, "train", reserved[:2], "x")
	require.NoError(t, c.snapshot())
	commitDense(t, c, "train", reserved[2:], "x") // in the log after the snapshot
	m := insert(t, c, "train", 2, "x")
	commitDense(t, c, "train", m.Indexes, "x")
	ck := t.TempDir() + "/ck"
	require.NoError(t, c.Save(ck))
	want := stateBytes(t, c)
	require.NoError(t, c.WaitDurable(context.Background()))
	crash(t, c)

	c = openDurable(t, dir, cfg)
	defer c.Close()
	require.Equal(t, want, stateBytes(t, c), "state after the snapshot and the log's tail")
	d := newController(t, cfg)
	_, err = d.Load(ck)
	require.NoError(t, err)
	for _, tc := range []struct {
		name string
		c    *Controller
	}{{"replayed", c}, {"loaded", d}} {
		if got := grpoFetch(t, tc.c, "t", 6); !slices.Equal(got, append(slices.Clone(reserved), m.Indexes...)) {
			t.Errorf("%s: GRPO took %v, want the two commits' rows %v then the insert %v", tc.name, got, reserved, m.Indexes)
		}
	}
}

// A done partition's last rows reach a sampler that needs more than
// BatchSize rows for a batch (one balanced across two ranks, whole GRPO
// groups) as a final request: it hands out the short last batch, and then
// the end, instead of waiting for rows that will never come.
func TestDoneRemainderOfWideSamplers(t *testing.T) {
	ctx := context.Background()
	t.Run("seqlen", func(t *testing.T) {
		c := newController(t, DefaultConfig())
		m := insert(t, c, "p", 12, "x")
		commitDense(t, c, "p", m.Indexes, "x")
		require.NoError(t, c.MarkDone("p"))
		spec := engine.SamplerSpec{Name: engine.SamplerSeqlenBalanced, N: 1, DPSize: 2}
		got := 0
		for b := 0; ; b++ {
			for r := range 2 {
				req := specFetch(spec, r, b, 4)
				req.Wait = true
				wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				mm, err := c.Fetch(wctx, req)
				cancel()
				if err != nil {
					require.ErrorIs(t, err, engine.ErrDone, "batch %d rank %d after %d rows", b, r, got)
					require.Equal(t, 12, got)
					return
				}
				got += mm.Len()
			}
		}
	})
	t.Run("grpo", func(t *testing.T) {
		// A put of 6 (one whole group of 4, 2 rows over) and a put of
		// 3: 9 rows ready, at least the batch of 8, but one whole group.
		c := newController(t, DefaultConfig())
		a := insert(t, c, "p", 6, "x")
		commitDense(t, c, "p", a.Indexes, "x")
		b := insert(t, c, "p", 3, "x")
		commitDense(t, c, "p", b.Indexes, "x")
		require.NoError(t, c.MarkDone("p"))
		req := engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 8, Wait: true,
			Sampler: engine.SamplerSpec{Name: engine.SamplerGRPO, N: 4}}
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		m, err := c.Fetch(wctx, req)
		require.NoError(t, err, "the short last batch of the whole groups there are")
		require.Equal(t, a.Indexes[:4], m.Indexes)
		_, err = c.Fetch(wctx, req)
		require.ErrorIs(t, err, engine.ErrDone)
	})
}

// A token budget's BatchSize caps a batch's rows; a batch the budget
// closes is handed out without waiting for that many rows to be ready.
func TestTokenBudgetClosesBeforeTheRowCap(t *testing.T) {
	c := newController(t, DefaultConfig())
	m := insert(t, c, "p", 4, "x")
	setLengths(t, c, m.Indexes, 60)
	commitDense(t, c, "p", m.Indexes, "x")
	req := specFetch(engine.SamplerSpec{Name: engine.SamplerTokenBudget}, 0, 0, 8) // at most 8 rows
	req.TokenBudget = 100
	got, err := c.Fetch(context.Background(), req)
	require.NoError(t, err)
	require.Equal(t, m.Indexes[:1], got.Indexes, "the budget closed the batch at one row")
}

// A fetch of a dp rank past its sampler's dp size is bad input, said at
// once: it got nothing (after balancing, and consuming, a batch for the
// real ranks), and a waiting fetch waited until its deadline.
func TestRankPastDPSizeRefused(t *testing.T) {
	c := newController(t, DefaultConfig())
	m := insert(t, c, "p", 8, "x")
	commitDense(t, c, "p", m.Indexes, "x")
	setLengths(t, c, m.Indexes, 10)
	for _, spec := range []engine.SamplerSpec{
		{Name: engine.SamplerSeqlenBalanced, N: 1, DPSize: 2},
		{Name: engine.SamplerTokenBudget, N: 1, DPSize: 2},
	} {
		req := specFetch(spec, 2, 0, 4) // dp rank 2 of dp size 2
		req.Wait = true
		if spec.Name == engine.SamplerTokenBudget {
			req.TokenBudget = 100
		}
		wctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := c.Fetch(wctx, req)
		cancel()
		require.ErrorIs(t, err, engine.ErrInvalid, spec.Name)
		require.ErrorContains(t, err, "dp rank 2 out of range [0, 2)")
	}
	got, err := c.Fetch(context.Background(), specFetch(engine.SamplerSpec{Name: engine.SamplerSeqlenBalanced, N: 1, DPSize: 2}, 0, 0, 4))
	require.NoError(t, err)
	require.Equal(t, 4, got.Len(), "nothing was consumed by the refused fetches")
}

// A fetch its sampler refuses whatever rows are ready (no rank for a
// sampler that needs one, a rank past the dp size, a batch that is not
// whole groups, no token budget for token_budget) was refused only once
// BatchSize rows were ready: before that it answered an empty batch, or
// waited, as if the request were good.
func TestSamplerRefusesBadRequestAtOnce(t *testing.T) {
	c := newController(t, DefaultConfig())
	m := insert(t, c, "p", 8, "x")
	commitDense(t, c, "p", m.Indexes[:2], "x") // fewer ready than any batch asks
	noRank := specFetch(rankAware, 0, 0, 4)
	noRank.Options = engine.SamplingOptions{}
	for _, tc := range []struct {
		req  engine.FetchRequest
		want string
	}{
		{noRank, "no dp rank"},
		{specFetch(engine.SamplerSpec{Name: engine.SamplerSeqlenBalanced, N: 1, DPSize: 2}, 2, 0, 4), "dp rank 2 out of range"},
		{specFetch(engine.SamplerSpec{Name: engine.SamplerGRPO, N: 3}, 0, 0, 4), "not a multiple of group size 3"},
		{specFetch(engine.SamplerSpec{Name: engine.SamplerTokenBudget, N: 1, DPSize: 2}, 0, 0, 4), "token budget 0 is not positive"},
	} {
		_, err := c.Fetch(context.Background(), tc.req)
		require.ErrorIs(t, err, engine.ErrInvalid, tc.req.Sampler.String())
		require.ErrorContains(t, err, tc.want)
		tc.req.Wait = true
		wctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err = c.Fetch(wctx, tc.req)
		cancel()
		require.ErrorIs(t, err, engine.ErrInvalid, "%s with wait", tc.req.Sampler.String())
	}
}
