package shm

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/storage"
)

// A client that redials many times, its connections breaking under it
// (no goodbye) with or without holds, leaves the unit nothing per dead
// connection once they are gone: no connection, no fd, no goroutine. The
// sessions that held something stay in quarantine, all of them sharing
// their process's one pidfd and one goroutine.
func TestRedialLeavesNoDeadConnections(t *testing.T) {
	for _, control := range []Control{ControlRing, ControlSocket} {
		for _, hold := range []bool{false, true} {
			t.Run(fmt.Sprintf("control=%v/hold=%v", control, hold), func(t *testing.T) {
				tu := startUnit(t, unitConfig(), storage.ServerConfig{Quarantine: time.Hour})
				const n = 64
				var fds, gs int
				for i := range n + 1 {
					if i == 1 {
						// After the first round the unit's segments are
						// mapped and the quarantine's waiter (if any) runs.
						waitConns(t, tu.srv, 0)
						fds, gs = openFds(t), runtime.NumGoroutine()
					}
					tr := New(Config{Control: control})
					c, err := tr.DialConn(t.Context(), engine.PeerInfo{Unit: tu.u.ID(), Addr: tu.addr})
					require.NoError(t, err)
					if hold {
						_, err := c.Reserve(t.Context(), []int64{4096})
						require.NoError(t, err)
					}
					c.mu.RLock()
					wc := c.wc
					c.mu.RUnlock()
					wc.Close() // broken: no goodbye
					require.NoError(t, tr.Close())
				}
				waitConns(t, tu.srv, 0)
				want := 0
				if hold {
					want = n + 1
				}
				var gotFds, gotGs int
				for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
					gotFds, gotGs = openFds(t), runtime.NumGoroutine()
					if gotFds <= fds && gotGs <= gs+2 || time.Now().After(deadline) {
						break
					}
				}
				if gotFds > fds {
					t.Errorf("%d fds open after %d more redials, %d before", gotFds, n, fds)
				}
				if gotGs > gs+2 {
					t.Errorf("%d goroutines after %d more redials, %d before", gotGs, n, gs)
				}
				if got, _ := tu.srv.Quarantined(); got != want {
					t.Errorf("%d sessions in quarantine, want %d", got, want)
				}
			})
		}
	}
}

func waitConns(t *testing.T, srv *storage.Server, want int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); srv.Conns() != want; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("server holds %d connections, want %d", srv.Conns(), want)
		}
	}
}
