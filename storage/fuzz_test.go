package storage

import (
	"io"
	"math"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// fuzzOps are the ops FuzzHandlers picks from (op % len).
var fuzzOps = []wire.Op{wire.OpWrite, wire.OpRead, wire.OpFree, wire.OpUnitStats, wire.OpPing, wire.OpRegister}

// FuzzHandlers sends one request with an arbitrary body and payload to a
// unit server, in two writes split at a fuzzed point. Every request must
// get a reply with its id and op, and the unit must hold no open
// reservation or lease afterwards.
func FuzzHandlers(f *testing.F) {
	ext := engine.RemoteAddr{Segment: 1, Gen: 1, Offset: 0, Len: 100}
	for _, seed := range []struct {
		op      wire.Op
		body    proto.Message
		payload []byte
	}{
		{wire.OpWrite, &wirepb.WriteRequest{Sizes: []uint64{3, 0, 4}}, []byte("abcdefg")},
		{wire.OpWrite, &wirepb.WriteRequest{Sizes: []uint64{10}}, []byte("short")},
		{wire.OpWrite, &wirepb.WriteRequest{Sizes: []uint64{math.MaxUint64, 2}}, []byte("x")},
		{wire.OpWrite, &wirepb.WriteRequest{Sizes: []uint64{1 << 40}}, nil},
		{wire.OpRead, &wirepb.ReadRequest{Ranges: wire.RangesToPB([]engine.RemoteAddr{ext, {}})}, nil},
		{wire.OpRead, &wirepb.ReadRequest{Ranges: &wirepb.Addrs{Segment: []uint32{1}, Gen: []uint32{1}, Offset: []uint64{1}}}, nil},
		{wire.OpRead, &wirepb.ReadRequest{Ranges: wire.RangesToPB([]engine.RemoteAddr{{Segment: 1, Gen: 1, Offset: math.MaxUint64, Len: 2}})}, []byte("junk")},
		{wire.OpFree, &wirepb.FreeRequest{Cells: wire.RangesToPB([]engine.RemoteAddr{{Segment: 1, Gen: 1, Offset: 10, Len: 10}})}, nil},
		{wire.OpFree, &wirepb.FreeRequest{Cells: wire.RangesToPB([]engine.RemoteAddr{ext, ext})}, nil},
		{wire.OpUnitStats, &wirepb.Empty{}, nil},
		{wire.OpPing, &wirepb.Ping{Nonce: 1}, nil},
	} {
		for i, op := range fuzzOps {
			if op == seed.op {
				f.Add(uint8(i), marshal(seed.body), seed.payload, uint(7))
			}
		}
	}
	f.Add(uint8(0), []byte{0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f}, []byte{1}, uint(40))
	f.Add(uint8(1), []byte{0x0a, 0x03, 0x12, 0x01}, []byte(nil), uint(0))

	cfg := testConfig()
	cfg.ReserveTimeout = time.Second
	u, err := NewUnit(1, cfg)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { u.Close() })
	addr := serve(f, u, ServerConfig{ReserveWait: time.Millisecond})
	// Something to read and free: extents at the start of segment 1.
	for range 3 {
		r, err := u.Reserve(f.Context(), []int64{100, 4096})
		if err != nil {
			f.Fatal(err)
		}
		copy(r.Buf(0), "stored bytes")
		if err := r.Commit(); err != nil {
			f.Fatal(err)
		}
	}

	f.Fuzz(func(t *testing.T, opIndex uint8, body, payload []byte, split uint) {
		op := fuzzOps[int(opIndex)%len(fuzzOps)]
		if len(payload) > 1<<20 {
			payload = payload[:1<<20]
		}
		msg := append(rawFrame(op, 42, body, uint64(len(payload))), payload...)
		at := int(split % uint(len(msg)+1))
		nc := rawDial(t, addr)
		// Write while reading: the server may answer before it has taken
		// the whole payload and waits for its reply to be read.
		nc.SetWriteDeadline(time.Now().Add(10 * time.Second))
		var sendErr error
		sent := make(chan struct{})
		go func() {
			defer close(sent)
			if _, sendErr = nc.Write(msg[:at]); sendErr == nil {
				_, sendErr = nc.Write(msg[at:])
			}
		}()
		defer func() { <-sent }()
		h, rbody, err := readFrame(nc, 10*time.Second)
		if err != nil {
			t.Fatalf("no reply to %v: %v", op, err)
		}
		if h.ID != 42 || h.Op != op || h.Flags&wire.FlagReply == 0 {
			t.Fatalf("reply header %+v to %v request 42", h, op)
		}
		if _, err := io.CopyN(io.Discard, nc, int64(h.PayloadLen)); err != nil {
			t.Fatalf("reply payload: %v", err)
		}
		if err := replyErr(h, rbody); err == nil && op == wire.OpWrite {
			// Keep the unit from filling up: free what was stored.
			var wr wirepb.WriteReply
			if err := proto.Unmarshal(rbody, &wr); err != nil {
				t.Fatalf("WRITE reply: %v", err)
			}
			addrs, err := wire.RangesFromPB(wr.Extents)
			if err != nil {
				t.Fatalf("WRITE reply: %v", err)
			}
			if err := u.Free(addrs); err != nil {
				t.Fatalf("free what a WRITE stored: %v", err)
			}
		}
		if <-sent; sendErr != nil {
			t.Fatalf("sending the request: %v", sendErr)
		}
		nc.Close()
		deadline := time.Now().Add(5 * time.Second)
		for st := u.Stats(); st.OpenReservations != 0 || st.Leases != 0; st = u.Stats() {
			if time.Now().After(deadline) {
				t.Fatalf("after %v: %d open reservations, %d leases", op, st.OpenReservations, st.Leases)
			}
			time.Sleep(time.Millisecond)
		}
	})
}
