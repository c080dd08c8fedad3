package resp

import (
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/controller"
)

// TestWaitForRoomEndsWhenClientLeaves: a SET (an MSET, the general way)
// that waits for room on a full unit ends once its client closes the
// connection (or resets it), not CommandTimeout (30 s) later, and leaves
// nothing behind: the room later freed is not taken by it. It waited on,
// and would then have written its value for a client gone.
func TestWaitForRoomEndsWhenClientLeaves(t *testing.T) {
	for _, tc := range []struct{ name, cmd string }{
		{"SET close", "SET"}, {"SET reset", "SET"}, {"MSET close", "MSET"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const capacity = 64 << 10 // one slab: 64 cells of 1 KiB
			e, ctrl, u := endpointOnOneUnit(t, controller.DefaultConfig(), capacity, Config{})
			require.Equal(t, 30*time.Second, e.srv.cfg.CommandTimeout)

			val := strings.Repeat("v", 1000)
			w, wr := e.raw(t)
			var fill strings.Builder
			for i := range 64 {
				fill.WriteString(cmdline("SET", fmt.Sprint("f", i), val))
			}
			_, err := io.WriteString(w, fill.String())
			require.NoError(t, err)
			for i := range 64 {
				require.Equal(t, "+OK", wr.line(t), "filler %d", i)
			}
			used := u.Stats().Used
			require.Equal(t, int64(capacity), used)

			nc, _ := e.raw(t)
			_, err = io.WriteString(nc, cmdline(tc.cmd, "late", val))
			require.NoError(t, err)
			require.Eventually(t, func() bool { return u.Stats().Waiting == 1 }, 10*time.Second, 5*time.Millisecond, "the %s never waited for room", tc.cmd)
			if tc.name == "SET reset" {
				require.NoError(t, nc.(*net.TCPConn).SetLinger(0))
			}
			require.NoError(t, nc.Close())
			// The command ended, and its connection with it (a hang check
			// only: the wait would otherwise last 30 s).
			require.Eventually(t, func() bool { return conns(e.srv) == 1 }, 10*time.Second, 5*time.Millisecond, "the %s kept waiting after its client left", tc.cmd)
			require.Equal(t, 0, u.Stats().Waiting)

			// Room freed now is not taken by the write abandoned.
			_, err = io.WriteString(w, cmdline("DEL", "f0"))
			require.NoError(t, err)
			require.Equal(t, ":1", wr.line(t))
			_, ok := ctrl.KeyCells("default", "late", []string{"value"}, nil)
			require.False(t, ok, "the abandoned write was made")
			_, err = io.WriteString(w, cmdline("EXISTS", "late"))
			require.NoError(t, err)
			require.Equal(t, ":0", wr.line(t))
			require.Eventually(t, func() bool { return u.Stats().Used < used }, 10*time.Second, 5*time.Millisecond, "the DEL freed nothing")
			require.Equal(t, 0, u.Stats().Waiting)
		})
	}
}
