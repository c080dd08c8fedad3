package stream

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/embedded"
	"github.com/tqgo/tq/engine"
)

// flakyGiveBack fails the first fails give-backs as a controller that
// cannot be reached for a moment does.
type flakyGiveBack struct {
	streamOps
	fails atomic.Int32
}

func (m *flakyGiveBack) Unconsume(ctx context.Context, partition, task, key string) error {
	if m.fails.Add(-1) >= 0 {
		return fmt.Errorf("unconsume: controller unreachable: %w", engine.ErrUnavailable)
	}
	return m.streamOps.Unconsume(ctx, partition, task, key)
}

// With EndWhenConsumed and a private sampler, a fetch whose wait timed
// out is given back before the loader looks whether the task consumed
// everything; that give-back is tried again, as every other give-back of
// the loader is, so that a moment without the controller does not end the
// iteration with an error.
func TestEndWhenConsumedTimedOutGiveBackIsTriedAgain(t *testing.T) {
	ecfg := embedded.DefaultConfig()
	ecfg.Controller.PreAlloc = 4
	e, err := embedded.New(ecfg)
	require.NoError(t, err)
	t.Cleanup(func() { e.Close() })
	m := &flakyGiveBack{streamOps: streamOps{embedded.Meta(e.Controller, e.Units...)}}
	m.fails.Store(2)
	cb := clientOver(t, e, m)

	lcfg := config("p")
	lcfg.Sampler, lcfg.Prefetch = engine.SamplerSpec{Name: engine.SamplerSequential}, 0
	lcfg.EndWhenConsumed, lcfg.PollInterval = true, 20*time.Millisecond
	l, err := New(cb, lcfg)
	require.NoError(t, err)
	l.giveBackBackoff = time.Millisecond
	time.AfterFunc(300*time.Millisecond, func() { produce(t, e.Client, "p", 0, 4, nil) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var got []int64
	for b, err := range l.All(ctx) {
		require.NoError(t, err)
		got = append(got, values(t, b)...)
	}
	require.Equal(t, upTo(4), got)
	require.Negative(t, m.fails.Load(), "no give-back failed: the test shows nothing")
}
