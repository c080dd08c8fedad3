package client_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
)

// A reserved KV put whose dtype check and reservation both fail names
// both: the dtype check used to win and the reservation's error (here:
// no unit could ever hold the put) was dropped, so a caller that fixed
// the dtype learned only on its next try that the put cannot fit.
func TestReservePutKeysDTypeAndReserveBothFail(t *testing.T) {
	ctx := context.Background()
	e := newEmbedded(t, client.LocalFirst, 1) // one unit of 32 MiB
	c := e.Client
	_, err := c.PutKeys(ctx, "p", []string{"j"}, ints(t, "x", []int64{1}), nil)
	require.NoError(t, err)
	before := used(e)

	// x is int64 in p; 64 MiB of float32 fits no unit.
	_, err = c.ReservePutKeys(ctx, "p", []string{"k"}, nil,
		client.FieldSpec{Name: "x", DType: engine.Float32, Shape: engine.Shape{16 << 20}})
	require.ErrorIs(t, err, engine.ErrDTypeMismatch)
	require.ErrorIs(t, err, engine.ErrCapacity, "the reservation's error was dropped")
	require.ErrorContains(t, err, "largest storage unit's capacity")
	require.Equal(t, before, used(e), "bytes held after a failed reservation")
	require.Equal(t, []string{"j"}, keysOf(t, e, "p"))
}
