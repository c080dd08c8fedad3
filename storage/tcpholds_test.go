package storage

import (
	"net"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// A connection from another host can fill or read a unit's holds only
// over RDMA: a unit without it refuses RESERVE and ACQUIRE there, naming
// why, and holds nothing. It used to reserve: a client that kept its
// connection alive kept the extents allocated, past the reservation
// timeout too, though it had no way to write them.
func TestHoldsOverTCPNeedRDMA(t *testing.T) {
	u, err := NewUnit(1, testConfig())
	require.NoError(t, err)
	defer u.Close()
	srv := NewServer(u, ServerConfig{})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	served := make(chan struct{})
	go func() { defer close(served); srv.Serve(l) }()
	defer func() { srv.Close(); <-served }()
	c := dialUnit(t, "tcp://"+l.Addr().String(), "")
	ctx := t.Context()

	err = c.Do(ctx, wire.OpReserve, &wirepb.ReserveRequest{Sizes: []uint64{1 << 20}}, nil, &wirepb.ReserveReply{}, nil)
	require.ErrorIs(t, err, engine.ErrNotSupported)
	assert.ErrorContains(t, err, "RDMA")
	addrs, err := remoteWrite(ctx, c, make([]byte, 5000))
	require.NoError(t, err, "WRITE carries the bytes instead")
	err = c.Do(ctx, wire.OpAcquire, &wirepb.AcquireRequest{Ranges: wire.RangesToPB(addrs)}, nil, &wirepb.AcquireReply{}, nil)
	require.ErrorIs(t, err, engine.ErrNotSupported)
	st := u.Stats()
	assert.Zero(t, st.Reserved, "nothing reserved")
}
