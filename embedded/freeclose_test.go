package embedded

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/internal/leaktest"
)

// TestFreesWaitingEndAtClose: a put to a durable controller in this
// process whose ctx ends before its record is durable leaves the frees of
// the cell it replaced to a goroutine that waits for the record. Closed
// with that goroutine waiting (the log held up), the controller ends it:
// nothing is left waiting on the closed log, on the fast path (OneKey) or
// the general one (a client's PutKeys).
func TestFreesWaitingEndAtClose(t *testing.T) {
	for _, path := range []string{"fast", "general"} {
		t.Run(path, func(t *testing.T) {
			var hold atomic.Bool
			entered, gate := make(chan struct{}, 1), make(chan struct{})
			cfg := controller.DefaultConfig()
			cfg.Dir = t.TempDir()
			cfg.OnJournalWrite = func(time.Duration, int) {
				if hold.Load() {
					select {
					case entered <- struct{}{}:
					default:
					}
					<-gate
				}
			}
			ctrl, _, kd, cl := kvPairWith(t, cfg)
			put := kd.PutKeys
			if path == "general" {
				put = cl.PutKeys
			}
			row := func() *engine.Batch {
				return engine.MustBatch(engine.Field{Name: "v", Col: engine.BytesOf([][]byte{make([]byte, 64)})})
			}
			_, err := put(context.Background(), "p", []string{"k"}, row(), nil)
			require.NoError(t, err)

			// The second put replaces the first's cell; its record is
			// held up, and its ctx ends while it waits.
			hold.Store(true)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() {
				_, err := put(ctx, "p", []string{"k"}, row(), nil)
				done <- err
			}()
			<-entered
			cancel()
			require.ErrorIs(t, <-done, context.Canceled)
			require.Contains(t, leaktest.Leaked(0), "freeAfter", "a goroutine waits to free the replaced cell")

			closed := make(chan error, 1)
			go func() { closed <- ctrl.Close() }()
			ended, stop := context.WithCancel(context.Background())
			stop()
			require.Eventually(t, func() bool { return errors.Is(ctrl.WaitDurable(ended), engine.ErrClosed) }, 10*time.Second, time.Millisecond, "Close begins")
			close(gate)
			require.NoError(t, <-closed)

			deadline := time.Now().Add(10 * time.Second)
			for strings.Contains(leaktest.Leaked(0), "freeAfter") && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			require.NotContains(t, leaktest.Leaked(0), "freeAfter", "the goroutine freeing the replaced cell ends at Close")
		})
	}
}
