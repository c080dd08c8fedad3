package storage

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// TestCommitQuarantinedSaysQuarantine: a reservation whose session ended
// without a goodbye while it was open cannot commit; the error says it is
// in quarantine and why, not that it expired.
func TestCommitQuarantinedSaysQuarantine(t *testing.T) {
	u := newTestUnit(t, testConfig())
	r, err := u.ReserveHeld(t.Context(), []int64{100})
	require.NoError(t, err)
	u.quarantineHolds([]*Reservation{r}, nil)
	defer u.quarantineEnded()

	err = r.Commit()
	require.ErrorIs(t, err, engine.ErrInvalid)
	require.Contains(t, err.Error(), "quarantine")
	require.Contains(t, err.Error(), "ended without a goodbye")
	require.NotContains(t, err.Error(), "expired")
	r.Abort()
	require.Zero(t, u.Stats().Quarantined)
}

// TestCommitExpiredThenQuarantined: a held reservation that expired before
// its session went to quarantine says both.
func TestCommitExpiredThenQuarantined(t *testing.T) {
	u := newTestUnit(t, testConfig())
	r, err := u.ReserveHeld(t.Context(), []int64{100})
	require.NoError(t, err)
	u.mu.Lock()
	u.expireLocked(r)
	u.mu.Unlock()
	u.quarantineHolds([]*Reservation{r}, nil)
	defer u.quarantineEnded()

	err = r.Commit()
	require.ErrorIs(t, err, engine.ErrInvalid)
	require.Contains(t, err.Error(), "expired after")
	require.Contains(t, err.Error(), "in quarantine since its connection ended")
	r.Abort()
}
