package tcp

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// hostileAnswer is what the fuzzed unit answers every request with: a
// body (the bytes of a reply message, decoded as far as they go), a
// payload of a length, or an error.
type hostileAnswer struct {
	body    []byte
	payload int
	fail    bool
}

// FuzzUnitReplies points the transport at a unit that answers WRITE,
// READ, FREE and UNIT_STATS with fuzzed reply bodies (extents of other
// counts, lengths or segments; fields of other messages) and payloads of
// any length, then runs each op. The client must never panic nor hang; a
// failure must be an *engine.OpError naming the unit's address, and a
// WRITE it takes must report one extent of each size it asked for.
func FuzzUnitReplies(f *testing.F) {
	enc := func(m proto.Message) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	good := enc(&wirepb.WriteReply{Extents: wire.RangesToPB([]engine.RemoteAddr{{Segment: 1, Gen: 1, Offset: 0, Len: 3}, {Segment: 1, Gen: 1, Offset: 64, Len: 4}})})
	f.Add(good, uint16(0), false)
	f.Add(good, uint16(7), false)
	f.Add(enc(&wirepb.WriteReply{Extents: wire.RangesToPB([]engine.RemoteAddr{{Segment: 1, Gen: 1, Len: 3}})}), uint16(3), false)
	f.Add(enc(&wirepb.WriteReply{Extents: wire.RangesToPB([]engine.RemoteAddr{{Segment: 1, Gen: 1, Len: 1 << 40}, {Len: 4}})}), uint16(1), false)
	f.Add(enc(&wirepb.WriteReply{Extents: &wirepb.Addrs{Segment: []uint32{1, 2}, Gen: []uint32{1}, Offset: []uint64{0}, Len: []uint64{3, 4, 5}}}), uint16(9), false)
	f.Add(enc(&wirepb.UnitStats{}), uint16(0), true)
	f.Add([]byte{0xff, 0xff}, uint16(100), false)

	var mu sync.Mutex
	var ans hostileAnswer
	answer := func(_ context.Context, req *wire.Request, rw *wire.ReplyWriter) {
		req.DiscardPayload()
		mu.Lock()
		a := ans
		mu.Unlock()
		if a.fail {
			rw.Error(errors.New("hostile unit refuses"))
			return
		}
		// Any message carries the bytes: what it does not know it keeps
		// as unknown fields and writes back as they came.
		m := &wirepb.WriteReply{}
		_ = proto.UnmarshalOptions{DiscardUnknown: false}.Unmarshal(a.body, m)
		rw.ReplyBytes(m, make([]byte, a.payload), nil)
	}
	s := wire.NewServer(wire.ServerConfig{
		CheckHello: func(h *wirepb.Hello) (*wirepb.Hello, error) {
			return &wirepb.Hello{Role: "unit", UnitId: h.UnitId, Incarnation: max(h.Incarnation, 1)}, nil
		},
	})
	for _, op := range []wire.Op{wire.OpWrite, wire.OpRead, wire.OpFree, wire.OpUnitStats} {
		s.Handle(op, answer)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	go s.Serve(l)
	f.Cleanup(func() { s.Close() })
	addr := "tcp://" + l.Addr().String()
	tr := New(Config{Conns: 1})
	f.Cleanup(func() { tr.Close() })

	f.Fuzz(func(t *testing.T, body []byte, payload uint16, fail bool) {
		mu.Lock()
		ans = hostileAnswer{body: body, payload: int(payload), fail: fail}
		mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := tr.DialConn(ctx, engine.PeerInfo{Unit: 2, Incarnation: 5, Addr: addr})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		failed := func(op string, err error) {
			if err == nil {
				return
			}
			var oe *engine.OpError
			if !errors.As(err, &oe) || !strings.Contains(err.Error(), addr) {
				t.Fatalf("%s: the error does not name the unit %s: %v", op, addr, err)
			}
			if ctx.Err() != nil {
				t.Fatalf("%s: hung until the deadline: %v", op, err)
			}
		}

		sizes := []uint64{3, 4}
		out, err := c.Write(ctx, [][][]byte{{[]byte("abc")}, {[]byte("de"), []byte("fg")}})
		failed("write", err)
		if err == nil {
			if len(out) != len(sizes) {
				t.Fatalf("write: %d extents for %d cells", len(out), len(sizes))
			}
			for i, a := range out {
				if a.Len != sizes[i] {
					t.Fatalf("write: extent %d of %d bytes, %d written", i, a.Len, sizes[i])
				}
			}
		}

		ranges := []engine.RemoteAddr{{Segment: 1, Gen: 1, Offset: 0, Len: 3}, {Segment: 1, Gen: 1, Offset: 64, Len: 4}}
		dst := [][]byte{make([]byte, 3), make([]byte, 4)}
		failed("read", c.Read(ctx, ranges, dst))
		failed("free", c.Free(ctx, ranges))
		_, err = c.Stats(ctx)
		failed("stats", err)
	})
}
