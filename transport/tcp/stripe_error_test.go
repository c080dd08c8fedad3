package tcp

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// TestStripedWriteErrorNamesTheCallersExtent: a unit that answers a
// striped write with an extent of the wrong length is named with the
// index of that extent in the caller's write, not in its stripe (the
// second stripe's second extent is the caller's fourth, extent 3); one
// that stores too few names the caller's extents the stripe carried.
func TestStripedWriteErrorNamesTheCallersExtent(t *testing.T) {
	s := wire.NewServer(wire.ServerConfig{
		CheckHello: func(h *wirepb.Hello) (*wirepb.Hello, error) {
			return &wirepb.Hello{Role: "unit", UnitId: h.UnitId, Incarnation: max(h.Incarnation, 1)}, nil
		},
	})
	s.Handle(wire.OpWrite, func(_ context.Context, req *wire.Request, rw *wire.ReplyWriter) {
		req.DiscardPayload()
		var wr wirepb.WriteRequest
		if err := req.Decode(&wr); err != nil {
			rw.Error(err)
			return
		}
		var addrs []engine.RemoteAddr
		var off uint64
		for _, n := range wr.Sizes {
			got := n
			if n == 1003 {
				got = 999 // the hostile unit's short extent
			}
			addrs = append(addrs, engine.RemoteAddr{Segment: 1, Gen: 1, Offset: off, Len: got})
			off += 4096
		}
		if wr.Sizes[len(wr.Sizes)-1] == 1007 {
			addrs = addrs[:len(addrs)-1] // one extent short
		}
		rw.Reply(&wirepb.WriteReply{Extents: wire.RangesToPB(addrs)}, nil, nil)
	})
	s.Handle(wire.OpFree, func(_ context.Context, req *wire.Request, rw *wire.ReplyWriter) {
		rw.Reply(&wirepb.Empty{}, nil, nil)
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go s.Serve(l)
	t.Cleanup(func() { s.Close() })

	tr := New(Config{Conns: 2, StripeSize: 2048})
	defer tr.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := tr.DialConn(ctx, engine.PeerInfo{Unit: 2, Addr: "tcp://" + l.Addr().String()})
	require.NoError(t, err)
	defer c.Close()

	sizes := []uint64{1000, 1001, 1002, 1003}
	require.Equal(t, []int{0, 2, 4}, splitExtents(sizes, 4006, c.stripes(4006)), "two stripes of two extents")
	var extents [][][]byte
	for _, n := range sizes {
		extents = append(extents, [][]byte{make([]byte, n)})
	}
	_, err = c.Write(ctx, extents)
	require.Error(t, err)
	assert.True(t, errors.Is(err, engine.ErrCorrupt), "%v", err)
	assert.Contains(t, err.Error(), "extent 3 with 999 bytes, asked for 1003")

	// An extent short in the second stripe: the count names which of
	// the caller's extents the stripe carried.
	extents[3] = [][]byte{make([]byte, 1007)}
	_, err = c.Write(ctx, extents)
	require.Error(t, err)
	assert.True(t, errors.Is(err, engine.ErrCorrupt), "%v", err)
	assert.Contains(t, err.Error(), "unit stored 1 extents for the write's extents 2 to 3, asked for 2")
}
