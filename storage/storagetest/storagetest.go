// Package storagetest holds helpers for tests of packages that serve or
// watch storage units.
package storagetest

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/storage"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// Quarantine reserves size bytes on u through a same-host session at
// addr (the unix socket u's server serves) and ends the session without
// a goodbye, its client (the test) alive: the unit keeps the reservation
// in quarantine. It returns once u counts one more session in
// quarantine, or fails the test after 5 s.
func Quarantine(t testing.TB, u *storage.Unit, addr string, size uint64) {
	t.Helper()
	before := u.Stats().QuarantinedSessions
	ctx := t.Context()
	c, _, err := wire.Dial(ctx, addr, &wirepb.Hello{Role: "client"}, wire.ConnConfig{})
	require.NoError(t, err)
	require.NoError(t, c.Do(ctx, wire.OpReserve, &wirepb.ReserveRequest{Sizes: []uint64{size}}, nil, &wirepb.ReserveReply{}, nil))
	c.Close() // no goodbye
	for deadline := time.Now().Add(5 * time.Second); u.Stats().QuarantinedSessions <= before; time.Sleep(2 * time.Millisecond) {
		require.False(t, time.Now().After(deadline), "the reservation was not quarantined: %+v", u.Stats())
	}
}
