package stream

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// A partition named twice in Config.Partitions is refused, naming it. A
// loader used to take it: with the default (rank_aware) sampler it then
// yielded every micro-batch of the partition twice, once per step (the
// group's batch indexes start again at 0 and the controller hands back
// the batches it kept for them), while a sequential one yielded it once.
func TestRepeatedPartitionRefused(t *testing.T) {
	e := cluster(t)
	produce(t, e.Client, "p", 0, 10, nil)
	require.NoError(t, e.Client.MarkDone(context.Background(), "p"))
	for _, smp := range []string{engine.SamplerRankAware, engine.SamplerSequential} {
		cfg := config("p", "q", "p")
		cfg.Sampler = engine.SamplerSpec{Name: smp}
		_, err := New(e.Client, cfg)
		require.ErrorIs(t, err, engine.ErrInvalid, smp)
		require.ErrorContains(t, err, `partition "p" appears twice`, smp)
		require.ErrorIs(t, cfg.Validate(), engine.ErrInvalid)
	}
}
