package rdma

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire/wirepb"
)

// MaxQPs bounds the queue pairs one client connection may ask a unit for.
const MaxQPs = 16

// targetAckTimeout and targetRetryCnt are the local ACK timeout and retry
// count of the unit's queue pairs. They govern only the requests a queue
// pair sends, and the unit's send none: every READ and WRITE is the
// client's, on its own queue pairs with its own values (Config.AckTimeout
// and RetryCnt). RTS needs valid ones all the same. The client's, which
// RDMA_CONNECT carries, are not used (wire/spec.md).
const (
	targetAckTimeout = DefaultAckTimeout
	targetRetryCnt   = DefaultRetryCnt
)

// Target is a storage unit's side of the RDMA transport: it registers the
// unit's arena segments with its device (it is the unit's
// storage.SegmentWatcher) and makes the queue pairs clients connect to
// (RDMA_CONNECT). Hand it to the unit's server in
// storage.ServerConfig.RDMA. It is safe for concurrent use.
type Target struct {
	dev *Device
	log *slog.Logger

	mu     sync.Mutex
	segs   map[uint32]*targetSeg
	sets   map[*qpSet]struct{}
	closed bool
	errs   []error // deregistrations that failed
}

type targetSeg struct {
	mr   *MR
	size uint64
	// err: registration failed. The unit then places no new extent in
	// the segment, but one that already held extents when the target
	// began watching keeps them until they go: clients that meet them
	// are told why they cannot reach them.
	err error
}

// NewTarget serves RDMA on dev, which the caller keeps open until after
// [Target.Close].
func NewTarget(dev *Device) *Target {
	return &Target{dev: dev, log: slog.Default(), segs: map[uint32]*targetSeg{}, sets: map[*qpSet]struct{}{}}
}

// Device is the target's device.
func (t *Target) Device() *Device { return t.dev }

// SegmentMapped registers a new segment for remote reads and writes. A
// registration that fails is logged (slog's default logger) and returned,
// naming the locked-memory limit when that is what it ran into: the unit
// then places no extent in the segment (see storage.SegmentWatcher), and
// clients that meet one already there are told why (see
// [Target.Segments]).
//
// A segment mapped again before it is dropped keeps its one registration,
// whose rkey clients may hold already: the same memory again is a no-op,
// other memory under the id of a live registration is refused with an
// error wrapping [engine.ErrInvalid] (the registration stays, and one
// SegmentDropped lets it go). A segment whose registration failed is
// registered again.
func (t *Target) SegmentMapped(id uint32, mem []byte, _ int) error {
	t.mu.Lock()
	err := t.mappedAgainLocked(id, mem)
	t.mu.Unlock()
	if err != errNotMapped {
		return err
	}
	mr, err := t.dev.Register(mem, AccessLocalWrite|AccessRemoteRead|AccessRemoteWrite)
	if err != nil {
		var lim unix.Rlimit
		memlock := uint64(unix.RLIM_INFINITY)
		if unix.Getrlimit(unix.RLIMIT_MEMLOCK, &lim) == nil {
			memlock = lim.Cur
		}
		err = registerError(id, len(mem), memlock, err)
		t.log.Error("rdma: segment not registered: the unit places no new extent in it",
			"device", t.dev.Name(), "segment", id, "bytes", len(mem), "err", err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	// Another SegmentMapped of id may have registered it meanwhile.
	if again := t.mappedAgainLocked(id, mem); again != errNotMapped {
		if mr != nil {
			again = errors.Join(again, mr.Close())
		}
		return again
	}
	t.segs[id] = &targetSeg{mr: mr, size: uint64(len(mem)), err: err}
	return err
}

// errNotMapped says segment id has no live registration yet.
var errNotMapped = errors.New("rdma: segment not mapped")

// mappedAgainLocked is what SegmentMapped(id, mem) returns when id has a
// live registration already, or errNotMapped. The caller holds t.mu.
func (t *Target) mappedAgainLocked(id uint32, mem []byte) error {
	s := t.segs[id]
	if s == nil || s.mr == nil {
		return errNotMapped
	}
	if s.mr.Addr == sliceAddr(mem) && s.size == uint64(len(mem)) {
		return nil
	}
	return fmt.Errorf("segment %d is registered already (%d bytes at %#x), not %d bytes at %#x: %w",
		id, s.size, s.mr.Addr, len(mem), sliceAddr(mem), engine.ErrInvalid)
}

// registerError says why segment id could not be registered. Registering
// pins the memory: past the locked-memory limit (memlock, RLIMIT_MEMLOCK)
// ibv_reg_mr fails with ENOMEM, and the error names the limit.
func registerError(id uint32, size int, memlock uint64, err error) error {
	if errors.Is(err, syscall.ENOMEM) && memlock != uint64(unix.RLIM_INFINITY) {
		return fmt.Errorf("register segment %d (%d bytes) under a locked-memory limit (RLIMIT_MEMLOCK) of %d bytes: "+
			"raise it (ulimit -l, LimitMEMLOCK=, or CAP_IPC_LOCK): %w", id, size, memlock, err)
	}
	return fmt.Errorf("register segment %d (%d bytes): %w", id, size, err)
}

// SegmentDropped deregisters a segment.
func (t *Target) SegmentDropped(id uint32) {
	t.mu.Lock()
	s := t.segs[id]
	delete(t.segs, id)
	t.mu.Unlock()
	if s != nil && s.mr != nil {
		if err := s.mr.Close(); err != nil {
			t.mu.Lock()
			t.errs = append(t.errs, fmt.Errorf("deregister segment %d: %w", id, err))
			t.mu.Unlock()
		}
	}
}

// Segments describes live registered segments (all of them when ids is
// empty), each once however often ids names it.
func (t *Target) Segments(ids []uint32) ([]*wirepb.RdmaSegment, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(ids) == 0 {
		out := make([]*wirepb.RdmaSegment, 0, len(t.segs))
		for id, s := range t.segs {
			if s.mr != nil {
				out = append(out, segPB(id, s))
			}
		}
		return out, nil
	}
	out := make([]*wirepb.RdmaSegment, 0, min(len(ids), len(t.segs)))
	seen := map[uint32]bool{}
	for _, id := range ids {
		s, ok := t.segs[id]
		switch {
		case !ok:
			return nil, fmt.Errorf("segment %d is not live: %w", id, engine.ErrNotFound)
		case s.err != nil:
			return nil, s.err
		case seen[id]:
			continue
		}
		seen[id] = true
		out = append(out, segPB(id, s))
	}
	return out, nil
}

func segPB(id uint32, s *targetSeg) *wirepb.RdmaSegment {
	return &wirepb.RdmaSegment{Id: id, Addr: uint64(s.mr.Addr), Size: s.size, Rkey: s.mr.RKey}
}

// Connect makes one queue pair per client queue pair, connected to it
// and ready, on a completion queue of their own. The request's timeout and
// retry_cnt are the client's own and are not used (see targetAckTimeout).
func (t *Target) Connect(req *wirepb.RdmaConnectRequest) (*wirepb.RdmaConnectReply, io.Closer, error) {
	switch n := len(req.Qps); {
	case n == 0 || n > MaxQPs:
		return nil, nil, fmt.Errorf("rdma connect with %d queue pairs (want 1 to %d): %w", n, MaxQPs, engine.ErrInvalid)
	case req.Emulated != t.dev.Emulated():
		return nil, nil, fmt.Errorf("client device %s (emulated %v) cannot reach unit device %s (emulated %v): %w",
			req.Device, req.Emulated, t.dev.Name(), t.dev.Emulated(), engine.ErrNotSupported)
	}
	remote := make([]Endpoint, len(req.Qps))
	for i, q := range req.Qps {
		if len(q.Gid) != 16 || q.Qpn == 0 || q.Qpn > 0xffffff || q.Psn > 0xffffff || q.Lid > 0xffff {
			return nil, nil, fmt.Errorf("rdma connect: queue pair %d: malformed endpoint (gid %d bytes, qpn %#x, psn %#x, lid %#x): %w",
				i, len(q.Gid), q.Qpn, q.Psn, q.Lid, engine.ErrInvalid)
		}
		remote[i] = Endpoint{LID: uint16(q.Lid), QPN: q.Qpn, PSN: q.Psn}
		copy(remote[i].GID[:], q.Gid)
	}
	mtu := t.dev.Port().MTU
	if req.Mtu != 0 && int(req.Mtu) < mtu {
		mtu = int(req.Mtu)
	}
	own := t.dev.ReadDepth()
	set, err := newQPSet(t.dev, len(remote), QPCaps{MaxWR: 1, MaxSGE: 1})
	if err != nil {
		return nil, nil, err
	}
	eps, err := set.connect(remote, HandshakeOpts{Access: AccessRemoteRead | AccessRemoteWrite, MTU: mtu,
		Timeout: targetAckTimeout, RetryCnt: targetRetryCnt,
		ReadDepth: own.With(peerReadDepth(req.MaxQpInitRdAtom, req.MaxQpRdAtom))})
	if err != nil {
		set.Close()
		return nil, nil, err
	}
	segs, _ := t.Segments(nil)
	reply := &wirepb.RdmaConnectReply{Device: t.dev.Name(), Emulated: t.dev.Emulated(), Mtu: uint32(mtu), Segments: segs,
		MaxQpInitRdAtom: uint32(own.Init), MaxQpRdAtom: uint32(own.Resp)}
	for _, e := range eps {
		reply.Qps = append(reply.Qps, endpointPB(e))
	}
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		set.Close()
		return nil, nil, fmt.Errorf("rdma target closed: %w", engine.ErrClosed)
	}
	t.sets[set] = struct{}{}
	t.mu.Unlock()
	return reply, closerFunc(func() error {
		// Whoever takes the set out of t.sets closes it: this closer,
		// or Target.Close, which takes them all.
		t.mu.Lock()
		_, ours := t.sets[set]
		delete(t.sets, set)
		t.mu.Unlock()
		if !ours {
			return nil
		}
		return set.Close()
	}), nil
}

// Connections reports the client connections with queue pairs now.
func (t *Target) Connections() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.sets)
}

// Close destroys every queue pair it made and reports deregistrations
// that failed along the way. The unit deregisters its segments when it closes
// (close the unit's server, then the unit, then the target, then the
// device).
func (t *Target) Close() error {
	t.mu.Lock()
	t.closed = true
	sets := t.sets
	t.sets = map[*qpSet]struct{}{}
	errs := t.errs
	t.errs = nil
	t.mu.Unlock()
	for s := range sets {
		errs = append(errs, s.Close())
	}
	return errors.Join(errs...)
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// peerReadDepth is the READ limits a peer sent in RDMA_CONNECT; a value
// past what a queue pair takes (255) is as good as no limit, so the own
// side's decides.
func peerReadDepth(init, resp uint32) ReadDepth {
	return ReadDepth{Init: uint8(min(init, 255)), Resp: uint8(min(resp, 255))}
}

func endpointPB(e Endpoint) *wirepb.RdmaEndpoint {
	return &wirepb.RdmaEndpoint{Lid: uint32(e.LID), Gid: e.GID[:], Qpn: e.QPN, Psn: e.PSN}
}

// qpSet is a completion queue and the queue pairs that use it.
type qpSet struct {
	cq       *CQ
	prepared []*PreparedQP
	qps      []*QP
}

func newQPSet(dev *Device, n int, caps QPCaps) (*qpSet, error) {
	cq, err := dev.NewCQ(max(64, n*int(caps.MaxWR)*2))
	if err != nil {
		return nil, err
	}
	s := &qpSet{cq: cq}
	for range n {
		p, err := dev.NewPreparedQP(cq, caps, rand.Uint32())
		if err != nil {
			s.Close()
			return nil, err
		}
		s.prepared = append(s.prepared, p)
	}
	return s, nil
}

// endpoints are the prepared QPs' endpoints.
func (s *qpSet) endpoints() []Endpoint {
	out := make([]Endpoint, len(s.prepared))
	for i, p := range s.prepared {
		out[i] = p.Endpoint()
	}
	return out
}

// connect hands the prepared QPs' endpoints back after connecting each
// to remote[i].
func (s *qpSet) connect(remote []Endpoint, o HandshakeOpts) ([]Endpoint, error) {
	eps := s.endpoints()
	for i, p := range s.prepared {
		q, err := p.Handshake(remote[i], o)
		if err != nil {
			s.prepared = s.prepared[i+1:]
			return nil, fmt.Errorf("queue pair %d: %w", i, err)
		}
		s.qps = append(s.qps, q)
	}
	s.prepared = nil
	return eps, nil
}

// Close destroys the QPs, then the CQ.
func (s *qpSet) Close() error {
	var errs []error
	for _, q := range s.qps {
		errs = append(errs, q.Close())
	}
	for _, p := range s.prepared {
		errs = append(errs, p.Close())
	}
	s.qps, s.prepared = nil, nil
	if s.cq != nil {
		errs = append(errs, s.cq.Close())
		s.cq = nil
	}
	return errors.Join(errs...)
}
