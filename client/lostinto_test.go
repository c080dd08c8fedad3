package client_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
)

// TestGetIntoOfLostCellsSaysTheyAreLost: cells whose bytes are lost for
// good (their unit came back without them) name engine.LostUnit. Get says
// so; GetInto looked the marker up as a unit id and reported "cells on
// unknown storage unit 2147483647", a unit that never was.
func TestGetIntoOfLostCellsSaysTheyAreLost(t *testing.T) {
	ctx := t.Context()
	e := newEmbedded(t, client.LocalFirst, 1)
	c := e.Client
	meta, err := c.PutNew(ctx, "p", ints(t, "x", []int64{1, 2}))
	require.NoError(t, err)
	lost := meta.Clone()
	lost.Cells["x"][1].Unit = engine.LostUnit

	_, err = c.Get(ctx, lost)
	require.ErrorIs(t, err, engine.ErrLost, "Get")
	require.ErrorContains(t, err, "lost (their storage unit came back without them)", "Get")
	_, err = c.GetInto(ctx, lost, make([]byte, client.SizeOf(lost)))
	require.ErrorIs(t, err, engine.ErrLost, "GetInto")
	require.ErrorContains(t, err, "lost (their storage unit came back without them)", "GetInto")
	require.NotContains(t, err.Error(), "unknown storage unit", "GetInto")
}
