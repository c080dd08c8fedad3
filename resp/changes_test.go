package resp

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/controller/journal"
)

// TestChangesWithoutTimeoutUnderDurableWrites checks that TQ.CHANGES
// without TIMEOUT answers the changes already there with a durable
// controller while other clients write: its timeout bounds the wait for a
// change, not the wait for the log to hold what it answers.
func TestChangesWithoutTimeoutUnderDurableWrites(t *testing.T) {
	e := newDurableEndpoint(t, journal.FsyncAlways)

	ctx := context.Background()
	rc := e.client(t, &redis.Options{PoolSize: 16})
	require.NoError(t, rc.Set(ctx, "seed", "1", 0).Err())
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				rc.Set(ctx, fmt.Sprintf("w%d-%d", w, i%50), "v", 0)
			}
		})
	}
	defer func() {
		close(stop)
		wg.Wait()
	}()
	time.Sleep(200 * time.Millisecond)
	reader := e.client(t, &redis.Options{PoolSize: 1})
	empty := 0
	for range 50 {
		v, err := reader.Do(ctx, "TQ.CHANGES", "0").Slice()
		require.NoError(t, err)
		if len(v[3].([]any)) == 0 {
			empty++
		}
	}
	assert.Zero(t, empty, "TQ.CHANGES 0 answered no changes %d of 50 times while the partition held keys", empty)
}
