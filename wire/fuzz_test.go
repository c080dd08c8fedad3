package wire

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/wire/wirepb"
)

func frame(op Op, flags Flags, id uint64, body proto.Message, payload []byte) []byte {
	b, _ := proto.Marshal(body)
	h := Header{Version: Version, Flags: flags, Op: op, ID: id, BodyLen: uint32(len(b)), PayloadLen: uint64(len(payload))}
	out := h.Append(nil)
	out = append(out, b...)
	return append(out, payload...)
}

func FuzzDecodeHeader(f *testing.F) {
	f.Add(Header{Version: Version, Op: OpPing, ID: 1}.Append(nil))
	f.Add(Header{Version: Version, Flags: FlagReply | FlagError, Op: OpRead, ID: 9, BodyLen: 5, PayloadLen: 7}.Append(nil))
	f.Add([]byte("TQ"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := DecodeHeader(b)
		if err != nil {
			return
		}
		if h.BodyLen > MaxBodyLen || h.PayloadLen > MaxPayloadLen {
			t.Fatalf("accepted lengths beyond the limits: %+v", h)
		}
		if again, err := DecodeHeader(h.Append(nil)); err != nil || again != h {
			t.Fatalf("re-encoding %+v gave %+v, %v", h, again, err)
		}
	})
}

// FuzzServerConn feeds arbitrary bytes after a valid handshake to a real
// server connection, in two writes (split at a fuzzed point). The server
// must neither panic nor hang: it answers or closes the connection, and a
// fresh connection still works afterwards.
func FuzzServerConn(f *testing.F) {
	f.Add(frame(OpPing, 0, 1, &wirepb.Ping{Nonce: 3}, nil), uint(5))
	f.Add(frame(opEcho, 0, 2, &wirepb.Ping{}, []byte("payload")), uint(40))
	f.Add(frame(opEcho, FlagReply, 2, &wirepb.Ping{}, nil), uint(0))
	f.Add(append(frame(OpPing, 0, 1, &wirepb.Ping{}, nil), 0xff, 0xfe), uint(33))
	f.Add(frame(Op(999), 0, 7, &wirepb.Ping{}, []byte{1, 2, 3}), uint(12))
	f.Add([]byte("TQ\x01\x00\x02\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\xff\xff\xff\xff"), uint(10))
	f.Add(append(frame(Op(201), 0, 4, &wirepb.Ping{}, nil), cancelFrame(4)...), uint(20))
	f.Add(append(cancelFrame(9), frame(OpCancel, 0, 0, &wirepb.Ping{Nonce: 1}, []byte("p"))...), uint(36))
	s := NewServer(ServerConfig{HandshakeTimeout: time.Second, IdleTimeout: time.Second})
	s.Handle(opEcho, echo)
	s.Handle(Op(201), func(ctx context.Context, req *Request, rw *ReplyWriter) {
		// A handler takes its payload before it waits on anything: until
		// then the connection reads nothing (a CANCEL or the peer's close
		// included).
		req.DiscardPayload()
		<-ctx.Done()
		rw.Error(ctx.Err())
	})
	f.Cleanup(func() { s.Close() })
	hello := frame(OpHello, 0, 1, &wirepb.Hello{Version: Version}, nil)
	f.Fuzz(func(t *testing.T, data []byte, split uint) {
		cli, srv := net.Pipe()
		sc := s.admit(srv)
		go sc.serve()
		go func() { // drain whatever the server answers
			buf := make([]byte, 4096)
			for {
				if _, err := cli.Read(buf); err != nil {
					return
				}
			}
		}()
		cli.SetWriteDeadline(time.Now().Add(2 * time.Second))
		cli.Write(hello)
		k := int(split % uint(len(data)+1))
		cli.Write(data[:k])
		cli.Write(data[k:])
		cli.Close()
		select {
		case <-sc.done:
		case <-time.After(5 * time.Second):
			t.Fatal("server connection still open 5 s after the client closed")
		}
	})
}

// FuzzHandshake feeds arbitrary bytes to a server connection that has
// not authenticated, in two writes. The server must neither panic nor
// hang, and reads nothing bigger than a HELLO of MaxHelloLen.
func FuzzHandshake(f *testing.F) {
	f.Add(frame(OpHello, 0, 1, &wirepb.Hello{Version: Version, Role: "client"}, nil), uint(7))
	f.Add(frame(OpHello, 0, 1, &wirepb.Hello{Version: 2}, nil), uint(32))
	f.Add(frame(OpHello, 0, 1, &wirepb.Hello{Version: Version}, []byte("payload")), uint(0))
	f.Add(frame(OpPing, 0, 1, &wirepb.Ping{}, nil), uint(3))
	f.Add(Header{Version: Version, Op: OpHello, ID: 1, BodyLen: MaxHelloLen + 1}.Append(nil), uint(16))
	f.Add(Header{Version: Version, Op: OpHello, ID: 1, BodyLen: MaxBodyLen}.Append(nil), uint(31))
	f.Add(append(frame(OpHello, 0, 1, &wirepb.Hello{Version: Version}, nil), frame(OpPing, 0, 2, &wirepb.Ping{}, nil)...), uint(40))
	s := NewServer(ServerConfig{HandshakeTimeout: time.Second, IdleTimeout: time.Second, Token: "t"})
	f.Cleanup(func() { s.Close() })
	f.Fuzz(func(t *testing.T, data []byte, split uint) {
		cli, srv := net.Pipe()
		sc := s.admit(srv)
		go sc.serve()
		go io.Copy(io.Discard, cli)
		cli.SetWriteDeadline(time.Now().Add(2 * time.Second))
		k := int(split % uint(len(data)+1))
		cli.Write(data[:k])
		cli.Write(data[k:])
		cli.Close()
		select {
		case <-sc.done:
		case <-time.After(5 * time.Second):
			t.Fatal("server connection still open 5 s after the client closed")
		}
	})
}

// FuzzClientConn feeds arbitrary bytes, as a server's answer, to a
// client connection with a call waiting, in two writes (split at a
// fuzzed point), then closes. The client must neither panic nor hang: the
// call ends, with its reply exactly when the bytes hold one (replyTo
// says, parsing them on its own) and else with an error, and Close
// returns.
func FuzzClientConn(f *testing.F) {
	f.Add(frame(opEcho, FlagReply, 1, &wirepb.Ping{Nonce: 7}, nil), uint(3))
	f.Add(frame(opEcho, FlagReply, 1, &wirepb.Ping{}, []byte("payload")), uint(40))
	f.Add(frame(opEcho, FlagReply|FlagError, 1, &wirepb.Error{Code: wirepb.Code_CODE_INVALID, Message: "no"}, []byte("xy")), uint(33))
	f.Add(append(frame(opEcho, FlagReply, 2, &wirepb.Ping{}, []byte("other")), frame(opEcho, FlagReply, 1, &wirepb.Ping{}, nil)...), uint(37))
	f.Add(frame(opEcho, 0, 1, &wirepb.Ping{}, nil), uint(0))
	f.Add(Header{Version: Version, Flags: FlagReply, Op: opEcho, ID: 1, BodyLen: MaxBodyLen}.Append(nil), uint(32))
	f.Add(append(Header{Version: Version, Flags: FlagReply, Op: opEcho, ID: 1, BodyLen: 3}.Append(nil), 0xff, 0xff, 0xff), uint(34))
	f.Add(Header{Version: Version, Flags: FlagReply, Op: opEcho, ID: 1, PayloadLen: 1 << 40}.Append(nil), uint(8))
	f.Add(frame(opEcho, FlagReply, 1, &wirepb.Ping{}, []byte("cut short"))[:40], uint(36))
	f.Add(append(frame(0, FlagReply|FlagError, 0, &wirepb.Error{Code: wirepb.Code_CODE_CORRUPT, Message: "reserved bytes set"}, nil),
		frame(opEcho, FlagReply, 1, &wirepb.Ping{}, nil)...), uint(50))
	f.Add(append(frame(0, FlagReply, 0, &wirepb.Ping{}, nil), frame(opEcho, FlagReply, 1, &wirepb.Ping{}, nil)...), uint(9))
	f.Fuzz(func(t *testing.T, data []byte, split uint) {
		cli, srv := net.Pipe()
		c := NewConn(cli, ConnConfig{KeepAlive: -1})
		// A call without a deadline: it must end because the server
		// answered or the connection failed, not by waiting out a context.
		var got []byte
		done := make(chan error, 1)
		go func() {
			done <- c.Do(context.Background(), opEcho, &wirepb.Ping{}, nil, &wirepb.Ping{}, func(h Header, _ proto.Message) ([][]byte, error) {
				if h.PayloadLen > 1<<10 {
					return nil, fmt.Errorf("a payload of %d bytes, 1 KiB asked at most", h.PayloadLen)
				}
				got = make([]byte, h.PayloadLen)
				return [][]byte{got}, nil
			})
		}()
		// The server reads one byte of the request (the call is sent, so
		// an answer can be for it) and no more: on a pipe, the rest of
		// the call's write waits until the server closes, and fails then.
		// The answer, written before that, still decides the call.
		srv.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := srv.Read(make([]byte, 1)); err != nil {
			t.Fatalf("read the request: %v", err)
		}
		go func() {
			srv.SetWriteDeadline(time.Now().Add(2 * time.Second))
			k := int(split % uint(len(data)+1))
			srv.Write(data[:k])
			srv.Write(data[k:])
			srv.Close()
		}()
		select {
		case err := <-done:
			want, ok := replyTo(data, opEcho, 1, 1<<10)
			switch {
			case ok && err != nil:
				t.Fatalf("the bytes answer the call (payload %q) but it failed: %v", want, err)
			case !ok && err == nil:
				t.Fatalf("the bytes do not answer the call, yet it succeeded with payload %q", got)
			case ok && !bytes.Equal(got, want):
				t.Fatalf("payload %q, want %q", got, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a call still waiting 5 s after the server closed")
		}
		closed := make(chan struct{})
		go func() { c.Close(); close(closed) }()
		select {
		case <-closed:
		case <-time.After(5 * time.Second):
			t.Fatal("Close still waiting after 5 s")
		}
	})
}

// replyTo says, independently of Conn, whether stream answers call id,
// of op op, with success: a run of well-formed reply frames (others'
// skipped, but none with id 0: that ends the connection) up to one for id
// that is of op op (a reply of another op is corrupt), is not an error,
// and whose body is a Ping and whose payload, at most max bytes, it
// returns.
func replyTo(stream []byte, op Op, id uint64, max uint64) ([]byte, bool) {
	for len(stream) >= HeaderSize {
		h, err := DecodeHeader(stream[:HeaderSize])
		if err != nil || h.Flags&FlagReply == 0 {
			return nil, false
		}
		rest := stream[HeaderSize:]
		if uint64(len(rest)) < uint64(h.BodyLen)+h.PayloadLen {
			return nil, false // cut short: the connection ends first
		}
		body, payload := rest[:h.BodyLen], rest[h.BodyLen:uint64(h.BodyLen)+h.PayloadLen]
		if h.ID == 0 {
			return nil, false // a connection error
		}
		if h.ID == id {
			if h.Op != op || h.Flags&FlagError != 0 || proto.Unmarshal(body, &wirepb.Ping{}) != nil || h.PayloadLen > max {
				return nil, false
			}
			return payload, true
		}
		stream = rest[uint64(h.BodyLen)+h.PayloadLen:]
	}
	return nil, false
}

func TestFuzzSeedsAreWellFormed(t *testing.T) {
	b := frame(opEcho, 0, 2, &wirepb.Ping{}, []byte("payload"))
	h, err := DecodeHeader(b)
	if err != nil || h.PayloadLen != 7 || !bytes.HasSuffix(b, []byte("payload")) {
		t.Fatalf("%+v %v", h, err)
	}
}
