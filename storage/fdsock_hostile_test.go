package storage

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/tqgo/tq/internal/shmring"
	"github.com/tqgo/tq/wire"
)

// TestFdSocketHostilePeers: peers of the fd socket that send half a
// request and stay, drip one slowly, or claim a token longer than they
// send are told so (FdBadRequest) and cut off within fdRequestTimeout,
// and a well-behaved request is answered at once meanwhile. A request is bounded by its u16 token
// length, so a claimed length costs at most 64 KiB.
func TestFdSocketHostilePeers(t *testing.T) {
	u, srv, path, seg := fdSocketWithSegment(t)
	good := wire.FdRequest{Segment: seg, Incarnation: u.Incarnation()}

	dial := func() net.Conn {
		c, err := net.Dial("unix", path)
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		return c
	}
	var bad []net.Conn
	// Half-sent: the magic and nothing more.
	c := dial()
	_, err := io.WriteString(c, wire.FdMagic)
	require.NoError(t, err)
	bad = append(bad, c)
	// Oversized: a token of 65535 bytes claimed, 10 sent.
	c = dial()
	req := append([]byte(wire.FdMagic), 0, 0, 0, 0)
	req = binary.LittleEndian.AppendUint16(req, 0xffff)
	_, err = c.Write(append(req, make([]byte, 10)...))
	require.NoError(t, err)
	bad = append(bad, c)
	// Slow: a whole request with a 200-byte token, a byte every 50 ms
	// (10 s in all, past fdRequestTimeout).
	c = dial()
	slow := wire.FdRequest{Segment: seg, Token: string(make([]byte, 200))}.Append(nil)
	stopDrip := make(chan struct{})
	dripped := make(chan struct{})
	go func(c net.Conn) {
		defer close(dripped)
		for _, b := range slow {
			select {
			case <-stopDrip:
				return
			case <-time.After(50 * time.Millisecond):
			}
			if _, err := c.Write([]byte{b}); err != nil {
				return // cut off
			}
		}
	}(c)
	defer func() { close(stopDrip); <-dripped }()
	bad = append(bad, c)
	require.Eventually(t, func() bool { return srv.fdPending.Load() == int64(len(bad)) }, 5*time.Second, time.Millisecond)

	// Meanwhile a well-behaved request is answered at once.
	require.Equal(t, wire.FdOK, fdStatusOf(t, path, good), "a request while hostile peers wait")

	start := time.Now()
	for i, c := range bad {
		require.NoError(t, c.SetReadDeadline(time.Now().Add(fdRequestTimeout+10*time.Second))) // a safety limit
		buf := make([]byte, wire.FdReplySize)
		n, err := io.ReadFull(c, buf)
		var ne net.Error
		if errors.As(err, &ne) {
			require.False(t, ne.Timeout(), "peer %d was not cut off within %v", i, fdRequestTimeout+10*time.Second)
		}
		require.NoError(t, err, "peer %d is told why it is cut off", i)
		rep, err := wire.ParseFdReply(buf[:n])
		require.NoError(t, err)
		require.Equal(t, wire.FdBadRequest, rep.Status, "peer %d", i)
		_, err = c.Read(buf)
		require.Error(t, err, "peer %d: the connection ends", i)
	}
	t.Logf("hostile peers cut off after %v", time.Since(start).Round(time.Millisecond))
	require.Eventually(t, func() bool { return srv.fdPending.Load() == 0 }, 5*time.Second, time.Millisecond)
	require.Equal(t, wire.FdOK, fdStatusOf(t, path, good), "a request after they went")
}

// TestFdSocketPeerGoneMidExchange: a client that sends its request, or
// part of it, and goes before it reads the reply (killed) costs the unit
// nothing: the dup of the segment's memfd it was to get is closed, and
// the unit answers the next client.
func TestFdSocketPeerGoneMidExchange(t *testing.T) {
	u, srv, path, seg := fdSocketWithSegment(t)
	good := wire.FdRequest{Segment: seg, Incarnation: u.Incarnation()}
	require.Equal(t, wire.FdOK, fdStatusOf(t, path, good))
	base := openFds(t)
	for i := range 200 {
		c, err := net.Dial("unix", path)
		require.NoError(t, err)
		req := good.Append(nil)
		if i%2 == 1 {
			req = req[:len(req)-1] // and one that goes mid-request
		}
		_, err = c.Write(req)
		require.NoError(t, err)
		c.Close()
	}
	require.Eventually(t, func() bool { return srv.fdPending.Load() == 0 }, 10*time.Second, time.Millisecond)
	require.Eventually(t, func() bool { return openFds(t) <= base }, 10*time.Second, 10*time.Millisecond,
		"descriptors leaked by exchanges whose peer went: %d open, %d before", openFds(t), base)
	require.Equal(t, wire.FdOK, fdStatusOf(t, path, good), "a request after peers went mid-exchange")
}

// TestFdSocketRingSizeBounded: a ring request that claims a ring of 4 GiB
// gets rings of MaxRingSize, not a region of the size claimed.
func TestFdSocketRingSizeBounded(t *testing.T) {
	_, srv, fl, path := fdSocketUnit(t)
	go srv.ServeShm(fl)
	c, err := net.Dial("unix", path)
	require.NoError(t, err)
	defer c.Close()
	uc := c.(*net.UnixConn)
	uc.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = uc.Write(wire.FdRequest{Ring: true, RingSize: 0xffffffff}.Append(nil))
	require.NoError(t, err)
	buf, oob := make([]byte, wire.FdReplySize), make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := uc.ReadMsgUnix(buf, oob)
	require.NoError(t, err)
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	require.NoError(t, err)
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		require.NoError(t, err)
		for _, fd := range fds {
			var st unix.Stat_t
			require.NoError(t, unix.Fstat(fd, &st))
			require.Equal(t, int64(shmring.Size(MaxRingSize)), st.Size, "the ring's memfd")
			unix.Close(fd)
		}
	}
	rep, err := wire.ParseFdReply(buf[:n])
	require.NoError(t, err)
	require.Equal(t, wire.FdOK, rep.Status, fmt.Sprintf("status %d", rep.Status))
	require.Equal(t, uint64(shmring.Size(MaxRingSize)), rep.Size)
}
