package wire

// Hostile and unlucky peers: each test speaks the protocol by hand over a
// raw socket, misbehaves in one way, and checks that the server bounds
// what it costs (time, memory, connections) while well-behaved clients
// keep being served.

import (
	"github.com/stretchr/testify/require"

	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
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

// TestClaimedBodiesDoNotStarveOthers: bodies count against the shared
// bound as their bytes arrive, so peers that claim the largest body and
// send little cannot take the bound from everyone else (with the bound
// counted by claims, two such peers held all of a 128 MiB bound, and
// every other request waited out the frame timeout and was closed).
func TestClaimedBodiesDoNotStarveOthers(t *testing.T) {
	const frameTimeout = 3 * time.Second
	_, addr := startServer(t, ServerConfig{FrameTimeout: frameTimeout}, "tcp", func(s *Server) { s.buffered.init(2 * MaxBodyLen) })
	good := dial(t, addr, "")
	for range 4 {
		nc := rawDial(t, addr, &wirepb.Hello{Role: "client"})
		if _, err := nc.Write(append(header(opEcho, 2, MaxBodyLen, 0), make([]byte, 1<<10)...)); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond) // their read loops take in what was sent
	ctx, cancel := context.WithTimeout(t.Context(), frameTimeout/2)
	defer cancel()
	var reply wirepb.Ping
	if err := good.Do(ctx, OpPing, &wirepb.Ping{Nonce: 12345}, nil, &reply, nil); err != nil || reply.Nonce != 12345 {
		t.Fatalf("a request with a body beside peers claiming %d-byte bodies: %v, %v", MaxBodyLen, &reply, err)
	}
}

// holdServer serves opHold: each request reports its id on started, then
// blocks until release is closed (or its context ends) and replies.
func holdServer(t *testing.T, cfg ServerConfig, setup ...func(*Server)) (s *Server, addr string, started chan uint64, release chan struct{}) {
	t.Helper()
	started, release = make(chan uint64, 16), make(chan struct{})
	s, addr = startServer(t, cfg, "tcp", append(setup, func(s *Server) {
		s.Handle(opHold, func(ctx context.Context, req *Request, rw *ReplyWriter) {
			started <- req.ID
			select {
			case <-release:
			case <-ctx.Done():
			}
			rw.Reply(&wirepb.Empty{}, nil, nil)
		})
	})...)
	return s, addr, started, release
}

// recv waits up to 10 s for a value from ch.
func recv[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("no %s in 10 s", what)
		panic("unreachable")
	}
}

const opHold Op = 203

// sendAsync writes b to nc on a goroutine (the server may not read it for
// a while); the write ends when nc closes at the latest.
func sendAsync(t *testing.T, nc net.Conn, b []byte) {
	t.Helper()
	var wg sync.WaitGroup
	wg.Go(func() { nc.Write(b) })
	t.Cleanup(func() { nc.Close(); wg.Wait() })
}

// logBuffer collects a server's log lines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuffer) logger() *slog.Logger { return slog.New(slog.NewTextHandler(l, nil)) }

// TestBufferedBodiesBounded: request bodies held from their header until
// their handler returns are bounded per connection (the connection waits)
// and per server (a connection that finds no room within FrameTimeout is
// closed, and that is logged once). The bounds are set below their
// minimum (MaxBodyLen) so that the test moves little data.
func TestBufferedBodiesBounded(t *testing.T) {
	const bound, body = 1 << 20, 600 << 10 // two bodies exceed the bound
	req := func(id uint64) []byte { return append(header(opHold, id, body, 0), make([]byte, body)...) }

	t.Run("server", func(t *testing.T) {
		var logs logBuffer
		const frameTimeout = 300 * time.Millisecond
		_, addr, started, release := holdServer(t, ServerConfig{FrameTimeout: frameTimeout, Logger: logs.logger()},
			func(s *Server) { s.buffered.init(bound) })
		a := rawDial(t, addr, &wirepb.Hello{Role: "client"})
		sendAsync(t, a, req(2))
		recv(t, started, "start of a's request") // a's handler holds its body
		var wg sync.WaitGroup
		for i := range 2 {
			b := rawDial(t, addr, &wirepb.Hello{Role: "client"})
			sendAsync(t, b, req(2))
			wg.Go(func() {
				if took := waitClosed(t, b, 10*time.Second); took < frameTimeout/2 {
					t.Errorf("connection %d past the server's bound closed after %v, want about the frame timeout %v", i, took, frameTimeout)
				}
			})
		}
		wg.Wait()
		if got := strings.Count(logs.String(), "no room for a request body"); got != 1 {
			t.Errorf("logged the closures %d times, want once:\n%s", got, logs.String())
		}
		close(release)
		if _, body := readFrame(t, a); len(body) != 0 {
			t.Fatalf("a's reply: %x", body)
		}
		c := rawDial(t, addr, &wirepb.Hello{Role: "client"})
		sendAsync(t, c, req(3))
		if h, _ := readFrame(t, c); h.ID != 3 || h.Flags != FlagReply {
			t.Fatalf("after a's request finished: got %+v, want a reply to request 3", h)
		}
	})

	t.Run("connection", func(t *testing.T) {
		const frameTimeout = 200 * time.Millisecond
		_, addr, started, release := holdServer(t, ServerConfig{FrameTimeout: frameTimeout},
			func(s *Server) { s.cfg.MaxConnBuffered = bound })
		a := rawDial(t, addr, &wirepb.Hello{Role: "client"})
		sendAsync(t, a, append(req(2), req(3)...))
		if id := recv(t, started, "first request"); id != 2 {
			t.Fatalf("request %d started first, want 2", id)
		}
		select {
		case id := <-started:
			t.Fatalf("request %d started while request 2 holds the connection's budget", id)
		case <-time.After(3 * frameTimeout): // waiting for room is no stalled frame
		}
		close(release)
		if id := recv(t, started, "second request"); id != 3 {
			t.Fatalf("request %d started, want 3", id)
		}
		for range 2 {
			if h, _ := readFrame(t, a); h.Flags != FlagReply {
				t.Fatalf("got %+v, want a reply", h)
			}
		}
	})
}

// TestPeerThatStopsReadingIsClosed: a peer that sends requests but never
// reads the replies does not hold the server's writer (and the handlers
// waiting on it) forever: the connection closes once a write makes no
// progress for WriteTimeout.
func TestPeerThatStopsReadingIsClosed(t *testing.T) {
	const writeTimeout = 300 * time.Millisecond
	big := make([]byte, 4<<20)
	gone := make(chan *wirepb.Hello, 1)
	_, addr := startServer(t, ServerConfig{WriteTimeout: writeTimeout, OnDisconnect: func(p *wirepb.Hello, _ bool) { gone <- p }}, "unix", func(s *Server) {
		s.Handle(opBig, func(_ context.Context, _ *Request, rw *ReplyWriter) {
			rw.Reply(&wirepb.Empty{}, net.Buffers{big}, nil)
		})
	})
	nc := rawDial(t, addr, &wirepb.Hello{Role: "client", Name: "deaf"})
	start := time.Now()
	for id := range uint64(8) {
		if _, err := nc.Write(frame(opBig, 0, id+2, &wirepb.Empty{}, nil)); err != nil {
			t.Fatal(err)
		}
	}
	peer := recv(t, gone, "disconnect of the peer that does not read")
	if peer.GetName() != "deaf" {
		t.Fatalf("disconnected %v, want the deaf peer", peer)
	}
	if took := time.Since(start); took < writeTimeout {
		t.Errorf("disconnected after %v, before the write timeout of %v", took, writeTimeout)
	}
}

const opBig Op = 204

// deadlineConn records what is written to it, the write deadlines set,
// and how far ahead the deadline was at each write.
type deadlineConn struct {
	net.Conn
	out       bytes.Buffer
	deadline  time.Time
	deadlines int
	margins   []time.Duration // deadline - now at each write
}

func (c *deadlineConn) Write(p []byte) (int, error) {
	c.margins = append(c.margins, time.Until(c.deadline))
	c.out.Write(p)
	return len(p), nil
}

func (c *deadlineConn) SetWriteDeadline(t time.Time) error {
	c.deadlines++
	c.deadline = t
	return nil
}

// TestWriterChunks: with a timeout, every write of the writer (in chunks
// of at most writeChunk bytes) has at least the timeout and at most a
// quarter more to go, the deadline is not set again while it is that far
// ahead, and the bytes go out in order.
func TestWriterChunks(t *testing.T) {
	nc := &deadlineConn{}
	w := newFrameWriter(nc, func(err error) { t.Errorf("write failed: %v", err) })
	w.timeout = time.Minute // long enough that no write here uses a quarter of it
	var want []byte
	var payload net.Buffers
	for i, n := range []int{10, writeChunk + 5, 3, 2*writeChunk - 20, 0, 7} {
		b := bytes.Repeat([]byte{byte(i + 1)}, n)
		payload = append(payload, b)
		want = append(want, b...)
	}
	f := &outFrame{buf: []byte("header"), payload: payload, written: make(chan error, 1)}
	w.send(f)
	if err := <-f.written; err != nil {
		t.Fatal(err)
	}
	want = append([]byte("header"), want...)
	if !bytes.Equal(nc.out.Bytes(), want) {
		t.Fatalf("wrote %d bytes that differ from the %d sent", nc.out.Len(), len(want))
	}
	for i, m := range nc.margins {
		if m < w.timeout-100*time.Millisecond || m > w.timeout+w.timeout/4 {
			t.Errorf("write %d: deadline %v ahead, want %v to %v", i, m, w.timeout, w.timeout+w.timeout/4)
		}
	}
	if nc.deadlines != 1 {
		t.Errorf("%d deadlines set for writes within a quarter of the timeout, want 1", nc.deadlines)
	}
	// Once the margin is used up, the next write renews it.
	w.deadline = time.Now().Add(w.timeout / 2)
	f = &outFrame{buf: []byte("more"), written: make(chan error, 1)}
	w.send(f)
	if err := <-f.written; err != nil {
		t.Fatal(err)
	}
	if m := nc.margins[len(nc.margins)-1]; nc.deadlines != 2 || m < w.timeout-100*time.Millisecond {
		t.Errorf("after the margin was used: %d deadlines, the last %v ahead; want 2, at least %v", nc.deadlines, m, w.timeout)
	}
}

// TestIdleTimeout: a connection that sends a frame now and then stays
// open past IdleTimeout, though the server renews its idle deadline only
// once a quarter of it is used; one that goes quiet is closed between
// IdleTimeout and 1.25 × IdleTimeout after its last frame, also when its
// last request's payload was read with a deadline of its own (that
// deadline is then taken away, and the idle one must be set again).
func TestIdleTimeout(t *testing.T) {
	const idle = 400 * time.Millisecond
	_, addr := startServer(t, ServerConfig{IdleTimeout: idle}, "tcp")
	echoFrame := func(nc net.Conn, id uint64, payload int) {
		body, _ := proto.Marshal(&wirepb.Ping{Nonce: id})
		if _, err := nc.Write(append(header(opEcho, id, uint32(len(body)), uint64(payload)), body...)); err != nil {
			t.Fatal(err)
		}
		if payload > 0 {
			// After the handler started: its read waits for it.
			time.Sleep(10 * time.Millisecond)
			if _, err := nc.Write(make([]byte, payload)); err != nil {
				t.Fatal(err)
			}
		}
		readFrame(t, nc)
	}
	for _, payload := range []int{0, 64 << 10} {
		nc := rawDial(t, addr, &wirepb.Hello{Role: "client"})
		for i := range 12 { // 1.2 s of a frame every 100 ms
			echoFrame(nc, uint64(i+2), 0)
			time.Sleep(100 * time.Millisecond)
		}
		// Two frames close together: the second comes before the
		// first's idle deadline needs renewing.
		echoFrame(nc, 20, 0)
		echoFrame(nc, 21, payload)
		took := waitClosed(t, nc, 5*time.Second)
		if took < idle-50*time.Millisecond || took > idle+idle/4+time.Second {
			t.Errorf("payload %d: closed %v after the last frame, want %v to %v (and some scheduling)", payload, took, idle, idle+idle/4)
		}
	}
}

// TestControlFramesPassAFullBudget: a connection whose requests hold all
// of its body budget still has its CANCEL and PING read: the CANCEL ends
// the request that holds the budget (its handler waits for its context),
// and the PING is answered meanwhile. Before, the read loop waited for
// room for their few bytes, which only the canceled request could give
// back.
func TestControlFramesPassAFullBudget(t *testing.T) {
	const bound = 1 << 20
	_, addr, started, _ := holdServer(t, ServerConfig{}, func(s *Server) { s.cfg.MaxConnBuffered = bound })
	a := rawDial(t, addr, &wirepb.Hello{Role: "client"})
	sendAsync(t, a, append(header(opHold, 2, bound, 0), make([]byte, bound)...))
	require.Equal(t, uint64(2), recv(t, started, "start of the request that takes the whole budget"))
	sendAsync(t, a, append(frame(OpPing, 0, 3, &wirepb.Ping{Nonce: 7}, nil), cancelFrame(2)...))
	got := map[uint64]bool{}
	for range 2 {
		h, _ := readFrame(t, a)
		require.NotZero(t, h.Flags&FlagReply, "got %+v, want a reply", h)
		got[h.ID] = true
	}
	require.Equal(t, map[uint64]bool{2: true, 3: true}, got, "the PING's reply, and the canceled request's")
}
