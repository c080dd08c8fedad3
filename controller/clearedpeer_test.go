package controller

// A lagging peer of a data-replica group asking for a batch its group's
// other rank took, after every row of that batch was cleared.

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// Two ranks of one data-replica group (DP rank 0: TP peers A and B) must
// train on the same rows. A took batch 0; then its rows were cleared; B,
// lagging, asks for batch 0. Before, the sampler remade batch 0 from the
// rows ready then, and B trained on other rows than A with no word of it
// (and consumed them). Now B is told, naming the batch and why, and the
// rows ready stay for the next batch.
func TestKeptBatchClearedAfterPeerTookIt(t *testing.T) {
	specs := []engine.SamplerSpec{
		{Name: engine.SamplerRankAware},
		{Name: engine.SamplerGRPO, N: 1},
		{Name: engine.SamplerSeqlenBalanced, N: 1, DPSize: 2},
		{Name: engine.SamplerTokenBudget, N: 1, DPSize: 2},
	}
	for _, spec := range specs {
		t.Run(spec.Name, func(t *testing.T) {
			c := newRows(t, Config{KeptBatchTTL: time.Hour}, 16)
			ctx := context.Background()
			fetch := func(rank, batch int) engine.FetchRequest {
				req := specFetch(spec, rank, batch, 2)
				if spec.Name == engine.SamplerTokenBudget {
					req.BatchSize, req.TokenBudget = 0, 2
				}
				return req
			}
			a, err := c.Fetch(ctx, fetch(0, 0))
			require.NoError(t, err)
			require.Len(t, a.Indexes, 2, "peer A's batch 0")
			_, err = c.ClearRows("p", a.Indexes)
			require.NoError(t, err)

			before := consumedRows(t, c)
			b, err := c.Fetch(ctx, fetch(0, 0))
			if err == nil {
				t.Fatalf("peer B got rows %v for batch 0, peer A got %v (cleared): the ranks of one group train on different rows", b.Indexes, a.Indexes)
			}
			require.ErrorIs(t, err, engine.ErrNotFound)
			assert.Contains(t, err.Error(), "batch 0")
			assert.Contains(t, err.Error(), "cleared")
			assert.Equal(t, before, consumedRows(t, c), "the refused fetch consumed nothing")

			// The group goes on with its next batch.
			next, err := c.Fetch(ctx, fetch(0, 1))
			require.NoError(t, err)
			assert.Len(t, next.Indexes, 2)
		})
	}
}
