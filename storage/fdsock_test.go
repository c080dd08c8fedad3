package storage

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
)

// TestFdSocketBoundsWaitingConnections checks that connections to the fd
// socket that send no request (each may wait fdRequestTimeout) are
// bounded: one past the bound is answered FdBusy at once rather than held
// open, and once the waiting ones go a request is served again.
func TestFdSocketBoundsWaitingConnections(t *testing.T) {
	_, srv, fl, path := fdSocketUnit(t)
	srv.maxFdPending = 4
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

// fdSocketUnit makes unit 1 and its server, with an fd socket registered
// at a fresh path, all closed when the test ends; the caller serves it
// (ServeShm on the listener).
func fdSocketUnit(t *testing.T) (*Unit, *Server, *net.UnixListener, string) {
	t.Helper()
	u, err := NewUnit(1, testConfig())
	require.NoError(t, err)
	t.Cleanup(func() { u.Close() })
	srv := NewServer(u, ServerConfig{})
	t.Cleanup(func() { srv.Close() })
	path := filepath.Join(t.TempDir(), "unit.sock.shm")
	fl, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	require.NoError(t, err)
	srv.RegisterShm(fl)
	return u, srv, fl, path
}

// fdStatus sends the fd socket a request for segment id and returns the
// reply's status.
func fdStatus(t *testing.T, path string, id uint32) wire.FdStatus {
	t.Helper()
	return fdStatusOf(t, path, wire.FdRequest{Segment: id})
}

// fdStatusOf sends the fd socket req and returns the reply's status.
func fdStatusOf(t *testing.T, path string, req wire.FdRequest) wire.FdStatus {
	t.Helper()
	c, err := net.Dial("unix", path)
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	_, err = c.Write(req.Append(nil))
	require.NoError(t, err)
	buf := make([]byte, wire.FdReplySize)
	n, err := c.Read(buf)
	require.NoError(t, err)
	rep, err := wire.ParseFdReply(buf[:n])
	require.NoError(t, err)
	return rep.Status
}

// TestFdSocketSurvivesFdExhaustion: an accept that fails while the
// process is out of file descriptors does not end the fd socket; once
// descriptors are free again the connection that waited is served, and
// so is a new one.
func TestFdSocketSurvivesFdExhaustion(t *testing.T) {
	_, srv, fl, path := fdSocketUnit(t)
	served := make(chan error, 1)
	go func() { served <- srv.ServeShm(fl) }()

	// The client's socket exists before the descriptors run out.
	cfd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	waiting := os.NewFile(uintptr(cfd), "client")
	defer waiting.Close()

	restore := exhaustFds(t, cfd)
	defer restore()
	require.NoError(t, unix.Connect(cfd, &unix.SockaddrUnix{Name: path}))
	select {
	case err := <-served:
		restore()
		t.Fatalf("ServeShm returned while out of file descriptors: %v", err)
	case <-time.After(300 * time.Millisecond): // several accepts fail meanwhile
	}
	restore()

	c, err := net.FileConn(waiting)
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	_, err = c.Write(wire.FdRequest{Segment: 999}.Append(nil))
	require.NoError(t, err)
	buf := make([]byte, wire.FdReplySize)
	n, err := c.Read(buf)
	require.NoError(t, err, "the connection that waited out the exhaustion was not served")
	rep, err := wire.ParseFdReply(buf[:n])
	require.NoError(t, err)
	require.Equal(t, wire.FdNotFound, rep.Status)
	require.Equal(t, wire.FdNotFound, fdStatus(t, path, 999), "a request after the exhaustion")
}

// A segment request that names the run of the unit it means (TQF2) is
// answered by that run only: a unit restarted at the same fd socket path
// numbers its segments anew, and a client of the old run that fetched
// segment 1 from it used to map the new run's segment 1 (another unit's
// bytes) under the old run's cells. Another run answers FdNotThisUnit,
// which reads as lost; a request naming none (TQF1) is answered as before.
func TestFdSocketServesTheRunARequestNames(t *testing.T) {
	u, _, path, seg := fdSocketWithSegment(t)
	require.Equal(t, wire.FdOK, fdStatusOf(t, path, wire.FdRequest{Segment: seg, Incarnation: u.Incarnation()}))
	st := fdStatusOf(t, path, wire.FdRequest{Segment: seg, Incarnation: u.Incarnation() + 1})
	require.Equal(t, wire.FdNotThisUnit, st, "a request naming another run")
	require.ErrorIs(t, st.Err(), engine.ErrLost)
	require.Equal(t, wire.FdOK, fdStatusOf(t, path, wire.FdRequest{Segment: seg}), "a request naming none")
}

// TestFdSocketOutOfDescriptorsIsNotNotFound: a segment request the unit
// cannot answer because it is out of file descriptors (the dup of the
// segment's memfd fails with EMFILE) is answered FdBusy ("try again"),
// not FdNotFound: a client reads "no such segment" as the segment gone
// and its cells with it (engine.ErrNotFound), though it is live and the
// next request, once descriptors are free, gets it.
func TestFdSocketOutOfDescriptorsIsNotNotFound(t *testing.T) {
	u, srv, path, seg := fdSocketWithSegment(t)

	// Connected and accepted before the descriptors run out.
	c, err := net.Dial("unix", path)
	require.NoError(t, err)
	defer c.Close()
	require.Eventually(t, func() bool { return srv.fdPending.Load() == 1 }, 5*time.Second, time.Millisecond)

	restore := exhaustFds(t, 0)
	defer restore()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	_, err = c.Write(wire.FdRequest{Segment: seg, Incarnation: u.Incarnation()}.Append(nil))
	require.NoError(t, err)
	buf := make([]byte, wire.FdReplySize)
	n, err := c.Read(buf)
	restore()
	require.NoError(t, err)
	rep, err := wire.ParseFdReply(buf[:n])
	require.NoError(t, err)
	require.Equal(t, wire.FdBusy, rep.Status, "a live segment the unit could not dup for want of descriptors")
	require.NotErrorIs(t, rep.Status.Err(), engine.ErrNotFound)

	require.Equal(t, wire.FdOK, fdStatusOf(t, path, wire.FdRequest{Segment: seg, Incarnation: u.Incarnation()}), "the same request once descriptors are free")
}

// exhaustFds leaves the process no free file descriptor (a soft
// RLIMIT_NOFILE of at most 4096, the rest taken by dups of fd) until the
// function it returns is called (again harmless).
func exhaustFds(t *testing.T, fd int) (restore func()) {
	t.Helper()
	var old unix.Rlimit
	require.NoError(t, unix.Getrlimit(unix.RLIMIT_NOFILE, &old))
	lim := old
	lim.Cur = min(old.Cur, 4096)
	require.NoError(t, unix.Setrlimit(unix.RLIMIT_NOFILE, &lim))
	var fillers []int
	restore = func() {
		for _, f := range fillers {
			unix.Close(f)
		}
		fillers = nil
		unix.Setrlimit(unix.RLIMIT_NOFILE, &old)
	}
	for {
		f, err := unix.Dup(fd)
		if errors.Is(err, unix.EMFILE) {
			break
		}
		if err != nil {
			restore()
			require.NoError(t, err)
		}
		fillers = append(fillers, f)
	}
	return restore
}

// fdSocketWithSegment serves a unit's fd socket with one live segment to
// fetch (a reservation's, aborted at the test's end).
func fdSocketWithSegment(t *testing.T) (*Unit, *Server, string, uint32) {
	t.Helper()
	u, srv, fl, path := fdSocketUnit(t)
	r, err := u.Reserve(t.Context(), []int64{64})
	require.NoError(t, err)
	t.Cleanup(func() { r.Abort() })
	go srv.ServeShm(fl)
	return u, srv, path, u.Segments()[0].ID
}
