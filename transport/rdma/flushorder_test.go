//go:build linux && cgo && rdma

package rdma

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// A call whose work requests complete with a flush on one queue pair (in
// the error state already) and with an error of their own on another
// fails with the real error, whichever of the two the completion queue
// hands out first: a flush says only that the queue pair was broken, and
// kept first it made the wave look retryable, went again on new queue
// pairs and hid the error (ErrCorrupt here) behind ErrUnavailable or a
// success. The calls the failure tears down are told the real reason too.
func TestRealCompletionErrorOutranksFlush(t *testing.T) {
	const slot = 4096
	_, _, addr := inProcUnit(t)
	tr := newTransport(t, Config{Device: "emu0", QPs: 2, SliceSize: slot, Staging: 16 * slot})
	c, err := tr.DialConn(t.Context(), engine.PeerInfo{Unit: 7, Addr: addr})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	dev, err := tr.Device()
	require.NoError(t, err)
	payload := bytes.Repeat([]byte("flush"), 2*slot/5+1)[:2*slot] // one work request per queue pair
	addrs, err := c.Write(t.Context(), [][][]byte{{payload}})
	require.NoError(t, err)

	// Queue pairs are posted to in order: the flush comes first when the
	// broken queue pair is the first.
	for _, tc := range []struct {
		name   string
		broken int
	}{{"flush first", 0}, {"flush last", 1}} {
		t.Run(tc.name, func(t *testing.T) {
			set, err := c.qps(t.Context())
			require.NoError(t, err)
			require.Len(t, set.qps, 2)
			before := c.Reconnects()
			require.NoError(t, set.qps[tc.broken].Fail())
			// Another call's work request, outstanding on these queue
			// pairs.
			bystander := &waiter{left: 1, gen: set.gen, done: make(chan struct{})}
			c.wmu.Lock()
			c.pending[c.nextID.Add(1)] = bystander
			c.wmu.Unlock()
			require.NoError(t, dev.InjectFault(2, 0, 1, int(WCRemAccessErr)))

			err = c.Read(t.Context(), addrs, [][]byte{make([]byte, len(payload))})
			require.Error(t, err, "the read's real error was taken for a flush and the read went again")
			assert.ErrorIs(t, err, engine.ErrCorrupt)
			assert.NotErrorIs(t, err, engine.ErrUnavailable)
			assert.Contains(t, err.Error(), WCRemAccessErr.String())
			assert.Equal(t, before, c.Reconnects(), "the read did not go again on new queue pairs")

			<-bystander.done
			var td *tornDown
			require.ErrorAs(t, bystander.err, &td)
			assert.Contains(t, td.cause.Error(), WCRemAccessErr.String(), "the other call is told the real reason")
			assert.False(t, IsCompletion(td.cause, WCFlushErr), "the other call is told of a flush: %v", td.cause)
		})
	}
	got := make([]byte, len(payload))
	require.NoError(t, c.Read(t.Context(), addrs, [][]byte{got}))
	assert.Equal(t, payload, got)
}
