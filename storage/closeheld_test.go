package storage

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// lingering returns how many segments u keeps mapped after Close for the
// leases and reservations that still reach them.
func lingering(u *Unit) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.lingering
}

// TestCloseKeepsHeldSegments: Close unmaps at once a segment that no
// lease or open reservation reaches, and keeps the others mapped until
// the lease is released and the reservation ended: their holder may still
// be copying out of Lease.Bytes or into Reservation.Buf (which crashed
// the process).
func TestCloseKeepsHeldSegments(t *testing.T) {
	u, err := NewUnit(1, testConfig()) // 1 MiB segments
	require.NoError(t, err)
	leased := put(t, u, pattern(1, 768<<10))[0]
	l, err := u.Acquire([]engine.RemoteAddr{leased})
	require.NoError(t, err)
	open := reserve(t, u, 768<<10)
	put(t, u, pattern(2, 768<<10)) // nothing holds its segment
	require.Equal(t, 3, u.Stats().Segments)

	require.NoError(t, u.Close())
	assert.Equal(t, 2, lingering(u), "segments kept for the lease and the reservation")
	assert.Equal(t, pattern(1, 768<<10), l.Bytes(0))
	copy(open.Buf(0), pattern(3, 768<<10))

	wantErr(t, "Commit after Close", open.Commit(), engine.ErrClosed)
	assert.Equal(t, 1, lingering(u), "segments kept after the reservation ended")
	open.Abort()
	assert.Equal(t, 1, lingering(u), "segments kept after a second end of the reservation")
	l.Release()
	l.Release()
	assert.Zero(t, lingering(u), "segments kept after the lease was released")
	st := u.Stats()
	assert.Zero(t, st.Leases, "leases")
	assert.Zero(t, st.OpenReservations, "open reservations")
}

// TestCloseBetweenChunksUnpins: a call that finds the unit closed between
// two chunks lets go of all it held, so that nothing keeps the segments
// mapped.
func TestCloseBetweenChunksUnpins(t *testing.T) {
	many := func(a engine.RemoteAddr) []engine.RemoteAddr {
		addrs := make([]engine.RemoteAddr, 2*lockChunk+1)
		for i := range addrs {
			addrs[i] = a
		}
		return addrs
	}
	sizes := make([]int64, 2*lockChunk+1)
	for i := range sizes {
		sizes[i] = 64
	}
	closeAtRelock := func(t *testing.T) {
		setRelockHook(t, func(u *Unit) { u.Close() })
	}

	t.Run("Acquire", func(t *testing.T) {
		u := newTestUnit(t, testConfig())
		a := put(t, u, pattern(1, 100))[0]
		closeAtRelock(t)
		_, err := u.Acquire(many(a))
		wantErr(t, "Acquire", err, engine.ErrClosed)
		assert.Zero(t, lingering(u))
	})
	t.Run("Release", func(t *testing.T) {
		u := newTestUnit(t, testConfig())
		a := put(t, u, pattern(1, 100))[0]
		l, err := u.Acquire(many(a))
		require.NoError(t, err)
		closeAtRelock(t)
		l.Release()
		assert.Zero(t, lingering(u))
		assert.Zero(t, u.Stats().Leases)
	})
	t.Run("Abort", func(t *testing.T) {
		u := newTestUnit(t, testConfig())
		r := reserve(t, u, sizes...)
		closeAtRelock(t)
		r.Abort()
		assert.Zero(t, lingering(u))
	})
	t.Run("Reserve", func(t *testing.T) {
		u := newTestUnit(t, testConfig())
		closeAtRelock(t)
		_, err := u.Reserve(t.Context(), sizes)
		wantErr(t, "Reserve", err, engine.ErrClosed)
		assert.Zero(t, lingering(u))
	})
}
