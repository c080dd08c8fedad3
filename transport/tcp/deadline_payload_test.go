package tcp

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// stallingUnit accepts one connection, answers its HELLO, and answers the
// first READ with a header that announces every byte asked for, sends
// half of them, and then trickles one byte every 50 ms (enough to keep
// the client's keepalive satisfied) until stop closes.
func stallingUnit(t *testing.T, stop <-chan struct{}) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		nc, err := ln.Accept()
		if err != nil {
			return
		}
		defer nc.Close()
		go func() { <-stop; nc.Close() }()
		readFrame := func() (wire.Header, []byte) {
			hb := make([]byte, wire.HeaderSize)
			if _, err := io.ReadFull(nc, hb); err != nil {
				return wire.Header{}, nil
			}
			h, err := wire.DecodeHeader(hb)
			if err != nil {
				return wire.Header{}, nil
			}
			body := make([]byte, h.BodyLen)
			io.ReadFull(nc, body)
			io.CopyN(io.Discard, nc, int64(h.PayloadLen))
			return h, body
		}
		reply := func(h wire.Header, msg proto.Message, plen uint64) {
			b, _ := proto.Marshal(msg)
			out := wire.Header{Version: wire.Version, Flags: wire.FlagReply, Op: h.Op, ID: h.ID, BodyLen: uint32(len(b)), PayloadLen: plen}.Append(nil)
			nc.Write(append(out, b...))
		}
		for {
			h, body := readFrame()
			if body == nil && h.Op == 0 {
				return
			}
			switch h.Op {
			case wire.OpHello:
				reply(h, &wirepb.Hello{Role: "unit", UnitId: 7}, 0)
			case wire.OpPing:
				reply(h, &wirepb.Ping{}, 0)
			case wire.OpRead:
				var req wirepb.ReadRequest
				proto.Unmarshal(body, &req)
				ranges, _ := wire.RangesFromPB(req.Ranges)
				var n uint64
				for _, r := range ranges {
					n += r.Len
				}
				reply(h, &wirepb.Empty{}, n)
				nc.Write(make([]byte, n/2))
				// Trickle the rest: the unit is alive, just slow.
				go func() {
					tk := time.NewTicker(50 * time.Millisecond)
					defer tk.Stop()
					for {
						select {
						case <-stop:
							return
						case <-tk.C:
							if _, err := nc.Write([]byte{0}); err != nil {
								return
							}
						}
					}
				}()
			}
		}
	}()
	return wire.FormatAddr("tcp", ln.Addr().String())
}

// A Read whose context ends while the reply's payload is still arriving
// (a slow or hostile unit trickling bytes, enough to keep the keepalive
// happy) returns soon after its deadline, as a Write whose payload is
// still being written does: after wire's abandonGrace the connection is
// failed to take the caller's buffers back. It used to wait for the whole
// payload, here for ever.
func TestReadDeadlineMidPayload(t *testing.T) {
	stop := make(chan struct{})
	addr := stallingUnit(t, stop)
	// Pings go out while the payload trickles in; wire's ping timeout
	// (10 s): a 300 ms one failed the connection with ErrUnavailable when
	// a loaded machine held the trickle up, instead of the deadline.
	tr := New(Config{Conns: 1, Conn: wire.ConnConfig{KeepAlive: 100 * time.Millisecond}})
	defer tr.Close()
	c, err := tr.DialConn(t.Context(), engine.PeerInfo{Addr: addr})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const n = 1 << 20
	dst := make([]byte, n)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- c.Read(ctx, []engine.RemoteAddr{{Segment: 1, Gen: 1, Len: n}}, [][]byte{dst}) }()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Read: got %v, want an error wrapping %v", err, context.DeadlineExceeded)
		}
		t.Logf("Read returned after %v: %v", time.Since(start), err)
	case <-time.After(30 * time.Second):
		close(stop) // unblock the reader so the test can end
		err := <-done
		t.Fatalf("Read with a 200ms deadline still blocked after 30s (the unit trickles its payload); it returned %v once the unit hung up", err)
	}
	close(stop)
}
