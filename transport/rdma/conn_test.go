//go:build linux && cgo && rdma

package rdma

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/storage"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// A transport closed while a Dial waits for the unit's handshake stops
// that dial, and the dial's control connection is closed: the unit sees
// it end. (The dial's Conn is in the transport's set before the control
// connection exists; Close must not miss it.)
func TestCloseDuringDialClosesControlConnection(t *testing.T) {
	hello := make(chan struct{}, 1) // the unit has the dial's HELLO
	answer := make(chan struct{})   // the unit may answer it
	ended := make(chan struct{}, 1) // the unit saw the connection end
	srv := wire.NewServer(wire.ServerConfig{
		CheckHello: func(*wirepb.Hello) (*wirepb.Hello, error) {
			hello <- struct{}{}
			<-answer
			return &wirepb.Hello{Role: "unit", UnitId: 7}, nil
		},
		OnDisconnect: func(*wirepb.Hello, bool) { ended <- struct{}{} },
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })

	tr := New(testConfig(t))
	_, err = tr.Device()
	require.NoError(t, err)
	dialed := make(chan error, 1)
	go func() {
		c, err := tr.DialConn(t.Context(), engine.PeerInfo{Unit: 7, Addr: wire.FormatAddr("tcp", l.Addr().String())})
		if c != nil {
			c.Close()
		}
		dialed <- err
	}()
	select {
	case <-hello:
	case <-time.After(10 * time.Second):
		t.Fatal("the dial's HELLO never arrived")
	}
	closed := make(chan error, 1)
	go func() { closed <- tr.Close() }()
	select {
	case err := <-closed:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		close(answer)
		t.Fatal("Close waited for the dial's handshake")
	}
	close(answer) // a handshake answered after Close must not revive the dial
	select {
	case err := <-dialed:
		require.ErrorIs(t, err, engine.ErrClosed)
	case <-time.After(10 * time.Second):
		t.Fatal("the dial did not end")
	}
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("the dial's control connection is still open after Close")
	}
}

// Tearing one generation of queue pairs down fails only the work requests
// posted on it (or on older ones). A call that brought a new set up after
// the old one was torn down, and posted on it, keeps waiting for its
// completions: were it failed, its wave would give its staging slots back
// and go again while the old work requests could still move bytes into or
// out of those slots.
//
// The interleaving is forced by holding c.wmu, which breakQPs takes once
// it has torn the old set down, and which post takes to register its work
// requests.
func TestBreakQPsSparesWaitersOfNewerQueuePairs(t *testing.T) {
	p := startUnitProc(t, testDevice(t), "")
	tr := newTransport(t, testConfig(t))
	c := dialUnit(t, tr, p)
	data := bytes.Repeat([]byte("x"), 4096)
	addrs, err := c.Write(t.Context(), [][][]byte{{data}})
	require.NoError(t, err)
	c.mu.RLock()
	old := c.set
	c.mu.RUnlock()

	c.wmu.Lock()
	broke := make(chan struct{})
	go func() {
		c.breakQPs(old.gen, errors.New("another call's error completion"))
		close(broke)
	}()
	require.Eventually(t, func() bool {
		c.mu.RLock()
		defer c.mu.RUnlock()
		return c.set == nil
	}, 10*time.Second, time.Millisecond, "the old queue pairs were never torn down")

	// Another call brings new queue pairs up and posts a READ on them,
	// as post does (it registers its work request under c.wmu).
	set, err := c.qps(t.Context())
	require.NoError(t, err)
	require.Greater(t, set.gen, old.gen)
	st := tr.staging
	slot := <-st.free
	defer func() { st.free <- slot }()
	local := st.buf(slot)[:len(data)]
	clear(local)
	c.mu.RLock()
	seg := c.segs[addrs[0].Segment]
	c.mu.RUnlock()
	id := c.nextID.Add(1)
	w := &waiter{left: 1, gen: set.gen, done: make(chan struct{})}
	c.pending[id] = w
	_, err = set.qps[0].Post([]WR{{ID: id, RemoteAddr: seg.addr + addrs[0].Offset, RKey: seg.rkey, Op: OpRead, Signaled: 1, NumSGE: 1}},
		[]SGE{{Addr: uint64(sliceAddr(local)), Length: uint32(len(local)), LKey: st.mr.LKey}})
	require.NoError(t, err)
	c.wmu.Unlock()
	<-broke

	select {
	case <-w.done:
		t.Fatalf("tearing generation %d down failed a work request on generation %d: %v", old.gen, set.gen, w.err)
	default:
	}
	require.NoError(t, c.wait(t.Context(), set, w))
	require.Equal(t, data, local)
	c.mu.RLock()
	live := c.set
	c.mu.RUnlock()
	require.Same(t, set, live, "the new queue pairs are still the Conn's")
}

// stallingTarget is a Target whose RDMA_CONNECT stalls (a unit that is
// slow or wedged bringing queue pairs up) while stall is set, until
// release is closed.
type stallingTarget struct {
	*Target
	stall   atomic.Bool
	release chan struct{}
}

func (s *stallingTarget) Connect(req *wirepb.RdmaConnectRequest) (*wirepb.RdmaConnectReply, io.Closer, error) {
	if s.stall.Load() {
		<-s.release
	}
	return s.Target.Connect(req)
}

// A call that needs queue pairs while another call's RDMA_CONNECT is
// outstanding waits for it only as long as its own context lets it. It
// waited on a mutex regardless: a call with a 200 ms deadline behind a
// slow unit's RDMA_CONNECT waited as long as that took (up to the other
// call's deadline), and then went on past its own.
func TestQueuePairBringUpWaitHeedsDeadline(t *testing.T) {
	var tgt *stallingTarget
	_, addr := inProcUnitWith(t, "emu1", func(tg *Target) storage.RDMATarget {
		tgt = &stallingTarget{Target: tg, release: make(chan struct{})}
		return tgt
	})

	tr := newTransport(t, Config{Device: "emu0"})
	c, err := tr.DialConn(t.Context(), engine.PeerInfo{Unit: 7, Addr: addr})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	data := make([]byte, 4096)
	addrs, err := c.Write(t.Context(), [][][]byte{{data}})
	require.NoError(t, err)

	// Another call's failure tore the queue pairs down; the unit is now
	// slow to answer RDMA_CONNECT.
	c.mu.RLock()
	gen := c.set.gen
	c.mu.RUnlock()
	c.breakQPs(gen, errors.New("another call's error completion"))
	tgt.stall.Store(true)
	go func() { time.Sleep(3 * time.Second); close(tgt.release) }()

	// A call with a generous deadline starts bringing queue pairs up.
	slow := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		slow <- c.Read(ctx, addrs, [][]byte{make([]byte, len(data))})
	}()
	require.Eventually(t, func() bool { return len(c.connecting) == 1 }, 5*time.Second, time.Millisecond,
		"the first call never started its RDMA_CONNECT")

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = c.Read(ctx, addrs, [][]byte{make([]byte, len(data))})
	took := time.Since(start)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	assert.ErrorContains(t, err, "another call brings queue pairs up")
	assert.Less(t, took, time.Second, "a call with a 200 ms deadline waited %v for another call's RDMA_CONNECT", took)
	require.NoError(t, <-slow, "the call that brought queue pairs up")
}

// countingTarget records the most ids one RDMA_SEGMENTS asked for.
type countingTarget struct {
	*Target
	maxIDs atomic.Int64
}

func (c *countingTarget) Segments(ids []uint32) ([]*wirepb.RdmaSegment, error) {
	for {
		old := c.maxIDs.Load()
		if int64(len(ids)) <= old || c.maxIDs.CompareAndSwap(old, int64(len(ids))) {
			break
		}
	}
	return c.Target.Segments(ids)
}

// A put of many pieces into a segment the Conn has not seen asks
// RDMA_SEGMENTS for it once, and the unit answers each id once however
// often it is named. The Conn asked once per piece: a get of ~2.2M cells
// in a new segment needed a reply (a copy per id) past the wire's body
// limit.
func TestLearnSegmentsAsksOncePerSegment(t *testing.T) {
	var tgt *countingTarget
	u, addr := inProcUnitWith(t, "emu1", func(tg *Target) storage.RDMATarget {
		tgt = &countingTarget{Target: tg}
		return tgt
	})

	tr := newTransport(t, Config{Device: "emu0"})
	c, err := tr.DialConn(t.Context(), engine.PeerInfo{Unit: 7, Addr: addr})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	require.Empty(t, u.Segments(), "the unit has no segment yet: the Conn learns the first one with RDMA_SEGMENTS")

	pieces := make([][]byte, 1000)
	for i := range pieces {
		pieces[i] = []byte("12345678")
	}
	addrs, err := c.Write(t.Context(), [][][]byte{pieces})
	require.NoError(t, err)
	assert.Equal(t, int64(1), tgt.maxIDs.Load(), "ids RDMA_SEGMENTS asked for, for one new segment")

	id := addrs[0].Segment
	segs, err := tgt.Segments([]uint32{id, id, id})
	require.NoError(t, err)
	assert.Len(t, segs, 1, "the unit's answer for one segment named three times")
}

// A dial that fails says why (here nobody listens at the unit's address),
// not that the connection was closed: the Conn it gave up on was closed
// before its error was wrapped, and every such error read as
// engine.ErrClosed.
func TestDialFailureIsNotClosed(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := wire.FormatAddr("tcp", l.Addr().String())
	l.Close() // nobody listens there now
	tr := New(testConfig(t))
	defer tr.Close()
	_, err = tr.Device()
	require.NoError(t, err)
	_, err = tr.DialConn(t.Context(), engine.PeerInfo{Unit: 7, Addr: addr})
	require.Error(t, err)
	assert.NotErrorIs(t, err, engine.ErrClosed, "dial of an unreachable unit: %v", err)
}
