package client

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// failingUnit is a draining unit whose read fails partway: its first
// gone reads say the cells are gone (engine.ErrNotFound), the next fails
// with what fail returns (after doing what makes it fail).
type failingUnit struct {
	DataUnit
	gone int
	fail func(ctx context.Context) error
}

func (u *failingUnit) ID() engine.UnitID { return 7 }

func (u *failingUnit) ReadInto(ctx context.Context, addrs []engine.RemoteAddr, dst [][]byte) error {
	if u.gone > 0 {
		u.gone--
		return fmt.Errorf("no extent: %w", engine.ErrNotFound)
	}
	return u.fail(ctx)
}

// TestDrainReadByAClosedClientIsNotLost: a drain whose client is closed
// while it reads the draining unit's cells — all at once, or one by one
// after some were gone — fails with engine.ErrClosed, saying the client
// was closed, not with engine.ErrLost: the unit still holds the cells.
func TestDrainReadByAClosedClientIsNotLost(t *testing.T) {
	cells := []engine.UnitCell{
		{Loc: engine.CellLoc{Addr: engine.RemoteAddr{Len: 4}}},
		{Loc: engine.CellLoc{Addr: engine.RemoteAddr{Len: 4}}},
	}
	for name, gone := range map[string]int{"all at once": 0, "one by one": 1} {
		c := &Client{}
		closing := func(context.Context) error {
			c.closed.Store(true) // what Close does first
			return fmt.Errorf("storage unit 7: client closed: %w", engine.ErrClosed)
		}
		m := mover{c: c, src: &failingUnit{gone: gone, fail: closing}, st: &DrainStats{}}
		_, _, err := m.read(t.Context(), cells)
		require.ErrorIs(t, err, engine.ErrClosed, name)
		assert.NotErrorIs(t, err, engine.ErrLost, name)
		assert.ErrorContains(t, err, "client was closed", name)
		assert.ErrorContains(t, err, "storage unit 7", name)
	}
}

// TestDrainReadCancelledIsNotLost: a drain whose caller gives up while it
// reads the draining unit's cells fails with the context's error, not
// engine.ErrLost ("unreachable"), as a get does: the unit still holds
// the cells.
func TestDrainReadCancelledIsNotLost(t *testing.T) {
	cells := []engine.UnitCell{
		{Loc: engine.CellLoc{Addr: engine.RemoteAddr{Len: 4}}},
		{Loc: engine.CellLoc{Addr: engine.RemoteAddr{Len: 4}}},
	}
	for name, gone := range map[string]int{"all at once": 0, "one by one": 1} {
		ctx, cancel := context.WithCancel(t.Context())
		cancelling := func(ctx context.Context) error {
			cancel()
			return fmt.Errorf("read: %w", ctx.Err())
		}
		m := mover{c: &Client{}, src: &failingUnit{gone: gone, fail: cancelling}, st: &DrainStats{}}
		_, _, err := m.read(ctx, cells)
		require.ErrorIs(t, err, context.Canceled, name)
		assert.NotErrorIs(t, err, engine.ErrLost, name)
		assert.ErrorContains(t, err, "storage unit 7", name)
	}
}
