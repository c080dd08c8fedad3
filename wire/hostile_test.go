package wire

// Hostile and unlucky peers: each test speaks the protocol by hand over a
// raw socket, misbehaves in one way, and checks that the server bounds
// what it costs (time, memory, connections) while well-behaved clients
// keep being served.

import (
	"bytes"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/wire/wirepb"
)

// rawDial opens a plain socket to addr; with hello, it sends a HELLO and
// reads the reply, so the socket is authenticated.
func rawDial(t testing.TB, addr string, hello *wirepb.Hello) net.Conn {
	t.Helper()
	network, address, err := ParseAddr(addr)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := net.Dial(network, address)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	if hello != nil {
		hello.Version = Version
		if _, err := nc.Write(frame(OpHello, 0, 1, hello, nil)); err != nil {
			t.Fatal(err)
		}
		h, body := readFrame(t, nc)
		if h.Flags&FlagError != 0 {
			var e wirepb.Error
			proto.Unmarshal(body, &e)
			t.Fatalf("handshake refused: %v", FromReply(&e))
		}
	}
	return nc
}

// readFrame reads one frame with its payload (5 s at most).
func readFrame(t testing.TB, nc net.Conn) (Header, []byte) {
	t.Helper()
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer nc.SetReadDeadline(time.Time{})
	hb := make([]byte, HeaderSize)
	if _, err := io.ReadFull(nc, hb); err != nil {
		t.Fatalf("read header: %v", err)
	}
	h, err := DecodeHeader(hb)
	if err != nil {
		t.Fatal(err)
	}
	body := make([]byte, h.BodyLen)
	if _, err := io.ReadFull(nc, body); err != nil {
		t.Fatalf("read body: %v", err)
	}
	if _, err := io.CopyN(io.Discard, nc, int64(h.PayloadLen)); err != nil {
		t.Fatalf("read payload: %v", err)
	}
	return h, body
}

// header encodes a request header claiming the given lengths.
func header(op Op, id uint64, bodyLen uint32, payloadLen uint64) []byte {
	return Header{Version: Version, Op: op, ID: id, BodyLen: bodyLen, PayloadLen: payloadLen}.Append(nil)
}

// waitClosed waits up to limit for the server to close nc, discarding
// whatever it sends, and returns how long that took.
func waitClosed(t testing.TB, nc net.Conn, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	nc.SetReadDeadline(start.Add(limit))
	_, err := io.Copy(io.Discard, nc)
	took := time.Since(start)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection still open after %v", limit)
	}
	return took
}

// TestStalledFrameClosedAfterFrameTimeout: once a header arrived, the
// rest of its frame must follow within FrameTimeout, whatever the (much
// longer) idle timeout: a body, a payload a handler reads, a payload the
// server skips.
func TestStalledFrameClosedAfterFrameTimeout(t *testing.T) {
	const frameTimeout = 200 * time.Millisecond
	_, addr := startServer(t, ServerConfig{FrameTimeout: frameTimeout, IdleTimeout: time.Minute}, "tcp")
	ping, _ := proto.Marshal(&wirepb.Ping{})
	for _, tc := range []struct {
		name string
		send []byte
	}{
		// A header claiming a 1 MiB body, then 1 KiB of it.
		{"body", append(header(opEcho, 2, 1<<20, 0), make([]byte, 1<<10)...)},
		// A whole body, then 1 KiB of the 1 MiB payload echo reads.
		{"payload read", append(append(header(opEcho, 2, uint32(len(ping)), 1<<20), ping...), make([]byte, 1<<10)...)},
		// The same for an op nobody handles: the server skips the payload.
		{"payload skipped", append(append(header(Op(777), 2, uint32(len(ping)), 1<<20), ping...), make([]byte, 1<<10)...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nc := rawDial(t, addr, &wirepb.Hello{Role: "client"})
			if _, err := nc.Write(tc.send); err != nil {
				t.Fatal(err)
			}
			took := waitClosed(t, nc, 5*time.Second)
			if took < frameTimeout/2 {
				t.Errorf("closed after %v, before the frame timeout of %v", took, frameTimeout)
			}
		})
	}
}

// TestOversizedHelloClosesAtOnce: before authentication nothing bigger
// than MaxHelloLen is read or allocated. A HELLO claiming more closes at
// once (not after the handshake timeout), and 30 of them claiming 64 MiB
// allocate next to nothing; a HELLO of exactly MaxHelloLen is served.
func TestOversizedHelloClosesAtOnce(t *testing.T) {
	_, addr := startServer(t, ServerConfig{HandshakeTimeout: 10 * time.Second}, "tcp")

	// The largest HELLO there may be is answered.
	big := &wirepb.Hello{Version: Version}
	for big.Name = strings.Repeat("n", MaxHelloLen); proto.Size(big) > MaxHelloLen; {
		big.Name = big.Name[:len(big.Name)-1]
	}
	nc := rawDial(t, addr, nil)
	nc.Write(frame(OpHello, 0, 1, big, nil))
	if h, _ := readFrame(t, nc); h.Flags != FlagReply {
		t.Fatalf("HELLO of %d bytes: got flags %v, want a plain reply", proto.Size(big), h.Flags)
	}

	for _, claim := range []uint32{MaxHelloLen + 1, MaxBodyLen} {
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		const conns = 30
		var ncs []net.Conn
		for range conns {
			nc := rawDial(t, addr, nil)
			if _, err := nc.Write(header(OpHello, 1, claim, 0)); err != nil {
				t.Fatal(err)
			}
			ncs = append(ncs, nc)
		}
		for i, nc := range ncs {
			if took := waitClosed(t, nc, 2*time.Second); took > time.Second {
				t.Errorf("claim %d, connection %d: closed after %v, want at once", claim, i, took)
			}
		}
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		if got, limit := after.TotalAlloc-before.TotalAlloc, uint64(4<<20); got > limit {
			t.Errorf("%d HELLOs claiming %d bytes: allocated %d bytes, want at most %d", conns, claim, got, limit)
		}
	}
}

// TestClaimedBodiesCostWhatArrives: connections that claim 64 MiB bodies
// and send 1 KiB hold memory for what they sent, not what they claimed.
// Bound: 256 KiB per stalled connection (its 64 KiB read buffer, a 64 KiB
// first body chunk, its goroutines and state) plus 8 MiB of slack; before
// bodies grew as they arrived, 20 connections held 1.25 GiB. A
// well-behaved client is answered meanwhile.
func TestClaimedBodiesCostWhatArrives(t *testing.T) {
	_, addr := startServer(t, ServerConfig{FrameTimeout: 20 * time.Second}, "tcp")
	good := dial(t, addr, "")
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)

	const conns = 20
	var ncs []net.Conn
	for range conns {
		nc := rawDial(t, addr, &wirepb.Hello{Role: "client"})
		if _, err := nc.Write(append(header(opEcho, 2, MaxBodyLen, 0), make([]byte, 1<<10)...)); err != nil {
			t.Fatal(err)
		}
		ncs = append(ncs, nc)
	}
	// Each connection is read by a goroutine of its own: give them a
	// moment to take in what was sent.
	time.Sleep(300 * time.Millisecond)
	for i := range 10 {
		if got, err := roundTrip(t.Context(), good, []byte("still served")); err != nil || !bytes.Equal(got, []byte("still served")) {
			t.Fatalf("round trip %d among stalled connections: %q, %v", i, got, err)
		}
	}
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	grew := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	limit := int64(conns*256<<10 + 8<<20)
	t.Logf("%d connections claiming %d-byte bodies: heap grew %d bytes (limit %d)", conns, MaxBodyLen, grew, limit)
	if grew > limit {
		t.Errorf("heap grew %d bytes, want at most %d", grew, limit)
	}
	for _, nc := range ncs {
		nc.Close()
	}
}
