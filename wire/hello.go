package wire

import (
	"fmt"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire/wirepb"
)

// CheckUnit checks a storage unit's HELLO reply against the unit a
// client meant to reach at addr: a peer that is not a unit is
// [engine.ErrInvalid]; another unit (unit ≠ 0), or another run of it
// (incarnation ≠ 0), is [engine.ErrLost] — the cells the client holds
// locations of are not there.
func CheckUnit(reply *wirepb.Hello, addr string, unit engine.UnitID, incarnation uint64) error {
	switch {
	case reply.Role != "" && reply.Role != "unit":
		return fmt.Errorf("%s answers as a %q, not a storage unit: %w", addr, reply.Role, engine.ErrInvalid)
	case unit != 0 && engine.UnitID(reply.UnitId) != unit:
		return fmt.Errorf("%s serves storage unit %d, not unit %d: %w", addr, reply.UnitId, unit, engine.ErrLost)
	case incarnation != 0 && reply.Incarnation != incarnation:
		return fmt.Errorf("storage unit %d at %s is incarnation %#x, not %#x (it restarted): %w",
			reply.UnitId, addr, reply.Incarnation, incarnation, engine.ErrLost)
	}
	return nil
}
