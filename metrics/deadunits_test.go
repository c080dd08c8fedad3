package metrics_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// tq_units{state="dead"} counts the dead units that still hold cells the
// controller lists (their bytes lost); a dead unit holding none (a unit
// process replaced in a rolling update, its cells cleared) is "gone".
// Dead units stay registered until the registry fills, and "dead" used
// to count them all: after one rolling update a dead-units panel, or an
// alert on > 0, stayed non-zero for good.
func TestDeadUnitsAreThoseWithCells(t *testing.T) {
	ctrl, cl, join := unitsCluster(t)
	holder, stopHolder := join()
	_, stopEmpty := join()
	m, err := ctrl.Insert("p", 2, []string{"x"})
	require.NoError(t, err)
	_, err = ctrl.Commit(engine.CommitRequest{Partition: "p", Indexes: m.Indexes, Fields: []engine.CommitField{{
		Name: "x", DType: engine.Uint8, Kind: engine.Dense, Shape: engine.Shape{8},
		Locs: []engine.CellLoc{
			{Unit: holder, Addr: engine.RemoteAddr{Segment: 1, Offset: 0, Len: 8}},
			{Unit: holder, Addr: engine.RemoteAddr{Segment: 1, Offset: 8, Len: 8}},
		},
	}}})
	require.NoError(t, err)
	stopHolder()
	stopEmpty()

	require.Eventually(t, func() bool {
		return cl.value(t, "tq_units", "state", "alive") == 0
	}, 10*time.Second, 10*time.Millisecond, "the stopped units are dead")
	require.Equal(t, 1.0, cl.value(t, "tq_units", "state", "dead"), "the dead unit that holds cells")
	require.Equal(t, 1.0, cl.value(t, "tq_units", "state", "gone"), "the dead unit that holds none")

	_, err = ctrl.ClearRows("p", m.Indexes[:1])
	require.NoError(t, err)
	require.Equal(t, 1.0, cl.value(t, "tq_units", "state", "dead"), "a cell left")
	_, err = ctrl.ClearRows("p", m.Indexes[1:])
	require.NoError(t, err)
	require.Equal(t, 0.0, cl.value(t, "tq_units", "state", "dead"), "no cell left")
	require.Equal(t, 2.0, cl.value(t, "tq_units", "state", "gone"), "no cell left")
}
