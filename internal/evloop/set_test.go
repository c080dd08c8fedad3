package evloop

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

type testConn struct{ fd int }

// eventfd returns a descriptor a Poller can watch, closed with the test.
func eventfd(t *testing.T) int {
	t.Helper()
	fd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	require.NoError(t, err)
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// TestSet: what Add files Lookup and Has find and the Poller reports;
// Remove forgets it; a refused attach or descriptor adds nothing; a
// stopped set refuses without running attach.
func TestSet(t *testing.T) {
	s, err := NewSet[*testConn]()
	require.NoError(t, err)
	a, b := &testConn{fd: eventfd(t)}, &testConn{fd: eventfd(t)}
	attach := func(c *testConn) func() (int, bool) { return func() (int, bool) { return c.fd, true } }
	require.NoError(t, s.Add(a, attach(a)))
	require.NoError(t, s.Add(b, attach(b)))
	got, ok := s.Lookup(a.fd)
	require.True(t, ok)
	assert.Same(t, a, got)
	assert.True(t, s.Has(b.fd, b))
	assert.False(t, s.Has(b.fd, a), "b's descriptor is not a's")
	assert.Equal(t, 2, s.Len())
	assert.Equal(t, []*testConn{b}, s.Filter(func(c *testConn) bool { return c == b }))

	unix.Write(a.fd, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	ready, err := s.Poller.Wait(5000)
	require.NoError(t, err)
	assert.Equal(t, []int{a.fd}, ready, "an added descriptor is watched")

	s.Remove(a.fd)
	_, ok = s.Lookup(a.fd)
	assert.False(t, ok)
	ready, err = s.Poller.Wait(20)
	require.NoError(t, err)
	assert.Empty(t, ready, "a removed descriptor is not watched")

	assert.Error(t, s.Add(&testConn{}, func() (int, bool) { return -1, false }), "attach found no socket")
	assert.Error(t, s.Add(&testConn{}, func() (int, bool) { return 1 << 20, true }), "a descriptor epoll refuses")
	assert.Equal(t, 1, s.Len(), "neither was added")

	s.Stop()
	assert.True(t, s.Stopped())
	ran := false
	assert.ErrorIs(t, s.Add(a, func() (int, bool) { ran = true; return a.fd, true }), ErrStopped)
	assert.False(t, ran, "a stopped set does not run attach")
	var dropped []*testConn
	s.Close(func(c *testConn) { s.Remove(c.fd); dropped = append(dropped, c) })
	assert.Equal(t, []*testConn{b}, dropped)
}

// TestSetCloseRacesAdd: connections added while the set closes are each
// either refused or dropped by Close, exactly once; none is left behind.
func TestSetCloseRacesAdd(t *testing.T) {
	for range 20 {
		s, err := NewSet[*testConn]()
		require.NoError(t, err)
		const n = 32
		conns := make([]*testConn, n)
		for i := range conns {
			conns[i] = &testConn{fd: eventfd(t)}
		}
		refused := make([]bool, n)
		var wg sync.WaitGroup
		start := make(chan struct{})
		var attaching atomic.Int32
		for i, c := range conns {
			wg.Go(func() {
				<-start
				err := s.Add(c, func() (int, bool) {
					// Slow, so that Close comes while it runs: it
					// waits, or the connection would be left behind.
					attaching.Add(1)
					time.Sleep(time.Duration(i%4) * 100 * time.Microsecond)
					return c.fd, true
				})
				if err != nil {
					require.ErrorIs(t, err, ErrStopped)
					refused[i] = true
				}
			})
		}
		dropped := map[*testConn]int{}
		close(start)
		for attaching.Load() < n/4 {
			runtime.Gosched()
		}
		s.Close(func(c *testConn) { s.Remove(c.fd); dropped[c]++ })
		wg.Wait()
		for i, c := range conns {
			if refused[i] {
				assert.Zero(t, dropped[c], "a refused connection is not dropped")
			} else {
				assert.Equal(t, 1, dropped[c], "an added connection is dropped once")
			}
		}
		assert.Zero(t, s.Len(), "nothing left on a closed set")
	}
}
