package evloop

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// A set whose loop has ended (Close ran: a loop's deferred closeAll after
// an epoll_wait failure) may still be stopped by its owner (resp's and
// wire's stopLoops, wire's release), which pokes it: the poke must not
// write into the eventfd's old descriptor number, which the process may
// have given to another file since (here a pipe).
func TestPokeAfterClose(t *testing.T) {
	s, err := NewSet[*testConn]()
	require.NoError(t, err)
	s.Close(func(*testConn) {})

	// The lowest free numbers are the ones the Poller had: the pipe's
	// write end takes the eventfd's.
	var p [2]int
	require.NoError(t, unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK))
	defer unix.Close(p[0])
	defer unix.Close(p[1])

	s.Stop() // the loop's owner stopping it after it already ended

	var b [16]byte
	n, err := unix.Read(p[0], b[:])
	assert.True(t, err == unix.EAGAIN || n <= 0, "Stop after Close wrote %d bytes %v into an unrelated descriptor (pipe fds %v)", n, b[:max(n, 0)], p)
}

// Wait(timeoutMs) waits at most timeoutMs, though a Wait with a longer
// timeout that ended early (a Poke) left a deadline further ahead.
func TestWaitHonoursAShorterTimeout(t *testing.T) {
	p, err := NewPoller()
	require.NoError(t, err)
	defer p.Close()
	go func() {
		time.Sleep(20 * time.Millisecond)
		p.Poke()
	}()
	_, err = p.Wait(3000) // ends at the Poke, leaving a deadline ~3 s ahead
	require.NoError(t, err)
	start := time.Now()
	_, err = p.Wait(20)
	require.NoError(t, err)
	assert.Less(t, time.Since(start), time.Second, "Wait(20) took %v", time.Since(start))
}
