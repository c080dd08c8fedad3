package shm

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
)

// An fd reply with more than one fd is refused saying so, and leaves no
// fd open in the client: it said "carries 2 fds" whatever was sent (the
// kernel keeps what the client made room for and closes the rest).
func TestFdReplyWithManyFdsIsRefused(t *testing.T) {
	_, c, addr := socketConn(t)

	const size = 16 << 20
	fd, err := unix.MemfdCreate("many", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	require.NoError(t, err)
	defer unix.Close(fd)
	require.NoError(t, unix.Ftruncate(fd, size))
	_, err = unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW)
	require.NoError(t, err)
	for _, n := range []int{2, 3, 8} {
		fds := make([]int, n)
		for i := range fds {
			fds[i] = fd
		}
		c.fdSock = fakeFdSocket(t, wire.FdReply{Status: wire.FdOK, Size: size}, fds...)
		before := openFds(t)
		_, err := c.View(t.Context(), []engine.RemoteAddr{addr})
		require.ErrorIs(t, err, wire.ErrFrame, "%d fds", n)
		want := "more fds than the one it may" // the kernel cut the rest
		if n == 2 {
			want = "carries 2 fds, not one" // room for one is room for two
		}
		assert.Contains(t, err.Error(), want, "%d fds", n)
		// The stand-in unit closes its end of the exchange after its
		// reply, perhaps after the client is done: wait for that, not
		// for a leak (which never settles).
		assert.Eventually(t, func() bool { return openFds(t) == before }, 10*time.Second, time.Millisecond,
			"fds open after a reply with %d (%d before it)", n, before)
	}
}
