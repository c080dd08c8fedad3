package storage

import (
	"errors"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/internal/shmring"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// rawRing asks the fd socket at path for a control channel and returns
// the client's end, closed when the test ends.
func rawRing(t *testing.T, path string) *shmring.Conn {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	require.NoError(t, err)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = c.Write(wire.FdRequest{Ring: true}.Append(nil))
	require.NoError(t, err)
	buf, oob := make([]byte, wire.FdReplySize), make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
	require.NoError(t, err)
	rep, err := wire.ParseFdReply(buf[:n])
	require.NoError(t, err)
	require.Equal(t, wire.FdOK, rep.Status)
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	require.NoError(t, err)
	require.Len(t, msgs, 1)
	fds, err := unix.ParseUnixRights(&msgs[0])
	require.NoError(t, err)
	require.Len(t, fds, 1)
	mem, err := shmring.Map(fds[0])
	unix.Close(fds[0])
	require.NoError(t, err)
	c.SetDeadline(time.Time{})
	rc, err := shmring.NewConn(mem, shmring.SideA, c, func() error { return shmring.Unmap(mem) }, shmring.Config{})
	require.NoError(t, err)
	t.Cleanup(func() { rc.Close() })
	return rc
}

// ringFrame is a frame of op with body m.
func ringFrame(op wire.Op, id uint64, m proto.Message) []byte {
	b, _ := proto.Marshal(m)
	h := wire.Header{Version: wire.Version, Op: op, ID: id, BodyLen: uint32(len(b))}
	return append(h.Append(nil), b...)
}

// ringReply reads one frame from rc and returns its header.
func ringReply(t *testing.T, rc net.Conn) wire.Header {
	t.Helper()
	rc.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer rc.SetReadDeadline(time.Time{})
	hb := make([]byte, wire.HeaderSize)
	_, err := io.ReadFull(rc, hb)
	require.NoError(t, err)
	h, err := wire.DecodeHeader(hb)
	require.NoError(t, err)
	_, err = io.CopyN(io.Discard, rc, int64(h.BodyLen)+int64(h.PayloadLen))
	require.NoError(t, err)
	return h
}

// ringHello passes rc through the handshake.
func ringHello(t *testing.T, rc net.Conn) {
	t.Helper()
	_, err := rc.Write(ringFrame(wire.OpHello, 1, &wirepb.Hello{Version: wire.Version, Role: "client", Name: "ring"}))
	require.NoError(t, err)
	h := ringReply(t, rc)
	require.Zero(t, h.Flags&wire.FlagError, "handshake refused")
}

// ringCutOff reads rc until the unit ends it and returns how long that
// took; it fails the test if rc is still open after limit.
func ringCutOff(t *testing.T, rc net.Conn, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	rc.SetReadDeadline(start.Add(limit))
	_, err := io.Copy(io.Discard, rc)
	var ne net.Error
	require.False(t, errors.As(err, &ne) && ne.Timeout(), "still open after %v", limit)
	return time.Since(start)
}

// TestRingHostilePeers: the wire server's defences hold over a control
// ring as over a socket. A peer that sends half a frame and stays is cut
// off at FrameTimeout, a HELLO claiming 64 MiB at once, and one that
// sends nothing at the handshake timeout; a well-behaved peer on a ring
// of its own is served meanwhile and after.
func TestRingHostilePeers(t *testing.T) {
	const frameTimeout = 200 * time.Millisecond
	u, err := NewUnit(1, testConfig())
	require.NoError(t, err)
	t.Cleanup(func() { u.Close() })
	srv := NewServer(u, ServerConfig{FrameTimeout: frameTimeout, IdleTimeout: time.Minute})
	t.Cleanup(func() { srv.Close() })
	path := filepath.Join(t.TempDir(), "unit.sock.shm")
	fl, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	require.NoError(t, err)
	go srv.ServeShm(fl)

	good := rawRing(t, path)
	ringHello(t, good)
	ping := func(phase string) {
		t.Helper()
		_, err := good.Write(ringFrame(wire.OpPing, 7, &wirepb.Ping{}))
		require.NoError(t, err, phase)
		h := ringReply(t, good)
		require.Equal(t, wire.FlagReply, h.Flags, "ping %s", phase)
	}

	// Half-sent: a header claiming a 1 MiB body, then 1 KiB of it.
	half := rawRing(t, path)
	ringHello(t, half)
	h := wire.Header{Version: wire.Version, Op: wire.OpPing, ID: 2, BodyLen: 1 << 20}
	_, err = half.Write(append(h.Append(nil), make([]byte, 1<<10)...))
	require.NoError(t, err)
	// Oversized: a HELLO claiming the largest body there is.
	big := rawRing(t, path)
	h = wire.Header{Version: wire.Version, Op: wire.OpHello, ID: 1, BodyLen: wire.MaxBodyLen}
	// The unit may cut it off before Write returns, which then says so
	// after it wrote the whole header.
	n, _ := big.Write(h.Append(nil))
	require.Equal(t, wire.HeaderSize, n)
	// Unauthenticated: a ring that never sends its HELLO.
	silent := rawRing(t, path)

	ping("while hostile peers hold rings")
	took := ringCutOff(t, big, 5*time.Second)
	t.Logf("oversized HELLO cut off after %v", took)
	took = ringCutOff(t, half, 10*time.Second)
	require.GreaterOrEqual(t, took, frameTimeout/2, "the half-sent frame was cut off before the frame timeout")
	t.Logf("half-sent frame cut off after %v", took)
	took = ringCutOff(t, silent, 30*time.Second)
	t.Logf("silent ring cut off after %v", took)
	ping("after")
}

// TestRingRequestNeedsToken: a ring request with no token, or a wrong
// one, from a peer the unit does not trust by its uid is refused before
// any ring is made; the right token gets one.
func TestRingRequestNeedsToken(t *testing.T) {
	u, err := NewUnit(1, testConfig())
	require.NoError(t, err)
	t.Cleanup(func() { u.Close() })
	srv := NewServer(u, ServerConfig{Token: "s3cret"})
	t.Cleanup(func() { srv.Close() })
	path := filepath.Join(t.TempDir(), "unit.sock.shm")
	fl, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	require.NoError(t, err)
	go srv.ServeShm(fl)
	for _, tok := range []string{"", "wrong"} {
		st := fdStatusOf(t, path, wire.FdRequest{Ring: true, Token: tok})
		require.Equal(t, wire.FdUnauthenticated, st, "token %q", tok)
		require.ErrorIs(t, st.Err(), wire.ErrUnauthenticated)
		require.Zero(t, srv.rings.Load(), "rings made for token %q", tok)
	}
	require.Equal(t, wire.FdOK, fdStatusOf(t, path, wire.FdRequest{Ring: true, Token: "s3cret"}))
}
