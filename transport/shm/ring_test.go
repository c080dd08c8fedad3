package shm

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/internal/shmring"
	"github.com/tqgo/tq/storage"
	"github.com/tqgo/tq/wire"
)

// TestControlChoice: by default a Conn sends its control requests over a
// ring when the unit offers one and over the socket when it does not;
// ControlRing insists; ControlSocket never asks.
func TestControlChoice(t *testing.T) {
	offers := startUnit(t, unitConfig(), storage.ServerConfig{})
	refuses := startUnit(t, unitConfig(), storage.ServerConfig{NoRing: true})
	for _, tc := range []struct {
		unit    *testUnit
		control Control
		want    Control
	}{
		{offers, ControlAuto, ControlRing},
		{offers, ControlSocket, ControlSocket},
		{offers, ControlRing, ControlRing},
		{refuses, ControlAuto, ControlSocket},
	} {
		c := dialUnit(t, tc.unit, Config{Control: tc.control})
		if got := c.Control(); got != tc.want {
			t.Errorf("Control %v, unit offers a ring: %v; got %v, want %v", tc.control, tc.unit == offers, got, tc.want)
		}
		if _, err := c.Stats(t.Context()); err != nil {
			t.Errorf("Control %v: %v", tc.control, err)
		}
		c.Close()
	}
	tr := New(Config{Control: ControlRing})
	defer tr.Close()
	if _, err := tr.Dial(t.Context(), engine.PeerInfo{Addr: refuses.addr}); !errors.Is(err, engine.ErrNotSupported) {
		t.Errorf("ControlRing to a unit that offers none: got %v, want an error wrapping %v", err, engine.ErrNotSupported)
	}
}

// TestRingNoLeak: dialling and closing ring Conns leaves no fd and no
// mapping of a ring memfd behind, on either side (both in this process).
func TestRingNoLeak(t *testing.T) {
	tu := startUnit(t, unitConfig(), storage.ServerConfig{})
	warm := dialUnit(t, tu, Config{Control: ControlSocket})
	if _, err := warm.Write(t.Context(), [][][]byte{{make([]byte, 1<<20)}}); err != nil {
		t.Fatal(err)
	}
	warm.Close()
	settle(t, tu.u)
	fds, maps := openFds(t), ringMappings(t)
	for range 3 {
		control := ControlRing
		if os.Getenv(ringCtlEnv) == "socket" {
			control = ControlSocket
		}
		tr := New(Config{Control: control})
		c, err := tr.DialConn(t.Context(), engine.PeerInfo{Addr: tu.addr})
		if err != nil {
			t.Fatal(err)
		}
		if got := ringMappings(t); got != maps+2 {
			t.Errorf("%d ring mappings with one ring open, want %d", got, maps+2)
		}
		if _, err := c.Stats(t.Context()); err != nil {
			t.Fatal(err)
		}
		if err := tr.Close(); err != nil {
			t.Fatal(err)
		}
		// The unit unmaps its side when it sees the ring's socket close,
		// a moment after Close returns: wait for it before the next ring
		// is counted.
		waitFor(t, "the unit's mapping of the closed ring gone", func() error {
			if got := ringMappings(t); got != maps {
				return fmt.Errorf("%d ring mappings, %d before", got, maps)
			}
			return nil
		})
	}
	waitFor(t, "fds and ring mappings back to where they were", func() error {
		if got := openFds(t); got > fds {
			return fmt.Errorf("%d fds open, %d before", got, fds)
		}
		if got := ringMappings(t); got != maps {
			return fmt.Errorf("%d ring mappings, %d before", got, maps)
		}
		return nil
	})
}

// ringMappings counts this process's mappings of control ring memfds.
func ringMappings(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Skipf("no /proc/self/maps: %v", err)
	}
	return strings.Count(string(b), "/memfd:"+shmring.MemfdName+" ")
}

func waitFor(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The two-process tests re-execute this test binary as TestRingChild,
// which serves a unit or runs a client as the environment says.
const (
	ringChildEnv = "TQ_RING_CHILD"      // "unit" or "client"
	ringDirEnv   = "TQ_RING_CHILD_DIR"  // unit: where to put its sockets
	ringAddrEnv  = "TQ_RING_CHILD_ADDR" // client: the unit's address
	ringCapEnv   = "TQ_RING_CHILD_CAP"  // unit: capacity in bytes
	ringSpinEnv  = "TQ_RING_SPIN"       // both: a ring's spin before it sleeps
	ringCtlEnv   = "TQ_RING_CHILD_CTL"  // client: "socket" for ControlSocket (else ControlRing)
)

// child is a started TestRingChild; ready returns its first stdout line.
type child struct {
	cmd   *exec.Cmd
	lines *bufio.Scanner
	out   chan struct{}
}

func startChild(t testing.TB, env ...string) *child {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^TestRingChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ch := &child{cmd: cmd, lines: bufio.NewScanner(stdout), out: make(chan struct{})}
	go func() { cmd.Wait(); close(ch.out) }()
	t.Cleanup(ch.kill)
	return ch
}

// ready waits for the child to print "ready".
func (ch *child) ready(t testing.TB) {
	t.Helper()
	got := make(chan bool, 1)
	go func() {
		for ch.lines.Scan() {
			if ch.lines.Text() == "ready" {
				got <- true
				return
			}
		}
		got <- false
	}()
	select {
	case ok := <-got:
		if !ok {
			t.Fatal("child exited before it was ready")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("child not ready after 20 s")
	}
}

func (ch *child) kill() {
	ch.cmd.Process.Kill()
	<-ch.out
}

// startUnitProcess serves a unit in a child process and returns its
// address.
func startUnitProcess(t testing.TB, capacity int64) (*child, string) {
	t.Helper()
	dir := t.TempDir()
	ch := startChild(t, ringChildEnv+"=unit", ringDirEnv+"="+dir, fmt.Sprintf("%s=%d", ringCapEnv, capacity))
	ch.ready(t)
	return ch, wire.FormatAddr("unix", filepath.Join(dir, "unit.sock"))
}

// TestRingChild is the other process of the two-process tests and
// benchmarks. It runs only when one of them starts it, and serves (or
// holds) until it is killed.
func TestRingChild(t *testing.T) {
	role := os.Getenv(ringChildEnv)
	if role == "" {
		t.Skip("the child process of the two-process ring tests")
	}
	ppid := os.Getppid()
	go func() {
		for range time.Tick(time.Second) {
			if os.Getppid() != ppid {
				os.Exit(3)
			}
		}
	}()
	switch role {
	case "unit":
		var capacity int64
		fmt.Sscan(os.Getenv(ringCapEnv), &capacity)
		cfg := storage.DefaultConfig()
		cfg.Capacity, cfg.SegmentSize = capacity, capacity
		u, err := storage.NewUnit(7, cfg)
		if err != nil {
			t.Fatal(err)
		}
		spin, _ := time.ParseDuration(os.Getenv(ringSpinEnv))
		srv := storage.NewServer(u, storage.ServerConfig{ReserveWait: time.Minute, RingSpin: spin})
		l, fl := unitListeners(t, os.Getenv(ringDirEnv))
		srv.RegisterShm(fl)
		go srv.ServeShm(fl)
		fmt.Println("ready")
		t.Fatal(srv.Serve(l))

	case "client":
		ctx := context.Background()
		control := ControlRing
		if os.Getenv(ringCtlEnv) == "socket" {
			control = ControlSocket
		}
		tr := New(Config{Control: control})
		c, err := tr.DialConn(ctx, engine.PeerInfo{Addr: os.Getenv(ringAddrEnv)})
		if err != nil {
			t.Fatal(err)
		}
		addrs, err := c.Write(ctx, [][][]byte{{make([]byte, 1<<20)}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.View(ctx, addrs); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Reserve(ctx, []int64{2 << 20}); err != nil {
			t.Fatal(err)
		}
		fmt.Println("ready")
		// Wait for space the unit does not have: a RESERVE in flight.
		c.Reserve(ctx, []int64{1 << 40})
		select {}
	}
	t.Fatalf("unknown role %q", role)
}

// TestRingClientKilled: a client process holding a lease and a
// reservation over a ring, with a RESERVE in flight, is SIGKILLed; the
// unit reads EOF on the ring's socket and gives everything back at once,
// and keeps no fd or mapping of the ring.
func TestRingClientKilled(t *testing.T) {
	tu := startUnit(t, unitConfig(), storage.ServerConfig{ReserveWait: time.Minute})
	base := tu.u.Stats()
	fds, maps := openFds(t), ringMappings(t)
	ch := startChild(t, ringChildEnv+"=client", ringAddrEnv+"="+tu.addr)
	ch.ready(t)
	st := tu.u.Stats()
	if st.Leases != 1 || st.OpenReservations != 1 {
		t.Fatalf("unit holds %d leases and %d reservations for the child, want 1 and 1", st.Leases, st.OpenReservations)
	}
	if got := ringMappings(t); got != maps+1 {
		t.Errorf("%d ring mappings in the unit while the child lives, want %d", got, maps+1)
	}
	time.Sleep(50 * time.Millisecond) // let the RESERVE arrive and wait
	start := time.Now()
	ch.kill()
	got := settle(t, tu.u)
	took := time.Since(start) // settle fails past 5 s; the quarantine lasts 30
	if got.Used != base.Used+1<<20 {
		t.Errorf("unit uses %d bytes after the client died, want %d (its one committed extent)", got.Used, base.Used+1<<20)
	}
	waitFor(t, "unit's fds and ring mappings back", func() error {
		if got := openFds(t); got > fds+1 { // +1: the segment the unit mapped meanwhile
			return fmt.Errorf("%d fds open, %d before", got, fds)
		}
		if got := ringMappings(t); got != maps {
			return fmt.Errorf("%d ring mappings, %d before", got, maps)
		}
		return nil
	})
	t.Logf("holds given back %v after SIGKILL", took)
}

// TestRingUnitKilled: the unit process is SIGKILLed while a client's
// RESERVE waits in it for space; the call fails at once with an error
// wrapping wire.ErrUnavailable that says the peer is gone, long before
// any keepalive would notice, and closing the Conn leaves no fd or
// mapping behind.
func TestRingUnitKilled(t *testing.T) {
	fds, maps := openFds(t), ringMappings(t)
	ch, addr := startUnitProcess(t, 16<<20)
	tr := New(Config{Control: ControlRing, Conn: wire.ConnConfig{KeepAlive: time.Minute, PingTimeout: time.Minute}})
	c, err := tr.DialConn(t.Context(), engine.PeerInfo{Addr: addr})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Reserve(t.Context(), []int64{16 << 20}); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := c.Reserve(context.Background(), []int64{1 << 20}) // waits: the unit is full
		errc <- err
	}()
	time.Sleep(100 * time.Millisecond)
	select {
	case err := <-errc:
		t.Fatalf("RESERVE on a full unit returned before the kill: %v", err)
	default:
	}
	start := time.Now()
	ch.kill()
	select {
	case err := <-errc:
		took := time.Since(start)
		if !errors.Is(err, wire.ErrUnavailable) || !errors.Is(err, shmring.ErrPeerGone) {
			t.Errorf("RESERVE after the unit died: got %v, want an error wrapping %v and %v", err, wire.ErrUnavailable, shmring.ErrPeerGone)
		}
		t.Logf("blocked RESERVE failed %v after SIGKILL: %v", took, err)
	case <-time.After(10 * time.Second):
		t.Fatal("RESERVE still blocked 10 s after the unit died")
	}
	if _, err := c.Stats(t.Context()); !errors.Is(err, wire.ErrUnavailable) {
		t.Errorf("Stats after the unit died: got %v, want an error wrapping %v", err, wire.ErrUnavailable)
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if got := openFds(t); got > fds {
		t.Errorf("%d fds open after Close, %d before", got, fds)
	}
	if got := ringMappings(t); got != maps {
		t.Errorf("%d ring mappings after Close, %d before", got, maps)
	}
}

// TestRingBound: past its MaxRings a unit offers no ring and auto mode
// stays on the socket; a ring closed makes room again.
func TestRingBound(t *testing.T) {
	tu := startUnit(t, unitConfig(), storage.ServerConfig{MaxRings: 1})
	first := dialUnit(t, tu, DefaultConfig())
	second := dialUnit(t, tu, DefaultConfig())
	if first.Control() != ControlRing || second.Control() != ControlSocket {
		t.Fatalf("controls %v and %v, want ring then socket", first.Control(), second.Control())
	}
	if _, err := second.Stats(t.Context()); err != nil {
		t.Fatal(err)
	}
	first.Close()
	waitFor(t, "the closed ring's slot back", func() error {
		c := dialUnit(t, tu, DefaultConfig())
		defer c.Close()
		if c.Control() != ControlRing {
			return fmt.Errorf("control %v", c.Control())
		}
		return nil
	})
}

// TestRingOfAnotherVersion: a unit of another build hands out a ring laid
// out by another shmring version; auto mode stays on the unit's socket,
// and requiring a ring fails with an error that says why.
func TestRingOfAnotherVersion(t *testing.T) {
	u, err := storage.NewUnit(3, unitConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	srv := storage.NewServer(u, storage.ServerConfig{})
	defer srv.Close()
	l, fl := unitListeners(t, t.TempDir())
	go srv.Serve(l)
	srv.RegisterShm(fl) // named by SHM_SEGMENTS; served below, by the "old" unit
	go func() {
		for {
			c, err := fl.AcceptUnix()
			if err != nil {
				return
			}
			req, err := wire.ReadFdRequest(c)
			if err != nil || !req.Ring {
				c.Close()
				continue
			}
			fd, mem, err := shmring.Create(0)
			if err != nil {
				c.Close()
				continue
			}
			binary.NativeEndian.PutUint32(mem[4:], 1) // version 1's header
			c.WriteMsgUnix(wire.FdReply{Size: uint64(len(mem))}.Append(nil), unix.UnixRights(fd), nil)
			unix.Close(fd)
			shmring.Unmap(mem)
			c.Close()
		}
	}()
	addr := engine.PeerInfo{Unit: u.ID(), Addr: wire.FormatAddr("unix", l.Addr().String())}
	c := dialUnit(t, &testUnit{u: u, srv: srv, addr: addr.Addr}, DefaultConfig())
	if c.Control() != ControlSocket {
		t.Fatalf("auto mode with a ring of another version: control %v, want socket", c.Control())
	}
	if _, err := c.Stats(t.Context()); err != nil {
		t.Fatal(err)
	}
	tr := New(Config{Control: ControlRing})
	defer tr.Close()
	if _, err := tr.Dial(t.Context(), addr); !errors.Is(err, shmring.ErrVersion) {
		t.Fatalf("ControlRing with a ring of another version: %v, want an error wrapping %v", err, shmring.ErrVersion)
	}
}

// TestDeadUnitUnmapped: once the unit's process is gone, a Conn unmaps
// its segments as soon as nothing uses them (at once with no lease; when
// the last lease is released otherwise). The views of a lease held across
// the unit's death stay readable until then. A client that kept the
// mappings until Close kept every dead unit's memory it had read from
// alive (a memfd's pages go only with its last mapping): in the fault
// matrix, consumers grew by a unit's capacity with each unit restarted.
func TestDeadUnitUnmapped(t *testing.T) {
	segs := func(c *Conn) int {
		c.mu.RLock()
		defer c.mu.RUnlock()
		return len(c.segs)
	}
	for _, holding := range []bool{false, true} {
		t.Run(fmt.Sprintf("lease=%v", holding), func(t *testing.T) {
			ch, addr := startUnitProcess(t, 16<<20)
			tr := New(Config{})
			defer tr.Close()
			c, err := tr.DialConn(t.Context(), engine.PeerInfo{Addr: addr})
			if err != nil {
				t.Fatal(err)
			}
			want := bytes.Repeat([]byte("tq"), 32<<10)
			addrs, err := c.Write(t.Context(), [][][]byte{{want}})
			if err != nil {
				t.Fatal(err)
			}
			l, err := c.View(t.Context(), addrs)
			if err != nil {
				t.Fatal(err)
			}
			if !holding {
				l.Release()
			}
			if segs(c) == 0 {
				t.Fatal("no segment mapped after a write and a view")
			}
			ch.kill()
			if holding {
				time.Sleep(200 * time.Millisecond)
				if segs(c) == 0 {
					t.Fatal("segments unmapped under a lease")
				}
				if !bytes.Equal(l.Bytes(0), want) {
					t.Fatal("a view held across the unit's death changed")
				}
				l.Release()
			}
			waitFor(t, "the dead unit's segments unmapped", func() error {
				if n := segs(c); n != 0 {
					return fmt.Errorf("%d segments mapped", n)
				}
				return nil
			})
		})
	}
}
