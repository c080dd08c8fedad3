//go:build linux && cgo && rdma

package rdma

import (
	"bufio"
	"bytes"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/storage"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

var _ storage.RDMATarget = (*Target)(nil)

// inProcUnit serves a unit with an RDMA target on emulated device emu1 in
// this process (the client side uses emu0: another context, so another
// "host" to the emulator).
func inProcUnit(t *testing.T) (*Target, *storage.Unit, string) {
	t.Helper()
	return inProcUnitOn(t, "emu1")
}

// inProcUnitOn is inProcUnit on the emulated device name.
func inProcUnitOn(t *testing.T, name string) (*Target, *storage.Unit, string) {
	t.Helper()
	var tgt *Target
	u, addr := inProcUnitWith(t, name, func(tg *Target) storage.RDMATarget { tgt = tg; return tg })
	return tgt, u, addr
}

// inProcUnitWith serves unit 7 over TCP with the target of the emulated
// device name that wrap returns (the device's own, or one that wraps it),
// until the test ends.
func inProcUnitWith(t *testing.T, name string, wrap func(*Target) storage.RDMATarget) (*storage.Unit, string) {
	t.Helper()
	dev, err := OpenDevice(name)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, dev.Close()) })
	tgt := NewTarget(dev)
	t.Cleanup(func() { assert.NoError(t, tgt.Close()) })
	u, err := storage.NewUnit(7, unitConfig())
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, u.Close()) })
	srv := storage.NewServer(u, storage.ServerConfig{RDMA: wrap(tgt)})
	t.Cleanup(func() { srv.Close() })
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go srv.Serve(l)
	return u, wire.FormatAddr("tcp", l.Addr().String())
}

// Malformed or impossible RDMA_CONNECT requests get errors that say what
// was wrong, and leave no queue pairs behind.
func TestConnectRefusals(t *testing.T) {
	tgt, _, addr := inProcUnit(t)
	wc, _, err := wire.Dial(t.Context(), addr, &wirepb.Hello{Role: "client"}, wire.ConnConfig{})
	require.NoError(t, err)
	defer wc.Close()
	ep := func() *wirepb.RdmaEndpoint {
		return &wirepb.RdmaEndpoint{Lid: 1, Gid: make([]byte, 16), Qpn: 5, Psn: 1}
	}
	cases := []struct {
		name string
		req  *wirepb.RdmaConnectRequest
		is   error
		says string
	}{
		{"no queue pairs", &wirepb.RdmaConnectRequest{Emulated: true}, engine.ErrInvalid, "0 queue pairs"},
		{"too many", &wirepb.RdmaConnectRequest{Emulated: true, Qps: func() []*wirepb.RdmaEndpoint {
			var eps []*wirepb.RdmaEndpoint
			for range MaxQPs + 1 {
				eps = append(eps, ep())
			}
			return eps
		}()}, engine.ErrInvalid, "17 queue pairs"},
		{"short gid", &wirepb.RdmaConnectRequest{Emulated: true, Qps: []*wirepb.RdmaEndpoint{{Lid: 1, Gid: []byte{1, 2}, Qpn: 5}}}, engine.ErrInvalid, "gid 2 bytes"},
		{"qpn out of range", &wirepb.RdmaConnectRequest{Emulated: true, Qps: []*wirepb.RdmaEndpoint{{Lid: 1, Gid: make([]byte, 16), Qpn: 1 << 24}}}, engine.ErrInvalid, "qpn"},
		{"hardware client", &wirepb.RdmaConnectRequest{Emulated: false, Qps: []*wirepb.RdmaEndpoint{ep()}}, engine.ErrNotSupported, "cannot reach"},
		{"not an emulated gid", &wirepb.RdmaConnectRequest{Emulated: true, Qps: []*wirepb.RdmaEndpoint{ep()}}, syscallEINVAL, "ibv_modify_qp(RTR)"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := wc.Do(t.Context(), wire.OpRdmaConnect, tc.req, nil, &wirepb.RdmaConnectReply{}, nil)
			require.Error(t, err)
			if tc.is != syscallEINVAL {
				assert.ErrorIs(t, err, tc.is)
			}
			assert.Contains(t, err.Error(), tc.says)
			assert.Equal(t, 0, tgt.Connections())
		})
	}
	var segs wirepb.RdmaSegmentsReply
	err = wc.Do(t.Context(), wire.OpRdmaSegments, &wirepb.RdmaSegmentsRequest{Ids: []uint32{99}}, nil, &segs, nil)
	require.ErrorIs(t, err, engine.ErrNotFound)
}

// RDMA_CONNECT's timeout and retry_cnt are the client's own: a queue
// pair's local ACK timeout and retry count govern only the requests it
// sends, and the unit's queue pairs send none (every READ and WRITE is the
// client's). The client's queue pairs have its values; the unit brings its
// own up with fixed ones whatever the client sent, even values no queue
// pair takes.
func TestConnectLeavesAckTimeoutToTheClient(t *testing.T) {
	tgt, _, addr := inProcUnit(t)
	tr := newTransport(t, Config{Device: "emu0", AckTimeout: 10, RetryCnt: 3})
	c, err := tr.DialConn(t.Context(), engine.PeerInfo{Unit: 7, Addr: addr})
	require.NoError(t, err)
	c.mu.RLock()
	set := c.set
	c.mu.RUnlock()
	require.NotNil(t, set)
	for i, q := range set.qps {
		timeout, retry, err := q.Timeout()
		require.NoError(t, err)
		assert.Equal(t, [2]uint8{10, 3}, [2]uint8{timeout, retry}, "client queue pair %d", i)
	}
	unitQPs := func() (out []*QP) {
		tgt.mu.Lock()
		defer tgt.mu.Unlock()
		for s := range tgt.sets {
			out = append(out, s.qps...)
		}
		return out
	}
	for i, q := range unitQPs() {
		timeout, retry, err := q.Timeout()
		require.NoError(t, err)
		assert.Equal(t, [2]uint8{targetAckTimeout, targetRetryCnt}, [2]uint8{timeout, retry}, "unit queue pair %d", i)
	}
	require.NoError(t, c.Close())
	require.Eventually(t, func() bool { return tgt.Connections() == 0 }, 5*time.Second, 10*time.Millisecond)

	dev, err := tr.Device()
	require.NoError(t, err)
	prepared, err := newQPSet(dev, 1, QPCaps{MaxWR: 1, MaxSGE: 1})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, prepared.Close()) })
	req := &wirepb.RdmaConnectRequest{Device: "emu0", Emulated: true, Timeout: 255, RetryCnt: 255,
		Qps: []*wirepb.RdmaEndpoint{endpointPB(prepared.endpoints()[0])}}
	reply, closer, err := tgt.Connect(req)
	require.NoError(t, err, "timeout and retry count out of range")
	assert.Len(t, reply.Qps, 1)
	for _, q := range unitQPs() {
		timeout, retry, err := q.Timeout()
		require.NoError(t, err)
		assert.Equal(t, [2]uint8{targetAckTimeout, targetRetryCnt}, [2]uint8{timeout, retry})
	}
	require.NoError(t, closer.Close())
}

var syscallEINVAL = errorString("EINVAL")

type errorString string

func (e errorString) Error() string { return string(e) }

// A client's queue pairs die with its connection: the unit destroys its
// side when the connection ends, whether the client closed or vanished.
func TestQueuePairsEndWithConnection(t *testing.T) {
	tgt, u, addr := inProcUnit(t)
	tr := newTransport(t, Config{Device: "emu0"})
	c, err := tr.DialConn(t.Context(), engine.PeerInfo{Unit: 7, Addr: addr})
	require.NoError(t, err)
	addrs, err := c.Write(t.Context(), [][][]byte{{make([]byte, 5<<20)}})
	require.NoError(t, err)
	require.Equal(t, 1, tgt.Connections())
	segs, err := tgt.Segments(nil)
	require.NoError(t, err)
	require.Len(t, segs, len(u.Segments()), "every live segment is registered")

	// A lease left open by a read in flight is released with the session.
	require.NoError(t, c.Read(t.Context(), addrs, [][]byte{make([]byte, 5<<20)}))
	require.NoError(t, c.Close())
	require.Eventually(t, func() bool { return tgt.Connections() == 0 && u.Stats().Leases == 0 }, 5*time.Second, 10*time.Millisecond)
}

// A target closing while a session ends (server and target shut down
// together): the set of queue pairs is closed once, by whichever of
// Target.Close and the session's closer took it from the target. Both
// closed it, touching its queue pairs and completion queue unlocked from
// two goroutines: a data race under -race.
func TestTargetCloseRacingSessionEndClosesQueuePairsOnce(t *testing.T) {
	cdev, err := OpenDevice("emu0")
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, cdev.Close()) })
	udev, err := OpenDevice("emu1")
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, udev.Close()) })

	for range 20 {
		prepared, err := newQPSet(cdev, 4, QPCaps{MaxWR: 1, MaxSGE: 1})
		require.NoError(t, err)
		req := &wirepb.RdmaConnectRequest{Device: "emu0", Emulated: true}
		for _, e := range prepared.endpoints() {
			req.Qps = append(req.Qps, endpointPB(e))
		}
		tgt := NewTarget(udev)
		_, closer, err := tgt.Connect(req)
		require.NoError(t, err)
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); assert.NoError(t, tgt.Close()) }()
		go func() { defer wg.Done(); assert.NoError(t, closer.Close()) }()
		wg.Wait()
		assert.NoError(t, closer.Close(), "a second close of the session's queue pairs")
		require.NoError(t, prepared.Close())
	}
}

// A client killed with SIGKILL in the middle of its puts: the unit aborts
// its open reservation (nothing half-written becomes readable, no space
// leaks) and destroys its queue pairs.
func TestClientKilledMidPut(t *testing.T) {
	tgt, u, addr := inProcUnit(t)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), clientProcEnv+"="+addr)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	line, err := bufio.NewReader(out).ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "putting\n", line)
	require.Eventually(t, func() bool { return u.Stats().OpenReservations > 0 }, 10*time.Second, 100*time.Microsecond,
		"the client never had a reservation open")
	require.NoError(t, cmd.Process.Kill())
	cmd.Wait()
	require.Eventually(t, func() bool {
		st := u.Stats()
		return tgt.Connections() == 0 && st.OpenReservations == 0 && st.Used == 0
	}, 10*time.Second, 10*time.Millisecond, "stats after the kill: %+v, %d connections", u.Stats(), tgt.Connections())
}

// A segment the device cannot register is logged and refused, and a
// client that meets it is told why; a registration past the locked-memory
// limit says so.
func TestSegmentNotRegistered(t *testing.T) {
	dev, err := OpenDevice("emu1")
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, dev.Close()) })
	tgt := NewTarget(dev)
	var logged bytes.Buffer
	tgt.log = slog.New(slog.NewTextHandler(&logged, nil))
	// Private anonymous memory: the emulated device cannot share it with
	// another process, so it refuses remote access to it.
	mem, err := unix.Mmap(-1, 0, 1<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	require.NoError(t, err)
	t.Cleanup(func() { unix.Munmap(mem) })
	require.Error(t, tgt.SegmentMapped(3, mem, -1))
	assert.Contains(t, logged.String(), "level=ERROR")
	assert.Contains(t, logged.String(), "segment=3")
	_, err = tgt.Segments([]uint32{3})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "register segment 3")
	tgt.SegmentDropped(3)
	require.NoError(t, tgt.Close(), "the unit had the failed registration, not Close")

	enomem := &Error{Op: "ibv_reg_mr", Errno: syscall.ENOMEM, Device: "mlx5_0"}
	err = registerError(3, 1<<30, 8<<20, enomem)
	require.ErrorIs(t, err, syscall.ENOMEM)
	assert.Contains(t, err.Error(), "RLIMIT_MEMLOCK) of 8388608 bytes")
	for _, err := range []error{
		registerError(3, 1<<30, uint64(unix.RLIM_INFINITY), enomem),
		registerError(3, 1<<30, 8<<20, &Error{Op: "ibv_reg_mr", Errno: syscall.EINVAL, Device: "mlx5_0"}),
	} {
		assert.NotContains(t, err.Error(), "RLIMIT_MEMLOCK")
	}
}

// A segment the unit's device cannot register takes no extent: the put
// that needed it fails with a capacity error that says why, the unit keeps
// no such segment, and the next put lands in a segment RDMA reaches.
func TestUnregisteredSegmentTakesNoExtent(t *testing.T) {
	tgt, u, addr := inProcUnit(t)
	tr := newTransport(t, Config{Device: "emu0"})
	c, err := tr.DialConn(t.Context(), engine.PeerInfo{Unit: 7, Addr: addr})
	require.NoError(t, err)
	require.NoError(t, tgt.Device().InjectFault(4, 0, 1, int(syscall.ENOMEM)))

	payload := bytes.Repeat([]byte("unregistered"), 1000)
	_, err = c.Write(t.Context(), [][][]byte{{payload}})
	require.ErrorIs(t, err, engine.ErrCapacity)
	assert.Contains(t, err.Error(), "register segment 1")
	assert.Empty(t, u.Segments(), "the segment that could not be registered is not kept")
	assert.Zero(t, u.Stats().Used)

	addrs, err := c.Write(t.Context(), [][][]byte{{payload}})
	require.NoError(t, err)
	require.Equal(t, uint32(2), addrs[0].Segment)
	got := make([]byte, len(payload))
	require.NoError(t, c.Read(t.Context(), addrs, [][]byte{got}))
	require.Equal(t, payload, got)
}

// manglingTarget is a Target whose RDMA_CONNECT replies have one queue
// pair's endpoint changed by mangle (a unit that is buggy or hostile).
type manglingTarget struct {
	*Target
	mangle func(*wirepb.RdmaEndpoint)
}

func (m *manglingTarget) Connect(req *wirepb.RdmaConnectRequest) (*wirepb.RdmaConnectReply, io.Closer, error) {
	reply, qps, err := m.Target.Connect(req)
	if err == nil {
		m.mangle(reply.Qps[len(reply.Qps)-1])
	}
	return reply, qps, err
}

// A client refuses an RDMA_CONNECT reply whose endpoints are out of the
// range wire/spec.md gives them (lid 16 bits, qpn and psn 24, qpn not 0),
// as the unit refuses the client's, naming the field, and keeps no queue
// pair (the leak check in TestMain would find one). It took them as they came: a lid past 16 bits was cut to its low
// bits and the dial went through (the emulated device ignores the LID);
// a psn or qpn past 24 bits failed in ibv_modify_qp on the emulated
// device only, where hardware takes it (mlx5 ORs rq_psn into the word it
// shares with the RNR timer).
func TestDialRefusesMalformedUnitEndpoints(t *testing.T) {
	tgt := &manglingTarget{}
	_, addr := inProcUnitWith(t, "emu1", func(tg *Target) storage.RDMATarget { tgt.Target = tg; return tgt })
	tr := newTransport(t, Config{Device: "emu0"})
	cases := []struct {
		name   string
		mangle func(*wirepb.RdmaEndpoint)
		says   string
	}{
		{"lid past 16 bits", func(e *wirepb.RdmaEndpoint) { e.Lid |= 1 << 16 }, "lid 0x1"},
		{"psn past 24 bits", func(e *wirepb.RdmaEndpoint) { e.Psn |= 1 << 24 }, "psn 0x1"},
		{"qpn past 24 bits", func(e *wirepb.RdmaEndpoint) { e.Qpn |= 1 << 24 }, "qpn 0x1"},
		{"qpn 0", func(e *wirepb.RdmaEndpoint) { e.Qpn = 0 }, "qpn 0x0"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tgt.mangle = tc.mangle
			c, err := tr.DialConn(t.Context(), engine.PeerInfo{Unit: 7, Addr: addr})
			if err == nil {
				c.Close()
			}
			require.ErrorIs(t, err, wire.ErrFrame)
			assert.ErrorContains(t, err, "unit queue pair 1: malformed endpoint")
			assert.ErrorContains(t, err, tc.says)
		})
	}
}
