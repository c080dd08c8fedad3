package storage

// The unit server puts a [Unit] on the network with the framed protocol of
// package wire (see wire/spec.md). Its handlers move payload bytes with no
// intermediate buffer:
//
//	WRITE       sizes checked → reserve one extent per size → the payload is
//	            read from the socket straight into the extents → commit →
//	            reply the extents' addresses. Any failure (a client that
//	            disconnects mid-payload included) aborts the reservation:
//	            no partial extent becomes readable and no space leaks. The
//	            payload must come at ServerConfig.MinWriteRate or faster,
//	            and its reservation must not time out while it comes
//	            (Config.ReserveTimeout, checked every 4 MiB), else the
//	            WRITE is aborted and the connection cut: a peer cannot
//	            hold the space it claimed by trickling it.
//	READ        lease the ranges → reply with the leased views of the
//	            arena as the payload, written with writev straight from
//	            shared memory → release the lease once written.
//	FREE        free cells.
//	UNIT_STATS  the unit's accounting.
//
// and, for clients on the same host, the shared-memory ops and the fd
// socket of shm.go.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/internal/hostid"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// Role is the role a unit announces in its handshake and registration.
const Role = "unit"

// DefaultReserveWait is how long a WRITE waits for space in a full unit
// unless [ServerConfig.ReserveWait] says otherwise.
const DefaultReserveWait = 5 * time.Second

// ServerConfig configures a [Server].
type ServerConfig struct {
	// Token, when set, must be presented by every client in its handshake.
	Token string
	// TrustPeerCred admits a peer on a unix socket that runs as this
	// process's user (SO_PEERCRED) without the token.
	TrustPeerCred bool
	// RefuseClearToken refuses a peer that sends the token in clear (a
	// client older than the challenge handshake, wire/spec.md
	// "Handshake"); by default such a peer is still admitted.
	RefuseClearToken bool
	// Logger receives the wire server's rare events (a listener out of
	// file descriptors, refused connections); nil discards them.
	Logger *slog.Logger
	// Name is free-form, announced in the handshake for logs and stats.
	Name string
	// ReserveWait bounds how long a WRITE waits for space when the unit is
	// full before it is answered with CODE_CAPACITY (0: 5 s). The
	// connection reads nothing else meanwhile, so keep it below the
	// clients' ping timeout.
	ReserveWait time.Duration
	// MinWriteRate is the slowest a WRITE's payload may come, in bytes a
	// second: the whole of it must arrive within the frame timeout plus
	// its size ÷ MinWriteRate of the space being reserved for it, else
	// the WRITE is aborted (its space freed, nothing committed) and the
	// connection, cut inside the payload, is answered with an error that
	// names the rate and the bytes that came, and closed. It bounds how
	// long a peer that trickles a payload keeps the space it claimed
	// (else each 4 MiB within the frame timeout would do). 0:
	// DefaultMinWriteRate; negative: no such bound.
	MinWriteRate int64
	// FrameTimeout is the wire server's (see [wire.ServerConfig]; 0: its
	// default, 30 s): the rest of a frame, and each 4 MiB of a payload,
	// must arrive within it.
	FrameTimeout time.Duration
	// IdleTimeout closes a connection with no frame for this long (0: the
	// wire default, 5 min), but not a same-host one while it holds a
	// reservation or a lease, whichever process holds its socket: the
	// client (or a child it forked) uses them through its own mapping
	// without a frame (see shm.go).
	IdleTimeout time.Duration
	// NoRing refuses control rings on the fd socket (see ServeShm):
	// same-host clients then send their control requests over the socket.
	NoRing bool
	// MaxRings bounds the control rings open at once (each holds two
	// rings of shared memory and two goroutines a side); a client asking
	// past it is told the unit offers none and uses the socket (0:
	// DefaultMaxRings).
	MaxRings int
	// RingSpin is how long the unit's end of a control ring spins before
	// it parks until the client rings (0: shmring.DefaultSpin; negative:
	// not at all).
	RingSpin time.Duration
	// Quarantine bounds how long the reservations and leases of a
	// same-host connection that ended without the client's goodbye
	// (SHM_GOODBYE) stay out of reuse while the client process lives:
	// it may still be copying into them (see quarantine.go). They go
	// back earlier when that process exits, at once when they cover no
	// byte, and past MaxQuarantinedPerProcess sessions of that process or
	// MaxQuarantined in all, the process's oldest session's go back early
	// (this session's at once if the process has none there). 0:
	// DefaultQuarantine; negative: none, they go back when the connection
	// ends.
	Quarantine time.Duration
	// RDMA, when set, serves RDMA_CONNECT and RDMA_SEGMENTS with it
	// (transport/rdma.Target); NewServer makes it the unit's segment
	// watcher. Nil: the unit offers no RDMA.
	RDMA RDMATarget
	// Observer, if set, sees every request answered (metrics; see
	// [wire.ServerConfig.Observer]).
	Observer wire.Observer
}

// Server serves one [Unit] over any number of listeners. It is safe for
// concurrent use. The unit must outlive the server: close the server
// (which waits for its handlers, so nothing touches the arena afterwards)
// before the unit.
type Server struct {
	u   *Unit
	cfg ServerConfig
	ws  *wire.Server
	// reserveWaited is why a write waiting for room ends at the reserve
	// wait: its refusal says so, and for how long it waited.
	reserveWaited error

	// The fd socket (see ServeShm).
	mu      sync.Mutex
	closed  bool
	fdStop  chan struct{} // closed with closed set: ends ServeShm's back-offs
	fdSock  string
	fdLs    map[*net.UnixListener]struct{}
	fdConns map[*net.UnixConn]struct{}
	wg      sync.WaitGroup
	rings   atomic.Int64 // control rings open
	// fdPending counts fd socket exchanges whose request is not read
	// yet; past maxFdPending a connection is answered FdBusy at once.
	fdPending    atomic.Int64
	maxFdPending int64

	traffic traffic // column bytes by transport (DataBytes)

	quar quarantines // dead sessions' holds (quarantine.go)
}

// DefaultMinWriteRate is ServerConfig.MinWriteRate's default, 1 MiB/s:
// far below any link a unit serves over, so only a peer that trickles a
// payload on purpose (or over a link too slow to hold a reservation for)
// meets it.
const DefaultMinWriteRate = 1 << 20

// DefaultMaxRings is ServerConfig.MaxRings' default.
const DefaultMaxRings = 1024

// maxFdPending bounds the fd socket's connections waiting for their
// request (each for up to fdRequestTimeout): an exchange takes
// microseconds once its request came.
const maxFdPending = 256

// NewServer returns a server for u. It starts nothing; call
// [Server.Serve].
func NewServer(u *Unit, cfg ServerConfig) *Server {
	if cfg.ReserveWait <= 0 {
		cfg.ReserveWait = DefaultReserveWait
	}
	reserveWaited := fmt.Errorf("no room within the unit's reserve wait of %v: %w", cfg.ReserveWait, context.DeadlineExceeded)
	if cfg.MinWriteRate == 0 {
		cfg.MinWriteRate = DefaultMinWriteRate
	}
	if cfg.MaxRings <= 0 {
		cfg.MaxRings = DefaultMaxRings
	}
	if cfg.Quarantine == 0 {
		cfg.Quarantine = DefaultQuarantine
	}
	s := &Server{u: u, cfg: cfg, reserveWaited: reserveWaited, fdStop: make(chan struct{}), fdLs: map[*net.UnixListener]struct{}{}, fdConns: map[*net.UnixConn]struct{}{}, maxFdPending: maxFdPending}
	s.quar.max, s.quar.maxProc = MaxQuarantined, MaxQuarantinedPerProcess
	s.ws = wire.NewServer(wire.ServerConfig{
		// Each handshake is answered with the unit's identity as it is
		// then (the controller may re-identify the unit), and a client
		// that expects another unit or incarnation is refused.
		Hello:            s.Hello(),
		CheckHello:       s.CheckHello,
		Token:            cfg.Token,
		TrustPeerCred:    cfg.TrustPeerCred,
		RefuseClearToken: cfg.RefuseClearToken,
		Logger:           cfg.Logger,
		IdleTimeout:      cfg.IdleTimeout,
		FrameTimeout:     cfg.FrameTimeout,
		NewSession:       s.newSession,
		Observer:         cfg.Observer,
	})
	s.ws.Handle(wire.OpWrite, s.write)
	// Reads, frees and stats never wait on anything slow: run them on the
	// read loop. A write may wait for capacity, so it gets a goroutine
	// (the loop still waits for its payload to be consumed).
	s.ws.HandleInline(wire.OpRead, s.read)
	s.ws.HandleInline(wire.OpFree, s.free)
	s.ws.HandleInline(wire.OpUnitStats, s.stats)
	// Shared memory (shm.go): only RESERVE may wait for space.
	s.ws.HandleInline(wire.OpShmSegments, s.shmSegments)
	s.ws.Handle(wire.OpReserve, s.reserve)
	s.ws.HandleInline(wire.OpReserveCommit, s.reserveCommit)
	s.ws.HandleInline(wire.OpReserveAbort, s.reserveAbort)
	s.ws.HandleInline(wire.OpAcquire, s.acquire)
	s.ws.HandleInline(wire.OpRelease, s.release)
	s.ws.HandleInline(wire.OpShmGoodbye, s.goodbye)
	if cfg.RDMA != nil {
		u.WatchSegments(cfg.RDMA)
		s.ws.Handle(wire.OpRdmaConnect, s.rdmaConnect)
		s.ws.HandleInline(wire.OpRdmaSegments, s.rdmaSegments)
	}
	return s
}

// Conns returns the connections the server holds open (control rings
// included).
func (s *Server) Conns() int { return s.ws.Conns() }

// Hello returns the handshake reply that describes the unit now: role,
// host, name, and the unit's current id, incarnation and cluster id. The
// result is a fresh message.
func (s *Server) Hello() *wirepb.Hello {
	return &wirepb.Hello{
		Role: Role, HostId: hostid.ID(), Name: s.cfg.Name,
		UnitId: uint32(s.u.ID()), Incarnation: s.u.Incarnation(), ClusterId: s.u.ClusterID(),
	}
}

// CheckHello answers a client's handshake: the unit's [Server.Hello], or,
// when the client's Hello names a unit id or incarnation (0: any) that is
// not this unit's, an error wrapping [engine.ErrLost] (the cells the
// client looks for are not here). It is meant for the wire server's
// per-handshake hook.
func (s *Server) CheckHello(peer *wirepb.Hello) (*wirepb.Hello, error) {
	h := s.Hello()
	switch {
	case peer.GetUnitId() != 0 && peer.GetUnitId() != h.UnitId:
		return nil, fmt.Errorf("this is storage unit %d, not unit %d: %w", h.UnitId, peer.GetUnitId(), engine.ErrLost)
	case peer.GetIncarnation() != 0 && peer.GetIncarnation() != h.Incarnation:
		return nil, fmt.Errorf("storage unit %d is incarnation %#x, not %#x (it restarted): %w",
			h.UnitId, h.Incarnation, peer.GetIncarnation(), engine.ErrLost)
	}
	return h, nil
}

// Serve accepts connections on l until the server closes; it returns nil
// after [Server.Close] or [Server.Shutdown].
func (s *Server) Serve(l net.Listener) error { return s.ws.Serve(l) }

// Shutdown stops accepting, answers new requests with CODE_CLOSED, waits
// for requests in flight until ctx ends, then closes every connection.
// The fd socket stops taking requests at once; control rings drain like
// the socket connections.
func (s *Server) Shutdown(ctx context.Context) error {
	s.stopFd()
	err := s.ws.Shutdown(ctx)
	err = errors.Join(err, s.closeFd())
	s.endQuarantines()
	return err
}

// Close closes the listeners and every connection at once and waits for
// the server's goroutines, handlers included. It gives back the holds in
// quarantine (see [ServerConfig.Quarantine]) at once. It is idempotent.
func (s *Server) Close() error {
	err := errors.Join(s.closeFd(), s.ws.Close())
	s.endQuarantines()
	return err
}

// Traffic returns the bytes the unit's wire server read and wrote on its
// sockets. Shared-memory puts and gets move only control messages there.
func (s *Server) Traffic() (in, out int64) { return s.ws.Traffic() }

// stopFd closes the fd socket's listeners: no new requests.
func (s *Server) stopFd() {
	s.mu.Lock()
	s.closeLocked()
	for l := range s.fdLs {
		l.Close()
	}
	s.mu.Unlock()
}

// closeLocked marks the fd socket closed, once. s.mu is held.
func (s *Server) closeLocked() {
	if !s.closed {
		s.closed = true
		close(s.fdStop)
	}
}

// closeFd closes the fd socket's listeners and connections (which ends
// the control rings they carry) and waits for their goroutines.
func (s *Server) closeFd() error {
	s.mu.Lock()
	s.closeLocked()
	for l := range s.fdLs {
		l.Close()
	}
	for c := range s.fdConns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

// HostID returns the identity of this machine that units announce (the
// kernel's boot id).
func HostID() string { return hostid.ID() }

// roomWait is the context a WRITE or RESERVE waits for room under: the
// unit's reserve wait, or the request's wait_ms where shorter, its end
// naming which; with noWait, none.
func (s *Server) roomWait(ctx context.Context, noWait bool, waitMs uint64) (context.Context, context.CancelFunc) {
	if noWait {
		return engine.WithoutWait(ctx), func() {}
	}
	if waitMs > 0 && waitMs < uint64(s.cfg.ReserveWait/time.Millisecond) {
		wait := time.Duration(waitMs) * time.Millisecond
		return context.WithTimeoutCause(ctx, wait, fmt.Errorf("no room within the request's wait of %v: %w", wait, context.DeadlineExceeded))
	}
	return context.WithTimeoutCause(ctx, s.cfg.ReserveWait, s.reserveWaited)
}

// write serves WRITE: WriteRequest + the extents back to back → WriteReply.
func (s *Server) write(ctx context.Context, req *wire.Request, rw *wire.ReplyWriter) {
	var m wirepb.WriteRequest
	if err := req.Decode(&m); err != nil {
		rw.Error(err)
		return
	}
	sizes, err := writeSizes(m.Sizes, req.PayloadLen)
	if err != nil {
		rw.Error(err)
		return
	}
	rctx, cancel := s.roomWait(ctx, m.NoWait, m.WaitMs)
	r, err := s.u.ReserveHeld(rctx, sizes)
	cancel()
	if err != nil {
		rw.Error(err) // the wire server discards the payload
		return
	}
	dst := make([][]byte, 0, len(sizes))
	for i, n := range sizes {
		if n > 0 {
			dst = append(dst, r.Buf(i))
		}
	}
	// The payload is cut off at the first 4 MiB boundary past the
	// reservation's timeout: what comes after could not commit.
	if err := req.ReadPayloadWhile(dst, s.cfg.MinWriteRate, r.Err); err != nil {
		r.Abort()
		if errors.Is(err, context.DeadlineExceeded) && s.cfg.Logger != nil {
			// Cut off for trickling its payload (the connection is
			// answered with err and closed): a peer holding space on
			// purpose, or one on a link too slow for MinWriteRate or
			// the reserve timeout.
			s.cfg.Logger.Warn("storage: cut off a slow WRITE", "peer", req.Peer.GetName(), "peer_host", req.Peer.GetHostId(), "err", err)
		}
		rw.Error(err)
		if errors.Is(err, wire.ErrUnavailable) {
			// The connection is broken and its read loop is ending, which
			// cancels ctx. Returning before that races with the loop:
			// after a handler returns, wire.Server calls DiscardPayload,
			// which marks the request broken again while the loop reads
			// that flag.
			<-ctx.Done()
		}
		return
	}
	addrs := make([]engine.RemoteAddr, len(sizes))
	for i := range addrs {
		addrs[i] = r.Addr(i)
	}
	if err := r.Commit(); err != nil {
		r.Abort()
		rw.Error(err)
		return
	}
	s.traffic.wrote(payloadIdx(req), int64(req.PayloadLen))
	rw.Reply(&wirepb.WriteReply{Extents: wire.RangesToPB(addrs)}, nil, nil)
}

// writeSizes checks a WRITE's sizes against the limits and the payload
// length before anything is reserved.
func writeSizes(sizes []uint64, payloadLen uint64) ([]int64, error) {
	if err := wire.CheckCount("extents", len(sizes)); err != nil {
		return nil, err
	}
	out := make([]int64, len(sizes))
	var total uint64
	for i, n := range sizes {
		if n > math.MaxInt64 || total+n < total {
			return nil, fmt.Errorf("extent %d of %d bytes overflows: %w", i, n, engine.ErrInvalid)
		}
		total += n
		out[i] = int64(n)
	}
	if total != payloadLen {
		return nil, fmt.Errorf("extents add up to %d bytes, payload is %d: %w", total, payloadLen, engine.ErrInvalid)
	}
	return out, nil
}

// read serves READ: ReadRequest → Empty + the ranges' bytes back to back,
// written from the leased views.
func (s *Server) read(_ context.Context, req *wire.Request, rw *wire.ReplyWriter) {
	var m wirepb.ReadRequest
	if err := req.Decode(&m); err != nil {
		rw.Error(err)
		return
	}
	ranges, err := wire.RangesFromPB(m.Ranges)
	if err != nil {
		rw.Error(err)
		return
	}
	var total uint64
	for _, a := range ranges {
		if total += a.Len; total > wire.MaxPayloadLen || total < a.Len {
			rw.Error(fmt.Errorf("%d ranges exceed the payload limit of %d bytes: %w", len(ranges), uint64(wire.MaxPayloadLen), engine.ErrInvalid))
			return
		}
	}
	l, err := s.u.Acquire(ranges)
	if err != nil {
		rw.Error(err)
		return
	}
	payload := make(net.Buffers, 0, len(ranges))
	for i := range ranges {
		if b := l.Bytes(i); len(b) > 0 {
			payload = append(payload, b)
		}
	}
	s.traffic.readBytes(payloadIdx(req), int64(total))
	rw.Reply(&wirepb.Empty{}, payload, l.Release)
}

// free serves FREE: FreeRequest → Empty.
func (s *Server) free(_ context.Context, req *wire.Request, rw *wire.ReplyWriter) {
	var m wirepb.FreeRequest
	if err := req.Decode(&m); err != nil {
		rw.Error(err)
		return
	}
	cells, err := wire.RangesFromPB(m.Cells)
	if err != nil {
		rw.Error(err)
		return
	}
	if err := s.u.Free(cells); err != nil {
		rw.Error(err)
		return
	}
	rw.Reply(&wirepb.Empty{}, nil, nil)
}

// stats serves UNIT_STATS: Empty → UnitStats.
func (s *Server) stats(_ context.Context, req *wire.Request, rw *wire.ReplyWriter) {
	if err := req.Decode(&wirepb.Empty{}); err != nil {
		rw.Error(err)
		return
	}
	rw.Reply(StatsToPB(s.u.ID(), s.u.Stats()), nil, nil)
}

// StatsToPB encodes a unit's stats for a UNIT_STATS reply.
func StatsToPB(id engine.UnitID, st Stats) *wirepb.UnitStats {
	return &wirepb.UnitStats{
		UnitId: uint32(id), Capacity: st.Capacity, Mapped: st.Mapped, Used: st.Used, Reserved: st.Reserved,
		Segments: int64(st.Segments), Extents: int64(st.Extents), OpenReservations: int64(st.OpenReservations),
		Leases: int64(st.Leases), HugePages: st.HugePages, PageSize: st.PageSize,
		Quarantined: st.Quarantined, QuarantinedSessions: int64(st.QuarantinedSessions),
	}
}
