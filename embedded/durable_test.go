package embedded

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// TestPutsAnsweredOnceDurable: a KV put through a client of a durable
// controller in this process (as tq serve's KV_PUT and Redis endpoint
// run them) returns once its commit's record is durable, and the cell it
// replaced is freed on its unit. The put waits for its own record only,
// so that is checked on each return: one that returned before its fsync
// would be seen nearly every time.
func TestPutsAnsweredOnceDurable(t *testing.T) {
	ctrl, units, _, cl := kvPair(t)
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	ctx := context.Background()
	for i := range 50 {
		key := fmt.Sprintf("k%d", i%10) // from the 11th on, each replaces a cell
		b := engine.MustBatch(engine.Field{Name: "v", Col: engine.BytesOf([][]byte{make([]byte, 256)})})
		_, err := cl.PutKeys(ctx, "p", []string{key}, b, nil)
		require.NoError(t, err)
		require.NoError(t, ctrl.WaitRead(ended, "p", []string{key}), "put %d returned before its record was durable", i)
	}
	require.Equal(t, int64(10*256), used(units), "the replaced cells are freed: only the last put of each key holds bytes")
}
