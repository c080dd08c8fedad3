package stream

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// TestPartitionMustExist: a loader with PartitionMustExist that gets to a
// partition the controller does not have (a misspelled name) fails with an
// error naming it, and the loader's task, that wraps ErrInvalid, in
// process and over the wire, with a shared sampler and a private one,
// instead of waiting for a producer to make it; the partitions before it
// are read as usual.
func TestPartitionMustExist(t *testing.T) {
	for _, remote := range []bool{false, true} {
		for _, smp := range []string{engine.SamplerRankAware, engine.SamplerSequential} {
			t.Run(fmt.Sprintf("%s/remote=%v", smp, remote), func(t *testing.T) {
				e, _, c := doneRemote(t)
				if !remote {
					c = e.Client
				}
				cfg := config("p", "trian_1")
				cfg.Sampler, cfg.PartitionMustExist = engine.SamplerSpec{Name: smp}, true
				l, err := New(c, cfg)
				require.NoError(t, err)
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				var got []int64
				var last error
				for b, err := range l.All(ctx) {
					if err != nil {
						last = err
						break
					}
					got = append(got, values(t, b)...)
				}
				assert.Equal(t, upTo(32), got)
				require.ErrorIs(t, last, engine.ErrInvalid)
				assert.NotErrorIs(t, last, context.DeadlineExceeded)
				assert.Contains(t, last.Error(), `partition "trian_1" does not exist`)
				assert.Contains(t, last.Error(), `stream: fetch from "trian_1" for task "train": `)
			})
		}
	}
}
