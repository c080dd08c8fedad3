package client_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/engine"
)

// Over the wire, each fetch picks its sampler and parameters (the server
// runs the default sequential one), MARK_DONE ends the data with
// CODE_DONE, and UNCONSUME gives a keyed fetch back.
func TestRemoteSamplersPerFetchAndDone(t *testing.T) {
	ctx := context.Background()
	c := newController(t)
	_, addr := serveController(t, c, controller.ServerConfig{}, "unix")
	r := dialMeta(t, addr, client.RemoteConfig{Name: "trainer"})
	m, err := r.Insert(ctx, "p", 16, []string{"x"})
	require.NoError(t, err)
	tags := make([]engine.Tags, 16)
	for i := range tags {
		tags[i] = engine.Tags{"total_lengths": 10 * (1 + i%3)}
	}
	require.NoError(t, r.SetTags(ctx, "p", m.Indexes, tags))
	require.NoError(t, r.Commit(ctx, engine.CommitRequest{Partition: "p", Indexes: m.Indexes,
		Fields: []engine.CommitField{{Name: "x", DType: engine.Float32, Kind: engine.Dense, Shape: engine.Shape{1}}}}))

	fetch := func(spec engine.SamplerSpec, group, batch, size int, budget int64) (*engine.BatchMeta, error) {
		return r.Fetch(ctx, engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: size,
			TokenBudget: budget, Sampler: spec, Options: engine.SamplingOptions{HasRank: true, DPRank: group, BatchIndex: batch}})
	}
	grpo := engine.SamplerSpec{Name: engine.SamplerGRPO, N: 2}
	g, err := fetch(grpo, 0, 0, 4, 0)
	require.NoError(t, err)
	require.Equal(t, m.Indexes[:4], g.Indexes)
	peer, err := fetch(grpo, 0, 0, 4, 0)
	require.NoError(t, err)
	require.Equal(t, g.Indexes, peer.Indexes, "grpo with a rank caches per group")

	tb := engine.SamplerSpec{Name: engine.SamplerTokenBudget}
	b, err := fetch(tb, 0, 0, 0, 40)
	require.NoError(t, err)
	sum := int64(0)
	for i := range b.Indexes {
		v, _ := b.Tags[i].Int("total_lengths")
		sum += v
	}
	require.NotEmpty(t, b.Indexes)
	require.LessOrEqual(t, sum, int64(40))

	_, err = fetch(engine.SamplerSpec{Name: "nope"}, 0, 0, 4, 0)
	require.ErrorIs(t, err, engine.ErrInvalid)
	require.ErrorContains(t, err, `"nope": unknown`)

	require.NoError(t, r.MarkDone(ctx, "p"))
	st, err := r.Stats(ctx, "p")
	require.NoError(t, err)
	require.True(t, st.Done)
	ra := engine.SamplerSpec{Name: engine.SamplerRankAware}
	total := len(g.Indexes) + len(b.Indexes)
	for batch := 0; ; batch++ {
		got, err := fetch(ra, 1, batch, 5, 0)
		if err != nil {
			require.ErrorIs(t, err, engine.ErrDone)
			break
		}
		total += len(got.Indexes)
	}
	require.Equal(t, 16, total, "every row once; the last batch short")

	// A private keyed fetch given back.
	q, err := r.Insert(ctx, "q", 2, []string{"x"})
	require.NoError(t, err)
	require.NoError(t, r.Commit(ctx, engine.CommitRequest{Partition: "q", Indexes: q.Indexes,
		Fields: []engine.CommitField{{Name: "x", DType: engine.Float32, Kind: engine.Dense, Shape: engine.Shape{1}}}}))
	req := engine.FetchRequest{Partition: "q", Task: "t", Fields: []string{"x"}, BatchSize: 2, Key: "mine"}
	first, err := r.Fetch(ctx, req)
	require.NoError(t, err)
	require.Len(t, first.Indexes, 2)
	require.NoError(t, r.Unconsume(ctx, "q", "t", "mine"))
	req.Key = ""
	again, err := r.Fetch(ctx, req)
	require.NoError(t, err)
	require.Equal(t, first.Indexes, again.Indexes)
	require.ErrorIs(t, r.Unconsume(ctx, "", "t", "k"), engine.ErrInvalid)
}
