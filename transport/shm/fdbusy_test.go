package shm

import (
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
)

// busyFdSocket stands in front of the unit's fd socket at real: it
// answers the first busy requests FdBusy (the unit's "out of descriptors
// for now, try again") and hands the rest to real. It returns its path
// and the count of requests it saw.
func busyFdSocket(t *testing.T, real string, busy int64) (string, *atomic.Int64) {
	t.Helper()
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(t.TempDir(), "busy.shm"), Net: "unix"})
	require.NoError(t, err)
	done := make(chan struct{})
	t.Cleanup(func() {
		l.Close()
		<-done
	})
	var seen atomic.Int64
	go func() {
		defer close(done)
		for {
			uc, err := l.AcceptUnix()
			if err != nil {
				return
			}
			req, err := wire.ReadFdRequest(uc)
			if err != nil {
				uc.Close()
				continue
			}
			if seen.Add(1) <= busy {
				uc.Write(wire.FdReply{Status: wire.FdBusy}.Append(nil))
				uc.Close()
				continue
			}
			nc, err := net.Dial("unix", real)
			if err == nil {
				rc := nc.(*net.UnixConn)
				buf, oob := make([]byte, wire.FdReplySize), make([]byte, unix.CmsgSpace(4))
				if _, err = rc.Write(req.Append(nil)); err == nil {
					var n, oobn int
					if n, oobn, _, _, err = rc.ReadMsgUnix(buf, oob); err == nil {
						uc.WriteMsgUnix(buf[:n], oob[:oobn], nil)
						if fds, err := receivedFds(oob[:oobn]); err == nil {
							for _, fd := range fds {
								unix.Close(fd)
							}
						}
					}
				}
				rc.Close()
			}
			uc.Close()
		}
	}()
	return l.Addr().String(), &seen
}

// A segment fetch the unit answers FdBusy is tried again: the read
// succeeds once the unit hands the memfd over. It used to fail at the
// first FdBusy, with engine.ErrCapacity, which a put reads as a full unit.
func TestSegmentFetchRetriesWhenBusy(t *testing.T) {
	_, c, addr := socketConn(t)
	var seen *atomic.Int64
	c.fdSock, seen = busyFdSocket(t, c.fdSock, 3)

	l, err := c.View(t.Context(), []engine.RemoteAddr{addr})
	require.NoError(t, err)
	l.Release()
	assert.EqualValues(t, 4, seen.Load(), "fd requests: three answered busy, then one")
}

// A unit that stays busy fails the fetch after fdBusyTries requests, with
// engine.ErrCapacity and saying how often it was asked.
func TestSegmentFetchBusyIsBounded(t *testing.T) {
	oldWait := fdBusyWait
	fdBusyWait = time.Millisecond
	t.Cleanup(func() { fdBusyWait = oldWait })
	_, c, addr := socketConn(t)
	var seen *atomic.Int64
	c.fdSock, seen = busyFdSocket(t, c.fdSock, 1<<30)

	_, err := c.View(t.Context(), []engine.RemoteAddr{addr})
	require.ErrorIs(t, err, engine.ErrCapacity)
	assert.ErrorContains(t, err, "unit busy")
	assert.ErrorContains(t, err, "asked 10 times")
	assert.EqualValues(t, fdBusyTries, seen.Load())
}
