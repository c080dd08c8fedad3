package wire

import (
	"context"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/tqgo/tq/wire/wirepb"
)

// Every TCP connection a server holds has the kernel give up on its peer
// after PeerTimeout: keepalive probes from half of it, at most four, and
// TCP_USER_TIMEOUT. A loop that gives a connection back makes a new
// net.Conn of its socket (net.FileConn), which puts Go's own keepalive
// (15 s, 15 s) back on it: the peer timeout is set again there.
func TestPeerTimeoutOnEveryTCPConnection(t *testing.T) {
	want := map[string]int{"keepalive": 1, "idle": 4, "interval": 1, "count": 4, "user timeout": 8000}
	t.Run("accepted", func(t *testing.T) {
		s, addr := startServer(t, ServerConfig{PeerTimeout: 8 * time.Second, Loops: -1}, "tcp")
		dial(t, addr, "")
		assert.Equal(t, want, peerTimeoutOf(t, s))
	})
	t.Run("given back by a loop", func(t *testing.T) {
		inside, release := make(chan struct{}), make(chan struct{})
		s, addr, n := loopServer(t, ServerConfig{PeerTimeout: 8 * time.Second}, "tcp", func(s *Server) {
			s.Handle(opBlock, func(_ context.Context, _ *Request, rw *ReplyWriter) {
				inside <- struct{}{}
				<-release
				rw.Reply(&wirepb.Empty{}, nil, nil)
			})
		})
		c := dial(t, addr, "")
		_, err := inlineEcho(t.Context(), c, []byte("x"))
		require.NoError(t, err)
		require.Positive(t, n.on.Load(), "served on a loop")
		done := make(chan error, 1)
		go func() { done <- c.Do(t.Context(), opBlock, &wirepb.Empty{}, nil, &wirepb.Empty{}, nil) }()
		<-inside // off the loop: the connection is its goroutine's again
		assert.Equal(t, want, peerTimeoutOf(t, s))
		close(release)
		require.NoError(t, <-done)
	})
}

const opBlock Op = 219

// peerTimeoutOf reads the kernel's settings for the peer of s's one
// connection.
func peerTimeoutOf(t *testing.T, s *Server) map[string]int {
	t.Helper()
	s.mu.Lock()
	var c *serverConn
	for sc := range s.conns {
		c = sc
	}
	s.mu.Unlock()
	require.NotNil(t, c, "a connection")
	c.ncMu.Lock()
	nc := c.nc
	c.ncMu.Unlock()
	rc, err := nc.(*net.TCPConn).SyscallConn()
	require.NoError(t, err)
	got := map[string]int{}
	require.NoError(t, rc.Control(func(fd uintptr) {
		for name, o := range map[string][2]int{
			"keepalive": {unix.SOL_SOCKET, unix.SO_KEEPALIVE}, "idle": {unix.IPPROTO_TCP, unix.TCP_KEEPIDLE},
			"interval": {unix.IPPROTO_TCP, unix.TCP_KEEPINTVL}, "count": {unix.IPPROTO_TCP, unix.TCP_KEEPCNT},
			"user timeout": {unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT},
		} {
			v, err := unix.GetsockoptInt(int(fd), o[0], o[1])
			require.NoError(t, err, name)
			got[name] = v
		}
	}))
	return got
}

// A connection whose peer's host stopped answering (the kernel's
// ETIMEDOUT) ended by the peer, for OnDisconnect; one past a deadline
// the server set did not.
func TestTimedOutPeerEndedTheConnection(t *testing.T) {
	gone := &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ETIMEDOUT)}
	assert.True(t, closedByPeer(gone))
	assert.False(t, closedByPeer(&net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}))
}
