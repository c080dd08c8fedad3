package resp

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestFlushTakesOnlyAsyncOrSync checks that FLUSHDB and FLUSHALL with an
// argument Redis refuses answer a syntax error and clear nothing, and
// that ASYNC and SYNC clear.
func TestFlushTakesOnlyAsyncOrSync(t *testing.T) {
	ctx := context.Background()
	e := newEndpoint(t, Config{})
	rc := e.client(t, nil)
	for _, cmd := range []string{"FLUSHDB", "FLUSHALL"} {
		for _, bad := range [][]any{{"x"}, {"x", "y"}, {"ASYNC", "SYNC"}} {
			require.NoError(t, rc.Set(ctx, "k", "v", 0).Err())
			err := rc.Do(ctx, append([]any{cmd}, bad...)...).Err()
			require.Error(t, err, "%s %v", cmd, bad)
			assert.Equal(t, "ERR syntax error", err.Error())
			n, err := rc.Exists(ctx, "k").Result()
			require.NoError(t, err)
			assert.Equal(t, int64(1), n, "%s %v cleared the key", cmd, bad)
		}
		for _, good := range [][]any{nil, {"async"}, {"SYNC"}} {
			require.NoError(t, rc.Set(ctx, "k", "v", 0).Err())
			require.NoError(t, rc.Do(ctx, append([]any{cmd}, good...)...).Err(), "%s %v", cmd, good)
			n, err := rc.Exists(ctx, "k").Result()
			require.NoError(t, err)
			assert.Zero(t, n, "%s %v left the key", cmd, good)
		}
	}
}
