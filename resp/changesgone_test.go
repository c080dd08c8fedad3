package resp

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestChangesWaitEndsWhenClientLeaves: a client that sends TQ.CHANGES
// with a TIMEOUT and closes its connection (its own socket timeout
// passed, it was killed) no longer holds the connection, its goroutine
// and descriptor, and a MaxClients slot for the rest of the wait (up to 5
// minutes): the wait ends once the client is gone, as Redis frees a
// client blocked in BLPOP that closes. A client that waits on is still
// answered what changed, and what it pipelined behind the wait runs
// after it.
func TestChangesWaitEndsWhenClientLeaves(t *testing.T) {
	for _, loops := range []int{1, -1} {
		t.Run(fmt.Sprintf("loops=%d", loops), func(t *testing.T) {
			e := newEndpoint(t, Config{Loops: loops})
			for _, multi := range []bool{false, true} {
				c, err := dialRaw(e.addr)
				require.NoError(t, err)
				require.Equal(t, "+OK\r\n", churnDo(t, c, "SELECT", "idle"))
				if multi {
					require.Equal(t, "+OK\r\n", churnDo(t, c, "MULTI"))
					require.Equal(t, "+QUEUED\r\n", churnDo(t, c, "TQ.CHANGES", "0", "TIMEOUT", "300000"))
					_, err = c.Write(respCommand("EXEC"))
				} else {
					_, err = c.Write(respCommand("TQ.CHANGES", "0", "TIMEOUT", "300000"))
				}
				require.NoError(t, err)
				c.Close()
			}
			deadline := time.Now().Add(30 * time.Second)
			for {
				e.srv.mu.Lock()
				n := len(e.srv.conns)
				e.srv.mu.Unlock()
				if n == 0 {
					break
				}
				require.False(t, time.Now().After(deadline), "%d connections waiting in TQ.CHANGES still open 30 s after their clients closed them", n)
				time.Sleep(5 * time.Millisecond)
			}

			// A client that stays is answered the change, then what it
			// pipelined behind the wait.
			c, err := dialRaw(e.addr)
			require.NoError(t, err)
			defer c.Close()
			require.Equal(t, "+OK\r\n", churnDo(t, c, "SELECT", "idle"))
			_, err = c.Write(append(respCommand("TQ.CHANGES", "0", "TIMEOUT", "300000"), respCommand("ECHO", "after")...))
			require.NoError(t, err)
			w, err := dialRaw(e.addr)
			require.NoError(t, err)
			defer w.Close()
			require.Equal(t, "+OK\r\n", churnDo(t, w, "SET", "{idle}k", "v"))
			c.SetDeadline(time.Now().Add(30 * time.Second))
			var r strings.Builder
			require.NoError(t, c.reply(&r))
			require.Contains(t, r.String(), "$1\r\nk\r\n", "TQ.CHANGES answers the change")
			r.Reset()
			require.NoError(t, c.reply(&r))
			require.Equal(t, "$5\r\nafter\r\n", r.String())
		})
	}
}
