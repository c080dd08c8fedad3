package storage

import (
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// A unix connection's holds (one reservation, one lease) at its end, by
// how it ends: without a goodbye they stay in quarantine (this process,
// the client, lives on) until the server closes; after SHM_GOODBYE, or
// with the quarantine off, they go back at once.
func TestSessionEndQuarantine(t *testing.T) {
	for _, tc := range []struct {
		name       string
		quarantine time.Duration
		goodbye    bool
		kept       bool // in quarantine once the connection ended
	}{
		{name: "no goodbye", quarantine: time.Hour, kept: true},
		{name: "goodbye", quarantine: time.Hour, goodbye: true},
		{name: "quarantine off", quarantine: -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u, err := NewUnit(1, testConfig())
			require.NoError(t, err)
			defer u.Close()
			srv := NewServer(u, ServerConfig{Quarantine: tc.quarantine})
			path := filepath.Join(t.TempDir(), "unit.sock")
			l, err := net.Listen("unix", path)
			require.NoError(t, err)
			served := make(chan struct{})
			go func() { defer close(served); srv.Serve(l) }()
			defer func() { <-served }()
			defer srv.Close()

			ctx := t.Context()
			c := dialUnit(t, "unix://"+path, "")
			addrs, err := remoteWrite(ctx, c, make([]byte, 5000))
			require.NoError(t, err)
			var acq wirepb.AcquireReply
			require.NoError(t, c.Do(ctx, wire.OpAcquire, &wirepb.AcquireRequest{Ranges: wire.RangesToPB(addrs)}, nil, &acq, nil))
			var res wirepb.ReserveReply
			require.NoError(t, c.Do(ctx, wire.OpReserve, &wirepb.ReserveRequest{Sizes: []uint64{64 << 10}}, nil, &res, nil))
			held := u.Stats()
			require.Equal(t, 1, held.Leases)
			require.Equal(t, 1, held.OpenReservations)
			if tc.goodbye {
				require.NoError(t, c.Do(ctx, wire.OpShmGoodbye, &wirepb.Empty{}, nil, &wirepb.Empty{}, nil))
				st := u.Stats()
				assert.Zero(t, st.Leases, "leases after the goodbye")
				assert.Zero(t, st.OpenReservations, "open reservations after the goodbye")
				err := c.Do(ctx, wire.OpReserve, &wirepb.ReserveRequest{Sizes: []uint64{1}}, nil, &wirepb.ReserveReply{}, nil)
				assert.ErrorIs(t, err, engine.ErrClosed, "RESERVE after the goodbye")
			}
			c.Close()
			if !tc.kept {
				waitStats(t, u, "holds back", func(st Stats) bool { return st.Leases == 0 && st.OpenReservations == 0 })
				assert.Zero(t, u.Stats().Quarantined, "quarantined bytes")
				return
			}
			st := waitStats(t, u, "holds in quarantine", func(st Stats) bool { return st.Quarantined != 0 })
			assert.Equal(t, 1, st.Leases, "leases in quarantine")
			assert.Equal(t, 1, st.OpenReservations, "reservations in quarantine")
			assert.Equal(t, held.Used, st.Used, "used bytes")
			assert.Equal(t, int64(5000+64<<10), st.Quarantined, "quarantined bytes")
			sessions, n := srv.Quarantined()
			assert.Equal(t, 1, sessions, "sessions in quarantine")
			assert.Equal(t, st.Quarantined, n, "bytes in quarantine")

			require.NoError(t, srv.Close())
			st = u.Stats()
			assert.Zero(t, st.Leases, "leases after the server closed")
			assert.Zero(t, st.OpenReservations, "open reservations after the server closed")
			assert.Zero(t, st.Quarantined, "quarantined bytes after the server closed")
		})
	}
}

// UNIT_STATS reports a quarantined session — its holds' bytes and the
// session — while the quarantine lasts, and 0 of both once it ended.
// The reply used to leave the quarantine out: only Stats had the bytes.
func TestUnitStatsReportQuarantine(t *testing.T) {
	u, err := NewUnit(1, testConfig())
	require.NoError(t, err)
	defer u.Close()
	srv := NewServer(u, ServerConfig{Quarantine: time.Hour})
	path := filepath.Join(t.TempDir(), "unit.sock")
	l, err := net.Listen("unix", path)
	require.NoError(t, err)
	served := make(chan struct{})
	go func() { defer close(served); srv.Serve(l) }()
	defer func() { <-served }()
	defer srv.Close()

	ctx := t.Context()
	c := dialUnit(t, "unix://"+path, "")
	require.NoError(t, c.Do(ctx, wire.OpReserve, &wirepb.ReserveRequest{Sizes: []uint64{64 << 10}}, nil, &wirepb.ReserveReply{}, nil))
	c.Close()
	waitStats(t, u, "holds in quarantine", func(st Stats) bool { return st.Quarantined != 0 })

	var st wirepb.UnitStats
	require.NoError(t, dialUnit(t, "unix://"+path, "").Do(ctx, wire.OpUnitStats, &wirepb.Empty{}, nil, &st, nil))
	assert.Equal(t, int64(64<<10), st.Quarantined, "quarantined bytes in UNIT_STATS")
	assert.Equal(t, int64(1), st.QuarantinedSessions, "quarantined sessions in UNIT_STATS")
	assert.Equal(t, 1, u.Stats().QuarantinedSessions, "quarantined sessions in Stats")

	require.NoError(t, srv.Close()) // ends the quarantine
	after := StatsToPB(1, u.Stats())
	assert.Zero(t, after.Quarantined, "quarantined bytes after the quarantine")
	assert.Zero(t, after.QuarantinedSessions, "quarantined sessions after the quarantine")
}
