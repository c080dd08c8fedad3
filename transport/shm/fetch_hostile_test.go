package shm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/storage"
	"github.com/tqgo/tq/wire"
)

// readStalledInFetch points c's fd socket at one that accepts, reads
// nothing and answers nothing, and starts a Read of addr, which has to
// fetch its segment: it returns the Read's outcome, to come, and the fd
// socket's side of the fetch, once the Read asked for its segment.
func readStalledInFetch(t *testing.T, c *Conn, addr engine.RemoteAddr) (<-chan error, net.Conn) {
	t.Helper()
	hole := silentFdSocket(t)
	accepted := make(chan net.Conn, 1)
	go func() {
		if nc, err := hole.Accept(); err == nil {
			accepted <- nc
		}
	}()
	c.fdSock = hole.Addr().String()
	read := make(chan error, 1)
	go func() {
		read <- c.Read(context.Background(), []engine.RemoteAddr{addr}, [][]byte{make([]byte, addr.Len)})
	}()
	select {
	case nc := <-accepted:
		return read, nc
	case <-time.After(5 * time.Second):
		t.Fatal("the Read never asked the fd socket for its segment")
		return nil, nil
	}
}

// A Read that has to fetch a segment it has not mapped yet talks to the
// unit's fd socket. If that socket takes the request and never answers (a
// wedged or stopped unit process: the listen backlog accepts the
// connect), Close — which fails calls in flight and waits for them — ends
// the fetch too; it used to wait for it for ever, since the fetch watched
// only the caller's context.
func TestCloseUnblocksSegmentFetch(t *testing.T) {
	tu, addr := unitWithExtent(t)

	// Pings go while the fetch hangs: the unit's socket is alive. A pong
	// may take the wire default, as outside tests; with 300 ms a loaded
	// machine could fail the connection first, and the fetch would end
	// with it (ErrUnavailable), not by Close.
	tr := New(Config{Control: ControlSocket, Conn: wire.ConnConfig{KeepAlive: 100 * time.Millisecond}})
	defer tr.Close()
	c, err := tr.DialConn(t.Context(), engine.PeerInfo{Unit: tu.u.ID(), Addr: tu.addr})
	if err != nil {
		t.Fatal(err)
	}
	// The unit's fd socket stops answering: it accepts, reads nothing,
	// answers nothing.
	read, nc := readStalledInFetch(t, c, addr)
	defer nc.Close()

	closed := make(chan error, 1)
	go func() { closed <- c.Close() }()
	select {
	case <-closed:
		if err := <-read; !errors.Is(err, engine.ErrClosed) {
			t.Errorf("Read cut short by Close: got %v, want an error wrapping %v", err, engine.ErrClosed)
		}
	case <-time.After(3 * time.Second):
		gone := c.Gone()
		nc.Close() // let the fetch fail so that the test can end
		<-closed
		t.Fatalf("Close still blocked 3 s after it was called (connection gone: %v): it waits for a segment fetch that only the caller's ctx can end; Read then returned %v", gone, <-read)
	}
}

// The client maps a segment's memfd at the size fstat reports, which
// stays true only if the memfd is sealed against shrinking: a memfd the
// unit did not seal, shrunk after the client mapped it, would turn every
// read of a view into SIGBUS, a fault that kills the client process (here
// a recoverable panic, by SetPanicOnFault). The unit seals every 4 KiB-
// page segment, and the client refuses one that is not (hugetlb memfds,
// which older kernels cannot seal, are the exception the reply flags).
func TestUnsealedSegmentRefused(t *testing.T) {
	tu, addr := unitWithExtent(t)

	tr := New(Config{Control: ControlSocket})
	defer tr.Close()
	c, err := tr.DialConn(t.Context(), engine.PeerInfo{Unit: tu.u.ID(), Addr: tu.addr})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// An fd socket that answers with an unsealed memfd of the right size.
	fake, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(t.TempDir(), "fake.shm"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer fake.Close()
	const size = 1 << 20
	memfd, err := unix.MemfdCreate("unsealed", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(memfd)
	if err := unix.Ftruncate(memfd, size); err != nil {
		t.Fatal(err)
	}
	go func() {
		uc, err := fake.AcceptUnix()
		if err != nil {
			return
		}
		defer uc.Close()
		if _, err := wire.ReadFdRequest(uc); err != nil {
			return
		}
		uc.WriteMsgUnix(wire.FdReply{Status: wire.FdOK, Size: size}.Append(nil), unix.UnixRights(memfd), nil)
	}()
	c.fdSock = fake.Addr().String()

	l, err := c.View(t.Context(), []engine.RemoteAddr{addr})
	if err == nil {
		defer l.Release()
		// What the client risks: the memfd shrinks under its mapping.
		unix.Ftruncate(memfd, 0)
		faulted := func() (faulted bool) {
			defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
			defer func() { faulted = recover() != nil }()
			sink = l.Bytes(0)[0]
			return false
		}()
		t.Fatalf("View mapped an unsealed segment memfd (reading its view after the memfd shrank faulted: %v); want an error wrapping %v", faulted, engine.ErrCorrupt)
	}
	if !errors.Is(err, engine.ErrCorrupt) {
		t.Fatalf("View of a segment whose memfd is unsealed: got %v, want an error wrapping %v", err, engine.ErrCorrupt)
	}
}

var sink byte

// Segments are fetched one at a time, under the first caller's context.
// A second caller that needs a segment not mapped yet waits for that
// fetch only as long as its own context lets it: behind a fetch that
// hangs (a caller with no deadline, an fd socket that never answers), a
// Read with a 200 ms deadline returns at its deadline.
func TestSegmentFetchHonorsDeadlineOfWaiters(t *testing.T) {
	tu, addr := unitWithExtent(t)

	tr := New(Config{Control: ControlSocket})
	defer tr.Close()
	c, err := tr.DialConn(t.Context(), engine.PeerInfo{Unit: tu.u.ID(), Addr: tu.addr})
	if err != nil {
		t.Fatal(err)
	}
	hole := silentFdSocket(t)
	accepted := make(chan net.Conn, 4)
	go func() {
		for {
			nc, err := hole.Accept()
			if err != nil {
				return
			}
			accepted <- nc
		}
	}()
	c.fdSock = hole.Addr().String()

	// A caller with no deadline starts a fetch that never ends.
	ctxA, cancelA := context.WithCancel(context.Background())
	readA := make(chan error, 1)
	go func() { readA <- c.Read(ctxA, []engine.RemoteAddr{addr}, [][]byte{make([]byte, addr.Len)}) }()
	var nc net.Conn
	select {
	case nc = <-accepted:
	case <-time.After(5 * time.Second):
		t.Fatal("the first Read never asked the fd socket")
	}
	defer nc.Close()

	// A caller with a 200 ms deadline.
	ctxB, cancelB := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancelB()
	readB := make(chan error, 1)
	start := time.Now()
	go func() { readB <- c.Read(ctxB, []engine.RemoteAddr{addr}, [][]byte{make([]byte, addr.Len)}) }()
	select {
	case err := <-readB:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Read with a 200 ms deadline: got %v, want an error wrapping %v", err, context.DeadlineExceeded)
		}
		t.Logf("Read with a 200 ms deadline returned after %v", time.Since(start))
	case <-time.After(3 * time.Second):
		cancelA() // end the first fetch so that the test can end
		err := <-readB
		t.Errorf("Read with a 200 ms deadline still blocked after 3 s behind another caller's segment fetch; it returned %v once that fetch ended", err)
	}
	cancelA()
	<-readA
	c.Close()
}

// unitWithExtent starts a unit holding one committed 4 KiB extent, stored
// by the unit itself (a client has not mapped its segment), and returns
// the unit and the extent.
func unitWithExtent(t *testing.T) (*testUnit, engine.RemoteAddr) {
	t.Helper()
	tu := startUnit(t, unitConfig(), storage.ServerConfig{})
	r, err := tu.u.Reserve(t.Context(), []int64{4096})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Commit(); err != nil {
		t.Fatal(err)
	}
	return tu, r.Addr(0)
}

// socketConn dials a Conn with socket control to unitWithExtent's unit,
// closed with the test, and returns the unit, the Conn and the extent.
func socketConn(t *testing.T) (*testUnit, *Conn, engine.RemoteAddr) {
	t.Helper()
	tu, addr := unitWithExtent(t)
	tr := New(Config{Control: ControlSocket})
	t.Cleanup(func() { tr.Close() })
	c, err := tr.DialConn(t.Context(), engine.PeerInfo{Unit: tu.u.ID(), Addr: tu.addr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return tu, c, addr
}

// silentFdSocket listens where a unit's fd socket could be and answers
// nothing: its backlog accepts connections, and nobody reads them.
func silentFdSocket(t *testing.T) *net.UnixListener {
	t.Helper()
	hole, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(t.TempDir(), "hole.shm"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hole.Close() })
	return hole
}

// A unit's fd socket hands over a memfd and its size, both the unit's to
// choose: a hostile one can seal a sparse memfd of any size, and the
// client's MAP_POPULATE mappings would fault its pages in until the host
// ran out of memory. The client maps a segment only up to the host's
// memory (segmentLimit, lowered here to 1 MiB), and refuses a larger one
// as corrupt, naming the unit and the segment; before, it mapped any size
// fstat agreed with.
func TestOversizedSegmentRefused(t *testing.T) {
	tu, c, addr := socketConn(t)

	const limit, size = 1 << 20, 2 << 20
	old := segmentLimit
	segmentLimit = func() uint64 { return limit }
	t.Cleanup(func() { segmentLimit = old })

	memfd, err := unix.MemfdCreate("oversized", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(memfd)
	if err := unix.Ftruncate(memfd, size); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.FcntlInt(uintptr(memfd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW); err != nil {
		t.Fatal(err)
	}
	c.fdSock = fakeFdSocket(t, wire.FdReply{Status: wire.FdOK, Size: size}, memfd)

	l, err := c.View(t.Context(), []engine.RemoteAddr{addr})
	if err == nil {
		l.Release()
		t.Fatalf("View mapped a segment of %d bytes, over the limit of %d; want an error wrapping %v", size, limit, engine.ErrCorrupt)
	}
	if !errors.Is(err, engine.ErrCorrupt) {
		t.Fatalf("View of an oversized segment: got %v, want an error wrapping %v", err, engine.ErrCorrupt)
	}
	for _, want := range []string{fmt.Sprintf("unit %d", tu.u.ID()), fmt.Sprintf("segment %d", addr.Segment), "2097152 bytes", "1048576"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("View of an oversized segment: error %q does not name %q", err, want)
		}
	}
}
