package resp

import (
	"context"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestNotNowIsRetryable: a SET refused because the endpoint's storage
// units are shutting down (they take no new writes: tq serve's shutdown
// after the endpoint drained, an embedding program's) changed nothing and
// may succeed again later. It answers LOADING, which go-redis retries and
// redis-py raises as BusyLoadingError, a ConnectionError its Retry
// retries; before, it answered "ERR ... engine: closed", which neither
// retries. The message still names what was wrong.
func TestNotNowIsRetryable(t *testing.T) {
	for _, loops := range []int{-1, 1} {
		e := newEndpoint(t, Config{Loops: loops})
		ctx := context.Background()
		rc := e.client(t, &redis.Options{MaxRetries: -1})
		require.NoError(t, rc.Set(ctx, "before", "x", 0).Err())
		for _, u := range e.e.Units {
			u.StopReserving()
		}
		err := rc.Set(ctx, "k", "v", 0).Err()
		require.Error(t, err)
		assert.True(t, strings.HasPrefix(err.Error(), "LOADING "), "loops=%d: %v", loops, err)
		assert.Contains(t, err.Error(), "engine: closed")
		// Reads go on.
		got, err := rc.Get(ctx, "before").Result()
		require.NoError(t, err)
		assert.Equal(t, "x", got)
	}
}
