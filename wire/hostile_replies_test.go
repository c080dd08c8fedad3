package wire

// Malformed first frames and replies from broken or hostile peers.

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire/wirepb"
)

// A first frame that is a HELLO but carries a payload, or is flagged as a
// reply, is refused with a message naming that (it was "first frame is
// HELLO, not HELLO").
func TestFirstFrameRefusalNamesWhatWasWrong(t *testing.T) {
	_, addr := startServer(t, ServerConfig{}, "tcp")
	hello := &wirepb.Hello{Version: Version, Role: "client"}
	for _, tc := range []struct {
		name string
		send []byte
	}{
		{"HELLO with a payload", frame(OpHello, 0, 1, hello, []byte{1, 2, 3})},
		{"HELLO flagged as a reply", frame(OpHello, FlagReply, 1, hello, nil)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nc := rawDial(t, addr, nil)
			_, err := nc.Write(tc.send)
			require.NoError(t, err)
			e := readConnError(t, nc)
			assert.Equal(t, wirepb.Code_CODE_CORRUPT, e.Code)
			assert.NotContains(t, e.Message, "first frame is HELLO, not HELLO", "the refusal must name what was wrong")
		})
	}
}

// fakeServer accepts one connection and answers each request read on it
// with answer(h), written raw; it returns the client's Conn.
func fakeServer(t *testing.T, answer func(h Header) []byte) *Conn {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	go func() {
		nc, err := ln.Accept()
		if err != nil {
			return
		}
		defer nc.Close()
		for {
			hb := make([]byte, HeaderSize)
			if _, err := readFull(nc, hb); err != nil {
				return
			}
			h, err := DecodeHeader(hb)
			if err != nil {
				return
			}
			if _, err := readFull(nc, make([]byte, int(h.BodyLen)+int(h.PayloadLen))); err != nil {
				return
			}
			if out := answer(h); out != nil {
				if _, err := nc.Write(out); err != nil {
					return
				}
			}
		}
	}()
	nc, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	c := NewConn(nc, ConnConfig{KeepAlive: -1})
	t.Cleanup(func() { c.Close() })
	return c
}

func readFull(nc net.Conn, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := nc.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// A reply carries its request's op (spec: "Requests and their replies
// carry the same op"): an answer of another op is corrupt, not decoded
// as the reply asked for (an empty body decodes as any message, and the
// call returned success).
func TestReplyOfAnotherOpIsCorrupt(t *testing.T) {
	c := fakeServer(t, func(h Header) []byte {
		// An answer under another op: an empty body, which decodes as
		// any message.
		return frame(OpClearPartition, FlagReply, h.ID, &wirepb.Empty{}, nil)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var reply wirepb.Ping
	err := c.Do(ctx, OpPing, &wirepb.Ping{Nonce: 7}, nil, &reply, nil)
	require.Error(t, err, "a %v answer to a PING was taken as its reply", OpClearPartition)
	assert.ErrorIs(t, err, engine.ErrCorrupt)
}

// An error reply whose body is empty (code 0, no message, which no TQ
// server sends) is corrupt, naming the op, not an error with empty text
// that wraps nothing.
func TestEmptyErrorReplyIsNamed(t *testing.T) {
	c := fakeServer(t, func(h Header) []byte {
		return Header{Version: Version, Flags: FlagReply | FlagError, Op: h.Op, ID: h.ID}.Append(nil)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := c.Do(ctx, opEcho, &wirepb.Ping{}, nil, &wirepb.Ping{}, nil)
	require.Error(t, err)
	assert.NotEmpty(t, err.Error(), "an error reply without a message must still say what failed")
	assert.ErrorIs(t, err, engine.ErrCorrupt, "an error reply with no code is malformed")
}

// An error reply's payload is empty (spec.md "Frames"): one that claims
// a payload is corrupt, naming it, with nothing read for the claim (up
// to 2^40 bytes that may never come), and the connection, out of step,
// ends. As the Python client. It was the error of its body, after the
// payload was read: for 2^40 bytes, a wait for bytes that never came.
func TestErrorReplyWithAPayloadIsCorrupt(t *testing.T) {
	for _, plen := range []uint64{5, MaxPayloadLen} {
		c := fakeServer(t, func(h Header) []byte {
			body, _ := proto.Marshal(&wirepb.Error{Code: wirepb.Code_CODE_NOT_FOUND, Message: "range no longer held"})
			out := Header{Version: Version, Flags: FlagReply | FlagError, Op: h.Op, ID: h.ID, BodyLen: uint32(len(body)), PayloadLen: plen}.Append(nil)
			return append(append(out, body...), "xxxxx"...)
		})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := c.Do(ctx, opEcho, &wirepb.Ping{}, nil, &wirepb.Ping{}, nil)
		cancel()
		require.ErrorIs(t, err, engine.ErrCorrupt, "payload of %d bytes", plen)
		assert.ErrorContains(t, err, fmt.Sprintf("error reply with %d payload bytes", plen))
		assert.Error(t, c.Do(context.Background(), opEcho, &wirepb.Ping{}, nil, &wirepb.Ping{}, nil), "the connection ended")
	}
}
