package client

import (
	"net"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// TestKVLaneChoice: a KV call takes the first lane while it is free, the
// least busy lane (dialing it) once it is not, and the first lane when
// another lane cannot be dialed.
func TestKVLaneChoice(t *testing.T) {
	srv := wire.NewServer(wire.ServerConfig{Hello: &wirepb.Hello{Role: "controller"}, Token: "secret"})
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "c.sock"))
	require.NoError(t, err)
	go srv.Serve(l)
	defer srv.Close()
	ctx := t.Context()
	r, err := DialMeta(ctx, "unix://"+l.Addr().String(), RemoteConfig{Token: "secret", Lanes: 3})
	require.NoError(t, err)
	defer r.Close()
	first := r.lanes[0].conn

	c, l1, err := r.kvLane(ctx)
	require.NoError(t, err)
	assert.Same(t, first, c, "nothing in flight: the first lane")
	assert.Equal(t, 1, srv.Conns())

	c2, l2, err := r.kvLane(ctx) // the first lane is busy
	require.NoError(t, err)
	assert.NotSame(t, first, c2, "a call overlapping another opens the second lane")
	assert.Equal(t, 2, srv.Conns())
	l1.done()

	c3, l3, err := r.kvLane(ctx)
	require.NoError(t, err)
	assert.Same(t, first, c3, "the first lane is free again")

	// Both open lanes busy, and the third cannot be dialed: the call goes
	// over the first.
	r.addr = "unix://" + filepath.Join(t.TempDir(), "gone.sock")
	c4, l4, err := r.kvLane(ctx)
	require.NoError(t, err)
	assert.Same(t, first, c4)
	assert.Equal(t, int32(2), r.lanes[0].inflight.Load())
	assert.Zero(t, r.lanes[2].inflight.Load(), "the lane that failed holds no call")
	// For a while it is not tried again: no dial per call.
	assert.True(t, r.lanes[2].idle())
	r.addr = "unix://" + l.Addr().String()
	c5, l5, err := r.kvLane(ctx)
	require.NoError(t, err)
	assert.Same(t, c2, c5, "the failed lane waits its turn out: the second is the least busy of the others")
	assert.Equal(t, 2, srv.Conns())
	r.lanes[2].idleUntil.Store(0)
	c6, l6, err := r.kvLane(ctx)
	require.NoError(t, err)
	assert.NotSame(t, first, c6, "then it is dialed again")
	assert.NotSame(t, c2, c6)
	l5.done()
	assert.Equal(t, 3, srv.Conns())
	l6.done()
	l2.done()
	l3.done()
	l4.done()
	for i := range r.lanes {
		assert.Zero(t, r.lanes[i].inflight.Load(), "lane %d", i)
	}
}
