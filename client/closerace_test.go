package client_test

import (
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/kvapi"
)

// Close may be called from several goroutines at once (a deferred Close
// and a signal handler's): each returns once the client is closed, and
// the client's state is not raced on (run with -race).
func TestConcurrentClose(t *testing.T) {
	ctrl, err := controller.New(controller.Config{UnitTimeout: time.Minute})
	require.NoError(t, err)
	t.Cleanup(func() { ctrl.Close() })
	_, addr := serveController(t, ctrl, controller.ServerConfig{}, "unix")
	joinUnit(t, addr, true)
	joinUnit(t, addr, true)
	for range 5 {
		c, err := client.Connect(t.Context(), addr, client.ConnectConfig{})
		require.NoError(t, err)
		_, err = kvapi.New(c).BatchPut(t.Context(), "p", keyRange("k", 4), xBatch(t, 4), nil)
		require.NoError(t, err)
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() { c.Close() })
		}
		wg.Wait()
		_, err = kvapi.New(c).BatchPut(t.Context(), "p", keyRange("k", 4), xBatch(t, 4), nil)
		require.Error(t, err, "a put after Close")
	}
}
