package resp

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/internal/testenv"
)

// TestLoopLeavesUnderFdExhaustion: a connection leaving its loop for a
// goroutine (here for a reply over 64 KiB) needs a descriptor for its
// net.Conn. Out of descriptors for a moment, it waits for one, as the
// accept loop and the wire server's loops do, and its commands are
// answered once there is one. It used to be closed at once, the reply
// the loop had not written yet and the commands it handed over lost.
func TestLoopLeavesUnderFdExhaustion(t *testing.T) {
	e := newEndpoint(t, Config{CommandTimeout: 10 * time.Second})
	big := bytes.Repeat([]byte("0123456789abcdef"), 8<<10) // 128 KiB
	b, err := engine.NewBatch(engine.Field{Name: "value", Col: engine.BytesOf([][]byte{big})})
	require.NoError(t, err)
	_, err = e.kv.Put(context.Background(), "default", "big", b, nil)
	require.NoError(t, err)
	nc, rr := e.raw(t)
	io.WriteString(nc, cmdline("PING"))
	require.Equal(t, "+PONG", rr.line(t))
	require.Equal(t, 1, e.onLoop(), "the connection is not on a loop")

	restore := testenv.ExhaustFds(t)
	time.AfterFunc(300*time.Millisecond, restore)
	io.WriteString(nc, cmdline("ECHO", "before")+cmdline("GET", "big")+cmdline("ECHO", "after"))
	assert.Equal(t, "before", string(rr.bulk(t)))
	assert.True(t, bytes.Equal(big, rr.bulk(t)))
	assert.Equal(t, "after", string(rr.bulk(t)))
	restore()
	assert.Equal(t, 0, e.onLoop())
	io.WriteString(nc, cmdline("PING"))
	assert.Equal(t, "+PONG", rr.line(t), "the connection goes on working")
}
