package storage

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math"
	"net"
	"path/filepath"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// serve serves u on a unix socket until the test ends (the server closes
// before the unit, whose cleanup was registered first).
func serve(t testing.TB, u *Unit, cfg ServerConfig) string {
	t.Helper()
	srv := NewServer(u, cfg)
	path := filepath.Join(t.TempDir(), "unit.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { defer close(served); srv.Serve(l) }()
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("server Close: %v", err)
		}
		<-served
	})
	return "unix://" + path
}

func dialUnit(t *testing.T, addr, token string) *wire.Conn {
	t.Helper()
	c, _, err := wire.Dial(t.Context(), addr, &wirepb.Hello{Role: "client", Token: token}, wire.ConnConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func remoteWrite(ctx context.Context, c *wire.Conn, payloads ...[]byte) ([]engine.RemoteAddr, error) {
	req := &wirepb.WriteRequest{}
	for _, p := range payloads {
		req.Sizes = append(req.Sizes, uint64(len(p)))
	}
	var reply wirepb.WriteReply
	if err := c.Do(ctx, wire.OpWrite, req, payloads, &reply, nil); err != nil {
		return nil, err
	}
	return wire.RangesFromPB(reply.Extents)
}

func remoteRead(ctx context.Context, c *wire.Conn, ranges ...engine.RemoteAddr) ([][]byte, error) {
	dst := make([][]byte, len(ranges))
	for i, r := range ranges {
		dst[i] = make([]byte, r.Len)
	}
	err := c.Do(ctx, wire.OpRead, &wirepb.ReadRequest{Ranges: wire.RangesToPB(ranges)}, nil, &wirepb.Empty{},
		func(wire.Header, proto.Message) ([][]byte, error) { return dst, nil })
	return dst, err
}

func remoteFree(ctx context.Context, c *wire.Conn, cells ...engine.RemoteAddr) error {
	return c.Do(ctx, wire.OpFree, &wirepb.FreeRequest{Cells: wire.RangesToPB(cells)}, nil, &wirepb.Empty{}, nil)
}

// waitStats polls until ok accepts the unit's stats, failing after 5 s.
func waitStats(t *testing.T, u *Unit, what string, ok func(Stats) bool) Stats {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st := u.Stats()
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: stats %+v", what, st)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestServerHello(t *testing.T) {
	u := newTestUnit(t, testConfig())
	addr := serve(t, u, ServerConfig{Name: "u1"})
	c, hello, err := wire.Dial(t.Context(), addr, &wirepb.Hello{Role: "client"}, wire.ConnConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if hello.Role != Role || hello.UnitId != 1 || hello.HostId != HostID() || hello.Name != "u1" || HostID() == "" {
		t.Errorf("hello reply %v, want role %q, unit 1, host %q, name u1", hello, Role, HostID())
	}
	if hello.Incarnation == 0 || hello.Incarnation != u.Incarnation() {
		t.Errorf("hello reply incarnation %#x, want the unit's %#x", hello.Incarnation, u.Incarnation())
	}
}

// TestServerCheckHello: the handshake reply follows the unit's identity,
// and a client that expects another unit or incarnation is refused.
func TestServerCheckHello(t *testing.T) {
	u := newTestUnit(t, testConfig())
	srv := NewServer(u, ServerConfig{Name: "u1"})
	defer srv.Close()
	u.setIdentity(8, "cluster-a")
	want := &wirepb.Hello{Role: Role, HostId: HostID(), Name: "u1", UnitId: 8, Incarnation: u.Incarnation(), ClusterId: "cluster-a"}
	for _, peer := range []*wirepb.Hello{{}, {UnitId: 8}, {UnitId: 8, Incarnation: u.Incarnation()}, {Incarnation: u.Incarnation()}} {
		got, err := srv.CheckHello(peer)
		if err != nil {
			t.Errorf("CheckHello(%v): %v", peer, err)
			continue
		}
		if !proto.Equal(got, want) {
			t.Errorf("CheckHello(%v) = %v, want %v", peer, got, want)
		}
	}
	for _, peer := range []*wirepb.Hello{{UnitId: 1}, {UnitId: 8, Incarnation: u.Incarnation() + 1}, {Incarnation: u.Incarnation() ^ 1}} {
		if _, err := srv.CheckHello(peer); !errors.Is(err, engine.ErrLost) {
			t.Errorf("CheckHello(%v): got %v, want an error wrapping %v", peer, err, engine.ErrLost)
		}
	}
}

func TestServerToken(t *testing.T) {
	u := newTestUnit(t, testConfig())
	addr := serve(t, u, ServerConfig{Token: "t0k"})
	for _, token := range []string{"", "wrong"} {
		_, _, err := wire.Dial(t.Context(), addr, &wirepb.Hello{Token: token}, wire.ConnConfig{})
		if !errors.Is(err, wire.ErrUnauthenticated) {
			t.Errorf("token %q: got %v, want an error wrapping %v", token, err, wire.ErrUnauthenticated)
		}
	}
	c := dialUnit(t, addr, "t0k")
	if _, err := remoteWrite(t.Context(), c, []byte("ok")); err != nil {
		t.Fatal(err)
	}
}

func TestServerRoundTrip(t *testing.T) {
	u := newTestUnit(t, testConfig())
	c := dialUnit(t, serve(t, u, ServerConfig{}), "")
	ctx := t.Context()
	payloads := [][]byte{[]byte("hello"), {}, bytes.Repeat([]byte("x"), 100<<10), []byte("!")}
	addrs, err := remoteWrite(ctx, c, payloads...)
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) != len(payloads) {
		t.Fatalf("%d addresses for %d extents", len(addrs), len(payloads))
	}
	got, err := remoteRead(ctx, c, addrs[3], addrs[0], addrs[2], addrs[1])
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range [][]byte{payloads[3], payloads[0], payloads[2], payloads[1]} {
		if !bytes.Equal(got[i], want) {
			t.Errorf("range %d: got %d bytes, want %q…", i, len(got[i]), want[:min(len(want), 8)])
		}
	}
	// The lease ends just after the reply is written.
	waitStats(t, u, "the read's lease released", func(st Stats) bool { return st.Leases == 0 })
	var st wirepb.UnitStats
	if err := c.Do(ctx, wire.OpUnitStats, &wirepb.Empty{}, nil, &st, nil); err != nil {
		t.Fatal(err)
	}
	if want := StatsToPB(1, u.Stats()); !proto.Equal(&st, want) {
		t.Errorf("UNIT_STATS %v, want %v", &st, want)
	}
	if err := remoteFree(ctx, c, addrs...); err != nil {
		t.Fatal(err)
	}
	if _, err := remoteRead(ctx, c, addrs[0]); !errors.Is(err, engine.ErrNotFound) {
		t.Errorf("read after free: got %v, want an error wrapping %v", err, engine.ErrNotFound)
	}
	if err := remoteFree(ctx, c, addrs[0]); !errors.Is(err, engine.ErrNotFound) {
		t.Errorf("double free: got %v, want an error wrapping %v", err, engine.ErrNotFound)
	}
	if st := u.Stats(); st.Used != 0 || st.Leases != 0 || st.OpenReservations != 0 {
		t.Errorf("after freeing everything: %+v", st)
	}
}

// rawFrame encodes a request header and body.
func rawFrame(op wire.Op, id uint64, body []byte, payloadLen uint64) []byte {
	h := wire.Header{Version: wire.Version, Op: op, ID: id, BodyLen: uint32(len(body)), PayloadLen: payloadLen}
	return append(h.Append(nil), body...)
}

func marshal(m proto.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		panic(err)
	}
	return b
}

// rawDial opens a plain socket to the server and performs the handshake.
func rawDial(t testing.TB, addr string) net.Conn {
	t.Helper()
	network, address, err := wire.ParseAddr(addr)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := net.Dial(network, address)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	if _, err := nc.Write(rawFrame(wire.OpHello, 1, marshal(&wirepb.Hello{Version: wire.Version}), 0)); err != nil {
		t.Fatal(err)
	}
	if h, _, err := readFrame(nc, 0); err != nil || h.Flags&wire.FlagError != 0 {
		t.Fatalf("handshake: %+v, %v", h, err)
	}
	return nc
}

// readFrame reads one frame's header and body (not its payload), waiting
// at most d (0: 5 s).
func readFrame(nc net.Conn, d time.Duration) (wire.Header, []byte, error) {
	if d == 0 {
		d = 5 * time.Second
	}
	nc.SetReadDeadline(time.Now().Add(d))
	defer nc.SetReadDeadline(time.Time{})
	var hb [wire.HeaderSize]byte
	if _, err := io.ReadFull(nc, hb[:]); err != nil {
		return wire.Header{}, nil, err
	}
	h, err := wire.DecodeHeader(hb[:])
	if err != nil {
		return h, nil, err
	}
	body := make([]byte, h.BodyLen)
	_, err = io.ReadFull(nc, body)
	return h, body, err
}

func replyErr(h wire.Header, body []byte) error {
	if h.Flags&wire.FlagError == 0 {
		return nil
	}
	var e wirepb.Error
	if err := proto.Unmarshal(body, &e); err != nil {
		return err
	}
	return wire.FromReply(&e)
}

func TestServerWriteValidation(t *testing.T) {
	cfg := testConfig()
	u := newTestUnit(t, cfg)
	c := dialUnit(t, serve(t, u, ServerConfig{ReserveWait: 20 * time.Millisecond}), "")
	ctx := t.Context()
	do := func(sizes []uint64, payload []byte) error {
		var p net.Buffers
		if len(payload) > 0 {
			p = net.Buffers{payload}
		}
		return c.Do(ctx, wire.OpWrite, &wirepb.WriteRequest{Sizes: sizes}, p, &wirepb.WriteReply{}, nil)
	}
	for _, tc := range []struct {
		name    string
		sizes   []uint64
		payload int
		want    error
	}{
		{"sizes short of the payload", []uint64{3}, 5, engine.ErrInvalid},
		{"sizes beyond the payload", []uint64{3, 9}, 5, engine.ErrInvalid},
		{"size overflowing int64", []uint64{math.MaxUint64, 1}, 0, engine.ErrInvalid},
		{"sizes overflowing their sum", []uint64{math.MaxInt64, math.MaxInt64, 2}, 0, engine.ErrInvalid},
		{"too many extents", make([]uint64, wire.MaxSegments+1), 0, engine.ErrInvalid},
		{"extent beyond capacity", []uint64{uint64(cfg.Capacity) + 1}, int(cfg.Capacity) + 1, engine.ErrTooLarge},
	} {
		if err := do(tc.sizes, make([]byte, tc.payload)); !errors.Is(err, tc.want) {
			t.Errorf("%s: got %v, want an error wrapping %v", tc.name, err, tc.want)
		}
	}
	// A full unit answers CODE_CAPACITY after ReserveWait.
	fill, err := remoteWrite(ctx, c, make([]byte, 1<<20), make([]byte, 1<<20), make([]byte, 1<<20), make([]byte, 1<<20))
	if err != nil {
		t.Fatal(err)
	}
	_, err = remoteWrite(ctx, c, make([]byte, 1<<20))
	if !errors.Is(err, engine.ErrCapacity) {
		t.Errorf("write to a full unit: got %v, want an error wrapping %v", err, engine.ErrCapacity)
	}
	// And says why: the reserve wait, named with its length.
	assert.ErrorContains(t, err, "no room within the unit's reserve wait of 20ms", "write to a full unit")
	if err := remoteFree(ctx, c, fill...); err != nil {
		t.Fatal(err)
	}
	// With no_wait a full unit answers CODE_CAPACITY at once, even where
	// it would otherwise wait an hour (this test's deadline is far
	// shorter), and discards the payload; so does RESERVE.
	patient := dialUnit(t, serve(t, u, ServerConfig{ReserveWait: time.Hour}), "")
	fill, err = remoteWrite(ctx, patient, make([]byte, 1<<20), make([]byte, 1<<20), make([]byte, 1<<20), make([]byte, 1<<20))
	if err != nil {
		t.Fatal(err)
	}
	nctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	err = patient.Do(nctx, wire.OpWrite, &wirepb.WriteRequest{Sizes: []uint64{1 << 20}, NoWait: true}, net.Buffers{make([]byte, 1<<20)}, &wirepb.WriteReply{}, nil)
	if !errors.Is(err, engine.ErrCapacity) || nctx.Err() != nil {
		t.Errorf("no-wait write to a full unit: got %v, want an error wrapping %v at once", err, engine.ErrCapacity)
	}
	err = patient.Do(nctx, wire.OpReserve, &wirepb.ReserveRequest{Sizes: []uint64{1 << 20}, NoWait: true}, nil, &wirepb.ReserveReply{}, nil)
	if !errors.Is(err, engine.ErrCapacity) || nctx.Err() != nil {
		t.Errorf("no-wait reserve on a full unit: got %v, want an error wrapping %v at once", err, engine.ErrCapacity)
	}
	// A WRITE or RESERVE the unit could not hold even empty is
	// CODE_TOO_LARGE at once, wait or not (wire/spec.md): no free helps.
	half := uint64(cfg.Capacity)/2 + 1
	err = patient.Do(nctx, wire.OpWrite, &wirepb.WriteRequest{Sizes: []uint64{half, half}}, net.Buffers{make([]byte, 2*half)}, &wirepb.WriteReply{}, nil)
	if !errors.Is(err, engine.ErrTooLarge) || nctx.Err() != nil {
		t.Errorf("write past the capacity: got %v, want an error wrapping %v at once", err, engine.ErrTooLarge)
	}
	err = patient.Do(nctx, wire.OpReserve, &wirepb.ReserveRequest{Sizes: []uint64{half, half}}, nil, &wirepb.ReserveReply{}, nil)
	if !errors.Is(err, engine.ErrTooLarge) || nctx.Err() != nil {
		t.Errorf("reserve past the capacity: got %v, want an error wrapping %v at once", err, engine.ErrTooLarge)
	}
	// wait_ms shorter than the reserve wait is how long it waits instead:
	// then CODE_CAPACITY (not CODE_DEADLINE), naming the wait.
	slow := dialUnit(t, serve(t, u, ServerConfig{ReserveWait: 10 * time.Second}), "")
	err = slow.Do(ctx, wire.OpWrite, &wirepb.WriteRequest{Sizes: []uint64{1 << 20}, WaitMs: 50}, net.Buffers{make([]byte, 1<<20)}, &wirepb.WriteReply{}, nil)
	assert.ErrorIs(t, err, engine.ErrCapacity, "write with wait_ms to a full unit")
	assert.ErrorContains(t, err, "no room within the request's wait of 50ms")
	if err := remoteFree(ctx, patient, fill...); err != nil {
		t.Fatal(err)
	}
	// The connection is still in step after all that.
	addrs, err := remoteWrite(ctx, c, []byte("still fine"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := remoteRead(ctx, c, addrs...)
	if err != nil || string(got[0]) != "still fine" {
		t.Fatalf("read back %q, %v", got, err)
	}
	remoteFree(ctx, c, addrs...)
	waitStats(t, u, "after the failed writes", func(st Stats) bool {
		return st.Used == 0 && st.OpenReservations == 0 && st.Extents == 0
	})
}

func TestServerReadValidation(t *testing.T) {
	u := newTestUnit(t, testConfig())
	c := dialUnit(t, serve(t, u, ServerConfig{}), "")
	ctx := t.Context()
	addrs, err := remoteWrite(ctx, c, make([]byte, 1000))
	if err != nil {
		t.Fatal(err)
	}
	many := make([]engine.RemoteAddr, 1<<17)
	for i := range many {
		many[i] = addrs[0]
		many[i].Len = math.MaxUint64 >> 16
	}
	err = c.Do(ctx, wire.OpRead, &wirepb.ReadRequest{Ranges: wire.RangesToPB(many)}, nil, &wirepb.Empty{}, nil)
	if !errors.Is(err, engine.ErrInvalid) {
		t.Errorf("read of more than the payload limit: got %v, want an error wrapping %v", err, engine.ErrInvalid)
	}
	bad := &wirepb.ReadRequest{Ranges: &wirepb.Addrs{Segment: []uint32{1}}}
	if err := c.Do(ctx, wire.OpRead, bad, nil, &wirepb.Empty{}, nil); !errors.Is(err, engine.ErrInvalid) {
		t.Errorf("read with ragged address arrays: got %v, want an error wrapping %v", err, engine.ErrInvalid)
	}
	if st := u.Stats(); st.Leases != 0 {
		t.Errorf("%d leases left", st.Leases)
	}
}

// TestServerDisconnectMidPut: a client that sends half a payload and
// disconnects leaves no extent and no used byte behind.
func TestServerDisconnectMidPut(t *testing.T) {
	u := newTestUnit(t, testConfig())
	addr := serve(t, u, ServerConfig{})
	keep, err := remoteWrite(t.Context(), dialUnit(t, addr, ""), []byte("other data"))
	if err != nil {
		t.Fatal(err)
	}
	before := u.Stats()
	for _, sizes := range [][]uint64{{1 << 20}, {100, 300 << 10, 0, 7}} {
		nc := rawDial(t, addr)
		var total uint64
		for _, n := range sizes {
			total += n
		}
		msg := rawFrame(wire.OpWrite, 2, marshal(&wirepb.WriteRequest{Sizes: sizes}), total)
		msg = append(msg, make([]byte, total/2)...)
		if _, err := nc.Write(msg); err != nil {
			t.Fatal(err)
		}
		waitStats(t, u, "the put's reservation", func(st Stats) bool { return st.OpenReservations == 1 })
		nc.Close()
		waitStats(t, u, "after the client left", func(st Stats) bool {
			return st.OpenReservations == 0 && st.Used == before.Used && st.Extents == before.Extents
		})
	}
	got, err := remoteRead(t.Context(), dialUnit(t, addr, ""), keep...)
	if err != nil || string(got[0]) != "other data" {
		t.Fatalf("other data: %q, %v", got, err)
	}
}

// TestServerSlowPayloadOutlivesReservation: a payload still arriving when
// its reservation times out keeps its extents (nobody else can get that
// memory while the socket may still write into it) and fails once it is
// in; a put made meanwhile is unharmed.
func TestServerSlowPayloadOutlivesReservation(t *testing.T) {
	cfg := testConfig()
	cfg.ReserveTimeout = 50 * time.Millisecond
	u := newTestUnit(t, cfg)
	addr := serve(t, u, ServerConfig{})
	nc := rawDial(t, addr)
	const n = 1 << 20
	msg := rawFrame(wire.OpWrite, 2, marshal(&wirepb.WriteRequest{Sizes: []uint64{n}}), n)
	if _, err := nc.Write(append(msg, bytes.Repeat([]byte{1}, n/2)...)); err != nil {
		t.Fatal(err)
	}
	waitStats(t, u, "the slow put's reservation expiring", func(st Stats) bool {
		return st.OpenReservations == 0 && st.Used >= n
	})
	// Another put now gets other memory.
	c := dialUnit(t, addr, "")
	other := bytes.Repeat([]byte{2}, n)
	addrs, err := remoteWrite(t.Context(), c, other)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nc.Write(bytes.Repeat([]byte{1}, n/2)); err != nil {
		t.Fatal(err)
	}
	h, body, err := readFrame(nc, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := replyErr(h, body); !errors.Is(err, engine.ErrInvalid) {
		t.Errorf("slow put: got %v, want an error wrapping %v", err, engine.ErrInvalid)
	}
	got, err := remoteRead(t.Context(), c, addrs...)
	if err != nil || !bytes.Equal(got[0], other) {
		t.Fatalf("the put made meanwhile was overwritten (err %v)", err)
	}
	remoteFree(t.Context(), c, addrs...)
	waitStats(t, u, "after both puts", func(st Stats) bool { return st.Used == 0 && st.OpenReservations == 0 })
}

// TestServerSlowWriteCutOff: a peer that claims a large WRITE and
// trickles its payload, each 4 MiB within the frame timeout but the whole
// slower than MinWriteRate, is cut off at the frame timeout plus its size
// ÷ the rate: the connection is answered with an error naming the rate
// and the bytes that came, and closed; its reservation is freed, nothing
// is committed, and an honest writer then gets the room. A WRITE at the
// socket's speed is unaffected.
func TestServerSlowWriteCutOff(t *testing.T) {
	cfg := testConfig()
	cfg.Capacity = 16 << 20
	cfg.SegmentSize = 4 << 20
	u := newTestUnit(t, cfg)
	addr := serve(t, u, ServerConfig{FrameTimeout: 3 * time.Second, MinWriteRate: 64 << 20})

	// Claim 12 MiB, send 64 KiB every 30 ms (about 2 MiB/s: each 4 MiB
	// within the frame timeout). The deadline is 3 s + 12 MiB ÷ 64 MiB/s.
	nc := rawDial(t, addr)
	const n = 12 << 20
	if _, err := nc.Write(rawFrame(wire.OpWrite, 2, marshal(&wirepb.WriteRequest{Sizes: []uint64{n}}), n)); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	trickled := make(chan struct{})
	go func() {
		defer close(trickled)
		piece := bytes.Repeat([]byte{1}, 64<<10)
		for sent := 0; sent < n; sent += len(piece) {
			select {
			case <-stop:
				return
			case <-time.After(30 * time.Millisecond):
			}
			if _, err := nc.Write(piece); err != nil {
				return // cut off
			}
		}
	}()
	defer func() { close(stop); <-trickled }()
	waitStats(t, u, "the slow WRITE's reservation", func(st Stats) bool { return st.OpenReservations == 1 })

	// Frames until the server closes the connection: the connection error
	// (id 0) and the WRITE's own, both naming the rate.
	var cut error
	for {
		h, body, err := readFrame(nc, 20*time.Second)
		if err != nil {
			require.ErrorIs(t, err, io.EOF, "the slow WRITE's connection was not closed")
			break
		}
		rerr := replyErr(h, body)
		require.Error(t, rerr, "the slow WRITE was answered %+v, not cut off", h)
		require.ErrorIs(t, rerr, context.DeadlineExceeded)
		assert.Contains(t, rerr.Error(), "minimum rate of 67108864 bytes/s")
		assert.Regexp(t, `: \d+ of them came within its deadline`, rerr.Error())
		cut = rerr
	}
	require.Error(t, cut, "no error before the connection closed")
	st := waitStats(t, u, "the cut WRITE's reservation freed", func(st Stats) bool {
		return st.OpenReservations == 0 && st.Reserved == 0
	})
	require.Zero(t, st.Used, "the cut WRITE committed something")

	// An honest writer gets the room, and one at the socket's speed is
	// not cut off.
	c := dialUnit(t, addr, "")
	data := bytes.Repeat(noise()[:1<<20], 8)
	addrs, err := remoteWrite(t.Context(), c, data)
	require.NoError(t, err)
	got, err := remoteRead(t.Context(), c, addrs...)
	require.NoError(t, err)
	require.True(t, bytes.Equal(got[0], data), "the honest WRITE's bytes")
	require.NoError(t, remoteFree(t.Context(), c, addrs...))
	big := bytes.Repeat(noise()[:1<<20], n>>20)
	addrs, err = remoteWrite(t.Context(), c, big)
	require.NoError(t, err, "a WRITE of %d bytes at the socket's speed", n)
	require.NoError(t, remoteFree(t.Context(), c, addrs...))
}

// TestServerReadHoldsLease: a READ's reply is written from the arena under
// a lease. While the reader is slow to take it, freeing the cells does not
// release their memory; the reader gets the original bytes, and the lease
// ends once the reply is written.
func TestServerReadHoldsLease(t *testing.T) {
	cfg := testConfig()
	cfg.Capacity = 64 << 20
	cfg.SegmentSize = 16 << 20
	u := newTestUnit(t, cfg)
	addr := serve(t, u, ServerConfig{})
	c := dialUnit(t, addr, "")
	const n = 16 << 20
	data := bytes.Repeat(noise()[:n/4], 4)
	addrs, err := remoteWrite(t.Context(), c, data)
	if err != nil {
		t.Fatal(err)
	}
	used := u.Stats().Used

	nc := rawDial(t, addr)
	if _, err := nc.Write(rawFrame(wire.OpRead, 2, marshal(&wirepb.ReadRequest{Ranges: wire.RangesToPB(addrs)}), 0)); err != nil {
		t.Fatal(err)
	}
	waitStats(t, u, "the read's lease", func(st Stats) bool { return st.Leases == 1 })
	if err := remoteFree(t.Context(), c, addrs...); err != nil {
		t.Fatal(err)
	}
	if st := u.Stats(); st.Used != used || st.Leases != 1 {
		t.Fatalf("freed while leased: used %d (was %d), %d leases", st.Used, used, st.Leases)
	}
	h, body, err := readFrame(nc, 0)
	if err != nil || replyErr(h, body) != nil || h.PayloadLen != n {
		t.Fatalf("read reply %+v: %v %v", h, err, replyErr(h, body))
	}
	got := make([]byte, n)
	if _, err := io.ReadFull(nc, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Errorf("the leased bytes changed before they were sent")
	}
	waitStats(t, u, "after the reply", func(st Stats) bool { return st.Leases == 0 && st.Used == 0 })
}

// TestServerCloseWithRequestsInFlight: Close returns with a reader stuck
// and a put half sent, and leaves nothing held.
func TestServerCloseWithRequestsInFlight(t *testing.T) {
	cfg := testConfig()
	cfg.Capacity = 64 << 20
	cfg.SegmentSize = 16 << 20
	u := newTestUnit(t, cfg)
	srv := NewServer(u, ServerConfig{})
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "s.sock"))
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	addr := "unix://" + l.Addr().String()
	c := dialUnit(t, addr, "")
	addrs, err := remoteWrite(t.Context(), c, make([]byte, 16<<20))
	if err != nil {
		t.Fatal(err)
	}
	reader := rawDial(t, addr)
	reader.Write(rawFrame(wire.OpRead, 2, marshal(&wirepb.ReadRequest{Ranges: wire.RangesToPB(addrs)}), 0))
	writer := rawDial(t, addr)
	writer.Write(append(rawFrame(wire.OpWrite, 2, marshal(&wirepb.WriteRequest{Sizes: []uint64{1 << 20}}), 1<<20), 1, 2, 3))
	waitStats(t, u, "both requests under way", func(st Stats) bool { return st.Leases == 1 && st.OpenReservations == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown with stuck requests: got %v, want an error wrapping %v", err, context.DeadlineExceeded)
	}
	if err := srv.Close(); err != nil {
		t.Errorf("Close again: %v", err)
	}
	if err := <-served; err != nil {
		t.Errorf("Serve: %v", err)
	}
	if st := u.Stats(); st.Leases != 0 || st.OpenReservations != 0 {
		t.Errorf("after Close: %d leases, %d open reservations", st.Leases, st.OpenReservations)
	}
}

// TestReservationErr: Err says nothing while a reservation can commit,
// and names it and its expiry once its timeout passed, before the reaper
// ran and after; it frees nothing, so the filler's Abort frees the
// extents once.
func TestReservationErr(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := testConfig()
		cfg.ReserveTimeout = time.Second
		u, err := NewUnit(1, cfg)
		require.NoError(t, err)
		defer u.Close()
		r, err := u.ReserveHeld(t.Context(), []int64{1000, 0, 64 << 10})
		require.NoError(t, err)
		require.NoError(t, r.Err())
		used := u.Stats().Used

		time.Sleep(time.Second + time.Nanosecond) // past the deadline, the reaper not yet run
		err = r.Err()
		require.ErrorIs(t, err, context.DeadlineExceeded)
		assert.ErrorContains(t, err, "reservation of 2 extents (66536 bytes, the first at [segment ")
		assert.ErrorContains(t, err, "expired after 1s")
		synctest.Wait()
		require.ErrorIs(t, r.Err(), context.DeadlineExceeded, "after the reaper")
		assert.Equal(t, used, u.Stats().Used, "Err freed something")

		r.Abort()
		r.Abort()
		assert.Zero(t, u.Stats().Used)
		require.ErrorIs(t, r.Err(), engine.ErrInvalid, "after Abort")

		ok, err := u.ReserveHeld(t.Context(), []int64{10})
		require.NoError(t, err)
		ok.Abort()
		err = ok.Err()
		require.ErrorIs(t, err, engine.ErrInvalid)
		assert.ErrorContains(t, err, "reservation of 1 extent (10 bytes")
		assert.ErrorContains(t, err, "aborted")
	})
}

// TestHeldReservation: a held reservation that times out stays allocated
// until its filler aborts it, and can no longer commit.
func TestHeldReservation(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := testConfig()
		cfg.ReserveTimeout = time.Second
		u, err := NewUnit(1, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer u.Close()
		r, err := u.ReserveHeld(t.Context(), []int64{1000, 0, 64 << 10})
		if err != nil {
			t.Fatal(err)
		}
		plain := reserve(t, u, 100)
		used := u.Stats().Used
		time.Sleep(2 * time.Second)
		synctest.Wait()
		st := u.Stats()
		if st.OpenReservations != 0 || st.Reserved != 0 || st.Used != used-blockSize(100) {
			t.Fatalf("after the timeout: %+v; want the held extents (%d bytes) kept, the plain one freed", st, used-blockSize(100))
		}
		wantErr(t, "Commit of an expired held reservation", r.Commit(), engine.ErrInvalid)
		wantErr(t, "Commit of an expired reservation", plain.Commit(), engine.ErrInvalid)
		r.Buf(2)[0] = 1 // still ours to write
		r.Abort()
		r.Abort()
		if st := u.Stats(); st.Used != 0 || st.Extents != 0 {
			t.Fatalf("after Abort: %+v", st)
		}
		// One committed in time is not affected.
		ok, err := u.ReserveHeld(t.Context(), []int64{10})
		if err != nil {
			t.Fatal(err)
		}
		if err := ok.Commit(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		l, err := u.Acquire([]engine.RemoteAddr{ok.Addr(0)})
		if err != nil {
			t.Fatalf("Acquire after the timeout: %v", err)
		}
		l.Release()
	})
}

// TestServerWriteCutWhenReservationExpires: a WRITE whose reservation
// times out while its payload is still coming is cut off at the next
// chunk, with an error that names the reservation and says it expired,
// instead of reading the rest (for as long as MinWriteRate allows) into
// space that can no longer commit. The space goes back once, and a put
// made before is unharmed.
func TestServerWriteCutWhenReservationExpires(t *testing.T) {
	cfg := testConfig()
	cfg.Capacity = 32 << 20
	cfg.SegmentSize = 16 << 20
	cfg.ReserveTimeout = 50 * time.Millisecond
	u := newTestUnit(t, cfg)
	addr := serve(t, u, ServerConfig{FrameTimeout: 5 * time.Second})
	c := dialUnit(t, addr, "")
	kept := bytes.Repeat([]byte{7}, 1<<20)
	keptAddrs, err := remoteWrite(t.Context(), c, kept)
	require.NoError(t, err)
	before := u.Stats()

	// Three chunks claimed; the first and a byte of the second sent.
	nc := rawDial(t, addr)
	const n = 12 << 20
	msg := rawFrame(wire.OpWrite, 2, marshal(&wirepb.WriteRequest{Sizes: []uint64{n}}), n)
	_, err = nc.Write(append(msg, bytes.Repeat([]byte{1}, 4<<20+1)...))
	require.NoError(t, err)
	waitStats(t, u, "the WRITE's reservation expiring", func(st Stats) bool {
		return st.OpenReservations == 0 && st.Used >= before.Used+n
	})
	// The rest of the second chunk: the WRITE is cut before the third.
	_, err = nc.Write(bytes.Repeat([]byte{1}, 4<<20-1))
	require.NoError(t, err)
	var cut error
	for {
		h, body, err := readFrame(nc, 20*time.Second)
		if err != nil {
			require.ErrorIs(t, err, io.EOF, "the cut WRITE's connection was not closed")
			break
		}
		rerr := replyErr(h, body)
		require.Error(t, rerr, "the WRITE was answered %+v, not cut off", h)
		require.ErrorIs(t, rerr, context.DeadlineExceeded)
		assert.Contains(t, rerr.Error(), "reservation of 1 extent")
		assert.Contains(t, rerr.Error(), "expired after 50ms")
		cut = rerr
	}
	require.Error(t, cut, "no error before the connection closed")
	st := waitStats(t, u, "the cut WRITE's space freed", func(st Stats) bool {
		return st.Used == before.Used && st.OpenReservations == 0
	})
	require.Equal(t, before.Extents, st.Extents)

	// The space is reusable, and the put made before is intact.
	again, err := remoteWrite(t.Context(), c, bytes.Repeat([]byte{3}, n))
	require.NoError(t, err)
	assert.Equal(t, before.Used+blockSize(n), u.Stats().Used)
	got, err := remoteRead(t.Context(), c, keptAddrs...)
	require.NoError(t, err)
	require.True(t, bytes.Equal(got[0], kept), "the put made before was overwritten")
	require.NoError(t, remoteFree(t.Context(), c, append(again, keptAddrs...)...))
	waitStats(t, u, "after the puts are freed", func(st Stats) bool { return st.Used == 0 && st.Extents == 0 })
}
