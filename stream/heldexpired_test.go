package stream

import (
	"bytes"
	"context"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/embedded"
	"github.com/tqgo/tq/engine"
)

// The README: a prefetched micro-batch whose hold ran out (the
// controller's held-fetch TTL) before the loop took it is dropped, its
// rows the task's again. A private loader takes its first micro-batch of
// 12 rows and, with its other two prefetched and held, waits in the body
// while another consumer of the task waits at the end of the done
// partition: past the TTL that consumer gets the prefetched rows, and the
// loop, resumed, yields neither of those micro-batches — each row reaches
// one consumer, once — and says it dropped them.
func TestPrefetchedBatchPastItsHoldIsDropped(t *testing.T) {
	ecfg := embedded.DefaultConfig()
	ecfg.Controller.HeldFetchTTL = 500 * time.Millisecond
	e, err := embedded.New(ecfg)
	require.NoError(t, err)
	t.Cleanup(func() { e.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	produce(t, e.Client, "p", 0, 12, nil)
	require.NoError(t, e.Client.MarkDone(ctx, "p"))

	var logged bytes.Buffer
	var logMu sync.Mutex
	cfg := privateConfig()
	cfg.Prefetch = 2
	cfg.Logger = slog.New(slog.NewTextHandler(lockedWriter{&logMu, &logged}, nil))
	l, err := New(e.Client, cfg)
	require.NoError(t, err)

	var loop, peer []int64
	for b, err := range l.All(ctx) {
		require.NoError(t, err)
		loop = append(loop, values(t, b)...)
		if len(loop) > 4 {
			continue
		}
		// The prefetcher holds the other 8 rows.
		require.Eventually(t, func() bool {
			st, err := e.Client.ConsumptionStatus(ctx, "p", "train")
			require.NoError(t, err)
			return len(st.Held) == 8
		}, 10*time.Second, time.Millisecond, "the prefetched rows held")
		// Each prefetched micro-batch's hold runs out on its own (the
		// second a moment after the first): the peer takes both before
		// the loop goes on.
		for len(peer) < 8 {
			m, err := e.Client.GetMeta(ctx, client.MetaRequest{Mode: client.Fetch, Partition: "p", Task: "train",
				Fields: []string{"x"}, BatchSize: 12, Wait: true})
			require.NoError(t, err, "the held rows come back to the task past the TTL (the peer has %v)", peer)
			d, err := e.Client.Get(ctx, m)
			require.NoError(t, err)
			xs, err := engine.Values[int64](d.Col("x"))
			require.NoError(t, err)
			peer = append(peer, xs...)
			d.Release()
		}
	}
	require.NoError(t, l.Err())
	assert.Equal(t, upTo(4), loop, "the loop yields no micro-batch whose hold ran out")
	slices.Sort(peer)
	assert.Equal(t, []int64{4, 5, 6, 7, 8, 9, 10, 11}, peer)
	logMu.Lock()
	defer logMu.Unlock()
	assert.Contains(t, logged.String(), "dropped")
}
