package embedded

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// TestCloseDuringPutsAndGets: a Close while puts and gets are copying
// bytes into and out of the units makes them fail with an error wrapping
// engine.ErrClosed; none touches memory Close let go of (which crashed
// the process).
func TestCloseDuringPutsAndGets(t *testing.T) {
	cfg := smallConfig(1)
	cfg.Storage.Capacity, cfg.Storage.SegmentSize = 64<<20, 64<<20
	c, err := New(cfg)
	require.NoError(t, err)
	ctx := context.Background()
	col := engine.BytesOf([][]byte{make([]byte, 4<<20)})
	b := engine.MustBatch(engine.Field{Name: "x", Col: col})
	m, err := c.Client.PutNew(ctx, "p", b)
	require.NoError(t, err)

	var wg sync.WaitGroup
	started := make(chan struct{}, 8)
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Go(func() {
			for n := 0; ; n++ {
				var err error
				if i%2 == 0 {
					// Replacing its own key: the unit never fills.
					_, err = c.Client.PutKeys(ctx, "kv", []string{fmt.Sprint(i)}, b, nil)
				} else {
					_, err = c.Client.Get(ctx, m)
				}
				if n == 0 {
					started <- struct{}{}
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	for range 8 {
		<-started
	}
	require.NoError(t, c.Close())
	wg.Wait()
	close(errs)
	for err := range errs {
		require.ErrorIs(t, err, engine.ErrClosed)
	}
}
