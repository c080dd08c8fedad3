package storage

import (
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/internal/shmring"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// A storage unit's limits, defaults and fd socket statuses are the ones
// wire/spec.md states: each phrase, made from the constant, is in it
// (white space folded).
func TestSpecStatesTheUnitsLimits(t *testing.T) {
	b, err := os.ReadFile("../wire/spec.md")
	require.NoError(t, err)
	spec := strings.Join(strings.Fields(string(b)), " ")
	s := func(d time.Duration) int { return int(d / time.Second) }
	for _, phrase := range []string{
		fmt.Sprintf("(up to its reserve wait, %d s by default, `tq serve --reserve-wait`)", s(DefaultReserveWait)),
		fmt.Sprintf("minimum write rate (%d MiB/s unless", DefaultMinWriteRate>>20),
		fmt.Sprintf("(the unit's reserve timeout, %d s unless configured otherwise", s(DefaultReserveTimeout)),
		fmt.Sprintf("(%d s by default, `tq serve --shm-quarantine`)", s(DefaultQuarantine)),
		fmt.Sprintf("A connection may hold at most %d reservations and leases at once", MaxSessionHolds),
		fmt.Sprintf("more than %d reservations and leases on one connection", MaxSessionHolds),
		fmt.Sprintf("(%d connections are waiting for their request already", maxFdPending),
		fmt.Sprintf("(ring size 0: the unit's default, %d KiB)", shmring.DefaultRingSize>>10),
		fmt.Sprintf("A page lists at most a bounded number of extents (%d by default)", DefaultReconcilePage),
		fmt.Sprintf("(not full), every %d s by default", s(DefaultReconcileInterval)),
		fmt.Sprintf("reconcile grace ago (%d s by default)", s(DefaultReconcileGrace)),
		fmt.Sprintf("| size u64 (%d bytes, one sendmsg)", wire.FdReplySize),
		fmt.Sprintf("request \"%s\" | segment u32 | token length u16", wire.FdMagic),
		fmt.Sprintf("or \"%s\" | segment u32 | incarnation u64", wire.FdMagicInc),
		fmt.Sprintf("request \"%s\" | ring size u32", wire.FdRingMagic),
		fmt.Sprintf("`status`: %d ok, %d wrong or missing token", wire.FdOK, wire.FdUnauthenticated),
		fmt.Sprintf("%d no live segment with that id, %d malformed request, %d the unit is closing, %d the unit is busy",
			wire.FdNotFound, wire.FdBadRequest, wire.FdClosed, wire.FdBusy),
		fmt.Sprintf("%d another run of the unit than the `TQF2` request names", wire.FdNotThisUnit),
		fmt.Sprintf("`status` as above, plus %d: the unit offers no ring", wire.FdNotSupported),
	} {
		assert.True(t, strings.Contains(spec, phrase), "wire/spec.md does not state %q", phrase)
	}
}

// The shared-memory ops' refusals wire/spec.md names: an unknown
// reservation or lease is CODE_NOT_FOUND; after SHM_GOODBYE, RESERVE and
// ACQUIRE are CODE_CLOSED; on a connection that is not a unix socket, to a
// unit without RDMA, SHM_SEGMENTS, RESERVE and ACQUIRE are
// CODE_NOT_SUPPORTED.
func TestSpecShmRefusals(t *testing.T) {
	u := newTestUnit(t, testConfig())
	ctx := t.Context()
	c := dialUnit(t, serve(t, u, ServerConfig{}), "")
	addrs, err := remoteWrite(ctx, c, []byte("committed"))
	require.NoError(t, err)
	ranges := wire.RangesToPB(addrs)

	for _, tc := range []struct {
		op  wire.Op
		req proto.Message
	}{
		{wire.OpReserveCommit, &wirepb.ReservationRequest{Reservation: 99}},
		{wire.OpReserveAbort, &wirepb.ReservationRequest{Reservation: 99}},
		{wire.OpRelease, &wirepb.ReleaseRequest{Lease: 99}},
	} {
		assert.ErrorIs(t, c.Do(ctx, tc.op, tc.req, nil, &wirepb.Empty{}, nil), engine.ErrNotFound, "%v of an unknown id", tc.op)
	}

	srv := NewServer(u, ServerConfig{})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	served := make(chan struct{})
	go func() { defer close(served); srv.Serve(l) }()
	t.Cleanup(func() { srv.Close(); <-served })
	tc := dialUnit(t, "tcp://"+l.Addr().String(), "")
	assert.ErrorIs(t, tc.Do(ctx, wire.OpShmSegments, &wirepb.Empty{}, nil, &wirepb.ShmSegmentsReply{}, nil), engine.ErrNotSupported, "SHM_SEGMENTS over TCP")
	assert.ErrorIs(t, tc.Do(ctx, wire.OpReserve, &wirepb.ReserveRequest{Sizes: []uint64{1}}, nil, &wirepb.ReserveReply{}, nil), engine.ErrNotSupported, "RESERVE over TCP")
	assert.ErrorIs(t, tc.Do(ctx, wire.OpAcquire, &wirepb.AcquireRequest{Ranges: ranges}, nil, &wirepb.AcquireReply{}, nil), engine.ErrNotSupported, "ACQUIRE over TCP")

	require.NoError(t, c.Do(ctx, wire.OpShmGoodbye, &wirepb.Empty{}, nil, &wirepb.Empty{}, nil))
	assert.ErrorIs(t, c.Do(ctx, wire.OpReserve, &wirepb.ReserveRequest{Sizes: []uint64{1}}, nil, &wirepb.ReserveReply{}, nil), engine.ErrClosed, "RESERVE after SHM_GOODBYE")
	assert.ErrorIs(t, c.Do(ctx, wire.OpAcquire, &wirepb.AcquireRequest{Ranges: ranges}, nil, &wirepb.AcquireReply{}, nil), engine.ErrClosed, "ACQUIRE after SHM_GOODBYE")
}
