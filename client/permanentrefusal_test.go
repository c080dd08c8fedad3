package client_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// A row a unit in another process could never hold (its bytes fit the
// unit's capacity as the unit list reports it, but its extents, rounded
// to the unit's blocks, do not) is refused at once, as a unit in this
// process refuses it: the put waited until its ctx ended, listing the
// units again every learnEvery and writing the row again each time.
func TestRemotePermanentRefusalEndsThePut(t *testing.T) {
	_, u, c, _ := shortWaitCluster(t)
	capacity := u.Stats().Capacity
	// Two extents of half the capacity, one byte apart: 1 MiB of bytes,
	// 1 MiB and a page once rounded.
	half := int(capacity / 2)
	a := make([]byte, half+1)
	b := make([]byte, half-1)
	batch := engine.MustBatch(
		engine.Field{Name: "a", Col: engine.BytesOf([][]byte{a})},
		engine.Field{Name: "b", Col: engine.BytesOf([][]byte{b})},
	)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := c.PutNew(ctx, "p", batch)
		done <- err
	}()
	var err error
	select {
	case err = <-done:
	case <-time.After(20 * time.Second): // a hang check only: the put would wait a minute
		t.Fatal("the put of a row its unit could never hold waited for room")
	}
	require.ErrorIs(t, err, engine.ErrTooLarge)
	require.ErrorIs(t, err, engine.ErrCapacity)
	require.NoError(t, ctx.Err())
	require.Contains(t, err.Error(), fmt.Sprintf("row 0 of %d bytes is more than storage unit %d (capacity %d bytes) could ever hold", len(a)+len(b), u.ID(), capacity))
	require.Equal(t, int64(0), u.Stats().Used)
}
