package wire

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/wire/wirepb"
)

// disconnect is what OnDisconnect was told about one connection.
type disconnect struct {
	name   string
	byPeer bool
}

// TestOnDisconnectTellsWhoEnded: OnConnect runs for a connection once
// its handshake succeeded; OnDisconnect then says whether the peer ended
// it (closed it, mid-frame or between frames) or the server did (idle
// past IdleTimeout, a broken frame), on a loop and off one.
func TestOnDisconnectTellsWhoEnded(t *testing.T) {
	for _, loops := range []int{-1, 1} {
		t.Run(map[int]string{-1: "goroutine", 1: "loop"}[loops], func(t *testing.T) {
			connected := make(chan string, 8)
			gone := make(chan disconnect, 8)
			_, addr, n := loopServer(t, ServerConfig{Loops: loops, IdleTimeout: 300 * time.Millisecond,
				OnConnect:    func(p *wirepb.Hello) { connected <- p.GetName() },
				OnDisconnect: func(p *wirepb.Hello, byPeer bool) { gone <- disconnect{p.GetName(), byPeer} },
			}, "tcp")
			served := func(name string) {
				t.Helper()
				require.Equal(t, name, recv(t, connected, "connect of "+name))
			}

			c := dial(t, addr, "")
			_, err := inlineEcho(context.Background(), c, []byte("x"))
			require.NoError(t, err)
			served("")
			require.NoError(t, c.Close())
			require.Equal(t, disconnect{"", true}, recv(t, gone, "the client's close"))

			half := rawDial(t, addr, &wirepb.Hello{Role: "client", Name: "half"})
			served("half")
			f := frame(opInlineEcho, 0, 2, &wirepb.Ping{}, []byte{1, 2, 3})
			_, err = half.Write(f[:len(f)-2])
			require.NoError(t, err)
			require.NoError(t, half.Close())
			require.Equal(t, disconnect{"half", true}, recv(t, gone, "a close mid-frame"))

			idle := rawDial(t, addr, &wirepb.Hello{Role: "client", Name: "idle"})
			served("idle")
			_, err = idle.Write(frame(opInlineEcho, 0, 2, &wirepb.Ping{}, []byte{1}))
			require.NoError(t, err)
			readFrame(t, idle)
			require.Equal(t, disconnect{"idle", false}, recv(t, gone, "the idle timeout"))
			idle.Close()

			bad := rawDial(t, addr, &wirepb.Hello{Role: "client", Name: "bad"})
			served("bad")
			_, err = bad.Write(make([]byte, HeaderSize)) // no such op, no magic
			require.NoError(t, err)
			require.Equal(t, disconnect{"bad", false}, recv(t, gone, "a broken frame"))
			bad.Close()
			if loops > 0 {
				require.Positive(t, n.on.Load(), "served on a loop")
			}
		})
	}
}

const opByPeerHold Op = 240

// TestRefusedConnectionIsNotEndedByPeer: a connection the server refused
// over a broken frame ends lingering (its sending side shut). A reply a
// handler still in flight writes then fails with EPIPE on the server's
// own shut side: that says nothing of the peer, which here never closes
// at all, so OnDisconnect must not say the peer ended it.
func TestRefusedConnectionIsNotEndedByPeer(t *testing.T) {
	started, release := make(chan struct{}), make(chan struct{})
	gone := make(chan disconnect, 1)
	_, addr := startServer(t, ServerConfig{
		OnDisconnect: func(p *wirepb.Hello, byPeer bool) { gone <- disconnect{p.GetName(), byPeer} },
	}, "tcp", func(s *Server) {
		s.Handle(opByPeerHold, func(_ context.Context, _ *Request, rw *ReplyWriter) {
			close(started)
			<-release
			rw.Reply(&wirepb.Empty{}, nil, nil)
		})
	})
	nc := rawDial(t, addr, &wirepb.Hello{Role: "client", Name: "refused"})
	_, err := nc.Write(frame(opByPeerHold, 0, 1, &wirepb.Empty{}, nil))
	require.NoError(t, err)
	recv(t, started, "the held request")
	// A reply frame from a client: the server refuses the connection.
	_, err = nc.Write(frame(opEcho, FlagReply, 2, &wirepb.Ping{}, nil))
	require.NoError(t, err)
	h, _ := readFrame(t, nc)
	require.NotZero(t, h.Flags&FlagError, "the connection error")
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = nc.Read(make([]byte, 1))
	require.ErrorIs(t, err, io.EOF, "the server shut its sending side: it lingers")
	close(release) // the reply meets the shut side
	require.Equal(t, disconnect{"refused", false}, recv(t, gone, "the end of the refused connection"))
}
