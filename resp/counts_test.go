package resp

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// TestCountsUnderConcurrency checks the counts DEL, HSET and TQ.TAGDEL
// answer when clients race on one key: as in Redis, of N clients
// deleting one key, setting one new field or removing one tag at once,
// exactly one hears 1. Each count is taken in the controller's step that
// makes the change; before, each was read first and changed after, so
// several clients heard 1.
func TestCountsUnderConcurrency(t *testing.T) {
	ctx := context.Background()
	e := newEndpoint(t, Config{})
	const n = 8
	cs := make([]*redis.Client, n)
	for i := range cs {
		cs[i] = e.client(t, &redis.Options{PoolSize: 1})
		require.NoError(t, cs[i].Ping(ctx).Err())
	}
	for _, tc := range []struct {
		name    string
		prepare func(k string) error
		race    func(rc *redis.Client, k string) (int64, error)
	}{
		{"DEL",
			func(k string) error { return cs[0].Set(ctx, k, "x", 0).Err() },
			func(rc *redis.Client, k string) (int64, error) { return rc.Del(ctx, k).Result() }},
		{"HSET",
			func(string) error { return nil },
			func(rc *redis.Client, k string) (int64, error) { return rc.HSet(ctx, k, "f", "v").Result() }},
		{"TQ.TAGDEL",
			func(k string) error { return cs[0].Do(ctx, "TQ.TAG", k, "worker", "w1").Err() },
			func(rc *redis.Client, k string) (int64, error) { return rc.Do(ctx, "TQ.TAGDEL", k, "worker").Int64() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for trial := range 100 {
				k := fmt.Sprint(tc.name, trial)
				require.NoError(t, tc.prepare(k))
				var total atomic.Int64
				var wg sync.WaitGroup
				start := make(chan struct{})
				for _, rc := range cs {
					wg.Go(func() {
						<-start
						got, err := tc.race(rc, k)
						if err != nil {
							t.Error(err)
						}
						total.Add(got)
					})
				}
				close(start)
				wg.Wait()
				require.Equal(t, int64(1), total.Load(), "trial %d: the sum of %d concurrent answers", trial, n)
			}
		})
	}
}
