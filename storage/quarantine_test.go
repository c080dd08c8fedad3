package storage

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"golang.org/x/sys/unix"

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
			srv, addr := quarantineServer(t, u, ServerConfig{Quarantine: tc.quarantine})

			ctx := t.Context()
			c := dialUnit(t, addr, "")
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
			assert.Zero(t, st.OpenReservations, "open reservations: the one in quarantine can no longer commit")
			assert.Equal(t, held.Used, st.Used, "used bytes")
			// The leased extent's cells are live: they, not the
			// quarantine, keep it.
			assert.Equal(t, int64(64<<10), st.Quarantined, "quarantined bytes")
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
	srv, addr := quarantineServer(t, u, ServerConfig{Quarantine: time.Hour})

	ctx := t.Context()
	c := dialUnit(t, addr, "")
	require.NoError(t, c.Do(ctx, wire.OpReserve, &wirepb.ReserveRequest{Sizes: []uint64{64 << 10}}, nil, &wirepb.ReserveReply{}, nil))
	c.Close()
	waitStats(t, u, "holds in quarantine", func(st Stats) bool { return st.Quarantined != 0 })

	var st wirepb.UnitStats
	require.NoError(t, dialUnit(t, addr, "").Do(ctx, wire.OpUnitStats, &wirepb.Empty{}, nil, &st, nil))
	assert.Equal(t, int64(64<<10), st.Quarantined, "quarantined bytes in UNIT_STATS")
	assert.Equal(t, int64(1), st.QuarantinedSessions, "quarantined sessions in UNIT_STATS")
	assert.Equal(t, 1, u.Stats().QuarantinedSessions, "quarantined sessions in Stats")

	require.NoError(t, srv.Close()) // ends the quarantine
	after := StatsToPB(1, u.Stats())
	assert.Zero(t, after.Quarantined, "quarantined bytes after the quarantine")
	assert.Zero(t, after.QuarantinedSessions, "quarantined sessions after the quarantine")
}

// quarantineServer serves u on a unix socket with cfg and returns the
// server and its address; the test's end closes the server.
func quarantineServer(t *testing.T, u *Unit, cfg ServerConfig) (*Server, string) {
	t.Helper()
	srv := NewServer(u, cfg)
	path := filepath.Join(t.TempDir(), "unit.sock")
	l, err := net.Listen("unix", path)
	require.NoError(t, err)
	served := make(chan struct{})
	go func() { defer close(served); srv.Serve(l) }()
	t.Cleanup(func() { srv.Close(); <-served })
	return srv, "unix://" + path
}

// A reservation in quarantine can never commit (its session is gone): it
// is not an open reservation, and Unsettled does not list its extents,
// so a shutdown does not wait for it; nor does either count a held
// reservation that expired. Both used to count as open and in flight
// until the quarantine ended.
func TestQuarantinedReservationIsNotInFlight(t *testing.T) {
	cfg := testConfig()
	// The held reservation must be listed before it expires: a loaded
	// machine may take more than 50 ms between the two calls.
	cfg.ReserveTimeout = time.Second
	u, err := NewUnit(1, cfg)
	require.NoError(t, err)
	defer u.Close()
	_, addr := quarantineServer(t, u, ServerConfig{Quarantine: time.Hour})

	ctx := t.Context()
	c, _, err := wire.Dial(ctx, addr, &wirepb.Hello{Role: "client"}, wire.ConnConfig{})
	require.NoError(t, err)
	require.NoError(t, c.Do(ctx, wire.OpReserve, &wirepb.ReserveRequest{Sizes: []uint64{64 << 10}}, nil, &wirepb.ReserveReply{}, nil))
	used := u.Stats().Used
	c.Close() // no goodbye
	st := waitStats(t, u, "the session in quarantine", func(st Stats) bool { return st.QuarantinedSessions == 1 })
	assert.Zero(t, st.OpenReservations, "open reservations in quarantine")
	assert.Zero(t, st.Reserved, "reserved bytes in quarantine")
	assert.Equal(t, used, st.Used, "used bytes: the quarantine keeps the extents")
	assert.Empty(t, u.Unsettled(time.Hour), "extents in flight")

	held, err := u.ReserveHeld(ctx, []int64{4096})
	require.NoError(t, err)
	defer held.Abort()
	assert.Equal(t, []engine.RemoteAddr{held.Addr(0)}, u.Unsettled(time.Hour), "a held reservation before it expires")
	waitStats(t, u, "the held reservation to expire", func(st Stats) bool { return st.OpenReservations == 0 })
	assert.Empty(t, u.Unsettled(time.Hour), "extents in flight once the held reservation expired")
}

// dialAndClose dials addr, lets hold take holds on the connection, and
// closes it without a goodbye.
func dialAndClose(t *testing.T, addr string, hold func(c *wire.Conn)) {
	t.Helper()
	c, _, err := wire.Dial(t.Context(), addr, &wirepb.Hello{Role: "client"}, wire.ConnConfig{})
	require.NoError(t, err)
	hold(c)
	require.NoError(t, c.Close())
}

// busyGoroutines returns how many goroutines there are, less the wire
// server's handler goroutines that wait for work (wire.Server's worker,
// its own frame on top): each exits after 10 s without any, so how many
// there are depends on the moment, not on the sessions that ended.
func busyGoroutines() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		top := ""
		for _, line := range strings.Split(g, "\n")[1:] {
			if !strings.HasPrefix(line, "\t") && !strings.HasPrefix(line, "runtime.") {
				top = line
				break
			}
		}
		if !strings.HasPrefix(top, "github.com/tqgo/tq/wire.(*Server).worker(") {
			n++
		}
	}
	return n
}

// Holds that cover no byte (an ACQUIRE of no ranges or of empty ones, a
// RESERVE of no sizes or of 0 bytes) go back when their session ends:
// the client can touch nothing through them. Each such session used to
// take a pidfd and a goroutine for the whole quarantine.
func TestQuarantineSkipsHoldsOfNoBytes(t *testing.T) {
	u, err := NewUnit(1, testConfig())
	require.NoError(t, err)
	defer u.Close()
	srv, addr := quarantineServer(t, u, ServerConfig{Quarantine: time.Hour})
	ctx := t.Context()
	holds := []func(c *wire.Conn){
		func(c *wire.Conn) {
			require.NoError(t, c.Do(ctx, wire.OpAcquire, &wirepb.AcquireRequest{Ranges: &wirepb.Addrs{}}, nil, &wirepb.AcquireReply{}, nil))
		},
		func(c *wire.Conn) {
			ranges := wire.RangesToPB([]engine.RemoteAddr{{Segment: 1}})
			require.NoError(t, c.Do(ctx, wire.OpAcquire, &wirepb.AcquireRequest{Ranges: ranges}, nil, &wirepb.AcquireReply{}, nil))
		},
		func(c *wire.Conn) {
			require.NoError(t, c.Do(ctx, wire.OpReserve, &wirepb.ReserveRequest{}, nil, &wirepb.ReserveReply{}, nil))
		},
		func(c *wire.Conn) {
			require.NoError(t, c.Do(ctx, wire.OpReserve, &wirepb.ReserveRequest{Sizes: []uint64{0, 0}}, nil, &wirepb.ReserveReply{}, nil))
		},
	}
	for range 50 {
		for _, hold := range holds {
			dialAndClose(t, addr, hold)
		}
	}
	waitStats(t, u, "the holds back", func(st Stats) bool { return st.Leases == 0 && st.OpenReservations == 0 })
	sessions, _ := srv.Quarantined()
	assert.Zero(t, sessions, "sessions in quarantine")
	assert.Zero(t, u.Stats().QuarantinedSessions, "sessions in quarantine in Stats")
}

// However many sessions of one client process end in quarantine, the
// quarantine waits for that process on one pidfd with one goroutine.
// Each session used to keep a pidfd and a goroutine of its own: a client
// looping dial, reserve, close piled them up.
func TestQuarantineWaitsOncePerProcess(t *testing.T) {
	u, err := NewUnit(1, testConfig())
	require.NoError(t, err)
	defer u.Close()
	srv, addr := quarantineServer(t, u, ServerConfig{Quarantine: time.Hour})
	ctx := t.Context()
	reserve := func(c *wire.Conn) {
		require.NoError(t, c.Do(ctx, wire.OpReserve, &wirepb.ReserveRequest{Sizes: []uint64{4096}}, nil, &wirepb.ReserveReply{}, nil))
	}
	// The first session starts the process's quarantine.
	dialAndClose(t, addr, reserve)
	waitStats(t, u, "the first session in quarantine", func(st Stats) bool { return st.QuarantinedSessions == 1 })
	fds, goroutines := openFds(t), busyGoroutines()

	const n = 300
	for range n - 1 {
		dialAndClose(t, addr, reserve)
	}
	waitStats(t, u, "the sessions in quarantine", func(st Stats) bool { return st.QuarantinedSessions == n })
	// The wire server's goroutines of the connections just closed exit
	// soon after: wait for them, not for the quarantine's. The count
	// leaves out the wire server's idle handler goroutines: under load
	// the sessions' requests start a few more of them, each waiting
	// 10 s (workerIdle) for work, as long as this wait, and the check
	// failed when they outlived it. Their number does not grow with the
	// sessions, and a handler stuck in a request still counts.
	if !assert.Eventually(t, func() bool { return busyGoroutines() <= goroutines+2 }, 10*time.Second, 10*time.Millisecond) {
		buf := make([]byte, 1<<20)
		t.Fatalf("goroutines: %d, %d before:\n%s", busyGoroutines(), goroutines, buf[:runtime.Stack(buf, true)])
	}
	assert.LessOrEqual(t, openFds(t), fds+2, "open fds")
	sessions, _ := srv.Quarantined()
	assert.Equal(t, n, sessions, "sessions in quarantine")

	require.NoError(t, srv.Close())
	st := u.Stats()
	assert.Zero(t, st.QuarantinedSessions, "sessions in quarantine after the server closed")
	assert.Zero(t, st.Used, "used bytes after the server closed")
}

// The sessions of one process that share its wait each end at their own
// quarantine's end: the first to end goes back first, the later one
// after its own time.
func TestQuarantineEndsEachSessionInTurn(t *testing.T) {
	u, err := NewUnit(1, testConfig())
	require.NoError(t, err)
	defer u.Close()
	_, addr := quarantineServer(t, u, ServerConfig{Quarantine: time.Second})
	ctx := t.Context()
	reserve := func(c *wire.Conn) {
		require.NoError(t, c.Do(ctx, wire.OpReserve, &wirepb.ReserveRequest{Sizes: []uint64{4096}}, nil, &wirepb.ReserveReply{}, nil))
	}
	dialAndClose(t, addr, reserve)
	waitStats(t, u, "the first session in quarantine", func(st Stats) bool { return st.QuarantinedSessions == 1 })
	time.Sleep(time.Second / 2)
	dialAndClose(t, addr, reserve)
	waitStats(t, u, "both sessions in quarantine", func(st Stats) bool { return st.QuarantinedSessions == 2 })
	st := waitStats(t, u, "the first session's end", func(st Stats) bool { return st.QuarantinedSessions < 2 })
	assert.Equal(t, 1, st.QuarantinedSessions, "sessions in quarantine once the first one's ended")
	assert.Equal(t, 1, st.Extents, "extents once the first session's went back")
	waitStats(t, u, "the second session's end", func(st Stats) bool { return st.QuarantinedSessions == 0 && st.Extents == 0 })
}

// Past MaxQuarantined sessions in quarantine, a session that ends gives
// back its process's oldest's holds (or its own): the quarantine holds a
// bounded number of them.
func TestQuarantineIsBounded(t *testing.T) {
	u, err := NewUnit(1, testConfig())
	require.NoError(t, err)
	defer u.Close()
	srv, addr := quarantineServer(t, u, ServerConfig{Quarantine: time.Hour})
	srv.quar.max = 3
	ctx := t.Context()
	for range 5 {
		dialAndClose(t, addr, func(c *wire.Conn) {
			require.NoError(t, c.Do(ctx, wire.OpReserve, &wirepb.ReserveRequest{Sizes: []uint64{4096}}, nil, &wirepb.ReserveReply{}, nil))
		})
	}
	st := waitStats(t, u, "the holds past the bound back", func(st Stats) bool { return st.Extents == 3 })
	assert.Equal(t, 3, st.QuarantinedSessions, "sessions in quarantine")
	sessions, _ := srv.Quarantined()
	assert.Equal(t, 3, sessions, "sessions in quarantine")
}

// One client process that ends many sessions in quarantine fills only
// its own share of it (MaxQuarantinedPerProcess): the holds of its
// sessions past that go back at once, and another process's session that
// breaks is still quarantined. The bound used to be one count for the
// whole server: a process that ended 1024 sessions holding a byte each
// turned off every other process's quarantine, and a live
// client's broken session gave its reservation to the next put while the
// client might still be copying into it.
func TestQuarantineIsFairBetweenProcesses(t *testing.T) {
	u, err := NewUnit(1, testConfig())
	require.NoError(t, err)
	defer u.Close()
	srv, addr := quarantineServer(t, u, ServerConfig{Quarantine: time.Hour})
	ctx := t.Context()

	// The flooder: another live process, whose sessions end as a
	// connection's would.
	flooder := exec.Command("sleep", "60")
	require.NoError(t, flooder.Start())
	defer func() { flooder.Process.Kill(); flooder.Wait() }()
	for range MaxQuarantinedPerProcess + 8 {
		r, err := u.ReserveHeld(ctx, []int64{1})
		require.NoError(t, err)
		pidfd, err := unix.PidfdOpen(flooder.Process.Pid, 0)
		require.NoError(t, err)
		srv.quarantine([]*Reservation{r}, nil, int32(flooder.Process.Pid), pidfd)
	}
	st := u.Stats()
	assert.Equal(t, MaxQuarantinedPerProcess, st.QuarantinedSessions, "the flooder's sessions in quarantine")
	assert.Equal(t, MaxQuarantinedPerProcess, st.Extents, "the flooder's extents")

	// This process's session breaks while it holds a reservation.
	var victim []engine.RemoteAddr
	var held Stats
	dialAndClose(t, addr, func(c *wire.Conn) {
		var res wirepb.ReserveReply
		require.NoError(t, c.Do(ctx, wire.OpReserve, &wirepb.ReserveRequest{Sizes: []uint64{64 << 10}}, nil, &res, nil))
		victim, err = wire.RangesFromPB(res.Extents)
		require.NoError(t, err)
		held = u.Stats()
	})
	st = waitStats(t, u, "the session's end", func(st Stats) bool {
		return st.QuarantinedSessions > held.QuarantinedSessions || st.Extents < held.Extents
	})
	assert.Equal(t, MaxQuarantinedPerProcess+1, st.QuarantinedSessions, "sessions in quarantine")
	assert.Equal(t, MaxQuarantinedPerProcess+1, st.Extents, "extents: the broken session's is kept")
	next, err := u.Reserve(ctx, []int64{64 << 10})
	require.NoError(t, err)
	defer next.Abort()
	got := next.Addr(0)
	assert.False(t, got.Segment == victim[0].Segment && got.Offset == victim[0].Offset,
		"the next put got %v, the broken session's reservation %v", got, victim[0])
}

// Stats.Quarantined counts, once each at its rounded size, the extents
// that only the quarantine keeps out of reuse: those of its reservations,
// and those of its leases whose cells were all freed. An extent whose
// cells are live is not counted, however often a lease in quarantine
// covers it; it used to count once per leased range, more than Used.
func TestQuarantinedCountsWhatIsKeptOutOfReuse(t *testing.T) {
	u, err := NewUnit(1, testConfig())
	require.NoError(t, err)
	defer u.Close()
	_, addr := quarantineServer(t, u, ServerConfig{Quarantine: time.Hour})
	ctx := t.Context()
	c := dialUnit(t, addr, "")
	written, err := remoteWrite(ctx, c, make([]byte, 5000))
	require.NoError(t, err)
	usedWritten := u.Stats().Used

	var reserved int64
	dialAndClose(t, addr, func(c *wire.Conn) {
		for range 100 {
			var acq wirepb.AcquireReply
			require.NoError(t, c.Do(ctx, wire.OpAcquire, &wirepb.AcquireRequest{Ranges: wire.RangesToPB(append(written, written...))}, nil, &acq, nil))
		}
		require.NoError(t, c.Do(ctx, wire.OpReserve, &wirepb.ReserveRequest{Sizes: []uint64{3000, 0, 70 << 10}}, nil, &wirepb.ReserveReply{}, nil))
		reserved = u.Stats().Used - usedWritten
	})
	st := waitStats(t, u, "the session in quarantine", func(st Stats) bool { return st.QuarantinedSessions == 1 })
	assert.Equal(t, reserved, st.Quarantined, "quarantined bytes: the reservation's, not the live extent's")
	assert.Equal(t, 100, st.Leases, "leases in quarantine")

	// A live session's lease keeps the extent out of reuse too, once its
	// cells are freed: the quarantine alone does not.
	var live wirepb.AcquireReply
	require.NoError(t, c.Do(ctx, wire.OpAcquire, &wirepb.AcquireRequest{Ranges: wire.RangesToPB(written)}, nil, &live, nil))
	require.NoError(t, u.Free(written))
	st = u.Stats()
	assert.Equal(t, reserved, st.Quarantined, "quarantined bytes while a live lease holds the freed extent")

	// Once the live lease is released, only the quarantine keeps the
	// freed extent: it counts, once.
	require.NoError(t, c.Do(ctx, wire.OpRelease, &wirepb.ReleaseRequest{Lease: live.Lease}, nil, &wirepb.Empty{}, nil))
	st = u.Stats()
	assert.Equal(t, reserved+usedWritten, st.Quarantined, "quarantined bytes once only the quarantine holds the freed extent")
	assert.Equal(t, st.Used, st.Quarantined, "quarantined bytes: all that is used")
	assert.LessOrEqual(t, st.Quarantined, st.Capacity, "quarantined bytes within the capacity")
}

// A same-host session that holds a lease or a reservation is not ended
// for idleness: its client reads and writes them through its own mapping
// without a frame (the Python client sends no pings), and a dead client's
// session ends with its socket. One that holds nothing is. The unit used
// to hang up on both, and the holds of the live client went to quarantine
// and then to other puts while it still read them.
func TestIdleTimeoutSparesSessionsThatHold(t *testing.T) {
	u, err := NewUnit(1, testConfig())
	require.NoError(t, err)
	defer u.Close()
	const idle = 50 * time.Millisecond
	_, addr := quarantineServer(t, u, ServerConfig{IdleTimeout: idle, Quarantine: time.Hour})
	ctx := t.Context()
	dial := func() *wire.Conn {
		c, _, err := wire.Dial(ctx, addr, &wirepb.Hello{Role: "client"}, wire.ConnConfig{KeepAlive: -1})
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		return c
	}
	written, err := remoteWrite(ctx, dial(), make([]byte, 5000))
	require.NoError(t, err)

	reader, writer, bystander := dial(), dial(), dial()
	var lease wirepb.AcquireReply
	require.NoError(t, reader.Do(ctx, wire.OpAcquire, &wirepb.AcquireRequest{Ranges: wire.RangesToPB(written)}, nil, &lease, nil))
	var res wirepb.ReserveReply
	require.NoError(t, writer.Do(ctx, wire.OpReserve, &wirepb.ReserveRequest{Sizes: []uint64{4096}}, nil, &res, nil))

	select {
	case <-bystander.Done():
	case <-time.After(time.Minute):
		t.Fatal("the session that holds nothing outlived the idle timeout")
	}
	// Past several idle timeouts, the sessions that hold are still open
	// and hold what they held.
	time.Sleep(5 * idle)
	for name, c := range map[string]*wire.Conn{"reader": reader, "writer": writer} {
		select {
		case <-c.Done():
			t.Fatalf("the unit hung up on the %s, which holds: %v", name, c.Err())
		default:
		}
	}
	assert.Zero(t, u.Stats().QuarantinedSessions, "sessions in quarantine")
	require.NoError(t, reader.Do(ctx, wire.OpRelease, &wirepb.ReleaseRequest{Lease: lease.Lease}, nil, &wirepb.Empty{}, nil))
	require.NoError(t, writer.Do(ctx, wire.OpReserveCommit, &wirepb.ReservationRequest{Reservation: res.Reservation}, nil, &wirepb.Empty{}, nil))

	// Holding nothing any more, they are idle like any.
	for name, c := range map[string]*wire.Conn{"reader": reader, "writer": writer} {
		select {
		case <-c.Done():
		case <-time.After(time.Minute):
			t.Fatalf("the %s, which holds nothing any more, outlived the idle timeout", name)
		}
	}
}

// inheritedConnEnv names, to a child of
// TestInheritedConnectionKeepsItsHoldsUntilItsLastHolderCloses, the unit
// it is the client of.
const inheritedConnEnv = "TQ_TEST_INHERITED_CONN_ADDR"

// A same-host session's socket stays open after its client process
// exited only while another process holds it: with our clients (their
// sockets are close-on-exec), a child the client forked without exec,
// which also inherited the segments' mappings and any views, and may still
// read and write them. So the session is not ended for idleness while it
// holds anything, whoever holds its socket; when the last holder closes
// it, the session ends, and, the client process being gone, its holds go
// back at once. Here the client hands its connection to this process over
// SCM_RIGHTS and exits: this process plays the child. The unit used to end
// such a session at its idle timeout once the client had exited, and hand
// the child's bytes to other puts while it could still touch them.
func TestInheritedConnectionKeepsItsHoldsUntilItsLastHolderCloses(t *testing.T) {
	if addr := os.Getenv(inheritedConnEnv); addr != "" {
		os.Exit(inheritedConnChild(addr))
	}
	u, err := NewUnit(1, testConfig())
	require.NoError(t, err)
	defer u.Close()
	const idle = 50 * time.Millisecond
	_, addr := quarantineServer(t, u, ServerConfig{IdleTimeout: idle, Quarantine: time.Hour})

	// The child dials, reserves, hands its connection to this process
	// over fds[1] and exits.
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	defer unix.Close(fds[0])
	childEnd := os.NewFile(uintptr(fds[1]), "socketpair")
	cmd := exec.Command(os.Args[0], "-test.run=^TestInheritedConnectionKeepsItsHoldsUntilItsLastHolderCloses$", "-test.count=1")
	cmd.Env = append(os.Environ(), inheritedConnEnv+"="+addr)
	cmd.ExtraFiles = []*os.File{childEnd}
	out, err := cmd.CombinedOutput()
	childEnd.Close()
	require.NoError(t, err, "child: %s", out)
	oob := make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := unix.Recvmsg(fds[0], make([]byte, 1), oob, 0)
	require.NoError(t, err)
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	require.NoError(t, err)
	require.Len(t, msgs, 1)
	conn, err := unix.ParseUnixRights(&msgs[0])
	require.NoError(t, err)
	require.Len(t, conn, 1)
	require.Equal(t, 1, u.Stats().Extents, "extents the child reserved")

	// The client has exited (and was waited for), but this process holds
	// its socket: past many idle timeouts the session still holds its
	// reservation, and the unit has not hung up.
	time.Sleep(20 * idle)
	st := u.Stats()
	assert.Equal(t, 1, st.Extents, "extents while this process holds the socket")
	assert.Zero(t, st.QuarantinedSessions, "sessions in quarantine")
	pfd := []unix.PollFd{{Fd: int32(conn[0]), Events: unix.POLLIN}}
	n, err := unix.Poll(pfd, 0)
	for err == unix.EINTR { // the runtime's preemption signal
		n, err = unix.Poll(pfd, 0)
	}
	require.NoError(t, err)
	assert.Zero(t, n, "the unit hung up on the held socket (revents %#x)", pfd[0].Revents)

	// Its last holder closes it: the session ends, and the client process
	// being gone, the reservation goes back at once, with no quarantine.
	require.NoError(t, unix.Close(conn[0]))
	st = waitStats(t, u, "the reservation back once the socket closed", func(st Stats) bool { return st.Extents == 0 })
	assert.Zero(t, st.QuarantinedSessions, "sessions in quarantine")
	assert.Zero(t, st.Used, "used bytes")
}

// inheritedConnChild is the client of
// TestInheritedConnectionKeepsItsHoldsUntilItsLastHolderCloses: it
// reserves 64 KiB on the unit at addr without pings, sends its
// connection's fd over fd 3, and returns its exit code.
func inheritedConnChild(addr string) int {
	ctx := context.Background()
	network, address, err := wire.ParseAddr(addr)
	if err == nil {
		var nc net.Conn
		if nc, err = net.Dial(network, address); err == nil {
			var f *os.File
			if f, err = nc.(*net.UnixConn).File(); err == nil {
				c := wire.NewConn(nc, wire.ConnConfig{KeepAlive: -1})
				if _, err = c.Hello(ctx, &wirepb.Hello{Role: "client"}); err == nil {
					err = c.Do(ctx, wire.OpReserve, &wirepb.ReserveRequest{Sizes: []uint64{64 << 10}}, nil, &wirepb.ReserveReply{}, nil)
				}
				if err == nil {
					err = unix.Sendmsg(3, []byte{0}, unix.UnixRights(int(f.Fd())), nil, 0)
				}
			}
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// A process past its share of the quarantine makes room with its own
// oldest session, not the one ending now: the oldest is closest to its
// end and its client has had the longest to stop its copies, while the
// newest may have one in flight. The newest used to go back at once.
func TestQuarantineGivesBackTheOldestOfAProcess(t *testing.T) {
	u, err := NewUnit(1, testConfig())
	require.NoError(t, err)
	defer u.Close()
	srv, _ := quarantineServer(t, u, ServerConfig{Quarantine: time.Hour})
	srv.quar.maxProc = 3
	proc := exec.Command("sleep", "60")
	require.NoError(t, proc.Start())
	defer func() { proc.Process.Kill(); proc.Wait() }()
	var rs []*Reservation
	for range 5 {
		r, err := u.ReserveHeld(t.Context(), []int64{1})
		require.NoError(t, err)
		pidfd, err := unix.PidfdOpen(proc.Process.Pid, 0)
		require.NoError(t, err)
		srv.quarantine([]*Reservation{r}, nil, int32(proc.Process.Pid), pidfd)
		rs = append(rs, r)
	}
	st := u.Stats()
	assert.Equal(t, 3, st.QuarantinedSessions, "sessions in quarantine")
	assert.Equal(t, 3, st.Extents, "extents")
	u.mu.Lock()
	defer u.mu.Unlock()
	for i, r := range rs {
		if kept := r.state == reservationExpired; kept != (i >= 2) {
			t.Errorf("session %d of 5: kept in quarantine %v, want %v", i, kept, i >= 2)
		}
	}
}
