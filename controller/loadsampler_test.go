package controller

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/controller/sampler"
	"github.com/tqgo/tq/engine"
)

// A checkpoint saved with a sampler that keeps state, loaded into a
// controller whose sampler keeps none, is refused as the wrong sampler
// (ErrInvalid, naming the sampler), not as a damaged file: the file is
// whole, and loads into a controller with the sampler it was saved
// with. It used to fail with "checkpoint has sampler state but the
// sampler *sampler.Sequential keeps none: engine: corrupt data" (a start
// from such a snapshot already said ErrInvalid).
func TestLoadCheckpointOfAnotherSamplerIsNotCorrupt(t *testing.T) {
	rank := func() engine.Sampler { g, _ := sampler.NewGRPO(1); return g }
	c := newController(t, Config{Sampler: rank()})
	rm := insert(t, c, "ranked", 4, "r")
	commitDense(t, c, "ranked", rm.Indexes, "r")
	_, err := c.Fetch(context.Background(), engine.FetchRequest{Partition: "ranked", Task: "t", Fields: []string{"r"}, BatchSize: 2,
		Options: engine.SamplingOptions{HasRank: true}})
	require.NoError(t, err)
	dir := filepath.Join(t.TempDir(), "ck")
	require.NoError(t, c.Save(dir))

	seq := newController(t, Config{Sampler: sampler.NewSequential()})
	_, err = seq.Load(dir)
	require.ErrorIs(t, err, engine.ErrInvalid)
	assert.NotErrorIs(t, err, engine.ErrCorrupt)
	assert.Contains(t, err.Error(), "sampler")
	assert.Contains(t, err.Error(), dir)

	again := newController(t, Config{Sampler: rank()})
	_, err = again.Load(dir)
	require.NoError(t, err)
}
