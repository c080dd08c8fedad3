package client_test

import (
	"runtime"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
)

// TestReadOfACellPastItsUnitsCapacityAllocatesNothing: a cell that ends
// past its unit's capacity (no unit holds one; committed by a broken or
// hostile client before the controller checked, or kept in an old log)
// had a reader over TCP, and a drain of its unit, allocate its length
// before the unit refused the read: a cell of 1 TiB killed them out of
// memory. Here the cell is 1 GiB on a unit of 16 MiB; a get and a drain
// are refused, naming the unit and the capacity (the drain the cell's
// field and row), and allocate far less than the cell's length.
func TestReadOfACellPastItsUnitsCapacityAllocatesNothing(t *testing.T) {
	ctx := t.Context()
	ctrl, addr := servedController(t)
	joinUnit(t, addr, true)
	joinUnit(t, addr, true) // where a drain of the other moves its cells
	c, err := client.Connect(ctx, addr, client.ConnectConfig{Transport: client.TransportTCP})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })

	// The controller, told the unit is larger than it is, takes the cell
	// (it refuses cells past a unit's capacity as registered).
	u := ctrl.Units().Units()[0]
	require.Equal(t, int64(16<<20), u.Capacity)
	require.NoError(t, ctrl.Units().Heartbeat(engine.UnitInfo{ID: u.ID, Incarnation: u.Incarnation, Capacity: 1 << 50}))
	const size = 1 << 30
	_, err = ctrl.CommitKeys(engine.KeysCommit{Partition: "p", Keys: []string{"big"}, Fields: []engine.CommitField{{
		Name: "v", DType: engine.Bytes, Kind: engine.Opaque,
		Locs: []engine.CellLoc{{Unit: u.ID, Addr: engine.RemoteAddr{Segment: 1, Gen: 1, Len: size}}},
	}}})
	require.NoError(t, err)
	require.NoError(t, ctrl.Units().Heartbeat(engine.UnitInfo{ID: u.ID, Incarnation: u.Incarnation, Capacity: u.Capacity}))

	allocated := func(f func()) uint64 {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		f()
		runtime.ReadMemStats(&after)
		return after.TotalAlloc - before.TotalAlloc
	}
	m, err := c.MetaByKeys(ctx, "p", []string{"big"}, []string{"v"}, false)
	require.NoError(t, err)
	n := allocated(func() {
		_, err = c.Get(ctx, m)
	})
	require.ErrorIs(t, err, engine.ErrCorrupt)
	assert.ErrorContains(t, err, "cell of 1073741824 bytes from offset 0 of segment 1 on storage unit 1 ends past the unit's capacity of 16777216 bytes")
	assert.Less(t, n, uint64(size/4), "bytes allocated by the get")

	n = allocated(func() {
		_, err = c.Drain(ctx, u.ID, client.DrainConfig{})
	})
	require.ErrorIs(t, err, engine.ErrCorrupt)
	assert.ErrorContains(t, err, `field "v" of row 0 of partition "p": cell of 1073741824 bytes from offset 0 on storage unit 1 ends past the unit's capacity of 16777216 bytes`)
	assert.Less(t, n, uint64(size/4), "bytes allocated by the drain")
}
