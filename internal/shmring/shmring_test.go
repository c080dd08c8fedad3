package shmring

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// pair returns the two sides of a channel in a plain heap region, with a
// liveness socket pair when links is set.
func pair(t *testing.T, ringSize int, links bool, cfg Config) (a, b *Conn) {
	t.Helper()
	mem := make([]byte, Size(ringSize))
	if err := Format(mem, ringSize); err != nil {
		t.Fatal(err)
	}
	var la, lb net.Conn
	if links {
		la, lb = socketPair(t)
	}
	var err error
	if b, err = NewConn(mem, SideB, lb, nil, cfg); err != nil {
		t.Fatal(err)
	}
	if a, err = NewConn(mem, SideA, la, nil, cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		a.Close()
		b.Close()
	})
	return a, b
}

func socketPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var cs [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "link")
		cs[i], err = net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	return cs[0], cs[1]
}

// TestStream streams bytes through a 4 KiB ring in writes of many sizes —
// empty, one byte, around the ring's size, many times it — read back in
// reads of other sizes, against the plain byte sequence as reference;
// with and without spinning (without, every wait parks until a doorbell).
func TestStream(t *testing.T) {
	for _, spin := range []time.Duration{0, -1} {
		t.Run(fmt.Sprintf("spin=%v", spin), func(t *testing.T) {
			a, b := pair(t, MinRingSize, false, Config{Spin: spin})
			rng := rand.New(rand.NewPCG(1, uint64(spin)))
			sizes := []int{0, 1, 7, 4095, 4096, 4097, 10000, 100 << 10}
			var want []byte
			var writes [][]byte
			for range 300 {
				n := sizes[rng.IntN(len(sizes))]
				if rng.IntN(2) == 0 {
					n = rng.IntN(3000)
				}
				p := make([]byte, n)
				for i := range p {
					p[i] = byte(rng.Uint32())
				}
				writes = append(writes, p)
				want = append(want, p...)
			}
			errc := make(chan error, 1)
			go func() {
				for _, p := range writes {
					if n, err := a.Write(p); err != nil || n != len(p) {
						errc <- fmt.Errorf("write %d bytes: wrote %d, %w", len(p), n, err)
						return
					}
				}
				errc <- a.Close() // the reader then gets io.EOF
			}()
			var got []byte
			buf := make([]byte, 9000)
			for {
				n, err := b.Read(buf[:1+rng.IntN(len(buf))])
				got = append(got, buf[:n]...)
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatalf("read after %d bytes: %v", len(got), err)
				}
			}
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("read %d bytes, want %d; first difference at %d", len(got), len(want), firstDiff(got, want))
			}
		})
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestWireOverRing runs wire's client and server over a channel with a
// ring smaller than most frames: many goroutines echo payloads at once,
// so their frames are written concurrently and must arrive whole.
func TestWireOverRing(t *testing.T) {
	a, b := pair(t, MinRingSize, false, Config{})
	srv := wire.NewServer(wire.ServerConfig{})
	srv.Handle(wire.Op(200), func(_ context.Context, req *wire.Request, rw *wire.ReplyWriter) {
		p := make([]byte, req.PayloadLen)
		if err := req.ReadPayload([][]byte{p}); err != nil {
			rw.Error(err)
			return
		}
		rw.Reply(&wirepb.Empty{}, net.Buffers{p}, nil)
	})
	served := make(chan struct{})
	go func() { srv.ServeConn(b); close(served) }()
	t.Cleanup(func() { srv.Close(); <-served })
	c := wire.NewConn(a, wire.ConnConfig{KeepAlive: -1})
	defer c.Close()
	if _, err := c.Hello(t.Context(), &wirepb.Hello{Role: "client"}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 2))
			for i := range 40 {
				p := make([]byte, rng.IntN(20<<10))
				for j := range p {
					p[j] = byte(g*31 + i + j)
				}
				got := make([]byte, len(p))
				err := c.Do(t.Context(), wire.Op(200), &wirepb.Empty{}, net.Buffers{p}, &wirepb.Empty{}, func(wire.Header, proto.Message) ([][]byte, error) {
					return [][]byte{got}, nil
				})
				if err != nil {
					errs <- fmt.Errorf("goroutine %d call %d: %w", g, i, err)
					return
				}
				if !bytes.Equal(got, p) {
					errs <- fmt.Errorf("goroutine %d call %d: echo of %d bytes differs at %d", g, i, len(p), firstDiff(got, p))
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// within fails the test unless ch delivers within d, and returns what it
// delivered.
func within[T any](t *testing.T, what string, ch <-chan T, d time.Duration) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(d):
		t.Fatalf("%s: still blocked after %v", what, d)
		panic("unreachable")
	}
}

type result struct {
	n   int
	err error
}

func goRead(c *Conn, n int) <-chan result {
	ch := make(chan result, 1)
	go func() {
		n, err := c.Read(make([]byte, n))
		ch <- result{n, err}
	}()
	return ch
}

func goWrite(c *Conn, p []byte) <-chan result {
	ch := make(chan result, 1)
	go func() {
		n, err := c.Write(p)
		ch <- result{n, err}
	}()
	return ch
}

// TestCloseWakesSleepers: Close wakes this side's blocked reads (closed)
// and the peer's blocked reads (EOF) and writes (peer closed), in both
// directions of the channel.
func TestCloseWakesSleepers(t *testing.T) {
	a, b := pair(t, MinRingSize, false, Config{})
	aRead, bRead := goRead(a, 10), goRead(b, 10)
	// b fills a's inbound ring and blocks: a reads nothing (its reader is
	// parked with a tiny buffer … and gets the first bytes), so write
	// more than twice the ring.
	bWrite := goWrite(b, make([]byte, 3*MinRingSize))
	if r := within(t, "a's read of b's bytes", aRead, 5*time.Second); r.err != nil || r.n != 10 {
		t.Fatalf("a.Read: got %d, %v; want 10 bytes", r.n, r.err)
	}
	time.Sleep(50 * time.Millisecond) // let everything go to sleep
	aRead = goRead(a, 0)              // returns at once
	within(t, "a's empty read", aRead, 5*time.Second)
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if r := within(t, "b's read after a closed", bRead, 5*time.Second); r.err != io.EOF {
		t.Errorf("b.Read after a closed: got %d, %v; want io.EOF", r.n, r.err)
	}
	if r := within(t, "b's write after a closed", bWrite, 5*time.Second); !errors.Is(r.err, ErrPeerClosed) || r.n < MinRingSize {
		t.Errorf("b.Write after a closed: got %d, %v; want at least %d bytes and an error wrapping %v", r.n, r.err, MinRingSize, ErrPeerClosed)
	}
	if _, err := a.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("a.Read after Close: got %v, want an error wrapping %v", err, net.ErrClosed)
	}
	if _, err := a.Write([]byte{1}); !errors.Is(err, net.ErrClosed) {
		t.Errorf("a.Write after Close: got %v, want an error wrapping %v", err, net.ErrClosed)
	}
	if err := a.SetDeadline(time.Now()); !errors.Is(err, net.ErrClosed) {
		t.Errorf("a.SetDeadline after Close: got %v, want an error wrapping %v", err, net.ErrClosed)
	}
	// A blocked call of b's own is woken by b's Close.
	bRead = goRead(b, 1)
	time.Sleep(20 * time.Millisecond)
	b.Close()
	if r := within(t, "b's read", bRead, 5*time.Second); r.err == nil {
		t.Errorf("b.Read across b.Close: got %d bytes, want an error", r.n)
	}
}

// TestPeerGone: when the liveness socket breaks with no clean close (the
// peer's process died), blocked reads and writes fail with ErrPeerGone at
// once — after the bytes the peer had published.
func TestPeerGone(t *testing.T) {
	a, b := pair(t, MinRingSize, true, Config{})
	if _, err := b.Write([]byte("last words")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(a, buf); err != nil {
		t.Fatal(err)
	}
	aRead := goRead(a, 100)
	if r := within(t, "first read", aRead, 5*time.Second); r.err != nil || r.n != 6 {
		t.Fatalf("read %d bytes, %v; want 6", r.n, r.err)
	}
	aWrite := goWrite(a, make([]byte, 2*MinRingSize)) // blocks: b never reads
	aRead = goRead(a, 100)
	time.Sleep(50 * time.Millisecond)
	b.link.Close() // b "dies": no closed bit, just the socket gone
	// Nothing but the socket's end can wake them (no keepalive here):
	// the bounded waits tell "at once" from "never".
	if r := within(t, "read after the peer died", aRead, 5*time.Second); !errors.Is(r.err, ErrPeerGone) {
		t.Errorf("a.Read: got %d, %v; want an error wrapping %v", r.n, r.err, ErrPeerGone)
	}
	if r := within(t, "write after the peer died", aWrite, 5*time.Second); !errors.Is(r.err, ErrPeerGone) {
		t.Errorf("a.Write: got %d, %v; want an error wrapping %v", r.n, r.err, ErrPeerGone)
	}
}

// TestDeadlines: an expired deadline fails a blocked read or write with a
// timeout; moving it while the call sleeps takes effect at once.
func TestDeadlines(t *testing.T) {
	a, b := pair(t, MinRingSize, false, Config{})
	a.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	start := time.Now()
	err := within(t, "read past its 50 ms deadline", goRead(a, 1), 5*time.Second).err
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read past its deadline: got %v, want a timeout wrapping %v", err, os.ErrDeadlineExceeded)
	}
	if d := time.Since(start); d < 50*time.Millisecond {
		t.Errorf("read with a 50 ms deadline returned after %v", d)
	}
	a.SetReadDeadline(time.Time{})
	aRead := goRead(a, 1)
	time.Sleep(50 * time.Millisecond)
	a.SetReadDeadline(time.Now())
	if r := within(t, "read whose deadline moved", aRead, 5*time.Second); !errors.Is(r.err, os.ErrDeadlineExceeded) {
		t.Errorf("read whose deadline moved to now: got %v, want %v", r.err, os.ErrDeadlineExceeded)
	}
	a.SetReadDeadline(time.Time{})
	if _, err := b.Write([]byte{42}); err != nil {
		t.Fatal(err)
	}
	if r := within(t, "read with no deadline", goRead(a, 1), 5*time.Second); r.err != nil || r.n != 1 {
		t.Errorf("read after clearing the deadline: got %d, %v", r.n, r.err)
	}

	b.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	n, err := b.Write(make([]byte, 2*MinRingSize))
	if !errors.Is(err, os.ErrDeadlineExceeded) || n != MinRingSize {
		t.Errorf("write past its deadline: got %d, %v; want %d bytes and %v", n, err, MinRingSize, os.ErrDeadlineExceeded)
	}
}

// TestCorruptIndex: an impossible index from the peer fails the call and
// the channel instead of reading outside the ring.
func TestCorruptIndex(t *testing.T) {
	mem := make([]byte, Size(MinRingSize))
	if err := Format(mem, MinRingSize); err != nil {
		t.Fatal(err)
	}
	b, err := NewConn(mem, SideB, nil, nil, Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	u64At(mem, offRing0+offTail).Store(1 << 40) // the A side lies
	if _, err := b.Read(make([]byte, 10)); !errors.Is(err, ErrCorrupt) {
		t.Errorf("read of a lying ring: got %v, want an error wrapping %v", err, ErrCorrupt)
	}
	if _, err := b.Write([]byte{1}); !errors.Is(err, ErrCorrupt) {
		t.Errorf("write after corruption: got %v, want an error wrapping %v", err, ErrCorrupt)
	}
}

// TestDeafPeerFailsTheChannel: a peer that keeps its sleep words set and
// never reads its end of the liveness socket makes every read (or write)
// of this side ring it; once the socket's buffer is full, the channel
// fails with an error wrapping ErrCorrupt instead of blocking. Reads and
// writes used to block in the doorbell's write for good, past every
// deadline (which only governs waiting for the ring).
func TestDeafPeerFailsTheChannel(t *testing.T) {
	for _, tc := range []struct {
		name string
		// peer plays the hostile side A on ring 0 (A→B) once.
		peer func(r0 ring)
		op   func(b *Conn) error
	}{
		{"read", func(r0 ring) { // keeps ring 0 full and waits for space
			tail := r0.tail.Load()
			for head := r0.head.Load(); tail-head < uint64(len(r0.buf)); tail++ {
				r0.buf[tail&r0.mask] = 'x'
			}
			r0.tail.Store(tail)
			r0.space.sleep.Store(1)
		}, func(b *Conn) error {
			_, err := b.Read(make([]byte, 1))
			return err
		}},
		{"write", func(r1 ring) { // empties ring 1 and waits for data
			r1.head.Store(r1.tail.Load())
			r1.data.sleep.Store(1)
		}, func(b *Conn) error {
			_, err := b.Write([]byte{1})
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const size = MinRingSize
			mem := make([]byte, Size(size))
			require.NoError(t, Format(mem, size))
			la, lb := socketPair(t) // la: the peer's end, never read
			defer la.Close()
			b, err := NewConn(mem, SideB, lb, nil, Config{Spin: -1})
			require.NoError(t, err)
			defer b.Close()
			r := ringAt(mem, 0, size) // what b reads
			if tc.name == "write" {
				r = ringAt(mem, 1, size) // what b writes
			}
			// The peer sets its sleep word before each call, so that each
			// call rings it once, until the liveness socket is full and
			// the channel fails; before, one blocked in the doorbell's
			// write for good. The peer used to set it from a goroutine of
			// its own, spinning: a call rang only when the scheduler had
			// run that goroutine since the last, and under load (race
			// build, -cpu 1, a loaded machine) the socket took more than
			// the minute below to fill ("writes of a deaf peer: still
			// blocked after 1m0s"). A call that waits for the peer all
			// the same returns by its deadline (the peer rings no bell of
			// its own).
			done := make(chan error, 1)
			go func() {
				for i := 0; ; i++ {
					tc.peer(r)
					b.SetDeadline(time.Now().Add(100 * time.Millisecond))
					if err := tc.op(b); err != nil && !os.IsTimeout(err) || i > 10_000_000 {
						done <- err
						return
					}
				}
			}()
			err = within(t, tc.name+"s of a deaf peer", done, time.Minute)
			require.ErrorIs(t, err, ErrCorrupt)
			t.Log(err)
		})
	}
}

func TestFormatAndCheck(t *testing.T) {
	for _, n := range []int{0, MinRingSize - 1, MinRingSize + 1, 2 * MaxRingSize} {
		if err := Format(make([]byte, Size(max(n, 0))), n); !errors.Is(err, ErrCorrupt) {
			t.Errorf("Format with rings of %d: got %v, want an error wrapping %v", n, err, ErrCorrupt)
		}
	}
	mem := make([]byte, Size(MinRingSize))
	if _, err := NewConn(mem, SideA, nil, nil, Config{}); !errors.Is(err, ErrCorrupt) {
		t.Errorf("NewConn on an unformatted region: got %v, want an error wrapping %v", err, ErrCorrupt)
	}
	Format(mem, MinRingSize)
	if _, err := NewConn(mem[:len(mem)-8], SideA, nil, nil, Config{}); !errors.Is(err, ErrCorrupt) {
		t.Errorf("NewConn on a short region: got %v, want an error wrapping %v", err, ErrCorrupt)
	}
	// A region another build laid out is refused as such, so the caller
	// can use another channel.
	binary.NativeEndian.PutUint32(mem[4:], version-1)
	if _, err := NewConn(mem, SideA, nil, nil, Config{}); !errors.Is(err, ErrVersion) || errors.Is(err, ErrCorrupt) {
		t.Errorf("NewConn on a version %d region: got %v, want an error wrapping %v only", version-1, err, ErrVersion)
	}
}

// TestMemfd sets a channel up the way the two processes do — a sealed,
// close-on-exec memfd mapped twice — and checks that closing both sides
// leaves no fd and no mapping behind.
func TestMemfd(t *testing.T) {
	fdsBefore, mapsBefore := openFds(t), ringMappings(t)
	fd, mem, err := Create(0)
	if err != nil {
		t.Fatal(err)
	}
	if flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil || flags&unix.FD_CLOEXEC == 0 {
		t.Errorf("memfd flags %#x, %v; want FD_CLOEXEC", flags, err)
	}
	if err := unix.Ftruncate(fd, 4096); err == nil {
		t.Errorf("shrinking the sealed memfd succeeded")
	}
	la, lb := socketPair(t)
	b, err := NewConn(mem, SideB, lb, func() error { return Unmap(mem) }, Config{})
	if err != nil {
		t.Fatal(err)
	}
	amem, err := Map(fd)
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
	a, err := NewConn(amem, SideA, la, func() error { return Unmap(amem) }, Config{})
	if err != nil {
		t.Fatal(err)
	}
	if got := ringMappings(t); got != mapsBefore+2 {
		t.Errorf("%d %s mappings with both sides open, want %d", got, MemfdName, mapsBefore+2)
	}
	msg := strings.Repeat("ping", 50000) // larger than the ring
	go a.Write([]byte(msg))
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(b, got); err != nil || string(got) != msg {
		t.Fatalf("read %d bytes, %v", len(got), err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if got := openFds(t); got != fdsBefore {
		t.Errorf("%d fds open after, %d before", got, fdsBefore)
	}
	if got := ringMappings(t); got != mapsBefore {
		t.Errorf("%d %s mappings after, %d before", got, MemfdName, mapsBefore)
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

// ringMappings counts this process's mappings of channel memfds.
func ringMappings(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Skipf("no /proc/self/maps: %v", err)
	}
	return strings.Count(string(b), "/memfd:"+MemfdName+" ")
}

// hookLink is a liveness socket whose doorbell writes run onWrite instead
// of reaching a peer; reads block until Close.
type hookLink struct {
	net.Conn
	onWrite func()
}

func (l hookLink) Write(p []byte) (int, error) {
	l.onWrite()
	return len(p), nil
}

// TestWriteAllThenPeerCloses: a Write that has put every byte in the
// ring succeeds even when the peer closes before the Write returns (here
// at the doorbell that follows the last chunk): the bytes are there for
// the peer to read, so reporting them as failed would make the caller
// retry or give up on bytes already delivered.
func TestWriteAllThenPeerCloses(t *testing.T) {
	mem := make([]byte, Size(MinRingSize))
	require.NoError(t, Format(mem, MinRingSize))
	b, err := NewConn(mem, SideB, nil, nil, Config{Spin: -1})
	require.NoError(t, err)
	t.Cleanup(func() { b.Close() })
	pa, pb := net.Pipe()
	t.Cleanup(func() { pb.Close() })
	a, err := NewConn(mem, SideA, hookLink{Conn: pa, onWrite: func() { b.Close() }}, nil, Config{Spin: -1})
	require.NoError(t, err)
	t.Cleanup(func() { a.Close() })

	a.out.data.sleep.Store(1) // b "sleeps" on its inbound ring: a rings
	msg := []byte("all of it")
	n, err := a.Write(msg)
	require.NoError(t, err, "Write whose bytes all went into the ring")
	require.Equal(t, len(msg), n)
	require.NotZero(t, a.closedW.Load()&a.peerBit, "the hook closed the peer")

	// The next Write finds the peer closed.
	_, err = a.Write([]byte{1})
	require.ErrorIs(t, err, ErrPeerClosed)
}

// TestRemoteAddrNamesThePeersPid: a ring set up over a unix socket, as a
// storage unit and its client do, names the peer's pid in RemoteAddr
// (both ends are this process here), beside the socket's path; LocalAddr
// stays the socket's own name. Before, a unit's RemoteAddr was its own
// socket's path, the same for every client, so its logs about a client
// named the unit.
func TestRemoteAddrNamesThePeersPid(t *testing.T) {
	path := filepath.Join(t.TempDir(), "unit.sock")
	l, err := net.Listen("unix", path)
	require.NoError(t, err)
	defer l.Close()
	client, err := net.Dial("unix", path)
	require.NoError(t, err)
	unit, err := l.Accept()
	require.NoError(t, err)
	want := fmt.Sprintf("%s pid %d", path, os.Getpid())

	mem := make([]byte, Size(MinRingSize))
	require.NoError(t, Format(mem, MinRingSize))
	b, err := NewConn(mem, SideB, unit, nil, Config{})
	require.NoError(t, err)
	defer b.Close()
	a, err := NewConn(mem, SideA, client, nil, Config{})
	require.NoError(t, err)
	defer a.Close()

	require.Equal(t, Network, b.RemoteAddr().Network())
	require.Equal(t, want, b.RemoteAddr().String(), "the unit's side names the client")
	require.Equal(t, path, b.LocalAddr().String())
	require.Equal(t, want, a.RemoteAddr().String(), "the client's side names the unit")
}
