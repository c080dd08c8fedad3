package client

// The mover of a drain: copy, commit, then free. It pages through the
// cells located on the draining unit (UNIT_CELLS), reads a page's bytes
// from it, writes them as one extent to another unit, and commits each
// copy with MOVE_CELLS, a compare-and-set per cell: a cell overwritten or
// cleared meanwhile keeps its new state, and the mover frees the copy the
// controller did not take. The controller frees the old locations once
// the moves are durable, and forwards readers that still hold them (see
// Client.get).
//
// Nothing is lost when the mover dies: until MOVE_CELLS a cell still
// names its old bytes, and a copy written but never committed is an
// extent no cell references, which its unit's periodic reconcile frees
// after its grace. Running the drain again starts over from the cells
// still on the unit.
//
// A put placed on the unit before its client learned that it is draining
// (clients list the units at most once per learnEvery) is refused at its
// commit once the unit is marked (ErrLost), and its client lists the
// units and writes it again elsewhere (Client.placeAgain); a commit the
// controller checked before the mark is in what the mover lists. The
// mover still lists the unit again after each pass, until a pass that
// began at least DrainConfig.Settle after the unit was marked finds no
// cell, for controllers that took such commits.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tqgo/tq/engine"
)

// cellMover is a metadata service that moves cells (see [RemoteMeta]).
type cellMover interface {
	DrainUnit(ctx context.Context, id engine.UnitID, draining bool) (engine.UnitInfo, error)
	UnitCells(ctx context.Context, unit engine.UnitID, cursor []byte, limit int, maxBytes int64) ([]engine.UnitCell, []byte, error)
	MoveCells(ctx context.Context, partition string, moves []engine.CellMove, cluster string) ([]bool, error)
}

// DrainConfig tunes [Client.Drain].
type DrainConfig struct {
	// PageCells and PageBytes bound the cells a step lists, reads and
	// writes at once (0: 4096 cells, 64 MiB).
	PageCells int
	PageBytes int64
	// Progress, when set, is called after each step with the totals so
	// far.
	Progress func(DrainStats)
	// Settle is how long after marking the unit draining the drain keeps
	// listing it (0: 2 × the clients' learning interval + 1 s): puts
	// placed by clients that had not learned yet land on it meanwhile.
	Settle time.Duration
}

// DrainStats is what a drain did.
type DrainStats struct {
	// Moved and Bytes count the cells moved and their bytes.
	Moved int
	Bytes int64
	// Skipped counts the cells that changed while they were copied
	// (overwritten, cleared, moved by another): their copies were freed.
	Skipped int
	// Passes counts the listings of the unit's cells.
	Passes int
}

// maxStuckPasses bounds the passes in a row that find cells and move
// none: such cells cannot be read (their bytes are gone), and listing
// them again will not change that.
const maxStuckPasses = 3

// Drain takes storage unit id out of service: it marks it draining, so
// that clients place no new cells on it, and moves every cell it holds to
// other units, returning when a listing of the unit finds no cell. The
// unit stays registered and draining (see [RemoteMeta.DrainUnit] to
// return it to service). Readers never see a missing cell: until a move
// is committed the old cell is read, and after it, the new one.
//
// Running Drain again after it failed or was killed carries on: the cells
// it moved stay moved, and copies it left uncommitted are freed by their
// unit. A drain whose ctx ends frees at once the copies it had not yet
// asked the controller to take; one whose ctx ends while the controller
// moves cells waits up to a second more for the answer, as a put does.
//
// Errors: [engine.ErrNotSupported] when the client's metadata service
// cannot move cells (an embedded controller); [engine.ErrNotFound] for an
// unknown unit; [engine.ErrCapacity] when no other unit takes
// placements or none has room; [engine.ErrLost] when the unit cannot be
// read; [engine.ErrClosed] without ErrLost when this client was closed
// while it read.
func (c *Client) Drain(ctx context.Context, id engine.UnitID, cfg DrainConfig) (DrainStats, error) {
	var st DrainStats
	mv, ok := c.meta.(cellMover)
	if !ok {
		return st, &engine.OpError{Op: "drain", Err: fmt.Errorf("the metadata service %T cannot move cells: %w", c.meta, engine.ErrNotSupported)}
	}
	if _, err := mv.DrainUnit(ctx, id, true); err != nil {
		return st, err
	}
	settle := cfg.Settle
	if settle <= 0 {
		settle = 2*learnEvery + time.Second
	}
	settled := time.Now().Add(settle)
	if c.disc != nil {
		c.disc.learn(ctx, c, false) // this client stops placing on it too
	}
	cluster := c.tbl.Load().cluster // before the lookup: never younger than the table src is from
	src, err := c.unit(ctx, id, "")
	if errors.Is(err, engine.ErrLost) {
		return st, &engine.OpError{Op: "drain", Err: fmt.Errorf("storage unit %d is not in the client's table: %w", id, engine.ErrNotFound)}
	} else if err != nil {
		return st, &engine.OpError{Op: "drain", Err: err}
	}
	m := mover{c: c, mv: mv, src: src, cluster: cluster, cfg: cfg, st: &st}
	stuck := 0
	for {
		st.Passes++
		began := time.Now()
		found, moved, err := m.pass(ctx)
		if err != nil {
			return st, &engine.OpError{Op: "drain", Peer: fmt.Sprint(id), Err: err}
		}
		if found == 0 {
			if began.After(settled) {
				return st, nil
			}
			select {
			case <-time.After(min(200*time.Millisecond, time.Until(settled)+time.Millisecond)):
				continue
			case <-ctx.Done():
				return st, &engine.OpError{Op: "drain", Peer: fmt.Sprint(id), Err: ctx.Err()}
			}
		}
		if moved > 0 {
			stuck = 0
		} else if stuck++; stuck >= maxStuckPasses {
			return st, &engine.OpError{Op: "drain", Peer: fmt.Sprint(id), Err: fmt.Errorf("%d cells stay on the unit after %d passes that moved none: %w", found, stuck, engine.ErrLost)}
		}
	}
}

type mover struct {
	c   *Client
	mv  cellMover
	src DataUnit
	// cluster is the cluster of the unit table src was taken from, which
	// the moves name (see [engine.CommitRequest]).
	cluster string
	cfg     DrainConfig
	st      *DrainStats
	// targets, when set, returns the units to write size bytes to, in
	// order of preference (a rebalance's emptier units).
	targets func(size uint64) []DataUnit
	// budget, when positive, bounds the bytes of cells a pass lists.
	budget int64
	next   int // the target to try first, in turn
}

// pass lists the unit's cells once, moving each page; it returns the
// cells listed and those moved.
func (m *mover) pass(ctx context.Context) (found, moved int, err error) {
	var cursor []byte
	left := m.budget
	for {
		pageBytes := m.cfg.PageBytes
		if m.budget > 0 {
			if left <= 0 {
				return found, moved, nil
			}
			if pageBytes <= 0 || pageBytes > left {
				pageBytes = left
			}
		}
		cells, next, err := m.mv.UnitCells(ctx, m.src.ID(), cursor, m.cfg.PageCells, pageBytes)
		if err != nil {
			return found, moved, err
		}
		found += len(cells)
		for _, cl := range cells {
			left -= int64(cl.Loc.Addr.Len)
		}
		if len(cells) > 0 {
			n, err := m.page(ctx, cells)
			moved += n
			if m.cfg.Progress != nil {
				m.cfg.Progress(*m.st)
			}
			if err != nil {
				return found, moved, err
			}
		}
		if next == nil {
			return found, moved, nil
		}
		cursor = next
	}
}

// page copies cells to another unit and commits the copies.
func (m *mover) page(ctx context.Context, cells []engine.UnitCell) (int, error) {
	cells, data, err := m.read(ctx, cells)
	if err != nil || len(cells) == 0 {
		return 0, err
	}
	to, target, err := m.write(ctx, cells, data)
	if err != nil {
		return 0, err
	}
	// Commit per partition, in the page's order.
	var notTaken []engine.RemoteAddr
	moved := 0
	for lo := 0; lo < len(cells); {
		hi := lo
		for hi < len(cells) && cells[hi].Partition == cells[lo].Partition {
			hi++
		}
		moves := make([]engine.CellMove, hi-lo)
		for i := range moves {
			cl := cells[lo+i]
			moves[i] = engine.CellMove{Index: cl.Index, Field: cl.Field, From: cl.Loc, To: to[lo+i]}
		}
		// Committed as a put's cells are: a move whose ctx ended is not
		// sent to a remote controller, and changed nothing.
		ok, maybe, err := commitWritten(ctx, "move", func(ctx context.Context) ([]bool, error) {
			return m.mv.MoveCells(ctx, cells[lo].Partition, moves, m.cluster)
		})
		if errors.Is(err, engine.ErrLost) {
			// The target's reconcile fenced the copies (this page took
			// longer than its grace) and frees them: the cells stay where
			// they are, for the next pass.
			return moved, m.free(ctx, target, notTaken)
		}
		if err != nil {
			// Refused or never sent: nothing of this request was taken,
			// free its copies and those of the rest. Otherwise the request
			// may have been applied: its copies stay (a reconcile frees
			// the ones no cell took).
			if !maybe {
				for _, t := range to[lo:] {
					notTaken = append(notTaken, t.Addr)
				}
			}
			return moved, errors.Join(err, m.free(ctx, target, notTaken))
		}
		for i, taken := range ok {
			if taken {
				moved++
				m.st.Moved++
				m.st.Bytes += int64(to[lo+i].Addr.Len)
			} else {
				m.st.Skipped++
				notTaken = append(notTaken, to[lo+i].Addr)
			}
		}
		lo = hi
	}
	return moved, m.free(ctx, target, notTaken)
}

// readErr says why a read of the draining unit failed with err, as a
// get's does (Client.readErr), but for a drain whose caller gave up
// (ctx ended): nothing is known about the cells then, and the error is
// the read's, not engine.ErrLost.
func (m *mover) readErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("storage unit %d: %w", m.src.ID(), err)
	}
	return m.c.readErr(m.src.ID(), err)
}

// readFrom reads addrs of the draining unit into dst under watchDead, as
// a get's reads: a unit gone silent (stopped, its connections open) and
// reported dead ends the read, where it (or the dial under it) waited
// for the drain's deadline.
func (m *mover) readFrom(ctx context.Context, addrs []engine.RemoteAddr, dst [][]byte) error {
	return m.c.watchDead(ctx, m.src.ID(), func(ctx context.Context) error {
		return m.src.ReadInto(ctx, addrs, dst)
	})
}

// read reads the cells' bytes from the draining unit, all at once, or
// one by one when some are gone (replaced or cleared since they were
// listed: those are left out). A failed read says why, as a get's does
// (see Client.readErr): the cells are lost to it (engine.ErrLost), unless
// the client was closed meanwhile (engine.ErrClosed).
func (m *mover) read(ctx context.Context, cells []engine.UnitCell) ([]engine.UnitCell, [][]byte, error) {
	// Before the cells' bytes are allocated: a cell past the unit's
	// capacity (no unit holds one) would have the drain allocate its
	// length, 1 TiB as well as 1 KiB.
	var capacity uint64
	var known bool
	if t := m.c.tbl.Load(); t != nil {
		capacity, known = t.caps[m.src.ID()]
	}
	if r, ok := m.src.(roomer); ok && !known {
		n, _ := r.Room()
		capacity, known = uint64(n), n > 0
	}
	for _, cl := range cells {
		if known && checkCapacity(m.src.ID(), capacity, []engine.RemoteAddr{cl.Loc.Addr}) != nil {
			return nil, nil, fmt.Errorf("drain read: field %q of row %d of partition %q: cell of %d bytes from offset %d on storage unit %d ends past the unit's capacity of %d bytes: %w",
				cl.Field, cl.Index, cl.Partition, cl.Loc.Addr.Len, cl.Loc.Addr.Offset, m.src.ID(), capacity, engine.ErrCorrupt)
		}
	}
	data := make([][]byte, len(cells))
	var addrs []engine.RemoteAddr
	var dst [][]byte
	for i, cl := range cells {
		data[i] = make([]byte, cl.Loc.Addr.Len)
		if cl.Loc.Addr.Len > 0 { // an empty cell has no bytes to read
			addrs = append(addrs, cl.Loc.Addr)
			dst = append(dst, data[i])
		}
	}
	if len(addrs) == 0 {
		return cells, data, nil
	}
	err := m.readFrom(ctx, addrs, dst)
	if err == nil {
		return cells, data, nil
	}
	if !errors.Is(err, engine.ErrNotFound) {
		return nil, nil, fmt.Errorf("drain read of %d cells: %w", len(addrs), m.readErr(ctx, err))
	}
	keep := cells[:0:0]
	var kept [][]byte
	for i, cl := range cells {
		if cl.Loc.Addr.Len > 0 {
			err = m.readFrom(ctx, []engine.RemoteAddr{cl.Loc.Addr}, data[i:i+1])
		} else {
			err = nil
		}
		switch {
		case err == nil:
			keep = append(keep, cl)
			kept = append(kept, data[i])
		case errors.Is(err, engine.ErrNotFound):
			m.st.Skipped++ // changed since it was listed: the next pass sees it as it is now
		default:
			return nil, nil, fmt.Errorf("drain read of a cell: %w", m.readErr(ctx, err))
		}
	}
	return keep, kept, nil
}

// targetWait bounds how long a write waits for room on one target
// before the mover tries the next.
const targetWait = 5 * time.Second

// write stores the cells' bytes back to back as one extent on a target —
// m.targets' first that has room, else a unit that takes placements, each
// in turn so that a drain spreads its cells — and returns each cell's new
// location.
func (m *mover) write(ctx context.Context, cells []engine.UnitCell, data [][]byte) ([]engine.CellLoc, DataUnit, error) {
	var size uint64
	for _, d := range data {
		size += uint64(len(d))
	}
	var targets []DataUnit
	if m.targets != nil {
		targets = m.targets(size)
	} else {
		units, _, _, _ := m.c.writable()
		for _, u := range units {
			if u.ID() != m.src.ID() && !m.c.tbl.Load().draining[u.ID()] {
				targets = append(targets, u)
			}
		}
		if len(targets) > 0 {
			k := m.next % len(targets)
			targets = append(targets[k:len(targets):len(targets)], targets[:k]...)
		}
	}
	if len(targets) == 0 {
		return nil, nil, fmt.Errorf("no storage unit but %d takes placements: its cells have nowhere to go: %w", m.src.ID(), engine.ErrCapacity)
	}
	var errs []error
	for _, t := range targets {
		to := make([]engine.CellLoc, len(cells))
		if size == 0 {
			for i := range to {
				to[i] = engine.CellLoc{Unit: t.ID()}
			}
			m.next++
			return to, t, nil
		}
		wctx, cancel := context.WithTimeout(ctx, targetWait)
		ext, err := t.Write(wctx, [][][]byte{data})
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return nil, nil, ctx.Err()
			}
			errs = append(errs, fmt.Errorf("storage unit %d: %w", t.ID(), err))
			continue
		}
		m.next++
		off := ext[0].Offset
		for i, d := range data {
			to[i] = engine.CellLoc{Unit: t.ID(), Addr: engine.RemoteAddr{Segment: ext[0].Segment, Gen: ext[0].Gen, Offset: off, Len: uint64(len(d))}}
			off += uint64(len(d))
		}
		return to, t, nil
	}
	return nil, nil, fmt.Errorf("no storage unit took %d bytes of moved cells: %w: %w", size, engine.ErrCapacity, errors.Join(errs...))
}

// free frees copies no cell took.
func (m *mover) free(ctx context.Context, target DataUnit, addrs []engine.RemoteAddr) error {
	var nonEmpty []engine.RemoteAddr
	for _, a := range addrs {
		if a.Len > 0 {
			nonEmpty = append(nonEmpty, a)
		}
	}
	if len(nonEmpty) == 0 {
		return nil
	}
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), targetWait)
	defer cancel()
	if err := target.Free(fctx, engine.CoalesceRanges(nonEmpty)); err != nil {
		return fmt.Errorf("free %d copies no cell took on storage unit %d: %w", len(nonEmpty), target.ID(), err)
	}
	return nil
}
