package client_test

import (
	"context"
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
)

// TestReservePutKeysTags refuses tags JSON cannot carry at the
// reservation, as PutKeys does before any byte moves, rather than at
// Commit, after the caller filled the buffer; and keeps its own copy of
// the tags, so that the caller's later change to a map it passed does not
// reach the commit.
func TestReservePutKeysTags(t *testing.T) {
	ctx := context.Background()
	e := newEmbedded(t, client.Hash, 2)
	c := e.Client
	spec := client.FieldSpec{Name: "x", DType: engine.Int64}

	for _, bad := range []any{math.NaN(), math.Inf(1), uint64(math.MaxUint64)} {
		b, err := c.ReservePutKeys(ctx, "p", []string{"k"}, []engine.Tags{{"f": bad}}, spec)
		if b != nil {
			require.NoError(t, b.Abort(ctx))
		}
		require.ErrorIs(t, err, engine.ErrInvalid, "tag %v", bad)
		assert.ErrorContains(t, err, `tag "f"`)
	}
	assert.Empty(t, keysOf(t, e, "p"), "keys after refused reservations")

	tags := engine.Tags{"step": int64(1), "list": []any{"a"}}
	b, err := c.ReservePutKeys(ctx, "p", []string{"k"}, []engine.Tags{tags}, spec)
	require.NoError(t, err)
	v, err := engine.Values[int64](b.Column("x"))
	require.NoError(t, err)
	v[0] = 42
	tags["step"] = int64(2)
	tags["list"].([]any)[0] = "changed"
	tags["late"] = math.NaN()
	done, err := b.Commit(ctx)
	require.NoError(t, err)
	assert.True(t, done.Tags[0].Equal(engine.Tags{"step": int64(1), "list": []any{"a"}}), "committed tags %v", done.Tags[0])
}
