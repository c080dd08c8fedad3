package shm

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/engine/enginetest"
	"github.com/tqgo/tq/storage"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// unitConfig is a unit big enough for the conformance suite, in small
// segments so that the arena grows while the suite runs.
func unitConfig() storage.Config {
	cfg := storage.DefaultConfig()
	cfg.Capacity = 2 * enginetest.MinCapacity
	cfg.SegmentSize = 16 << 20
	return cfg
}

type testUnit struct {
	u    *storage.Unit
	srv  *storage.Server
	addr string // the wire socket, "unix:///…"
}

// startUnit serves a fresh unit on a unix socket and its fd socket; the
// server closes before the unit when the test ends.
func startUnit(t testing.TB, ucfg storage.Config, scfg storage.ServerConfig) *testUnit {
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
	l, fl := unitListeners(t, t.TempDir())
	served := make(chan struct{}, 2)
	go func() { srv.Serve(l); served <- struct{}{} }()
	srv.RegisterShm(fl)
	go func() { srv.ServeShm(fl); served <- struct{}{} }()
	t.Cleanup(func() {
		srv.Close()
		<-served
		<-served
	})
	return &testUnit{u: u, srv: srv, addr: wire.FormatAddr("unix", l.Addr().String())}
}

// unitListeners makes a unit's unix socket in dir and its fd socket
// beside it.
func unitListeners(t testing.TB, dir string) (net.Listener, *net.UnixListener) {
	t.Helper()
	l, err := net.Listen("unix", filepath.Join(dir, "unit.sock"))
	if err != nil {
		t.Fatal(err)
	}
	fl, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, "unit.sock.shm"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	return l, fl
}

// settle waits for the unit to have no open reservation and no lease.
func settle(t *testing.T, u *storage.Unit) storage.Stats {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
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

func TestConformance(t *testing.T) {
	// Pings every 100 ms go between the suite's requests, on the ring and
	// on the socket. The suite's unit dies by closing its sockets, which
	// the client sees at once: the keepalive has no dead peer to find,
	// only a live one that a loaded machine answers late, so a pong may
	// take as long as it does outside tests (the wire default, 10 s). A
	// 1 s one failed the connection of a live unit under load ("peer
	// stopped answering (no pong in 1s)" in the Deadline test).
	fast := wire.ConnConfig{KeepAlive: 100 * time.Millisecond}
	for _, control := range []Control{ControlRing, ControlSocket} {
		t.Run("control="+control.String(), func(t *testing.T) {
			enginetest.Run(t, func(t *testing.T) (engine.DataConn, func()) {
				tu := startUnit(t, unitConfig(), storage.ServerConfig{})
				c := dialUnit(t, tu, Config{Conn: fast, Control: control})
				if got := c.Control(); got != control {
					t.Fatalf("conn's control requests go over the %v, want the %v", got, control)
				}
				t.Cleanup(func() {
					c.Close()
					settle(t, tu.u)
				})
				return c, func() { tu.srv.Close() }
			})
		})
	}
}

func TestViewIsZeroCopyAndReadOnly(t *testing.T) {
	tu := startUnit(t, unitConfig(), storage.ServerConfig{})
	c := dialUnit(t, tu, Config{})
	ctx := t.Context()
	want := bytes.Repeat([]byte("view"), 4096)
	addrs, err := c.Write(ctx, [][][]byte{{want}})
	if err != nil {
		t.Fatal(err)
	}
	l1, err := c.View(ctx, addrs)
	if err != nil {
		t.Fatal(err)
	}
	l2, err := c.View(ctx, addrs)
	if err != nil {
		t.Fatal(err)
	}
	if got := tu.u.Stats().Leases; got != 2 {
		t.Errorf("unit holds %d leases, want 2", got)
	}
	v1, v2 := l1.Bytes(0), l2.Bytes(0)
	if !bytes.Equal(v1, want) {
		t.Fatalf("view holds %q…, want %q…", v1[:8], want[:8])
	}
	if &v1[0] != &v2[0] {
		t.Errorf("two views of the same cells at %p and %p, want one address (no copy)", &v1[0], &v2[0])
	}
	if !writeFaults(v1) {
		t.Errorf("writing through a view did not fault")
	}
	if !bytes.Equal(v2, want) {
		t.Errorf("the store changed after a write through a view")
	}
	l1.Release()
	l2.Release()
	l2.Release() // idempotent
	settle(t, tu.u)
}

// writeFaults reports whether writing b[0] raises a fault.
func writeFaults(b []byte) (faulted bool) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() { faulted = recover() != nil }()
	b[0] ^= 0xff
	return false
}

func TestReserveCommitIsVisibleToRead(t *testing.T) {
	tu := startUnit(t, unitConfig(), storage.ServerConfig{})
	c := dialUnit(t, tu, Config{})
	ctx := t.Context()
	r, err := c.Reserve(ctx, []int64{5000, 0, 3 << 20})
	if err != nil {
		t.Fatal(err)
	}
	for i := range r.Len() {
		b := r.Buf(i)
		for j := range b {
			b[j] = byte(i + j)
		}
	}
	if err := r.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.Commit(ctx); !errors.Is(err, engine.ErrInvalid) {
		t.Errorf("second Commit: got %v, want an error wrapping %v", err, engine.ErrInvalid)
	}
	addrs := r.Addrs()
	dst := make([][]byte, len(addrs))
	for i, a := range addrs {
		dst[i] = make([]byte, a.Len)
	}
	if err := c.Read(ctx, addrs, dst); err != nil {
		t.Fatal(err)
	}
	for i, b := range dst {
		for j := range b {
			if b[j] != byte(i+j) {
				t.Fatalf("extent %d byte %d: got %d, want %d", i, j, b[j], byte(i+j))
			}
		}
	}
	// An aborted reservation leaves nothing behind.
	before := tu.u.Stats()
	r2, err := c.Reserve(ctx, []int64{1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if err := r2.Abort(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r2.Commit(ctx); !errors.Is(err, engine.ErrInvalid) {
		t.Errorf("Commit after Abort: got %v, want an error wrapping %v", err, engine.ErrInvalid)
	}
	if got := settle(t, tu.u); got.Used != before.Used {
		t.Errorf("after Abort the unit uses %d bytes, want %d", got.Used, before.Used)
	}
}

func TestCloseGivesHoldsBack(t *testing.T) {
	tu := startUnit(t, unitConfig(), storage.ServerConfig{})
	ctx := t.Context()
	writer := dialUnit(t, tu, Config{})
	addrs, err := writer.Write(ctx, [][][]byte{{bytes.Repeat([]byte{7}, 1<<20)}})
	if err != nil {
		t.Fatal(err)
	}
	baseline := settle(t, tu.u)

	c := dialUnit(t, tu, Config{})
	if _, err := c.View(ctx, addrs); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Reserve(ctx, []int64{2 << 20, 4096}); err != nil {
		t.Fatal(err)
	}
	// The freed cells stay pinned by the lease.
	if err := writer.Free(ctx, addrs); err != nil {
		t.Fatal(err)
	}
	st := tu.u.Stats()
	if st.Leases != 1 || st.OpenReservations != 1 {
		t.Fatalf("unit holds %d leases and %d reservations, want 1 and 1", st.Leases, st.OpenReservations)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	got := settle(t, tu.u)
	want := baseline
	want.Used, want.Extents = 0, 0 // the freed extent went back once the lease was released
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("unit stats after Close (-want +got):\n%s", diff)
	}
}

func TestNoFdLeak(t *testing.T) {
	tu := startUnit(t, unitConfig(), storage.ServerConfig{})
	// The unit is in this process: its own memfds count. The first round
	// makes it map its segments.
	before := 0
	for round := range 4 {
		if round == 1 {
			settle(t, tu.u)
			before = openFds(t)
		}
		tr := New(Config{})
		c, err := tr.DialConn(t.Context(), engine.PeerInfo{Addr: tu.addr})
		if err != nil {
			t.Fatal(err)
		}
		// Two segments: each is fetched once and its fd closed once mapped.
		addrs, err := c.Write(t.Context(), [][][]byte{{make([]byte, 12<<20)}, {make([]byte, 12<<20)}})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Read(t.Context(), addrs, [][]byte{make([]byte, 12<<20), make([]byte, 12<<20)}); err != nil {
			t.Fatal(err)
		}
		if err := c.Free(t.Context(), addrs); err != nil {
			t.Fatal(err)
		}
		if err := tr.Close(); err != nil {
			t.Fatal(err)
		}
	}
	settle(t, tu.u)
	// The unit side closes its connections asynchronously.
	deadline := time.Now().Add(5 * time.Second)
	for {
		after := openFds(t)
		if after <= before {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d fds open after, %d before", after, before)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func openFds(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	return len(ents)
}

func TestFetchedFdIsCloseOnExec(t *testing.T) {
	tu := startUnit(t, unitConfig(), storage.ServerConfig{Token: "s3cret"})
	c := dialUnit(t, tu, Config{Token: "s3cret"})
	if _, err := c.Write(t.Context(), [][][]byte{{{1, 2, 3}}}); err != nil {
		t.Fatal(err)
	}
	segs := tu.u.Segments()
	fd, _, err := c.fetch(t.Context(), segs[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	if err != nil {
		t.Fatal(err)
	}
	if flags&unix.FD_CLOEXEC == 0 {
		t.Errorf("received fd %d has flags %#x, want FD_CLOEXEC", fd, flags)
	}
	// A wrong token gets nothing; neither does a segment that is not live.
	bad := &Conn{cfg: Config{Token: "wrong"}, wc: c.wc, fdSock: c.fdSock, done: make(chan struct{})}
	if _, _, err := bad.fetch(t.Context(), segs[0].ID); !errors.Is(err, wire.ErrUnauthenticated) {
		t.Errorf("fetch with a wrong token: got %v, want an error wrapping %v", err, wire.ErrUnauthenticated)
	}
	if _, _, err := c.fetch(t.Context(), 999); !errors.Is(err, engine.ErrNotFound) {
		t.Errorf("fetch of segment 999: got %v, want an error wrapping %v", err, engine.ErrNotFound)
	}
}

func TestDialNotSupported(t *testing.T) {
	u, err := storage.NewUnit(3, unitConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	srv := storage.NewServer(u, storage.ServerConfig{})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ul, err := net.Listen("unix", filepath.Join(t.TempDir(), "u.sock"))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{}, 2)
	go func() { srv.Serve(l); done <- struct{}{} }()
	go func() { srv.Serve(ul); done <- struct{}{} }()
	defer func() { srv.Close(); <-done; <-done }()
	tr := New(Config{})
	defer tr.Close()
	for name, addr := range map[string]string{
		"tcp":              wire.FormatAddr("tcp", l.Addr().String()),
		"unix, no fd sock": wire.FormatAddr("unix", ul.Addr().String()),
	} {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		_, err := tr.Dial(ctx, engine.PeerInfo{Addr: addr})
		cancel()
		if !errors.Is(err, engine.ErrNotSupported) {
			t.Errorf("%s: Dial got %v, want an error wrapping %v", name, err, engine.ErrNotSupported)
		}
	}
	// The unit itself refuses SHM_SEGMENTS on a TCP connection.
	wc, _, err := wire.Dial(t.Context(), wire.FormatAddr("tcp", l.Addr().String()), &wirepb.Hello{Role: "client"}, wire.ConnConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer wc.Close()
	err = wc.Do(t.Context(), wire.OpShmSegments, &wirepb.Empty{}, nil, &wirepb.ShmSegmentsReply{}, nil)
	if !errors.Is(err, engine.ErrNotSupported) {
		t.Errorf("SHM_SEGMENTS over tcp: got %v, want an error wrapping %v", err, engine.ErrNotSupported)
	}
}

// TestRegisteredFdSocket: a unit whose fd socket is registered but not
// served yet names it, and a client dialing then waits for the socket
// instead of being told the unit offers no shared memory.
func TestRegisteredFdSocket(t *testing.T) {
	u, err := storage.NewUnit(3, unitConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	srv := storage.NewServer(u, storage.ServerConfig{})
	defer srv.Close()
	l, fl := unitListeners(t, t.TempDir())
	go srv.Serve(l)
	if !srv.RegisterShm(fl) {
		t.Fatal("RegisterShm on an open server")
	}
	tr := New(DefaultConfig())
	defer tr.Close()
	dialed := make(chan error, 1)
	go func() {
		c, err := tr.DialConn(t.Context(), engine.PeerInfo{Unit: u.ID(), Addr: wire.FormatAddr("unix", l.Addr().String())})
		if err == nil {
			c.Close()
		}
		dialed <- err
	}()
	time.Sleep(50 * time.Millisecond) // the client asks before the socket is served
	go srv.ServeShm(fl)
	if err := <-dialed; err != nil {
		t.Fatalf("dial while the fd socket was registered but not served: %v", err)
	}
}
