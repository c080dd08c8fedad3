package storage

import (
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// TestFullUnitsBackPressureKeepsTheConnection: a full unit makes each
// WRITE wait ReserveWait for room before it reads (or skips) the
// payload, and reads nothing else on the connection meanwhile. WRITEs
// queued on one client connection go out together, so those waits add
// up within one piece of the client's writes, well past its
// WriteTimeout (here 12 waits of 100 ms against 600 ms, the ratio of the
// defaults, 5 s and 30 s). The unit keeps taking bytes between its
// waits, so the client's write deadline, a bound on a stall, never
// fires: every WRITE is answered CODE_CAPACITY, and the connection
// stays. Before, the deadline bounded the whole piece, and the client
// failed the connection, and every call on it, as dead.
func TestFullUnitsBackPressureKeepsTheConnection(t *testing.T) {
	u := newTestUnit(t, testConfig())
	addr := serve(t, u, ServerConfig{ReserveWait: 100 * time.Millisecond})
	ctx := t.Context()
	c, _, err := wire.Dial(ctx, addr, &wirepb.Hello{Role: "client"}, wire.ConnConfig{WriteTimeout: 600 * time.Millisecond})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	_, err = remoteWrite(ctx, c, make([]byte, 1<<20), make([]byte, 1<<20), make([]byte, 1<<20), make([]byte, 1<<20))
	require.NoError(t, err, "filling the unit")

	const n = 12
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			errs[i] = c.Do(ctx, wire.OpWrite, &wirepb.WriteRequest{Sizes: []uint64{256 << 10}}, net.Buffers{make([]byte, 256<<10)}, &wirepb.WriteReply{}, nil)
		})
	}
	wg.Wait()
	for i, err := range errs {
		assert.ErrorIs(t, err, engine.ErrCapacity, "write %d", i)
	}
	require.NoError(t, c.Err(), "the connection failed under the unit's back-pressure")
}
