package client

import (
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// TestDialMovesToLocalSocket: a client given a controller's TCP address
// opens its connections at the unix socket the controller names when it
// runs on the same host and the socket's controller is the same one
// (cluster and epoch); otherwise it keeps to TCP, and closes what it
// opened in vain.
func TestDialMovesToLocalSocket(t *testing.T) {
	dir := t.TempDir()
	serve := func(t *testing.T, cluster string, local []string, sock string) (tcpAddr string, srv *wire.Server) {
		srv = wire.NewServer(wire.ServerConfig{Token: "secret", Hello: &wirepb.Hello{
			Role: "controller", HostId: HostID(), ClusterId: cluster, Epoch: 3, LocalAddrs: local,
		}})
		tl, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		go srv.Serve(tl)
		if sock != "" {
			ul, err := net.Listen("unix", sock)
			require.NoError(t, err)
			go srv.Serve(ul)
		}
		t.Cleanup(func() { srv.Close() })
		return "tcp://" + tl.Addr().String(), srv
	}
	network := func(t *testing.T, addr string, cfg RemoteConfig) string {
		cfg.Token, cfg.Lanes = "secret", 2
		r, err := DialMeta(t.Context(), addr, cfg)
		require.NoError(t, err)
		defer r.Close()
		c, l, err := r.kvLane(t.Context())
		require.NoError(t, err)
		defer l.done()
		_, l2, err := r.kvLane(t.Context()) // a second lane, dialed the same way
		require.NoError(t, err)
		defer l2.done()
		n := c.RemoteAddr().Network()
		assert.Equal(t, n, r.lanes[1].conn.RemoteAddr().Network(), "both lanes")
		return n
	}

	sock := filepath.Join(dir, "c.sock")
	addr, srv := serve(t, "c1", []string{"unix://" + sock}, sock)
	assert.Equal(t, "unix", network(t, addr, RemoteConfig{}), "same host: the unix socket")
	assert.Equal(t, "tcp", network(t, addr, RemoteConfig{Host: "another-host"}), "another host: TCP")
	assert.Eventually(t, func() bool { return srv.Conns() == 0 }, 5*time.Second, 10*time.Millisecond)

	// The path holds another cluster's controller (another container's):
	// the client keeps to TCP and hangs up there.
	other := filepath.Join(dir, "other.sock")
	_, impostor := serve(t, "c2", nil, other)
	addr2, _ := serve(t, "c1", []string{"unix://" + other}, "")
	assert.Equal(t, "tcp", network(t, addr2, RemoteConfig{}))
	assert.Eventually(t, func() bool { return impostor.Conns() == 0 }, 5*time.Second, 10*time.Millisecond)

	// Nothing at the path, or a path that is not absolute: TCP.
	addr3, _ := serve(t, "c1", []string{"unix://" + filepath.Join(dir, "gone.sock"), "unix://c.sock", "tcp://10.0.0.1:1"}, "")
	assert.Equal(t, "tcp", network(t, addr3, RemoteConfig{}))

	// Given a unix address, the client stays there.
	assert.Equal(t, "unix", network(t, "unix://"+sock, RemoteConfig{}))
}

// TestValueSchemaShortcut: the reply schema of an opaque bytes value, as
// the controller encodes it, is recognized by its bytes; any other
// schema is decoded, and a body that is not one is an error.
func TestValueSchemaShortcut(t *testing.T) {
	opaque, err := wire.AppendMessage(nil, &wirepb.FieldSchema{Dtype: engine.Bytes.String(), Kind: engine.Opaque.String()})
	require.NoError(t, err)
	var s valueSchema
	require.NoError(t, s.DecodeBody(opaque))
	assert.True(t, s.opaque, "the controller's encoding of an opaque bytes schema")

	dense, err := wire.AppendMessage(nil, &wirepb.FieldSchema{Dtype: "float32", Kind: "dense", Shape: &wirepb.Shape{Dims: []int64{4}}})
	require.NoError(t, err)
	s = valueSchema{}
	require.NoError(t, s.DecodeBody(dense))
	assert.False(t, s.opaque)
	assert.Equal(t, "float32", s.Dtype)
	assert.Equal(t, []int64{4}, s.Shape.GetDims())

	s = valueSchema{}
	assert.Error(t, s.DecodeBody([]byte{0x0a, 0x05, 'b'}), "a string cut short")
}
