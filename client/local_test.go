package client

import (
	"net"
	"os"
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

	// The path is in a directory others may write to (the controller's
	// /tmp/tq-$UID as seen from another mount namespace, made by another
	// user): what answers there may be a relay to the real controller,
	// passing its handshake through, then answering for it. The client
	// keeps to TCP, though the socket answers as the same controller.
	open := filepath.Join(dir, "open")
	require.NoError(t, os.Mkdir(open, 0o700))
	require.NoError(t, os.Chmod(open, 0o777))
	planted := filepath.Join(open, "c.sock")
	addr4, _ := serve(t, "c1", []string{"unix://" + planted}, planted)
	assert.Equal(t, "tcp", network(t, addr4, RemoteConfig{}), "a socket in a directory others may write to")
}

// TestPickAddrPrivateSocket: a unit's unix socket (and its fd socket) on
// this host is used only in a directory of this user's that nobody else
// may write to; elsewhere the client goes to the unit's TCP address (and
// has no shared memory), as it does when the socket is missing.
func TestPickAddrPrivateSocket(t *testing.T) {
	listen := func(dir string) (sock, fd string) {
		sock, fd = filepath.Join(dir, "u.sock"), filepath.Join(dir, "u.sock.shm")
		for _, p := range []string{sock, fd} {
			l, err := net.Listen("unix", p)
			require.NoError(t, err)
			t.Cleanup(func() { l.Close() })
		}
		return sock, fd
	}
	unit := func(sock, fd string) engine.UnitInfo {
		return engine.UnitInfo{ID: 1, Host: "h", Addrs: []string{"tcp://127.0.0.1:1", "unix://" + sock, "shm://" + fd}}
	}
	private := t.TempDir()
	sock, fd := listen(private)
	_, tr, ok := PickAddr(unit(sock, fd), "h")
	require.True(t, ok)
	assert.Equal(t, "unix", tr, "a private directory")
	_, err := ShmPeer(unit(sock, fd), "h")
	assert.NoError(t, err)

	open := filepath.Join(t.TempDir(), "open")
	require.NoError(t, os.Mkdir(open, 0o700))
	require.NoError(t, os.Chmod(open, 0o1777))
	sock, fd = listen(open)
	_, tr, ok = PickAddr(unit(sock, fd), "h")
	require.True(t, ok)
	assert.Equal(t, "tcp", tr, "a directory others may write to")
	_, err = ShmPeer(unit(sock, fd), "h")
	assert.ErrorIs(t, err, engine.ErrNotSupported)
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
