package resp

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestShutdownLetsCommandsFinish: Shutdown stops accepting and closes the
// connections that wait for their next command, but a command in flight
// (a SET whose value is still arriving) is read to its end, runs, and is
// answered before its connection closes; a TQ.CHANGES waiting for a
// change does not hold the shutdown. Close, which tq serve called on
// SIGTERM before, cut the SET off.
func TestShutdownLetsCommandsFinish(t *testing.T) {
	for _, loops := range []int{-1, 1} {
		t.Run(fmt.Sprintf("loops=%d", loops), func(t *testing.T) {
			e := newEndpoint(t, Config{Loops: loops})
			idle, idleR := e.raw(t)
			_, err := idle.Write([]byte("*1\r\n$4\r\nPING\r\n"))
			require.NoError(t, err)
			require.Equal(t, "+PONG", idleR.line(t))

			watcher, _ := e.raw(t)
			_, err = watcher.Write([]byte("*4\r\n$10\r\nTQ.CHANGES\r\n$1\r\n0\r\n$7\r\nTIMEOUT\r\n$6\r\n300000\r\n"))
			require.NoError(t, err)

			// Half a SET: the server is reading it once its value holds
			// part of the budget for large values.
			busy, busyR := e.raw(t)
			val := bytes.Repeat([]byte("0123456789abcdef"), 1<<16)
			_, err = fmt.Fprintf(busy, "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n", len(val))
			require.NoError(t, err)
			_, err = busy.Write(val[:len(val)/2])
			require.NoError(t, err)
			require.Eventually(t, func() bool {
				if e.srv.large.TryAcquire(e.srv.cfg.LargeInFlight) {
					e.srv.large.Release(e.srv.cfg.LargeInFlight)
					return false
				}
				return true
			}, 10*time.Second, time.Millisecond, "the server never began to read the SET")

			shut := make(chan error, 1)
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				shut <- e.srv.Shutdown(ctx)
			}()
			require.Eventually(t, func() bool {
				nc, err := net.Dial("tcp", e.addr)
				if err == nil {
					nc.Close()
				}
				return err != nil
			}, 10*time.Second, time.Millisecond, "still accepting")
			closed := func(nc net.Conn) bool {
				nc.SetReadDeadline(time.Now().Add(10 * time.Second))
				_, err := io.ReadAll(nc)
				return err == nil // EOF: closed by the server
			}
			assert.True(t, closed(idle), "an idle connection stays open")

			_, err = busy.Write(append(val[len(val)/2:], "\r\n"...))
			require.NoError(t, err, "the rest of the SET")
			busy.SetReadDeadline(time.Now().Add(10 * time.Second))
			require.Equal(t, "+OK", busyR.line(t))
			assert.True(t, closed(busy), "the connection stays open after its command")
			select {
			case err := <-shut:
				require.NoError(t, err)
			case <-time.After(30 * time.Second):
				t.Fatal("Shutdown waits for a TQ.CHANGES waiting for a change")
			}
			// The watcher's command was answered, nothing changed, unless
			// the shutdown came before it was read.
			watcher.SetReadDeadline(time.Now().Add(10 * time.Second))
			got, err := io.ReadAll(watcher)
			require.NoError(t, err)
			if len(got) > 0 {
				assert.Regexp(t, `^\*4\r\n\$\d+\r\n[0-9a-f]*\r\n:0\r\n:0\r\n\*0\r\n$`, string(got))
			}
			b, err := e.kv.BatchGetCopy(context.Background(), "default", []string{"k"}, "value")
			require.NoError(t, err)
			assert.True(t, bytes.Equal(val, b.Col("value").RowBytes(0)), "the value the SET stored")
		})
	}
}
