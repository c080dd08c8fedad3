package rdma

// How a Conn works. One wire connection to the unit (its TCP or unix
// address) carries the control requests; bytes move by one-sided RDMA
// between this process's registered memory and the unit's registered
// arena segments:
//
//	Dial    HELLO (the unit meant, its incarnation) → RDMA_CONNECT: this
//	        side's queue pairs (RESET) for the unit's, and the unit's
//	        segments (address, size, rkey); our QPs go INIT → RTR → RTS.
//	Write   RESERVE(sizes) → extents; RDMA WRITE each slice from the
//	        caller's registered memory, or through a staging slot;
//	        RESERVE_COMMIT. Any failure: RESERVE_ABORT, once none of the
//	        call's WRITEs can land any more (see abortWrite).
//	Read    ACQUIRE(ranges) → lease; RDMA READ each slice into the
//	        caller's registered memory or a staging slot (then copied
//	        out); RELEASE (not waited for).
//
// A transfer is cut into slices of Config.SliceSize, posted in waves of at
// most 32 work requests per queue pair, spread over the QPs, each a chain
// posted in one crossing of cgo. Completions are polled by the waiting
// callers themselves (whoever polls hands out everyone's completions),
// spinning briefly and then backing off. A wave whose deadline passes, a
// post that fails or an error completion tears the queue pairs down (they
// are in the error state, or wedged): waiters fail with an error wrapping
// engine.ErrUnavailable, or, when the completion says the request itself
// was wrong, engine.ErrInvalid or ErrCorrupt naming it (see Error.Unwrap),
// and the next call connects new ones with RDMA_CONNECT, which makes the
// unit drop its old ones.

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/internal/hostid"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

const (
	qpMaxWR      = 256 // work requests a QP holds
	waveWRsPerQP = 32  // work requests per QP in one wave
	maxWaves     = qpMaxWR / waveWRsPerQP
	pollBatch    = 64
)

// Conn is an RDMA connection to one storage unit. It is safe for
// concurrent use; the caller's buffers are its own again when a call
// returns.
type Conn struct {
	t    *Transport
	cfg  Config
	addr string
	unit engine.UnitID
	wc   *wire.Conn // set once by dial, under mu: Close may run meanwhile

	done      chan struct{}
	closeOnce sync.Once
	closeErr  error
	ops       sync.WaitGroup
	closing   atomic.Bool

	// connecting serializes bringing queue pairs up: a lock of one slot,
	// which a caller waits for only as long as its context lets it (the
	// RDMA_CONNECT under it may wait on a slow unit).
	connecting chan struct{}

	mu    sync.RWMutex // guards wc while dialing, set, segs and parked; posting and polling hold it for reading
	set   *clientQPs
	segs  map[uint32]remoteSeg
	waves chan struct{}
	// parked: reservations of failed writes whose RESERVE_ABORT waits for
	// the next bring-up of queue pairs (see abortWrite).
	parked []uint64

	wmu     sync.Mutex
	pending map[uint64]*waiter
	nextID  atomic.Uint64
	rr      atomic.Uint32

	reconnects atomic.Int64
}

type remoteSeg struct {
	addr, size uint64
	rkey       uint32
}

// clientQPs is this side's queue pairs to the unit. qps is its own copy
// of the set's: a caller still holding a torn-down set sees its QPs
// closed (posting fails), never a shorter list.
type clientQPs struct {
	*qpSet
	qps []*QP
	gen int64 // which bring-up made them
}

type waiter struct {
	left int
	gen  int64 // the queue pairs its work requests are posted on
	err  error
	done chan struct{}
	// op and batch are what it waits for, to name a work request that
	// failed.
	op    Opcode
	batch []slice
}

var _ engine.DataConn = (*Conn)(nil)

// Dial connects to the unit whose control address is peer.Addr.
func (t *Transport) Dial(ctx context.Context, peer engine.PeerInfo) (engine.DataConn, error) {
	c, err := t.DialConn(ctx, peer)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// DialConn is [Transport.Dial] returning the concrete type. It fails with
// an error wrapping [engine.ErrNotSupported] when this host or the unit
// has no usable RDMA device, and with [engine.ErrLost] when the unit at
// the address is not peer.Unit or not its incarnation peer.Incarnation.
func (t *Transport) DialConn(ctx context.Context, peer engine.PeerInfo) (*Conn, error) {
	c := &Conn{t: t, cfg: t.cfg, addr: peer.Addr, unit: peer.Unit, done: make(chan struct{}), segs: map[uint32]remoteSeg{},
		connecting: make(chan struct{}, 1), waves: make(chan struct{}, maxWaves), pending: map[uint64]*waiter{}}
	if _, err := t.Device(); err != nil {
		return nil, c.opErr("dial", err)
	}
	// The dial counts as a call in flight: Close (the transport's, once
	// the Conn is in its set) stops it and waits for it before it
	// destroys anything the dial may be using.
	c.ops.Add(1)
	if !t.conns.Add(c) {
		c.ops.Done()
		return nil, c.opErr("dial", fmt.Errorf("transport closed: %w", engine.ErrClosed))
	}
	err := c.dial(ctx, peer)
	c.ops.Done()
	if err != nil {
		err = c.opErr("dial", err) // before Close: it failed for its own reason
		c.Close()
		return nil, err
	}
	return c, nil
}

func (c *Conn) dial(ctx context.Context, peer engine.PeerInfo) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { // Close ends a dial still connecting or in its handshake
		select {
		case <-c.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	hello := &wirepb.Hello{Role: "client", HostId: hostid.ID(), Token: c.cfg.Token, Name: c.cfg.Name,
		UnitId: uint32(peer.Unit), Incarnation: peer.Incarnation}
	// A lease or reservation whose answer came after its caller gave
	// up is given back at once, not held until the connection ends.
	cc := c.cfg.Conn
	cc.LateReply = wire.HoldReleaser(c.cleanup)
	wc, reply, err := wire.Dial(ctx, c.addr, hello, cc)
	if err != nil {
		return err
	}
	c.mu.Lock()
	if c.closing.Load() { // Close found no connection to close
		c.mu.Unlock()
		wc.Close()
		return c.errClosed()
	}
	c.wc = wc
	c.mu.Unlock()
	if err := wire.CheckUnit(reply, c.addr, peer.Unit, peer.Incarnation); err != nil {
		return err
	}
	_, err = c.qps(ctx)
	return err
}

// qps returns the live queue pairs, bringing new ones up (RDMA_CONNECT)
// when there are none.
func (c *Conn) qps(ctx context.Context) (*clientQPs, error) {
	c.mu.RLock()
	set := c.set
	c.mu.RUnlock()
	if set != nil {
		return set, nil
	}
	select {
	case c.connecting <- struct{}{}:
		defer func() { <-c.connecting }()
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting while another call brings queue pairs up: %w", context.Cause(ctx))
	case <-c.done:
		return nil, fmt.Errorf("waiting while another call brings queue pairs up: %w", c.errClosed())
	}
	c.mu.RLock()
	set = c.set
	c.mu.RUnlock()
	if set != nil {
		return set, nil
	}
	dev, err := c.t.Device()
	if err != nil {
		return nil, err
	}
	qs, err := newQPSet(dev, c.cfg.QPs, QPCaps{MaxWR: qpMaxWR, MaxSGE: 1})
	if err != nil {
		return nil, err
	}
	port := dev.Port()
	rd := dev.ReadDepth()
	req := &wirepb.RdmaConnectRequest{Device: dev.Name(), Emulated: dev.Emulated(), Mtu: uint32(port.MTU),
		Timeout: uint32(c.cfg.AckTimeout), RetryCnt: uint32(c.cfg.RetryCnt),
		MaxQpInitRdAtom: uint32(rd.Init), MaxQpRdAtom: uint32(rd.Resp)}
	for _, e := range qs.endpoints() {
		req.Qps = append(req.Qps, endpointPB(e))
	}
	var reply wirepb.RdmaConnectReply
	if err := c.wc.Do(ctx, wire.OpRdmaConnect, req, nil, &reply, nil); err != nil {
		qs.Close()
		return nil, fmt.Errorf("rdma connect: %w", err)
	}
	if len(reply.Qps) != len(req.Qps) {
		qs.Close()
		return nil, fmt.Errorf("rdma connect: unit answered %d queue pairs for %d: %w", len(reply.Qps), len(req.Qps), wire.ErrFrame)
	}
	remote := make([]Endpoint, len(reply.Qps))
	for i, q := range reply.Qps {
		// The unit's endpoints get the checks the unit gives ours
		// (Target.Connect): a device cuts a field past its width, or
		// mixes it into its neighbour's bits, rather than refuse it.
		if len(q.Gid) != 16 || q.Qpn == 0 || q.Qpn > 0xffffff || q.Psn > 0xffffff || q.Lid > 0xffff {
			qs.Close()
			return nil, fmt.Errorf("rdma connect: unit queue pair %d: malformed endpoint (gid %d bytes, qpn %#x, psn %#x, lid %#x): %w",
				i, len(q.Gid), q.Qpn, q.Psn, q.Lid, wire.ErrFrame)
		}
		remote[i] = Endpoint{LID: uint16(q.Lid), QPN: q.Qpn, PSN: q.Psn}
		copy(remote[i].GID[:], q.Gid)
	}
	mtu := int(reply.Mtu)
	if mtu == 0 || mtu > port.MTU {
		mtu = port.MTU
	}
	// READs in flight: no more than the unit's queue pairs serve.
	rd = rd.With(peerReadDepth(reply.MaxQpInitRdAtom, reply.MaxQpRdAtom))
	if _, err := qs.connect(remote, HandshakeOpts{MTU: mtu, Timeout: c.cfg.AckTimeout, RetryCnt: c.cfg.RetryCnt, ReadDepth: rd}); err != nil {
		qs.Close()
		return nil, fmt.Errorf("rdma connect: %w", err)
	}
	set = &clientQPs{qpSet: qs, qps: slices.Clone(qs.qps), gen: c.reconnects.Add(1)}
	c.mu.Lock()
	if c.closing.Load() {
		c.mu.Unlock()
		qs.Close()
		return nil, c.errClosed()
	}
	c.set = set
	// Added to what calls learned (RDMA_SEGMENTS), not in place of it: the
	// reply may be older than a segment another call learned while the
	// handshake ran, and a unit's segments keep their address and key for
	// the connection's life (one run of the unit).
	if c.segs == nil {
		c.segs = map[uint32]remoteSeg{}
	}
	for _, s := range reply.Segments {
		c.segs[s.Id] = remoteSeg{addr: s.Addr, size: s.Size, rkey: s.Rkey}
	}
	parked := c.parked
	c.parked = nil
	c.mu.Unlock()
	c.abortParked(parked)
	return set, nil
}

// Reconnects reports how many times the Conn brought queue pairs up.
func (c *Conn) Reconnects() int64 { return c.reconnects.Load() }

// breakQPs tears the queue pairs of generation gen down (nothing if they
// were replaced already): they go to the error state, are destroyed, and
// every waiter on them fails with cause. Waiters on queue pairs another
// call brought up once these were gone are left alone: their work
// requests are outstanding on live queue pairs, and their buffers (staging
// slots) must stay theirs until those complete.
func (c *Conn) breakQPs(gen int64, cause error) {
	c.mu.Lock()
	set := c.set
	if set == nil || set.gen != gen {
		c.mu.Unlock()
		return
	}
	c.set = nil
	if testHookBreakQPs == nil || !testHookBreakQPs(set) {
		for _, q := range set.qps {
			q.Fail()
		}
		set.Close()
	}
	c.mu.Unlock()
	torn := &tornDown{cause}
	c.wmu.Lock()
	for id, w := range c.pending {
		if w.gen > gen {
			continue
		}
		delete(c.pending, id)
		w.fail(torn)
	}
	c.wmu.Unlock()
}

// testHookBreakQPs, if set, runs in breakQPs before the queue pairs go to
// the error state; when it returns true they are left connected and the
// test destroys them: a WRITE posted on them then is one still in the
// network when they were torn down.
var testHookBreakQPs func(set *clientQPs) (keep bool)

// tornDown fails the work requests of calls whose queue pairs another
// call tore down; they did not run, and their wave may go again on new
// queue pairs.
type tornDown struct{ cause error }

func (e *tornDown) Error() string {
	return fmt.Sprintf("queue pairs torn down: %v", e.cause)
}

func (e *tornDown) Unwrap() []error { return []error{engine.ErrUnavailable, e.cause} }

// retryable reports a wave that failed through no fault of its own: its
// queue pairs were torn down by another call, or its work requests were
// flushed after another's failed. Its reservation or lease still holds,
// so writing or reading the same bytes again is safe.
func retryable(err error) bool {
	var td *tornDown
	return errors.As(err, &td) || IsCompletion(err, WCFlushErr)
}

// fail records err and ends one work request. The caller holds c.wmu.
// The call fails with its first error that is its own: a flush or a
// teardown (retryable) says only that the queue pairs broke, and one that
// came first (a flush on one queue pair, handed out before the error on
// another that broke it or the call) would make the wave go again and
// hide the real error behind engine.ErrUnavailable.
func (w *waiter) fail(err error) {
	if w.err == nil || retryable(w.err) && !retryable(err) {
		w.err = err
	}
	w.finish()
}

func (w *waiter) finish() {
	if w.left--; w.left == 0 {
		close(w.done)
	}
}

// poll hands out the completions waiting in the CQ; only one caller polls
// at a time (the others find the lock taken and look at their waiter).
func (c *Conn) poll(set *clientQPs) error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.set != set {
		return nil // torn down: breakQPs failed the waiters
	}
	var wcs [pollBatch]WC
	for {
		n, err := set.cq.Poll(wcs[:])
		if err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		c.wmu.Lock()
		var werr error // the batch's first error, a flush only when all are
		for _, wc := range wcs[:n] {
			w := c.pending[wc.ID]
			if w == nil {
				continue
			}
			delete(c.pending, wc.ID)
			if wc.Status != WCSuccess {
				err := c.wcError(w, wc)
				if werr == nil || wc.Status != WCFlushErr && IsCompletion(werr, WCFlushErr) {
					werr = err // what the calls it tears down are told
				}
				w.fail(err)
				continue
			}
			w.finish()
		}
		c.wmu.Unlock()
		if werr != nil {
			return werr
		}
		if n < pollBatch {
			return nil
		}
	}
}

// wcError is the error of w's work request that completed with wc's
// error status: it names the request, so that one the unit refused says
// which bytes of which segment it was for.
func (c *Conn) wcError(w *waiter, wc WC) error {
	err := &Error{Op: "completion", Status: wc.Status, Device: c.t.dev.Name()}
	op := "write"
	if w.op == OpRead {
		op = "read"
	}
	for _, s := range w.batch {
		if s.id == wc.ID {
			return fmt.Errorf("rdma %s of unit %d, segment %d, bytes %d+%d: %w", op, c.unit, s.seg, s.off, len(s.local), err)
		}
	}
	return err
}

// slice is one work request: bytes [0, len(local)) of local memory
// (lkey) to or from the unit's memory at raddr (rkey), which is byte off
// of segment seg.
type slice struct {
	local []byte
	lkey  uint32
	raddr uint64
	rkey  uint32
	seg   uint32
	off   uint64
	id    uint64 // the work request's, once posted
	// For a slice through staging: the caller's bytes.
	user []byte
}

// testHookLearned, if set, runs in transfer once the segments its jobs
// name are learned, before they are looked up: tests bring new queue pairs
// up there.
var testHookLearned func(c *Conn)

// job is one range of a transfer: the caller's buffer and the unit's
// range.
type job struct {
	buf  []byte
	addr engine.RemoteAddr
}

// transfer moves every job's bytes with RDMA op (OpRead: unit → buf;
// OpWrite: buf → unit). When it fails, exposed is the newest generation of
// queue pairs on which a wave of it posted work requests that did not all
// complete (0: none): those may still reach the unit (see abortWrite).
func (c *Conn) transfer(ctx context.Context, op Opcode, jobs []job) (exposed int64, err error) {
	if err := c.learnSegments(ctx, jobs); err != nil {
		return 0, err
	}
	if testHookLearned != nil {
		testHookLearned(c)
	}
	st := c.t.staging
	var pending []slice
	c.mu.RLock()
	for _, j := range jobs {
		if j.addr.Len == 0 {
			continue
		}
		seg, ok := c.segs[j.addr.Segment]
		if !ok {
			c.mu.RUnlock()
			return 0, fmt.Errorf("range %d+%d in segment %d, which the unit has not described: %w", j.addr.Offset, j.addr.Len, j.addr.Segment, engine.ErrCorrupt)
		}
		if j.addr.Offset > seg.size || j.addr.Len > seg.size-j.addr.Offset {
			c.mu.RUnlock()
			return 0, fmt.Errorf("range %d+%d outside segment %d of %d bytes: %w", j.addr.Offset, j.addr.Len, j.addr.Segment, seg.size, engine.ErrCorrupt)
		}
		lkey, direct := c.t.lookup(j.buf)
		for off := 0; off < len(j.buf); off += st.slot {
			end := min(off+st.slot, len(j.buf))
			s := slice{raddr: seg.addr + j.addr.Offset + uint64(off), rkey: seg.rkey, seg: j.addr.Segment, off: j.addr.Offset + uint64(off)}
			if direct {
				s.local, s.lkey = j.buf[off:end], lkey
			} else {
				s.user = j.buf[off:end]
			}
			pending = append(pending, s)
		}
	}
	c.mu.RUnlock()
	for retries := 0; len(pending) > 0; {
		n, gen, err := c.wave(ctx, op, pending)
		if err != nil {
			exposed = max(exposed, gen)
			if retries < maxWaveRetries && ctx.Err() == nil && retryable(err) {
				retries++
				continue
			}
			return exposed, err
		}
		pending = pending[n:]
	}
	return 0, nil
}

// maxWaveRetries bounds how often a wave goes again after other calls'
// failures tore its queue pairs down.
const maxWaveRetries = 3

// learnSegments asks the unit for segments the jobs name that the Conn
// has not seen yet (the arena grew since RDMA_CONNECT), each once.
func (c *Conn) learnSegments(ctx context.Context, jobs []job) error {
	var missing []uint32
	c.mu.RLock()
	for _, j := range jobs {
		if _, ok := c.segs[j.addr.Segment]; !ok && j.addr.Len > 0 {
			missing = append(missing, j.addr.Segment)
		}
	}
	c.mu.RUnlock()
	if len(missing) == 0 {
		return nil
	}
	// Many jobs name the same segment: the unit answers one copy per id.
	slices.Sort(missing)
	missing = slices.Compact(missing)
	var reply wirepb.RdmaSegmentsReply
	if err := c.wc.Do(ctx, wire.OpRdmaSegments, &wirepb.RdmaSegmentsRequest{Ids: missing}, nil, &reply, nil); err != nil {
		return fmt.Errorf("rdma segments: %w", err)
	}
	described := make(map[uint32]bool, len(reply.Segments))
	for _, s := range reply.Segments {
		described[s.Id] = true
	}
	for _, id := range missing {
		if !described[id] {
			return fmt.Errorf("rdma segments: unit did not describe segment %d, which it was asked for: %w", id, wire.ErrFrame)
		}
	}
	c.mu.Lock()
	for _, s := range reply.Segments {
		c.segs[s.Id] = remoteSeg{addr: s.Addr, size: s.Size, rkey: s.Rkey}
	}
	c.mu.Unlock()
	return nil
}

// wave posts up to waveWRsPerQP slices per queue pair from pending, waits
// for them and returns how many it moved. When it fails after posting,
// gen is the generation of the queue pairs it posted on.
func (c *Conn) wave(ctx context.Context, op Opcode, pending []slice) (n int, gen int64, err error) {
	set, err := c.qps(ctx)
	if err != nil {
		return 0, 0, err
	}
	select {
	case c.waves <- struct{}{}:
	case <-ctx.Done():
		return 0, 0, context.Cause(ctx)
	case <-c.done:
		return 0, 0, c.errClosed()
	}
	defer func() { <-c.waves }()
	st := c.t.staging
	var slots []int
	defer func() {
		for _, s := range slots {
			st.free <- s
		}
	}()
	limit := min(len(pending), waveWRsPerQP*len(set.qps))
	for ; n < limit; n++ {
		s := &pending[n]
		if s.user == nil {
			continue
		}
		var slot int
		if len(slots) == 0 {
			select { // the first slot is worth waiting for
			case slot = <-st.free:
			case <-ctx.Done():
				return 0, 0, context.Cause(ctx)
			case <-c.done:
				return 0, 0, c.errClosed()
			}
		} else {
			select {
			case slot = <-st.free:
			default:
				limit = n // no slot now: the rest goes in the next wave
			}
			if limit == n {
				break
			}
		}
		slots = append(slots, slot)
		s.local, s.lkey = st.buf(slot)[:len(s.user)], st.mr.LKey
		if op == OpWrite {
			copy(s.local, s.user)
		}
	}
	batch := pending[:n]
	if err := c.post(ctx, set, op, batch); err != nil {
		return 0, set.gen, err
	}
	if op == OpRead {
		for _, s := range batch {
			if s.user != nil {
				copy(s.user, s.local)
			}
		}
	}
	for i := range batch {
		if batch[i].user != nil {
			batch[i].local = nil // the slot goes back to the pool
		}
	}
	return n, 0, nil
}

// post posts batch spread over the queue pairs and waits for every
// completion.
func (c *Conn) post(ctx context.Context, set *clientQPs, op Opcode, batch []slice) error {
	nq := len(set.qps)
	first := int(c.rr.Add(1))
	w := &waiter{left: len(batch), gen: set.gen, done: make(chan struct{}), op: op, batch: batch}
	wrs := make([][]WR, nq)
	sges := make([][]SGE, nq)
	for i, s := range batch {
		q := (first + i) % nq
		id := c.nextID.Add(1)
		batch[i].id = id
		wrs[q] = append(wrs[q], WR{ID: id, RemoteAddr: s.raddr, RKey: s.rkey, Op: op, Signaled: 1,
			FirstSGE: uint32(len(sges[q])), NumSGE: 1})
		sges[q] = append(sges[q], SGE{Addr: uint64(sliceAddr(s.local)), Length: uint32(len(s.local)), LKey: s.lkey})
	}
	c.wmu.Lock()
	for q := range wrs {
		for _, wr := range wrs[q] {
			c.pending[wr.ID] = w
		}
	}
	c.wmu.Unlock()
	var postErr error
	c.mu.RLock()
	if c.set != set {
		c.mu.RUnlock()
		c.unpend(w, wrs, 0, &tornDown{errors.New("before the post")})
	} else {
		for q, chain := range wrs {
			if len(chain) == 0 {
				continue
			}
			if bad, err := set.qps[q].Post(chain, sges[q]); err != nil {
				bad, badErr := firstUnposted(bad, len(chain))
				postErr = errors.Join(fmt.Errorf("post %d work requests: %w", len(chain)-bad, err), badErr)
				if errors.Is(err, engine.ErrClosed) { // torn down since we looked
					postErr = &tornDown{postErr}
				}
				c.unpendFrom(w, wrs[q][bad:], postErr)
				for _, rest := range wrs[q+1:] {
					c.unpendFrom(w, rest, postErr)
				}
				break
			}
		}
		c.mu.RUnlock()
	}
	err := c.wait(ctx, set, w)
	if postErr != nil {
		c.breakQPs(set.gen, postErr)
		return errors.Join(postErr, wrapUnavailable(err))
	}
	return err
}

// firstUnposted checks bad, the index of the first work request of a
// chain of n that the driver says it did not post. One out of [0, n]
// would slice the chain out of range: it is taken as 0 (none posted, so
// every request is failed here; the queue pairs are torn down after a
// failed post, so none posted after all can touch memory once the call
// returns), with an error naming the values.
func firstUnposted(bad, n int) (int, error) {
	if bad < 0 || bad > n {
		return 0, fmt.Errorf("the driver says work request %d of a chain of %d was the first not posted", bad, n)
	}
	return bad, nil
}

// unpend forgets work requests that were never posted.
func (c *Conn) unpend(w *waiter, wrs [][]WR, _ int, err error) {
	for _, chain := range wrs {
		c.unpendFrom(w, chain, err)
	}
}

func (c *Conn) unpendFrom(w *waiter, chain []WR, err error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	for _, wr := range chain {
		if c.pending[wr.ID] == w {
			delete(c.pending, wr.ID)
			w.fail(err)
		}
	}
}

func wrapUnavailable(err error) error {
	if err == nil || errors.Is(err, engine.ErrUnavailable) {
		return err
	}
	return fmt.Errorf("%w: %w", engine.ErrUnavailable, err)
}

// wait polls until w's work requests completed. When ctx ends first, the
// queue pairs are torn down (a work request cannot be taken back, and no
// RDMA may touch the caller's memory after the call returns) and the
// error says so.
func (c *Conn) wait(ctx context.Context, set *clientQPs, w *waiter) error {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	backoff := time.Duration(0)
	for spins := 0; ; spins++ {
		if err := c.poll(set); err != nil {
			c.breakQPs(set.gen, err)
		}
		select {
		case <-w.done:
			return w.err
		default:
		}
		if spins < 50 {
			runtime.Gosched()
			continue
		}
		backoff = min(max(2*backoff, 5*time.Microsecond), time.Millisecond)
		if timer == nil {
			timer = time.NewTimer(backoff)
		} else {
			timer.Reset(backoff)
		}
		select {
		case <-w.done:
			return w.err
		case <-timer.C:
		case <-ctx.Done():
			cause := fmt.Errorf("work requests outstanding when the call ended (queue pairs torn down): %w: %w", engine.ErrUnavailable, context.Cause(ctx))
			c.breakQPs(set.gen, cause)
			<-w.done
			return cause
		case <-c.done:
			c.breakQPs(set.gen, c.errClosed())
			<-w.done
			return c.errClosed()
		}
	}
}

// withTimeout bounds ctx by Config.Timeout when it has no deadline.
func (c *Conn) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, c.cfg.Timeout)
}

func (c *Conn) begin(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if c.closing.Load() {
		return c.errClosed()
	}
	c.ops.Add(1)
	if c.closing.Load() {
		c.ops.Done()
		return c.errClosed()
	}
	return nil
}

func (c *Conn) errClosed() error { return fmt.Errorf("connection closed: %w", engine.ErrClosed) }

func (c *Conn) opErr(op string, err error) error {
	select {
	case <-c.done:
		if !errors.Is(err, engine.ErrClosed) {
			err = fmt.Errorf("%w: %w", engine.ErrClosed, err)
		}
	default:
	}
	return &engine.OpError{Op: op, Transport: "rdma", Peer: c.addr, Err: err}
}

// doHeld sends a request whose answer opens or ends a hold on the unit,
// waiting up to Config.Grace past ctx for it (wire.Conn.DoGrace).
func (c *Conn) doHeld(ctx context.Context, op wire.Op, body, reply proto.Message) error {
	return c.wc.DoGrace(ctx, c.cfg.Grace, op, body, nil, reply)
}

// cleanup sends a best-effort RESERVE_ABORT or RELEASE; the unit gives
// the hold back anyway when the connection ends.
func (c *Conn) cleanup(op wire.Op, body proto.Message) { c.wc.Cleanup(op, body) }

// Write stores each extent in a fresh extent of the unit: RESERVE, RDMA
// WRITE of every piece, RESERVE_COMMIT. Nothing of a failed write stays
// on the unit. Errors wrap [engine.ErrCapacity] when the unit stays full,
// [engine.ErrUnavailable] when it stops answering (or its queue pairs
// fail), [engine.ErrInvalid] or [engine.ErrCorrupt] when a work request
// completes with a status that says the request itself is wrong (see
// [Error.Unwrap]; trying it again fails the same way), [engine.ErrClosed]
// after Close, and ctx's error.
func (c *Conn) Write(ctx context.Context, extents [][][]byte) ([]engine.RemoteAddr, error) {
	if err := wire.CheckCount("extents", len(extents)); err != nil {
		return nil, c.opErr("write", err)
	}
	if err := c.begin(ctx); err != nil {
		return nil, c.opErr("write", err)
	}
	defer c.ops.Done()
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	sizes := make([]uint64, len(extents))
	for i, pieces := range extents {
		for _, p := range pieces {
			sizes[i] += uint64(len(p))
		}
	}
	var reply wirepb.ReserveReply
	if err := c.doHeld(ctx, wire.OpReserve, &wirepb.ReserveRequest{Sizes: sizes, NoWait: engine.NoWait(ctx), WaitMs: engine.RoomWaitMillis(ctx)}, &reply); err != nil {
		return nil, c.opErr("write", err)
	}
	var addrs []engine.RemoteAddr
	var exposed int64
	var err error
	// Counted before decoding, which allocates each extent claimed.
	if n := wire.AddrCount(reply.Extents); n != uint64(len(extents)) {
		err = fmt.Errorf("unit reserved %d extents for %d: %w", n, len(extents), wire.ErrFrame)
	} else {
		addrs, err = wire.RangesFromPB(reply.Extents)
	}
	for i := 0; err == nil && i < len(addrs); i++ {
		if addrs[i].Len != sizes[i] {
			err = fmt.Errorf("unit reserved %d bytes for an extent of %d: %w", addrs[i].Len, sizes[i], wire.ErrFrame)
		}
	}
	if err == nil {
		var jobs []job
		for i, pieces := range extents {
			a := addrs[i]
			for _, p := range pieces {
				jobs = append(jobs, job{buf: p, addr: engine.RemoteAddr{Segment: a.Segment, Gen: a.Gen, Offset: a.Offset, Len: uint64(len(p))}})
				a.Offset += uint64(len(p))
			}
		}
		exposed, err = c.transfer(ctx, OpWrite, jobs)
	}
	if err == nil {
		err = c.doHeld(ctx, wire.OpReserveCommit, &wirepb.ReservationRequest{Reservation: reply.Reservation}, &wirepb.Empty{})
		if err != nil {
			return nil, c.opErr("write", err) // a failed commit aborted the reservation
		}
		return addrs, nil
	}
	c.abortWrite(ctx, reply.Reservation, exposed, err)
	return nil, c.opErr("write", err)
}

// abortWrite gives back the reservation of a write that failed with
// cause. When WRITEs of it went out on queue pairs that were then torn
// down (generation exposed), some may still be in the network (held by
// PFC pauses, say), and the unit's queue pairs, which know nothing of the
// teardown, would take them into the extents the abort frees, which
// another writer may hold by then. So the RESERVE_ABORT goes only once
// the unit has dropped those queue pairs: once an RDMA_CONNECT newer than
// them was answered (the unit destroys a session's old queue pairs before
// it answers one), which this call makes unless another call made it
// already. This is the bring-up the next call would need anyway, and it
// leaves other calls' queue pairs alone, which tearing down the unit's
// on every abort would not. When it fails, the abort waits for the next
// bring-up that succeeds (see qps); the connection's end gives it back
// meanwhile.
func (c *Conn) abortWrite(ctx context.Context, reservation uint64, exposed int64, cause error) {
	req := &wirepb.ReservationRequest{Reservation: reservation}
	if exposed != 0 {
		// Torn down already, unless another call's poll has their error
		// and has not torn them down yet.
		c.breakQPs(exposed, cause)
		fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		stop := context.AfterFunc(ctx, func() { time.AfterFunc(c.cfg.Grace, cancel) })
		_, err := c.qps(fctx)
		stop()
		cancel()
		if err != nil {
			c.mu.Lock()
			if c.set == nil { // none newer than exposed
				c.parked = append(c.parked, reservation)
				c.mu.Unlock()
				return
			}
			c.mu.Unlock()
		}
	}
	c.cleanup(wire.OpReserveAbort, req)
}

// abortParked sends the RESERVE_ABORTs that waited for new queue pairs
// (see abortWrite), from a goroutine of its own.
func (c *Conn) abortParked(reservations []uint64) {
	if len(reservations) == 0 || c.begin(context.Background()) != nil {
		return
	}
	go func() {
		defer c.ops.Done()
		for _, r := range reservations {
			c.cleanup(wire.OpReserveAbort, &wirepb.ReservationRequest{Reservation: r})
		}
	}()
}

// Read copies each range into dst[i] (len(dst[i]) == ranges[i].Len) with
// RDMA READs under a lease. A range the unit no longer holds fails the
// read with an error wrapping [engine.ErrNotFound]; other errors as for
// Write, and [engine.ErrInvalid] for mismatched lengths.
func (c *Conn) Read(ctx context.Context, ranges []engine.RemoteAddr, dst [][]byte) error {
	if err := wire.CheckReadBuffers(ranges, dst); err != nil {
		return c.opErr("read", err)
	}
	if err := c.begin(ctx); err != nil {
		return c.opErr("read", err)
	}
	defer c.ops.Done()
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	var reply wirepb.AcquireReply
	if err := c.doHeld(ctx, wire.OpAcquire, &wirepb.AcquireRequest{Ranges: wire.RangesToPB(ranges)}, &reply); err != nil {
		return c.opErr("read", err)
	}
	jobs := make([]job, len(ranges))
	for i, r := range ranges {
		jobs[i] = job{buf: dst[i], addr: r}
	}
	// A READ still in the network when the call failed reads the unit's
	// memory into none of ours: this side's queue pairs are gone.
	_, err := c.transfer(ctx, OpRead, jobs)
	c.release(reply.Lease)
	if err != nil {
		return c.opErr("read", err)
	}
	return nil
}

// release sends RELEASE without waiting for the answer: the bytes were
// read already.
func (c *Conn) release(lease uint64) {
	if c.begin(context.Background()) != nil {
		return
	}
	go func() {
		defer c.ops.Done()
		c.cleanup(wire.OpRelease, &wirepb.ReleaseRequest{Lease: lease})
	}()
}

// Free releases cells on the unit (see storage.Unit.Free).
func (c *Conn) Free(ctx context.Context, cells []engine.RemoteAddr) error {
	if err := wire.CheckCount("cells", len(cells)); err != nil {
		return c.opErr("free", err)
	}
	if err := c.begin(ctx); err != nil {
		return c.opErr("free", err)
	}
	defer c.ops.Done()
	if len(cells) == 0 {
		return nil
	}
	if err := c.wc.Do(ctx, wire.OpFree, &wirepb.FreeRequest{Cells: wire.RangesToPB(cells)}, nil, &wirepb.Empty{}, nil); err != nil {
		return c.opErr("free", err)
	}
	return nil
}

// Gone reports whether the control connection to the unit has ended.
func (c *Conn) Gone() bool {
	select {
	case <-c.wc.Done():
		return true
	default:
		return false
	}
}

// Close closes the control connection (the unit then destroys its queue
// pairs, aborts reservations and releases leases), fails calls in flight
// with errors wrapping [engine.ErrClosed], waits for them and destroys
// this side's queue pairs. It is idempotent.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		c.closing.Store(true)
		close(c.done)
		c.mu.Lock()
		wc := c.wc // nil while a dial has none yet: it closes its own
		c.mu.Unlock()
		var errs []error
		if wc != nil {
			errs = append(errs, wc.Close())
		}
		c.ops.Wait()
		c.mu.Lock()
		if c.set != nil {
			errs = append(errs, c.set.Close())
			c.set = nil
		}
		c.mu.Unlock()
		c.t.conns.Remove(c)
		c.closeErr = errors.Join(errs...)
	})
	return c.closeErr
}

// String names the connection for logs.
func (c *Conn) String() string { return "rdma " + strings.TrimPrefix(c.addr, "tcp://") }
