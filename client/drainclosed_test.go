package client

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// closingUnit is a draining unit whose client is closed while it reads:
// its first gone reads say the cells are gone (engine.ErrNotFound), the
// next closes the client and fails as a closed client's connection does.
type closingUnit struct {
	DataUnit
	c    *Client
	gone int
}

func (u *closingUnit) ID() engine.UnitID { return 7 }

func (u *closingUnit) ReadInto(ctx context.Context, addrs []engine.RemoteAddr, dst [][]byte) error {
	if u.gone > 0 {
		u.gone--
		return fmt.Errorf("no extent: %w", engine.ErrNotFound)
	}
	u.c.closed.Store(true) // what Close does first
	return fmt.Errorf("storage unit 7: client closed: %w", engine.ErrClosed)
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
		m := mover{c: c, src: &closingUnit{c: c, gone: gone}, st: &DrainStats{}}
		_, _, err := m.read(t.Context(), cells)
		require.ErrorIs(t, err, engine.ErrClosed, name)
		assert.NotErrorIs(t, err, engine.ErrLost, name)
		assert.ErrorContains(t, err, "client was closed", name)
		assert.ErrorContains(t, err, "storage unit 7", name)
	}
}

// cancelledUnit is a draining unit whose drain's caller gives up while it
// reads: its first gone reads say the cells are gone, the next ends the
// context and fails as a read whose context ended does.
type cancelledUnit struct {
	DataUnit
	cancel context.CancelFunc
	gone   int
}

func (u *cancelledUnit) ID() engine.UnitID { return 7 }

func (u *cancelledUnit) ReadInto(ctx context.Context, addrs []engine.RemoteAddr, dst [][]byte) error {
	if u.gone > 0 {
		u.gone--
		return fmt.Errorf("no extent: %w", engine.ErrNotFound)
	}
	u.cancel()
	return fmt.Errorf("read: %w", ctx.Err())
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
		m := mover{c: &Client{}, src: &cancelledUnit{cancel: cancel, gone: gone}, st: &DrainStats{}}
		_, _, err := m.read(ctx, cells)
		require.ErrorIs(t, err, context.Canceled, name)
		assert.NotErrorIs(t, err, engine.ErrLost, name)
		assert.ErrorContains(t, err, "storage unit 7", name)
	}
}
