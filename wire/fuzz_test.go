package wire

import (
	"bytes"
	"context"
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

func TestFuzzSeedsAreWellFormed(t *testing.T) {
	b := frame(opEcho, 0, 2, &wirepb.Ping{}, []byte("payload"))
	h, err := DecodeHeader(b)
	if err != nil || h.PayloadLen != 7 || !bytes.HasSuffix(b, []byte("payload")) {
		t.Fatalf("%+v %v", h, err)
	}
}
