package shm

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/storage"
)

// A control ring's liveness socket is the fd socket connection its
// exchange ran on, and Dial closes the socket connection right after
// that exchange. The exchange's watch, which cuts it short when the Conn
// or the socket connection ends, used to be able to run only then, when
// the scheduler ran it late: it saw the socket connection's end and set
// a deadline on the ring's liveness socket, the ring read that as the
// unit gone, and the next request failed with "shmring: peer gone" (a
// flake of TestReadCutShortByTheConnectionsEndFails under load). The
// watch picks at random among ready cases, so a late watch cut the
// ring about half the time; 20 dials all miss it with odds 2^-20.
func TestLateFdWatchSparesTheRing(t *testing.T) {
	tu := startUnit(t, unitConfig(), storage.ServerConfig{})
	t.Cleanup(func() { testHookFdWatch.Store(nil) })
	for i := range 20 {
		release := make(chan struct{})
		watched := make(chan struct{}, 1)
		hook := func(watch func()) {
			<-release
			watch()
			watched <- struct{}{}
		}
		testHookFdWatch.Store(&hook)
		c := dialUnit(t, tu, Config{Control: ControlRing})
		testHookFdWatch.Store(nil)
		close(release)
		select {
		case <-watched: // the ring's exchange, the one exchange of Dial
		case <-time.After(10 * time.Second):
			t.Fatal("the ring exchange's watch never ran")
		}
		require.Equal(t, ControlRing, c.Control())
		r, err := c.Reserve(t.Context(), []int64{1})
		require.NoError(t, err, "dial %d: Reserve after the exchange's watch ran late", i)
		require.NoError(t, r.Abort(t.Context()))
		require.NoError(t, c.Close())
	}
}
