package controller

// Draining a storage unit: moving its cells to other units without a
// reader ever seeing a missing or half-moved cell. The controller holds
// no bytes, so a mover (a client process, `tq unit drain`) does the
// copying, and the controller offers it three steps:
//
//  1. DrainUnit marks the unit draining (durable, in the registry):
//     clients learn it with their next unit list (at most a second later)
//     and stop placing new cells on it; a commit of cells placed on it
//     before then is refused (checkDraining), and its client writes them
//     again elsewhere.
//  2. UnitCells pages through the cells located on the unit, in
//     (partition, row index) order; the mover reads their bytes and
//     writes them to other units.
//  3. MoveCells commits each copy with a compare-and-set: the cell takes
//     the copy's location only if it still has the old one (a put that
//     overwrote it, or a clear, wins; the mover then frees its copy). The
//     old location is freed as a replaced cell is: queued for its unit
//     once the move is durable.
//
// A reader that leased the old cells keeps reading them (a lease pins an
// extent until it is released). A reader that resolved the old location
// before the move and reads after the free gets "not found" from the
// unit; it asks Moved where those cells went (a table of recent moves,
// kept in memory) and reads them there. A move to a unit that is not
// registered, or to a range in generations its reconcile fenced, is
// refused, and a copy never committed (the mover died between its write
// and its MOVE_CELLS) is an extent no cell references: the unit's
// periodic reconcile frees it after its grace.

import (
	"encoding/binary"
	"fmt"
	"sync"
	"unicode/utf8"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// Limits of a UNIT_CELLS page.
const (
	// DefaultUnitCellsPage is the cells of a page unless asked for fewer.
	DefaultUnitCellsPage = 4096
	// MaxUnitCellsPage bounds the cells of a page.
	MaxUnitCellsPage = 1 << 16
	// DefaultUnitCellsBytes bounds the bytes of the cells of a page (a
	// mover holds them in memory), unless asked for fewer; a page holds at
	// least one cell.
	DefaultUnitCellsBytes = 64 << 20
	// maxMoves bounds the table of recent moves Moved answers from: past
	// it the oldest are forgotten, and a reader holding a location that
	// old gets the "lost" error it would have got for any freed cell.
	maxMoves = 1 << 20
	// maxSavedMoves bounds the moves a snapshot keeps of the table (the
	// newest), so that its header, read whole at every start, stays
	// small: 2^18 moves take about 6.5 MiB there
	// (TestSavedMovesFitTheHeader).
	maxSavedMoves = 1 << 18
)

// DrainUnit marks unit id draining, so that clients place no new cells on
// it, or (draining false) returns it to service; see [Registry.SetDraining].
func (c *Controller) DrainUnit(id engine.UnitID, draining bool) (engine.UnitInfo, error) {
	return c.units.SetDraining(id, draining)
}

// encodeCellsCursor encodes the position of row index next of partition.
func encodeCellsCursor(partition string, next uint64) []byte {
	return append(binary.AppendUvarint(nil, next), partition...)
}

func decodeCellsCursor(b []byte) (string, uint64, error) {
	next, n := binary.Uvarint(b)
	if n <= 0 || !utf8.Valid(b[n:]) {
		return "", 0, fmt.Errorf("unit cells cursor of %d bytes does not decode: %w", len(b), engine.ErrInvalid)
	}
	return string(b[n:]), next, nil
}

// UnitCells returns a page of the cells located on unit (zero-length
// ones included: they name the unit too), in (partition, row index,
// field) order, from cursor (nil: the start): at most limit cells (0:
// [DefaultUnitCellsPage]) and about maxBytes of them (0:
// [DefaultUnitCellsBytes]), whole rows, at least one row's. next is the
// cursor of the page after, nil after the last. Each partition is walked
// under its lock, from the cursor's row on: a page costs O(rows it
// passes), and a whole listing O(rows).
//
// Cells are listed as they are when their partition is walked: a mover
// that moves them and lists again from the start finds only the cells put
// on the unit meanwhile.
//
// Errors: [engine.ErrNotFound] for a unit not registered;
// [engine.ErrInvalid] for a bad limit or a cursor that does not decode.
func (c *Controller) UnitCells(unit engine.UnitID, cursor []byte, limit int, maxBytes int64) ([]engine.UnitCell, []byte, error) {
	if err := c.closed(); err != nil {
		return nil, nil, fmt.Errorf("cells of storage unit %d: %w", unit, err)
	}
	if _, ok := c.units.Unit(unit); !ok {
		return nil, nil, fmt.Errorf("storage unit %d is not registered: %w", unit, engine.ErrNotFound)
	}
	switch {
	case limit < 0 || limit > MaxUnitCellsPage:
		return nil, nil, fmt.Errorf("unit cells page of %d cells, want 0 to %d: %w", limit, MaxUnitCellsPage, engine.ErrInvalid)
	case maxBytes < 0:
		return nil, nil, fmt.Errorf("unit cells page of %d bytes: %w", maxBytes, engine.ErrInvalid)
	case limit == 0:
		limit = DefaultUnitCellsPage
	}
	if maxBytes == 0 {
		maxBytes = DefaultUnitCellsBytes
	}
	var from string
	var fromIndex uint64
	if len(cursor) > 0 {
		var err error
		if from, fromIndex, err = decodeCellsCursor(cursor); err != nil {
			return nil, nil, err
		}
	}
	var out []engine.UnitCell
	var bytes int64
	var next []byte
	for _, id := range c.partitionIDs(true) {
		if id < from {
			continue
		}
		p, err := c.lock(id)
		if err != nil {
			return nil, nil, err
		}
		if p == nil {
			continue
		}
		start := uint64(0)
		if id == from {
			start = fromIndex
		}
		p.rows.from(start, func(r *row) bool {
			if len(out) >= limit || bytes >= maxBytes {
				next = encodeCellsCursor(p.id, r.index)
				return false
			}
			p.rows.cells(r, func(slot int, cl cell) {
				if engine.UnitID(cl.unit&^producedBit) == unit {
					out = append(out, engine.UnitCell{Partition: p.id, Index: r.index, Field: p.order[slot].name, Loc: cl.loc()})
					bytes += int64(cl.len)
				}
			})
			return true
		})
		p.mu.Unlock()
		if next != nil {
			break
		}
	}
	return out, next, nil
}

// CellsByUnit counts the stored cells (of non-zero length) the
// partitions list on each unit, for the units that hold any: those of a
// dead unit are lost. Each partition keeps its counts as its cells
// change, so this costs O(partitions × units holding cells), no walk.
func (c *Controller) CellsByUnit() map[engine.UnitID]int {
	out := make(map[engine.UnitID]int)
	for _, id := range c.partitionIDs(true) {
		p, _ := c.lock(id)
		if p == nil {
			continue // cleared, or the controller closed
		}
		p.rows.unitsWithCells(func(u engine.UnitID, n int) { out[u] += n })
		p.mu.Unlock()
	}
	return out
}

// moveTable remembers where recently moved cells went, for readers that
// hold the old locations (see [Controller.Moved]). A durable controller's
// snapshots hold its newest maxSavedMoves and replaying the log's moves
// adds to it, so a restart remembers the recent moves; a reader holding
// a location moved longer ago gets the "lost" error of any freed cell.
type moveTable struct {
	mu    sync.Mutex
	to    map[engine.CellLoc]engine.CellLoc
	order []engine.CellLoc // insertion order, for forgetting the oldest
	head  int
}

func (t *moveTable) add(from, to engine.CellLoc) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.to == nil {
		t.to = make(map[engine.CellLoc]engine.CellLoc)
	}
	if len(t.order) >= maxMoves {
		delete(t.to, t.order[t.head])
		t.order[t.head] = from
		t.head = (t.head + 1) % len(t.order)
	} else {
		t.order = append(t.order, from)
	}
	t.to[from] = to
}

// reset forgets every move.
func (t *moveTable) reset() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.to, t.order, t.head = nil, nil, 0
}

// list returns the moves the table holds, oldest first.
func (t *moveTable) list() (from, to []engine.CellLoc) {
	t.mu.Lock()
	defer t.mu.Unlock()
	from = make([]engine.CellLoc, 0, len(t.order))
	from = append(append(from, t.order[t.head:]...), t.order[:t.head]...)
	to = make([]engine.CellLoc, len(from))
	for i, f := range from {
		to[i] = t.to[f]
	}
	return from, to
}

// lookup follows from's moves (a cell may have moved more than once) to
// where it is now; false if from was never moved.
func (t *moveTable) lookup(from engine.CellLoc) (engine.CellLoc, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	at, ok := t.to[from]
	if !ok {
		return engine.CellLoc{}, false
	}
	for range 64 { // a chain of moves; a cycle cannot form (new extents), but bound it
		n, ok := t.to[at]
		if !ok {
			break
		}
		at = n
	}
	return at, true
}

// Moved returns, for each location, where the cell that was there lives
// now: the zero CellLoc when the controller knows of no move of it (the
// cell was cleared or overwritten, or moved longer ago than it
// remembers). A reader whose cells were gone from their unit asks it, and
// reads the cells again where they went.
func (c *Controller) Moved(from []engine.CellLoc) []engine.CellLoc {
	out := make([]engine.CellLoc, len(from))
	for i, l := range from {
		out[i], _ = c.moves.lookup(l)
	}
	return out
}

// MoveCells relocates cells of partition whose bytes a mover copied: cell
// i takes location moves[i].To if it still has moves[i].From (compare
// and set), or reports moved when it has To already (the same request
// repeated after a lost reply). It returns, per cell, whether it is at To
// now, and the old locations it replaced, to be freed once the change is
// durable. A cell overwritten, cleared or moved by another meanwhile is
// not moved: its copy is the mover's to free.
//
// A partition that does not exist (cleared since the cells were listed)
// moves nothing.
//
// Errors (nothing changes): [engine.ErrInvalid] for a move to no unit, to lost storage,
// to an unregistered unit, of another length, or of a cell named twice;
// [engine.ErrLost] for a target in generations its unit's reconcile
// fenced (write the copy again).
func (c *Controller) MoveCells(partition string, moves []engine.CellMove) ([]bool, []engine.CellLoc, error) {
	type key struct {
		index uint64
		field string
	}
	seen := make(map[key]bool, len(moves))
	for i, m := range moves {
		k := key{m.Index, m.Field}
		switch {
		case seen[k]:
			return nil, nil, opErr("move cells", partition, fmt.Errorf("cell %q of row %d named twice: %w", m.Field, m.Index, engine.ErrInvalid))
		case m.To.Unit == 0 || m.To.Lost():
			return nil, nil, opErr("move cells", partition, fmt.Errorf("move %d of cell %q of row %d to unit %d: %w", i, m.Field, m.Index, m.To.Unit, engine.ErrInvalid))
		case m.To.Addr.Len != m.From.Addr.Len:
			return nil, nil, opErr("move cells", partition, fmt.Errorf("move of cell %q of row %d from %d bytes to %d: %w", m.Field, m.Index, m.From.Addr.Len, m.To.Addr.Len, engine.ErrInvalid))
		}
		seen[k] = true
	}
	p, err := c.lock(partition)
	if err != nil {
		return nil, nil, opErr("move cells", partition, err)
	}
	if p == nil {
		// Cleared since the mover listed it: no cell is at From.
		return make([]bool, len(moves)), nil, nil
	}
	defer p.mu.Unlock()
	// The targets are checked under the partition's lock, as a commit's
	// are (checkDraining): a drain lists the unit's cells under the same
	// lock after marking it, so a move checked before the mark is in what
	// it lists, and one checked after is refused.
	targets := map[engine.UnitID]bool{}
	for _, m := range moves {
		if _, ok := targets[m.To.Unit]; ok {
			continue
		}
		u, ok := c.units.Unit(m.To.Unit)
		switch {
		case !ok:
			return nil, nil, opErr("move cells", partition, fmt.Errorf("move of cell %q of row %d to storage unit %d, which is not registered: %w", m.Field, m.Index, m.To.Unit, engine.ErrInvalid))
		case u.Draining:
			return nil, nil, opErr("move cells", partition, fmt.Errorf("move of cell %q of row %d to storage unit %d, which is draining: %w", m.Field, m.Index, m.To.Unit, engine.ErrInvalid))
		case !u.Alive:
			// Its cells read as lost: the move would lose a readable one.
			return nil, nil, opErr("move cells", partition, fmt.Errorf("move of cell %q of row %d to storage unit %d, which has not been heard from within its timeout: %w", m.Field, m.Index, m.To.Unit, engine.ErrUnavailable))
		}
		targets[m.To.Unit] = true
	}
	copies := make([]engine.CommitField, 1)
	for _, m := range moves {
		if m.To.Addr.Len > 0 {
			copies[0].Locs = append(copies[0].Locs, m.To)
		}
	}
	if err := c.checkFences(copies); err != nil {
		return nil, nil, opErr("move cells", partition, err)
	}
	moved := make([]bool, len(moves))
	var freed []engine.CellLoc
	var rows []*row
	op := &wirepb.MoveOp{Partition: p.id, Gen: p.gen}
	var to []engine.CellLoc
	for i, m := range moves {
		r, ok := p.rows.get(m.Index)
		f := p.fields[m.Field]
		if !ok || f == nil || !p.rows.has(r, f.slot) {
			continue
		}
		switch cur := p.rows.cell(r, f.slot).loc(); cur {
		case m.To:
			moved[i] = true
		case m.From:
			p.rows.set(r, f.slot, cellAt(m.To))
			moved[i] = true
			freed = append(freed, m.From)
			c.moves.add(m.From, m.To)
			rows = append(rows, r)
			op.Indexes = append(op.Indexes, m.Index)
			op.Fields = append(op.Fields, m.Field)
			to = append(to, m.To)
		}
	}
	if len(op.Indexes) > 0 && c.logging() {
		op.To = wire.AddrsToPB(to)
		stamp(rows, c.log(&wirepb.LogOp{Op: &wirepb.LogOp_Move{Move: op}}))
	}
	return moved, freed, nil
}

// applyMove replays a MoveOp.
func (c *Controller) applyMove(o *wirepb.MoveOp) error {
	p := c.partitionOf(o.Partition, o.Gen)
	if p == nil {
		return nil
	}
	to, err := wire.AddrsFromPB(o.To)
	if err != nil || len(o.Fields) != len(o.Indexes) || len(to) != len(o.Indexes) {
		return corrupt("moved cells of partition %q: %d indexes, %d fields, %d locations (%v)", o.Partition, len(o.Indexes), len(o.Fields), len(to), err)
	}
	for i, gi := range o.Indexes {
		r, ok := p.rows.get(gi)
		f := p.fields[o.Fields[i]]
		if ok && f != nil && p.rows.has(r, f.slot) {
			if from := p.rows.cell(r, f.slot).loc(); from != to[i] {
				c.moves.add(from, to[i])
			}
			p.rows.set(r, f.slot, cellAt(to[i]))
		}
	}
	return nil
}
