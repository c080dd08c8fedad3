//go:build linux && cgo && rdma

package rdma

import (
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// A transport closed while a Dial waits for the unit's handshake stops
// that dial, and the dial's control connection is closed: the unit sees
// it end. (The dial's Conn is in the transport's set before the control
// connection exists; Close must not miss it.)
func TestCloseDuringDialClosesControlConnection(t *testing.T) {
	hello := make(chan struct{}, 1) // the unit has the dial's HELLO
	answer := make(chan struct{})   // the unit may answer it
	ended := make(chan struct{}, 1) // the unit saw the connection end
	srv := wire.NewServer(wire.ServerConfig{
		CheckHello: func(*wirepb.Hello) (*wirepb.Hello, error) {
			hello <- struct{}{}
			<-answer
			return &wirepb.Hello{Role: "unit", UnitId: 7}, nil
		},
		OnDisconnect: func(*wirepb.Hello) { ended <- struct{}{} },
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })

	tr := New(testConfig(t))
	_, err = tr.Device()
	require.NoError(t, err)
	dialed := make(chan error, 1)
	go func() {
		c, err := tr.DialConn(t.Context(), engine.PeerInfo{Unit: 7, Addr: wire.FormatAddr("tcp", l.Addr().String())})
		if c != nil {
			c.Close()
		}
		dialed <- err
	}()
	select {
	case <-hello:
	case <-time.After(10 * time.Second):
		t.Fatal("the dial's HELLO never arrived")
	}
	closed := make(chan error, 1)
	go func() { closed <- tr.Close() }()
	select {
	case err := <-closed:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		close(answer)
		t.Fatal("Close waited for the dial's handshake")
	}
	close(answer) // a handshake answered after Close must not revive the dial
	select {
	case err := <-dialed:
		require.ErrorIs(t, err, engine.ErrClosed)
	case <-time.After(10 * time.Second):
		t.Fatal("the dial did not end")
	}
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("the dial's control connection is still open after Close")
	}
}
