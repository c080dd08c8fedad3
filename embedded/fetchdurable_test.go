package embedded

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
)

// A fetch from a durable controller in this process that takes rows and
// then fails waiting for its record to be durable (its caller gave up)
// gives them back, as a remote client's fetch does: they used to stay
// consumed for the task, and no consumer ever got them.
func TestFetchThatFailsWaitingForItsRecordGivesItsRowsBack(t *testing.T) {
	_, _, _, cl := kvPair(t)
	ctx := context.Background()
	const n = 32
	col, err := engine.DenseOf(make([]int64, n))
	require.NoError(t, err)
	b := engine.MustBatch(engine.Field{Name: "x", Col: col})
	_, err = cl.PutNew(ctx, "p", b)
	require.NoError(t, err)
	gone, cancel := context.WithCancel(ctx)
	cancel()
	got, failed := 0, 0
	for range n {
		m, err := cl.GetMeta(gone, client.MetaRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 1, Mode: client.Fetch})
		if err != nil {
			require.ErrorIs(t, err, context.Canceled)
			failed++
			continue
		}
		got += m.Len()
	}
	require.NotZero(t, failed, "no fetch failed waiting for its record: the test proves nothing")
	// A fetch whose record was durable before it looked at its context
	// succeeds: ask for what is left, since a fetch of more rows than are
	// ready waits for a full batch (and, not waiting, takes none).
	m, err := cl.GetMeta(ctx, client.MetaRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: n - got, Mode: client.Fetch})
	require.NoError(t, err)
	assert.Equal(t, n, got+m.Len(), "rows delivered, before and after (%d fetches failed)", failed)
}
