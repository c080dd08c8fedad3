package tcp

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/storage"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// writeFails is a connection whose writes fail and whose reads work: a
// peer that refused the rest of a request and answers it.
type writeFails struct{ net.Conn }

func (writeFails) Write([]byte) (int, error) { return 0, errors.New("broken pipe") }

// TestRedialLetsAFailedWriteBeAnswered: a call whose write failed waits
// for the unit's answer on its connection; another call that finds the
// connection failed dials a new one, and leaves the old one reading, so
// that the first call gets the answer rather than the write's error.
func TestRedialLetsAFailedWriteBeAnswered(t *testing.T) {
	tu := startUnit(t, "unix", unitConfig(), storage.ServerConfig{})
	c := dialUnit(t, tu, Config{Conns: 1})

	cli, srv := net.Pipe()
	t.Cleanup(func() { srv.Close() })
	failed := wire.NewConn(writeFails{cli}, wire.ConnConfig{KeepAlive: -1})
	t.Cleanup(func() { failed.Close() })
	answer := make(chan error, 1)
	go func() {
		answer <- failed.Do(context.Background(), wire.OpFree, &wirepb.FreeRequest{}, nil, &wirepb.Empty{}, nil)
	}()
	require.Eventually(t, func() bool { return failed.Err() != nil }, 10*time.Second, time.Millisecond, "the write failed")
	c.mu.Lock()
	first := c.slots[0].conn
	c.slots[0].conn = failed
	c.mu.Unlock()
	first.Close()

	wc, err := c.get(t.Context(), 0) // redials
	require.NoError(t, err)
	require.NotSame(t, failed, wc)

	// The unit's answer to the call, request 1 on the failed connection.
	body, err := proto.Marshal(wire.ErrorReply(engine.ErrCapacity))
	require.NoError(t, err)
	h := wire.Header{Version: wire.Version, Flags: wire.FlagReply | wire.FlagError, Op: wire.OpFree, ID: 1, BodyLen: uint32(len(body))}
	srv.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, err = srv.Write(append(h.Append(nil), body...))
	require.NoError(t, err, "the failed connection was closed before the answer came")
	select {
	case err := <-answer:
		require.ErrorIs(t, err, engine.ErrCapacity)
	case <-time.After(10 * time.Second):
		t.Fatal("no answer in 10 s")
	}
	srv.Close() // the unit closes: the failed connection ends
	select {
	case <-failed.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the failed connection did not end in 10 s")
	}
}
