package shm

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/storage"
	"github.com/tqgo/tq/wire"
)

// smallUnit is a unit of one 1 MiB segment, so that one reservation
// fills it.
func smallUnit(t *testing.T, scfg storage.ServerConfig) *testUnit {
	t.Helper()
	ucfg := storage.DefaultConfig()
	ucfg.Capacity, ucfg.SegmentSize = 1<<20, 1<<20
	return startUnit(t, ucfg, scfg)
}

// When a session ends while its client process lives — here its
// connection breaks under it, with no goodbye — the client may still
// write through a reservation it holds, and the unit keeps the extents
// out of reuse until the quarantine ends. It used to give them to the
// next put at once, and the client's writes landed in that put's bytes.
// The quarantine is an hour while the test checks that it holds, so that
// a loaded machine cannot end it first, and 100 ms on a second unit that
// checks that the space comes back when it ends.
func TestBrokenSessionQuarantinesReservation(t *testing.T) {
	for _, control := range []Control{ControlRing, ControlSocket} {
		t.Run("control="+control.String(), func(t *testing.T) {
			// breakSession reserves all of tu's one segment and breaks the
			// connection under the reservation.
			breakSession := func(tu *testUnit) *Reservation {
				c := dialUnit(t, tu, Config{Control: control})
				r, err := c.Reserve(t.Context(), []int64{1 << 20})
				require.NoError(t, err)
				c.mu.RLock()
				wc := c.wc
				c.mu.RUnlock()
				wc.Close() // no goodbye
				spinUntil(t, "the unit to end the session", func() bool { return tu.u.Stats().QuarantinedSessions == 1 })
				return r
			}

			tu := smallUnit(t, storage.ServerConfig{Quarantine: time.Hour})
			u := tu.u
			r := breakSession(tu)
			// The client lives on and still writes its reservation.
			buf := r.Buf(0)
			buf[0], buf[len(buf)-1] = 'A', 'A'
			_, err := u.Reserve(engine.WithoutWait(t.Context()), []int64{1 << 20})
			require.ErrorIs(t, err, engine.ErrCapacity, "another put got the extents of a live client's reservation")
			st := u.Stats()
			assert.Equal(t, int64(1<<20), st.Quarantined, "quarantined bytes")
			assert.Equal(t, int64(1<<20), st.Used, "used bytes")
			sessions, n := tu.srv.Quarantined()
			assert.Equal(t, 1, sessions, "quarantined sessions")
			assert.Equal(t, int64(1<<20), n, "bytes the quarantined sessions hold")

			// The quarantine ends: the space is the unit's again.
			short := smallUnit(t, storage.ServerConfig{Quarantine: 100 * time.Millisecond})
			breakSession(short)
			spinUntil(t, "the quarantine's end", func() bool { return short.u.Stats().Quarantined == 0 })
			r2, err := short.u.Reserve(engine.WithoutWait(t.Context()), []int64{1 << 20})
			require.NoError(t, err)
			r2.Abort()
			sessions, _ = short.srv.Quarantined()
			assert.Zero(t, sessions, "quarantined sessions after the quarantine")
		})
	}
}

// The unit does not end a session for idleness while it holds a
// reservation, which its client fills without a frame, even from a client
// that sends no pings (the Python client sends none); once it holds
// nothing, the session is idle like any. The unit used to end it, and the
// reservation went to quarantine and then to another put while the
// client could still write it.
func TestIdleTimeoutSparesAHoldingSession(t *testing.T) {
	for _, control := range []Control{ControlRing, ControlSocket} {
		t.Run("control="+control.String(), func(t *testing.T) {
			const idle = 50 * time.Millisecond
			tu := smallUnit(t, storage.ServerConfig{IdleTimeout: idle, Quarantine: time.Hour})
			// Until its RESERVE is served the session holds nothing, and
			// the unit may rightly end it if the machine holds the test up
			// for an idle timeout between the dial and the RESERVE: dial
			// again then.
			var c *Conn
			var r *Reservation
			for attempt := 1; ; attempt++ {
				c = dialUnit(t, tu, Config{Control: control, Conn: wire.ConnConfig{KeepAlive: -1}})
				var err error
				r, err = c.Reserve(t.Context(), []int64{4096})
				if err == nil {
					break
				}
				require.True(t, c.Gone() && attempt < 20, "reserve on a session that holds nothing yet (attempt %d): %v", attempt, err)
				t.Logf("attempt %d: the unit ended the session before its RESERVE: %v", attempt, err)
			}
			time.Sleep(5 * idle)
			require.False(t, c.Gone(), "the unit ended a session that holds a reservation")
			require.NoError(t, r.Commit(t.Context()))
			spinUntil(t, "the unit to end the session once it holds nothing", c.Gone)
			assert.Zero(t, tu.u.Stats().QuarantinedSessions, "sessions in quarantine")
		})
	}
}

// A Close says goodbye: the unit gives the connection's holds back before
// Close returns, with no quarantine, although the process lives on.
func TestCloseGivesHoldsBackAtOnce(t *testing.T) {
	for _, control := range []Control{ControlRing, ControlSocket} {
		t.Run("control="+control.String(), func(t *testing.T) {
			tu := smallUnit(t, storage.ServerConfig{Quarantine: time.Hour})
			u := tu.u
			c := dialUnit(t, tu, Config{Control: control})
			addrs, err := c.Write(t.Context(), [][][]byte{{make([]byte, 100<<10)}})
			require.NoError(t, err)
			_, err = c.View(t.Context(), addrs)
			require.NoError(t, err)
			_, err = c.Reserve(t.Context(), []int64{200 << 10})
			require.NoError(t, err)
			st := u.Stats()
			require.Equal(t, 1, st.Leases)
			require.Equal(t, 1, st.OpenReservations)

			require.NoError(t, c.Close())
			st = u.Stats()
			assert.Zero(t, st.Leases, "leases after Close")
			assert.Zero(t, st.OpenReservations, "open reservations after Close")
			assert.Zero(t, st.Quarantined, "quarantined bytes after Close")
			r, err := u.Reserve(engine.WithoutWait(t.Context()), []int64{800 << 10})
			if assert.NoError(t, err, "a put the holds left no room for") {
				r.Abort()
			}
		})
	}
}

// A client process that exits (here SIGKILLed, holding a lease and a
// reservation over its unix socket, with a RESERVE in flight) gives its
// holds back at once, long before the quarantine would end: its mappings
// went with it. TestRingClientKilled does the same over a control ring.
func TestClientExitGivesHoldsBackAtOnce(t *testing.T) {
	tu := startUnit(t, unitConfig(), storage.ServerConfig{ReserveWait: time.Minute, Quarantine: time.Hour})
	ch := startChild(t, ringChildEnv+"=client", ringAddrEnv+"="+tu.addr, ringCtlEnv+"=socket")
	ch.ready(t)
	st := tu.u.Stats()
	require.Equal(t, 1, st.Leases, "the child's leases")
	require.Equal(t, 1, st.OpenReservations, "the child's reservations")
	ch.kill()
	got := settle(t, tu.u) // fails past 5 s
	assert.Zero(t, got.Quarantined, "quarantined bytes after the client died")
	assert.Equal(t, int64(1<<20), got.Used, "bytes used after the client died (its one committed extent)")
}

// An ACQUIRE answered after its caller gave up (the unit's read loop was
// held up by an inline WRITE waiting for room, past the caller's deadline
// and the grace) opened a lease the client never learned of: the unit
// kept it, and its extent out of the pool, for as long as the connection
// lived (one per unit per process: for good). The late answer is now
// released at once.
func TestLateAcquireReleased(t *testing.T) {
	tu := smallUnit(t, storage.ServerConfig{ReserveWait: 500 * time.Millisecond})
	c := dialUnit(t, tu, Config{Control: ControlRing, Grace: 50 * time.Millisecond})
	ctx := t.Context()
	addrs, err := c.Write(ctx, [][][]byte{{make([]byte, 1024)}})
	require.NoError(t, err)
	for { // fill the unit
		r, err := tu.u.Reserve(engine.WithoutWait(ctx), []int64{4096})
		if err != nil {
			break
		}
		defer r.Abort()
	}
	wrote := make(chan error, 1)
	go func() { // waits for room, holding up the unit's read loop
		_, err := c.Write(ctx, [][][]byte{{make([]byte, 8<<10)}})
		wrote <- err
	}()
	time.Sleep(50 * time.Millisecond)
	vctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	_, err = c.View(vctx, addrs)
	cancel()
	if err == nil {
		t.Skip("the view was answered in time: nothing to test")
	}
	require.ErrorIs(t, <-wrote, engine.ErrCapacity)
	require.NoError(t, c.Free(ctx, addrs))
	require.Eventually(t, func() bool { return tu.u.Stats().Leases == 0 }, 10*time.Second, 5*time.Millisecond,
		"the lease the late answer opened is released, the connection alive (gone: %v)", c.Gone())
	assert.False(t, c.Gone())
}
