package shm

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/storage"
)

// bigCopy is the size of the transfers below: large enough that the
// copy through the mapping takes a while, for an end of the connection
// to fall in the middle of it.
const bigCopy = 256 << 20

func bigUnit(t *testing.T) *testUnit {
	t.Helper()
	ucfg := storage.DefaultConfig()
	ucfg.Capacity, ucfg.SegmentSize = 2*bigCopy, 2*bigCopy
	return startUnit(t, ucfg, storage.ServerConfig{})
}

// spinUntil busy-waits for cond (a copy in flight lasts milliseconds), up
// to a generous limit.
func spinUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("still waiting for %s", what)
		}
	}
}

// fillFromEnd writes b over buf in 1 MiB pieces from its end, as another
// put's copy would, so that it meets a copy still going from the start.
func fillFromEnd(buf []byte, b byte) {
	piece := bytes.Repeat([]byte{b}, 1<<20)
	for end := len(buf); end > 0; end -= len(piece) {
		copy(buf[max(0, end-len(piece)):end], piece)
	}
}

// warm maps the segment of addr in c, so that a transfer through it
// starts copying at once.
func warm(t *testing.T, c *Conn, addr engine.RemoteAddr) {
	t.Helper()
	l, err := c.View(t.Context(), []engine.RemoteAddr{addr})
	require.NoError(t, err)
	l.Release()
	r, err := c.Reserve(t.Context(), []int64{1})
	require.NoError(t, err)
	require.NoError(t, r.Abort(t.Context()))
}

// committed stores bigCopy bytes of b on u and returns their address.
func committed(t *testing.T, u *storage.Unit, b byte) engine.RemoteAddr {
	t.Helper()
	r, err := u.Reserve(t.Context(), []int64{bigCopy})
	require.NoError(t, err)
	fillFromEnd(r.Buf(0), b)
	require.NoError(t, r.Commit())
	return r.Addr(0)
}

// A Read cut short by the end of its connection — Close, or the unit
// hanging up — fails; it never returns success with bytes of another
// put, which the unit may place in the extent as soon as the connection
// (and the lease it held) is gone. Close used to close the connection
// first and wait for the copy after, and Read returned nil whatever
// happened during its copy.
func TestReadCutShortByTheConnectionsEndFails(t *testing.T) {
	for _, end := range []string{"Close", "unit hangs up"} {
		t.Run(end, func(t *testing.T) {
			tu := bigUnit(t)
			u := tu.u
			addr := committed(t, u, 'A')
			c := dialUnit(t, tu, Config{})
			warm(t, c, addr)
			dst := make([]byte, bigCopy)
			done := make(chan error, 1)
			go func() { done <- c.Read(context.Background(), []engine.RemoteAddr{addr}, [][]byte{dst}) }()
			spinUntil(t, "the read's lease", func() bool { return u.Stats().Leases != 0 })
			// The cell is overwritten elsewhere: the controller frees it,
			// and only the lease keeps the bytes.
			require.NoError(t, u.Free([]engine.RemoteAddr{addr}))
			if end == "Close" {
				go c.Close()
			} else {
				go tu.srv.Close()
			}
			spinUntil(t, "the lease's end", func() bool { return u.Stats().Leases == 0 })
			r2, err := u.Reserve(t.Context(), []int64{bigCopy})
			require.NoError(t, err)
			defer r2.Abort()
			fillFromEnd(r2.Buf(0), 'B')

			err = <-done
			nB := bytes.Count(dst, []byte{'B'})
			t.Logf("Read: %v; %d of %d bytes are another put's", err, nB, bigCopy)
			if err == nil {
				assert.Zero(t, nB, "a Read that succeeded returned another put's bytes")
			}
			if end == "Close" {
				// The copy either finished before the lease went, or
				// stopped for Close.
				assert.True(t, err == nil && nB == 0 || errorIsClosed(err), "Read: %v", err)
			}
		})
	}
}

func errorIsClosed(err error) bool { return errors.Is(err, engine.ErrClosed) }

// A Write cut short by Close never writes into the extent once the unit
// has handed it to another put: Close waits for (and stops) the copy
// before it ends the connection, and with it the reservation. Close used
// to end the connection first, and the rest of the copy landed in a put
// committed meanwhile.
func TestWriteCutShortByCloseSparesOtherPuts(t *testing.T) {
	tu := bigUnit(t)
	u := tu.u
	c := dialUnit(t, tu, Config{})
	r, err := u.Reserve(t.Context(), []int64{4096})
	require.NoError(t, err)
	require.NoError(t, r.Commit())
	warm(t, c, r.Addr(0))
	src := bytes.Repeat([]byte{'A'}, bigCopy)
	done := make(chan error, 1)
	go func() {
		_, err := c.Write(context.Background(), [][][]byte{{src}})
		done <- err
	}()
	spinUntil(t, "the write's reservation", func() bool { return u.Stats().OpenReservations != 0 })
	go c.Close()
	spinUntil(t, "the reservation's end", func() bool { return u.Stats().OpenReservations == 0 })
	if u.Stats().Extents != 1 {
		t.Skip("the write committed before Close")
	}
	addr := committed(t, u, 'B')

	werr := <-done
	l, err := u.Acquire([]engine.RemoteAddr{addr})
	require.NoError(t, err)
	defer l.Release()
	nA := bytes.Count(l.Bytes(0), []byte{'A'})
	t.Logf("Write: %v; the other put has %d of %d bytes of it", werr, nA, bigCopy)
	assert.Zero(t, nA, "a write whose connection had ended overwrote a committed put")
	assert.True(t, errorIsClosed(werr), "Write: %v", werr)
}
