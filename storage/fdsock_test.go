package storage

import (
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/wire"
)

// TestFdSocketBoundsWaitingConnections checks that connections to the fd
// socket that send no request (each may wait fdRequestTimeout) are
// bounded: one past the bound is answered FdBusy at once rather than held
// open, and once the waiting ones go a request is served again.
func TestFdSocketBoundsWaitingConnections(t *testing.T) {
	u, err := NewUnit(1, testConfig())
	require.NoError(t, err)
	defer u.Close()
	srv := NewServer(u, ServerConfig{})
	defer srv.Close()
	srv.maxFdPending = 4
	path := filepath.Join(t.TempDir(), "unit.sock.shm")
	fl, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	require.NoError(t, err)
	srv.RegisterShm(fl)
	go srv.ServeShm(fl)

	var idle []net.Conn
	for range srv.maxFdPending {
		c, err := net.Dial("unix", path)
		require.NoError(t, err)
		idle = append(idle, c)
	}
	require.Eventually(t, func() bool { return srv.fdPending.Load() == srv.maxFdPending }, 5*time.Second, time.Millisecond)

	c, err := net.Dial("unix", path)
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second)) // well before fdRequestTimeout
	buf := make([]byte, wire.FdReplySize)
	n, err := c.Read(buf)
	require.NoError(t, err, "a connection past the bound was not answered at once")
	rep, err := wire.ParseFdReply(buf[:n])
	require.NoError(t, err)
	require.Equal(t, wire.FdBusy, rep.Status)
	require.ErrorContains(t, rep.Status.Err(), "busy")

	for _, c := range idle {
		c.Close()
	}
	require.Eventually(t, func() bool { return srv.fdPending.Load() == 0 }, 5*time.Second, time.Millisecond)
	require.Equal(t, wire.FdNotFound, fdStatus(t, path, 999), "a request after the waiting ones went")
}

// fdStatus sends the fd socket a request for segment id and returns the
// reply's status.
func fdStatus(t *testing.T, path string, id uint32) wire.FdStatus {
	t.Helper()
	c, err := net.Dial("unix", path)
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	_, err = c.Write(wire.FdRequest{Segment: id}.Append(nil))
	require.NoError(t, err)
	buf := make([]byte, wire.FdReplySize)
	n, err := c.Read(buf)
	require.NoError(t, err)
	rep, err := wire.ParseFdReply(buf[:n])
	require.NoError(t, err)
	return rep.Status
}
