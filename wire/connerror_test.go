package wire

// Connection errors: a server that ends a connection over what its peer
// sent says why, in an error reply with request id 0, and ends it so that
// the answer arrives (see refuseConn).

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire/wirepb"
)

// readConnError reads the connection error the server sends on nc, then
// the end of the connection.
func readConnError(t *testing.T, nc net.Conn) *RemoteError {
	t.Helper()
	h, body := readFrame(t, nc)
	require.Equal(t, uint64(0), h.ID, "a connection error has request id 0")
	require.Equal(t, FlagReply|FlagError, h.Flags)
	var e wirepb.Error
	require.NoError(t, proto.Unmarshal(body, &e))
	waitClosed(t, nc, 5*time.Second)
	return &RemoteError{Code: e.Code, Message: e.Message}
}

// patch returns a copy of b with v written at off.
func patch(b []byte, off int, v ...byte) []byte {
	b = bytes.Clone(b)
	copy(b[off:], v)
	return b
}

// TestMalformedFrameNamed: every frame the server cannot take, before the
// handshake or after it, gets a connection error that names what was
// wrong, and the connection then ends. A peer whose bytes are not TQ's
// gets nothing back.
func TestMalformedFrameNamed(t *testing.T) {
	_, addr := startServer(t, ServerConfig{}, "tcp")
	ping, _ := proto.Marshal(&wirepb.Ping{})
	hello := frame(OpHello, 0, 1, &wirepb.Hello{Version: Version}, nil)
	cancelBody, _ := proto.Marshal(&wirepb.Cancel{Id: 7})
	for _, tc := range []struct {
		name     string
		authd    bool // sent after the handshake
		send     []byte
		want     string
		answered bool // request 2, before the bad frame, is answered first
	}{
		{"first frame not HELLO", false, frame(OpPing, 0, 1, &wirepb.Ping{}, nil), "first frame is PING, not HELLO", false},
		{"HELLO too large", false, header(OpHello, 1, MaxHelloLen+1, 0), "HELLO of 4097 bytes exceeds 4096", false},
		{"HELLO of another version", false, patch(hello, 2, 2), "a frame of protocol version 2, this side speaks version 1", false},
		{"body too large", true, header(OpPing, 2, MaxBodyLen+1, 0), "body of 67108865 bytes exceeds 67108864", false},
		{"payload too large", true, header(OpPing, 2, 0, MaxPayloadLen+1), "payload of 1099511627777 bytes exceeds", false},
		{"unknown flag", true, patch(header(OpPing, 2, 0, 0), 3, 0x80), "unknown flags 0x80", false},
		{"reserved bytes", true, patch(header(OpPing, 2, 0, 0), 20, 1), "reserved bytes set", false},
		{"a reply from the client", true, frame(OpPing, FlagReply, 2, &wirepb.Ping{}, nil), "a reply frame (op PING) from the client", false},
		{"CANCEL with a payload", true, append(append(header(OpCancel, 0, uint32(len(cancelBody)), 3), cancelBody...), 1, 2, 3), "CANCEL with a payload of 3 bytes", false},
		// A request served before the bad frame is answered first.
		{"after a good request", true, append(frame(OpPing, 0, 2, &wirepb.Ping{}, nil), patch(header(OpPing, 3, uint32(len(ping)), 0), 6, 1)...), "reserved bytes set", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var nc net.Conn
			if tc.authd {
				nc = rawDial(t, addr, &wirepb.Hello{Role: "client"})
			} else {
				nc = rawDial(t, addr, nil)
			}
			_, err := nc.Write(tc.send)
			require.NoError(t, err)
			if tc.answered {
				h, _ := readFrame(t, nc)
				require.Equal(t, uint64(2), h.ID)
				require.Equal(t, FlagReply, h.Flags)
			}
			e := readConnError(t, nc)
			assert.Equal(t, wirepb.Code_CODE_CORRUPT, e.Code)
			assert.Contains(t, e.Message, tc.want)
		})
	}
	t.Run("not TQ", func(t *testing.T) {
		nc := rawDial(t, addr, nil)
		_, err := nc.Write([]byte("GET /metrics HTTP/1.1\r\nHost: localhost:7000\r\n\r\n"))
		require.NoError(t, err)
		nc.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, err := io.ReadAll(nc) // an end, or a reset: it sent more than was read
		var ne net.Error
		require.False(t, errors.As(err, &ne) && ne.Timeout(), "the server closes")
		assert.Empty(t, got, "a peer that does not speak TQ gets no TQ frame")
	})
}

// TestClientFailsWithTheServersReason: the Go client fails its calls in
// flight with the server's connection error, not with the connection
// closing under them.
func TestClientFailsWithTheServersReason(t *testing.T) {
	_, addr, started, release := holdServer(t, ServerConfig{})
	defer close(release)
	nc := rawDial(t, addr, &wirepb.Hello{Role: "client"})
	c := NewConn(nc, ConnConfig{KeepAlive: -1})
	defer c.Close()
	done := make(chan error, 1)
	go func() { done <- c.Do(context.Background(), opHold, &wirepb.Empty{}, nil, &wirepb.Empty{}, nil) }()
	recv(t, started, "request started")
	// A frame the server refuses, as a buggy client would send it.
	bad := header(OpPing, 99, 0, 0)
	binary.LittleEndian.PutUint32(bad[20:], 1)
	_, err := nc.Write(bad)
	require.NoError(t, err)
	err = recv(t, done, "the call's end")
	require.True(t, errors.Is(err, engine.ErrCorrupt), "got %v", err)
	require.ErrorContains(t, err, "the server ended the connection: reserved bytes set")
	require.ErrorIs(t, c.Err(), engine.ErrCorrupt)
	err = c.Do(context.Background(), OpPing, &wirepb.Ping{}, nil, &wirepb.Ping{}, nil)
	require.ErrorContains(t, err, "reserved bytes set", "later calls fail with the reason too")
}

// TestRefusalSurvivesTheRestOfTheRequest: a client that sends its HELLO
// with a wrong token and keeps sending (a pipelined request with a large
// payload) reads the refusal over TCP rather than a reset: the server
// ends the connection lingering.
func TestRefusalSurvivesTheRestOfTheRequest(t *testing.T) {
	_, addr := startServer(t, ServerConfig{Token: "secret"}, "tcp")
	for range 5 {
		nc := rawDial(t, addr, nil)
		const size = 16 << 20
		msg := append(frame(OpHello, 0, 1, &wirepb.Hello{Version: Version, Token: "wrong"}, nil), header(opEcho, 2, 0, size)...)
		wrote := make(chan error, 1)
		go func() {
			_, err := nc.Write(append(msg, make([]byte, size)...))
			wrote <- err
		}()
		require.NoError(t, recv(t, wrote, "the write"), "the client's write must not meet a reset")
		h, body := readFrame(t, nc)
		require.Equal(t, uint64(1), h.ID)
		var e wirepb.Error
		require.NoError(t, proto.Unmarshal(body, &e))
		require.Equal(t, wirepb.Code_CODE_UNAUTHENTICATED, e.Code)
		require.Contains(t, e.Message, "wrong or missing token")
		waitClosed(t, nc, 5*time.Second)
	}
}

// TestLingerOutlastsALateReply: a handler that replies while its
// connection lingers after a connection error does not cut the lingering
// short. Its reply cannot go out (the sending side is shut), and the
// write's failure must not close the socket under the peer, which would
// then meet a reset for what it still sends.
func TestLingerOutlastsALateReply(t *testing.T) {
	_, addr, started, release := holdServer(t, ServerConfig{})
	nc := rawDial(t, addr, &wirepb.Hello{Role: "client"})
	_, err := nc.Write(frame(opHold, 0, 5, &wirepb.Empty{}, nil))
	require.NoError(t, err)
	recv(t, started, "request started")
	_, err = nc.Write(patch(header(OpPing, 6, 0, 0), 20, 1))
	require.NoError(t, err)
	h, _ := readFrame(t, nc)
	require.Equal(t, uint64(0), h.ID, "the connection error")
	close(release) // the held request replies now, into the shut side
	time.Sleep(100 * time.Millisecond)
	for i := range 3 {
		_, err := nc.Write([]byte("more"))
		require.NoError(t, err, "write %d while the server lingers", i)
		time.Sleep(50 * time.Millisecond)
	}
	waitClosed(t, nc, 5*time.Second)
}
