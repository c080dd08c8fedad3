package tcp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/engine/enginetest"
	"github.com/tqgo/tq/storage"
	"github.com/tqgo/tq/wire"
)

// unitConfig is a unit big enough for the conformance suite.
func unitConfig() storage.Config {
	cfg := storage.DefaultConfig()
	cfg.Capacity = 2 * enginetest.MinCapacity
	cfg.SegmentSize = 16 << 20
	return cfg
}

// countingListener counts the connections it accepts.
type countingListener struct {
	net.Listener
	accepted atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepted.Add(1)
	}
	return c, err
}

func listen(t testing.TB, network string) (net.Listener, string) {
	t.Helper()
	var l net.Listener
	var err error
	if network == "unix" {
		l, err = net.Listen("unix", filepath.Join(t.TempDir(), "unit.sock"))
	} else {
		l, err = net.Listen("tcp", "127.0.0.1:0")
	}
	if err != nil {
		t.Fatal(err)
	}
	return l, wire.FormatAddr(network, l.Addr().String())
}

type testUnit struct {
	u    *storage.Unit
	srv  *storage.Server
	l    *countingListener
	addr string
}

// startUnit serves a fresh unit on a listener of the given network; the
// server closes before the unit when the test ends.
func startUnit(t testing.TB, network string, ucfg storage.Config, scfg storage.ServerConfig) *testUnit {
	t.Helper()
	u, err := storage.NewUnit(7, ucfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := u.Close(); err != nil {
			t.Errorf("unit Close: %v", err)
		}
	})
	srv := storage.NewServer(u, scfg)
	l, addr := listen(t, network)
	cl := &countingListener{Listener: l}
	served := make(chan struct{})
	go func() { defer close(served); srv.Serve(cl) }()
	t.Cleanup(func() {
		srv.Close()
		<-served
	})
	return &testUnit{u: u, srv: srv, l: cl, addr: addr}
}

// settle waits for the unit to have no open reservation and no lease.
func settle(t *testing.T, u *storage.Unit) storage.Stats {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := u.Stats()
		if st.OpenReservations == 0 && st.Leases == 0 {
			return st
		}
		if time.Now().After(deadline) {
			t.Errorf("unit still has %d open reservations and %d leases", st.OpenReservations, st.Leases)
			return st
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func dialUnit(t *testing.T, tu *testUnit, cfg Config) *Conn {
	t.Helper()
	tr := New(cfg)
	t.Cleanup(func() { tr.Close() })
	c, err := tr.DialConn(t.Context(), engine.PeerInfo{Unit: tu.u.ID(), Addr: tu.addr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func pair(network string, cfg Config) enginetest.MakePair {
	return func(t *testing.T) (engine.DataConn, func()) {
		tu := startUnit(t, network, unitConfig(), storage.ServerConfig{})
		c := dialUnit(t, tu, cfg)
		t.Cleanup(func() {
			c.Close()
			settle(t, tu.u)
		})
		return c, func() { tu.srv.Close() }
	}
}

func TestConformance(t *testing.T) {
	// Pings every 100 ms, so that they go out while large transfers are
	// being written and read; the ping timeout is wire's (10 s): a 1 s
	// one failed live connections on a loaded machine.
	fast := wire.ConnConfig{KeepAlive: 100 * time.Millisecond}
	for _, tc := range []struct {
		name string
		net  string
		cfg  Config
	}{
		{"net=tcp", "tcp", Config{Conn: fast}},
		{"net=unix", "unix", Config{Conn: fast}},
		{"net=tcp/stripe=256KiB/grace=none", "tcp", Config{Conns: 3, StripeSize: 256 << 10, WriteGrace: -1, Conn: fast}},
	} {
		t.Run(tc.name, func(t *testing.T) { enginetest.Run(t, pair(tc.net, tc.cfg)) })
	}
}

// TestStripesUseSeveralConnections checks that a large transfer opens the
// pool and that a small one stays on one connection.
func TestStripesUseSeveralConnections(t *testing.T) {
	tu := startUnit(t, "tcp", unitConfig(), storage.ServerConfig{})
	c := dialUnit(t, tu, Config{Conns: 4, StripeSize: 1 << 20})
	if got := tu.l.accepted.Load(); got != 1 {
		t.Fatalf("after Dial: %d connections, want 1", got)
	}
	small := make([]byte, 1<<20)
	addrs, err := c.Write(t.Context(), [][][]byte{{small}})
	if err != nil {
		t.Fatal(err)
	}
	if got := tu.l.accepted.Load(); got > 2 {
		t.Fatalf("after a write of one stripe: %d connections, want at most 2", got)
	}
	if err := c.Free(t.Context(), addrs); err != nil {
		t.Fatal(err)
	}
	ext := make([][][]byte, 8)
	for i := range ext {
		ext[i] = [][]byte{make([]byte, 1<<20)}
	}
	if addrs, err = c.Write(t.Context(), ext); err != nil {
		t.Fatal(err)
	}
	if got := tu.l.accepted.Load(); got != 4 {
		t.Fatalf("after a write of 8 stripes: %d connections, want 4", got)
	}
	if err := c.Free(t.Context(), addrs); err != nil {
		t.Fatal(err)
	}
}

func TestSplitExtents(t *testing.T) {
	for _, tc := range []struct {
		sizes []uint64
		k     int
		want  []int
	}{
		{[]uint64{10}, 4, []int{0, 1}},
		{[]uint64{1, 1, 1, 1}, 1, []int{0, 4}},
		{[]uint64{1, 1, 1, 1}, 2, []int{0, 2, 4}},
		{[]uint64{1, 1, 1, 1}, 4, []int{0, 1, 2, 3, 4}},
		{[]uint64{100, 1, 1, 1}, 4, []int{0, 1, 4}},
		{[]uint64{1, 1, 1, 100}, 4, []int{0, 3, 4}},
		{[]uint64{10, 10, 10, 1000, 10}, 2, []int{0, 3, 5}},
		{[]uint64{0, 0, 5, 5, 0}, 2, []int{0, 3, 5}},
		{[]uint64{3, 3, 3, 3, 3, 3}, 3, []int{0, 2, 4, 6}},
	} {
		var total uint64
		for _, n := range tc.sizes {
			total += n
		}
		got := splitExtents(tc.sizes, total, tc.k)
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("splitExtents(%v, %d) (-want +got):\n%s", tc.sizes, tc.k, diff)
		}
	}
}

// TestSplitExtentsProperties checks random splits against the rules:
// contiguous runs, at most k, each run's bytes within an extent either
// side of the even share.
func TestSplitExtentsProperties(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		n := 1 + rng.IntN(20)
		k := 1 + rng.IntN(6)
		sizes := make([]uint64, n)
		var total, biggest uint64
		for i := range sizes {
			sizes[i] = uint64(rng.IntN(1000))
			total += sizes[i]
			biggest = max(biggest, sizes[i])
		}
		cuts := splitExtents(sizes, total, k)
		if cuts[0] != 0 || cuts[len(cuts)-1] != n || len(cuts)-1 > k {
			t.Fatalf("sizes %v k %d: cuts %v", sizes, k, cuts)
		}
		for g := 0; g+1 < len(cuts); g++ {
			if cuts[g] >= cuts[g+1] {
				t.Fatalf("sizes %v k %d: empty or reversed run in %v", sizes, k, cuts)
			}
			var run uint64
			for _, s := range sizes[cuts[g]:cuts[g+1]] {
				run += s
			}
			if share := (total + uint64(k) - 1) / uint64(k); run > share+2*biggest {
				t.Fatalf("sizes %v k %d: run %d of %d bytes, share %d", sizes, k, g, run, share)
			}
		}
	}
}

// TestSplitRanges checks that stripes cover every byte once, in order,
// with each stripe's windows inside the caller's buffers.
func TestSplitRanges(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for range 2000 {
		n := 1 + rng.IntN(10)
		k := 1 + rng.IntN(5)
		ranges := make([]engine.RemoteAddr, n)
		dst := make([][]byte, n)
		var total uint64
		for i := range ranges {
			l := uint64(rng.IntN(50))
			ranges[i] = engine.RemoteAddr{Segment: uint32(i), Gen: 9, Offset: uint64(rng.IntN(1000)), Len: l}
			dst[i] = make([]byte, l)
			for j := range dst[i] {
				dst[i][j] = byte(i)
			}
			total += l
		}
		pieces := splitRanges(ranges, dst, total, k)
		if len(pieces) > k {
			t.Fatalf("%d pieces for k %d", len(pieces), k)
		}
		// Walk the pieces; they must reproduce the ranges back to back.
		i, off := 0, uint64(0)
		for _, p := range pieces {
			if len(p.ranges) == 0 || len(p.ranges) != len(p.dst) {
				t.Fatalf("piece with %d ranges, %d buffers", len(p.ranges), len(p.dst))
			}
			var bytes uint64
			for j, r := range p.ranges {
				for i < n && off == ranges[i].Len {
					i, off = i+1, 0
				}
				want := engine.RemoteAddr{Segment: ranges[i].Segment, Gen: 9, Offset: ranges[i].Offset + off, Len: r.Len}
				if r != want || r.Len == 0 || uint64(len(p.dst[j])) != r.Len || off+r.Len > ranges[i].Len {
					t.Fatalf("piece range %+v, want %+v within range %d", r, want, i)
				}
				if &p.dst[j][0] != &dst[i][off] {
					t.Fatalf("piece buffer is not the window of buffer %d at %d", i, off)
				}
				off += r.Len
				bytes += r.Len
			}
			if share := (total + uint64(k) - 1) / uint64(k); bytes > share {
				t.Fatalf("piece of %d bytes, share %d", bytes, share)
			}
		}
		for i < n && off == ranges[i].Len {
			i, off = i+1, 0
		}
		if i != n {
			t.Fatalf("pieces cover ranges up to %d of %d", i, n)
		}
	}
}

func TestToken(t *testing.T) {
	tu := startUnit(t, "unix", unitConfig(), storage.ServerConfig{Token: "s3cret"})
	tr := New(Config{Token: "wrong"})
	defer tr.Close()
	_, err := tr.Dial(t.Context(), engine.PeerInfo{Addr: tu.addr})
	if !errors.Is(err, wire.ErrUnauthenticated) {
		t.Fatalf("dial with a wrong token: got %v, want an error wrapping %v", err, wire.ErrUnauthenticated)
	}
	var oe *engine.OpError
	if !errors.As(err, &oe) || oe.Transport != "tcp" || oe.Peer != tu.addr || oe.Op != "dial" {
		t.Fatalf("dial error %#v is not an OpError{dial, tcp, %s}", err, tu.addr)
	}
	c := dialUnit(t, tu, Config{Token: "s3cret"})
	if _, err := c.Write(t.Context(), [][][]byte{{[]byte("hi")}}); err != nil {
		t.Fatal(err)
	}
}

func TestDialErrors(t *testing.T) {
	tu := startUnit(t, "tcp", unitConfig(), storage.ServerConfig{})
	tr := New(Config{})
	defer tr.Close()
	ctx := t.Context()
	if _, err := tr.Dial(ctx, engine.PeerInfo{Unit: 99, Addr: tu.addr}); !errors.Is(err, engine.ErrLost) {
		t.Errorf("dial of unit 99 at unit 7's address: got %v, want an error wrapping %v", err, engine.ErrLost)
	}
	if _, err := tr.Dial(ctx, engine.PeerInfo{Addr: "udp://x"}); !errors.Is(err, engine.ErrInvalid) {
		t.Errorf("dial of a udp address: got %v, want an error wrapping %v", err, engine.ErrInvalid)
	}
	l, addr := listen(t, "unix")
	l.Close()
	if _, err := tr.Dial(ctx, engine.PeerInfo{Addr: addr}); !errors.Is(err, wire.ErrUnavailable) {
		t.Errorf("dial of a closed socket: got %v, want an error wrapping %v", err, wire.ErrUnavailable)
	}
	c, err := tr.Dial(ctx, engine.PeerInfo{Unit: 7, Addr: tu.addr})
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Free(ctx, []engine.RemoteAddr{{Segment: 1, Len: 1}}); !errors.Is(err, engine.ErrClosed) {
		t.Errorf("free on a connection of a closed transport: got %v, want an error wrapping %v", err, engine.ErrClosed)
	}
	if _, err := tr.Dial(ctx, engine.PeerInfo{Addr: tu.addr}); !errors.Is(err, engine.ErrClosed) {
		t.Errorf("dial on a closed transport: got %v, want an error wrapping %v", err, engine.ErrClosed)
	}
}

// TestPartialStripeFailureFreesTheRest writes three stripes into a unit
// with room for two: the write fails with ErrCapacity and the two stored
// stripes are freed again.
func TestPartialStripeFailureFreesTheRest(t *testing.T) {
	ucfg := storage.DefaultConfig()
	ucfg.Capacity = 8 << 20
	ucfg.SegmentSize = 4 << 20
	tu := startUnit(t, "unix", ucfg, storage.ServerConfig{ReserveWait: 20 * time.Millisecond})
	c := dialUnit(t, tu, Config{Conns: 3, StripeSize: 1 << 20})
	ext := [][][]byte{{make([]byte, 3<<20)}, {make([]byte, 3<<20)}, {make([]byte, 3<<20)}}
	if _, err := c.Write(t.Context(), ext); !errors.Is(err, engine.ErrCapacity) {
		t.Fatalf("write beyond capacity: got %v, want an error wrapping %v", err, engine.ErrCapacity)
	}
	if st := settle(t, tu.u); st.Used != 0 || st.Extents != 0 {
		t.Fatalf("after the failed write: %d bytes in %d extents still used", st.Used, st.Extents)
	}
}

// proxy forwards connections to a unit until frozen: then it stops
// forwarding but keeps every socket open, like a unit that hangs.
type proxy struct {
	l      net.Listener
	target string
	frozen chan struct{}
	freeze sync.Once
	mu     sync.Mutex
	conns  []net.Conn
	wg     sync.WaitGroup
}

func startProxy(t *testing.T, target string) (*proxy, string) {
	l, addr := listen(t, "tcp")
	p := &proxy{l: l, target: target, frozen: make(chan struct{})}
	p.wg.Go(p.accept)
	t.Cleanup(p.close)
	return p, addr
}

func (p *proxy) accept() {
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		network, address, _ := wire.ParseAddr(p.target)
		u, err := net.Dial(network, address)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, u)
		p.mu.Unlock()
		p.wg.Go(func() { p.pipe(u, c) })
		p.wg.Go(func() { p.pipe(c, u) })
	}
}

func (p *proxy) pipe(dst, src net.Conn) {
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		select {
		case <-p.frozen:
			return // swallow the bytes; the sockets stay open until close
		default:
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if err != io.EOF {
				dst.Close()
			}
			return
		}
	}
}

func (p *proxy) close() {
	p.freeze.Do(func() { close(p.frozen) })
	p.l.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// TestHungUnit checks that a unit that stops answering (its sockets stay
// open) is detected by the keepalive pings: calls fail with
// wire.ErrUnavailable, about the ping timeout after the unit froze, where
// without the keepalive they would wait for ever. The ping timeout, 3 s,
// leaves a live unit on a loaded machine time to answer before the freeze.
func TestHungUnit(t *testing.T) {
	tu := startUnit(t, "tcp", unitConfig(), storage.ServerConfig{})
	p, addr := startProxy(t, tu.addr)
	const pingTimeout = 3 * time.Second
	tr := New(Config{Conn: wire.ConnConfig{KeepAlive: 100 * time.Millisecond, PingTimeout: pingTimeout}})
	defer tr.Close()
	c, err := tr.Dial(t.Context(), engine.PeerInfo{Unit: 7, Addr: addr})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	data := make([]byte, 8<<20)
	addrs, err := c.Write(t.Context(), [][][]byte{{data}})
	if err != nil {
		t.Fatal(err)
	}
	// Freeze the proxy: from now on it swallows what it reads.
	p.freeze.Do(func() { close(p.frozen) })
	for _, op := range []string{"read", "write"} {
		done := make(chan error, 1)
		go func() {
			if op == "read" {
				done <- c.Read(context.Background(), addrs, [][]byte{make([]byte, len(data))})
			} else {
				_, err := c.Write(context.Background(), [][][]byte{{data}})
				done <- err
			}
		}()
		select {
		case err = <-done:
		case <-time.After(20 * pingTimeout):
			t.Fatalf("%s from a hung unit still blocked after %v (ping timeout %v)", op, 20*pingTimeout, pingTimeout)
		}
		if !errors.Is(err, wire.ErrUnavailable) {
			t.Errorf("%s from a hung unit: got %v, want an error wrapping %v", op, err, wire.ErrUnavailable)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg Config
		ok  bool
	}{
		{Config{}, true},
		{DefaultConfig(), true},
		{Config{Conns: -1}, false},
		{Config{Conns: MaxConns + 1}, false},
		{Config{StripeSize: -1}, false},
	} {
		if err := tc.cfg.Validate(); (err == nil) != tc.ok {
			t.Errorf("Validate(%+v) = %v, want ok %v", tc.cfg, err, tc.ok)
		}
	}
	if got := New(Config{}).cfg; got.Conns != DefaultConns || got.StripeSize != DefaultStripeSize {
		t.Errorf("New(Config{}) config %+v, want the defaults", got)
	}
	if n := New(Config{}).Name(); n != "tcp" {
		t.Errorf("Name() = %q", n)
	}
}

func ExampleTransport() {
	// Serve a unit on a loopback port.
	u, _ := storage.NewUnit(1, unitConfig())
	defer u.Close()
	srv := storage.NewServer(u, storage.ServerConfig{})
	defer srv.Close()
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	go srv.Serve(l)

	tr := New(DefaultConfig())
	defer tr.Close()
	ctx := context.Background()
	conn, err := tr.Dial(ctx, engine.PeerInfo{Unit: 1, Addr: "tcp://" + l.Addr().String()})
	if err != nil {
		panic(err)
	}
	addrs, err := conn.Write(ctx, [][][]byte{{[]byte("hello "), []byte("world")}})
	if err != nil {
		panic(err)
	}
	dst := make([]byte, addrs[0].Len)
	if err := conn.Read(ctx, addrs, [][]byte{dst}); err != nil {
		panic(err)
	}
	fmt.Println(string(dst))
	// Output: hello world
}
