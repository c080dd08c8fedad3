package storage

// RDMA for clients on other hosts (transport/rdma). The unit registers
// each arena segment with its device once, when it is mapped (the target
// is the unit's SegmentWatcher; a segment it cannot register takes no
// extent, see watch.go), and serves two ops:
//
//	RDMA_CONNECT   the client's queue pairs → the unit's, connected to
//	               them, and the registered segments (address, rkey);
//	RDMA_SEGMENTS  segments the client has not seen yet.
//
// Bytes then move by one-sided RDMA READ and WRITE between the client's
// memory and the arena, with no work for the unit's CPU; the connection
// carries only RESERVE/RESERVE_COMMIT/RESERVE_ABORT around a put's writes
// and ACQUIRE/RELEASE around a get's reads, as for shared memory. The
// queue pairs belong to the connection's session: when it ends they are
// destroyed, so a dead client's QPs never outlive it.
//
// Trust: as with shared memory, a client that passed the handshake can
// read and write every segment, all of it: the target registers each
// segment whole for remote read and write and gives its rkey to every
// client that asks (RDMA_CONNECT, RDMA_SEGMENTS). Reservations and leases
// order honest clients; they do not fence the others off (see the
// transport/rdma package doc).

import (
	"context"
	"fmt"
	"io"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// RDMATarget is the unit side of an RDMA transport.
type RDMATarget interface {
	SegmentWatcher
	// Connect makes the unit's queue pairs for a client's and returns the
	// reply and what destroys them.
	Connect(req *wirepb.RdmaConnectRequest) (*wirepb.RdmaConnectReply, io.Closer, error)
	// Segments describes the live registered segments among ids (all
	// when ids is empty); an unknown id is an error wrapping
	// engine.ErrNotFound.
	Segments(ids []uint32) ([]*wirepb.RdmaSegment, error)
}

// setRDMA makes c the session's queue pairs, closing the previous ones.
// It does so before RDMA_CONNECT is answered: a client whose WRITEs failed
// reconnects before it aborts their reservation, and counts on the answer
// meaning none of them can land any more.
func (s *session) setRDMA(c io.Closer) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		c.Close()
		return fmt.Errorf("connection closed: %w", engine.ErrClosed)
	}
	old := s.rdma
	s.rdma = c
	s.mu.Unlock()
	if old != nil {
		old.Close()
	}
	return nil
}

// rdmaConnect serves RDMA_CONNECT: RdmaConnectRequest → RdmaConnectReply.
func (s *Server) rdmaConnect(_ context.Context, req *wire.Request, rw *wire.ReplyWriter) {
	sess, err := sessionOf(req)
	var m wirepb.RdmaConnectRequest
	if err == nil {
		err = req.Decode(&m)
	}
	if err != nil {
		rw.Error(err)
		return
	}
	reply, qps, err := s.cfg.RDMA.Connect(&m)
	if err == nil {
		err = sess.setRDMA(qps)
	}
	if err != nil {
		rw.Error(err)
		return
	}
	rw.Reply(reply, nil, nil)
}

// rdmaSegments serves RDMA_SEGMENTS: RdmaSegmentsRequest → RdmaSegmentsReply.
func (s *Server) rdmaSegments(_ context.Context, req *wire.Request, rw *wire.ReplyWriter) {
	var m wirepb.RdmaSegmentsRequest
	if err := req.Decode(&m); err != nil {
		rw.Error(err)
		return
	}
	if err := wire.CheckCount("segment ids", len(m.Ids)); err != nil {
		rw.Error(err)
		return
	}
	segs, err := s.cfg.RDMA.Segments(m.Ids)
	if err != nil {
		rw.Error(err)
		return
	}
	rw.Reply(&wirepb.RdmaSegmentsReply{Segments: segs}, nil, nil)
}
