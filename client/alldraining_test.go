package client_test

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/embedded"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/kvapi"
)

// allDraining is a unit's metadata that reports every unit draining, as
// the controller does when the units that were not died after the others
// were marked (it refuses to mark the last live one).
type allDraining struct{ client.MetaService }

func (allDraining) Draining(engine.UnitID) bool { return true }

// A put when every storage unit is draining fails saying so and naming
// them, into rows, into keys and reserved: it used to write to one of
// them anyway (writable fell back to every unit) and fail with the
// controller's refusal, "storage unit 1 is draining ...; write them to
// another unit", when there was none.
func TestPutWhenEveryUnitDrainsNamesThem(t *testing.T) {
	ctx := t.Context()
	e, _ := unitCluster(t, 2, 4<<20, client.DefaultConfig(), nil)
	dus := make([]client.DataUnit, len(e.Units))
	for i, u := range e.Units {
		dus[i] = embedded.Unit(u)
	}
	c, err := client.New(allDraining{embedded.Meta(e.Controller, e.Units...)}, dus, client.DefaultConfig())
	require.NoError(t, err)
	defer c.Close()
	want := fmt.Sprintf("every storage unit is draining (units %d, %d)", e.Units[0].ID(), e.Units[1].ID())

	_, err = c.PutNew(ctx, "q", bigRows(t, 4))
	require.ErrorIs(t, err, engine.ErrUnavailable)
	require.ErrorContains(t, err, want)

	_, err = kvapi.New(c).BatchPut(ctx, "p", keyRange("k", 32), bigRows(t, 32), nil)
	require.ErrorIs(t, err, engine.ErrUnavailable)
	require.ErrorContains(t, err, want)

	spec := client.FieldSpec{Name: "x", DType: engine.Uint8, Shape: engine.Shape{4096}}
	_, err = c.ReservePutKeys(ctx, "kv", keyRange("k", 4), nil, spec)
	require.ErrorIs(t, err, engine.ErrUnavailable)
	require.ErrorContains(t, err, want)
}
