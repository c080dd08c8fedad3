package client

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/tqgo/tq/engine"
)

// SizeOf returns the bytes [Client.GetInto] needs for meta's fields.
func SizeOf(meta *engine.BatchMeta) int {
	n := 0
	for _, name := range meta.FieldNames() {
		for _, l := range meta.Cells[name] {
			n += int(l.Addr.Len)
		}
	}
	return n
}

// GetInto reads the meta's fields into buf, which the caller owns and may
// reuse from one get to the next (memory that is already faulted in is the
// fastest place to land bytes). The fields are laid out one after another
// in name order; buf must hold at least [SizeOf](meta) bytes. The returned
// batch aliases buf: it is valid until the caller reuses buf. Over the
// network the bytes go from the socket straight into buf.
func (c *Client) GetInto(ctx context.Context, meta *engine.BatchMeta, buf []byte) (*engine.Batch, error) {
	b, err := c.getInto(ctx, meta, buf)
	// Cells gone from their unit may have been moved (see Client.get);
	// a moved cell keeps its length, so buf's layout stays.
	for try := 0; try < 3 && CellsGone(err) && ctx.Err() == nil; try++ {
		moved := c.movedMeta(ctx, meta)
		if moved == nil {
			break
		}
		meta = moved
		b, err = c.getInto(ctx, meta, buf)
	}
	return b, err
}

func (c *Client) getInto(ctx context.Context, meta *engine.BatchMeta, buf []byte) (*engine.Batch, error) {
	if meta.Len() == 0 {
		return engine.NewBatch()
	}
	if err := meta.Validate(); err != nil {
		return nil, &engine.OpError{Op: "get into", Err: err}
	}
	names := meta.FieldNames()
	if err := checkReady(meta, names); err != nil {
		return nil, &engine.OpError{Op: "get into", Peer: meta.Partitions[0], Err: err}
	}
	if err := checkLens(meta, names); err != nil {
		return nil, &engine.OpError{Op: "get into", Peer: meta.Partitions[0], Err: err}
	}
	if need := SizeOf(meta); len(buf) < need {
		return nil, &engine.OpError{Op: "get into", Err: fmt.Errorf("buffer of %d bytes, the fields need %d: %w", len(buf), need, engine.ErrInvalid)}
	}
	type target struct {
		addrs []engine.RemoteAddr
		dst   [][]byte
	}
	byUnit := map[engine.UnitID]*target{}
	regions := make([][]byte, len(names))
	at := 0
	for fi, name := range names {
		start := at
		for _, r := range splitRuns(meta.Cells[name], true) {
			t := byUnit[r.unit]
			if t == nil {
				t = &target{}
				byUnit[r.unit] = t
			}
			t.addrs = append(t.addrs, r.addr)
			t.dst = append(t.dst, buf[at:at+int(r.addr.Len):at+int(r.addr.Len)])
			at += int(r.addr.Len)
		}
		regions[fi] = buf[start:at:at]
	}
	ids := make([]engine.UnitID, 0, len(byUnit))
	for id := range byUnit {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	// Every unit's reads at once (bounded by Config.MaxUnitIO): each lands
	// in its own stretches of buf.
	errs := c.parallel(ctx, len(ids), func(i int) error {
		id, t := ids[i], byUnit[ids[i]]
		if id == engine.LostUnit {
			return &engine.OpError{Op: "get into", Err: errLostCells(len(t.addrs))}
		}
		u, err := c.unit(ctx, id, meta.Cluster)
		if err != nil {
			return &engine.OpError{Op: "get into", Err: err}
		}
		err = c.watchDead(ctx, id, func(ctx context.Context) error {
			err := u.ReadInto(ctx, t.addrs, t.dst)
			if errors.Is(err, engine.ErrNotFound) {
				// Merged ranges can straddle extents: read cell by cell.
				err = c.readCells(ctx, u, meta, names, id, buf)
			}
			return err
		})
		if err != nil {
			if ctx.Err() == nil {
				err = c.readErr(id, err)
			}
			return &engine.OpError{Op: "get into", Transport: u.Transport(), Peer: fmt.Sprint(id), Err: err}
		}
		return nil
	})
	for _, err := range errs {
		if err != nil {
			if _, ok := err.(*engine.OpError); !ok {
				err = &engine.OpError{Op: "get into", Err: err}
			}
			return nil, err
		}
	}
	fields := make([]engine.Field, len(names))
	for fi, name := range names {
		col, err := columnOver(meta, name, regions[fi])
		if err != nil {
			return nil, &engine.OpError{Op: "get into", Err: fmt.Errorf("field %q: %w", name, err)}
		}
		fields[fi] = engine.Field{Name: name, Col: col}
	}
	return engine.NewBatch(fields...)
}

// readCells is GetInto's fallback: every cell of unit id on its own.
func (c *Client) readCells(ctx context.Context, u DataUnit, meta *engine.BatchMeta, names []string, id engine.UnitID, buf []byte) error {
	var addrs []engine.RemoteAddr
	var dst [][]byte
	at := 0
	for _, name := range names {
		for _, l := range meta.Cells[name] {
			if l.Unit == id {
				addrs = append(addrs, l.Addr)
				dst = append(dst, buf[at:at+int(l.Addr.Len)])
			}
			at += int(l.Addr.Len)
		}
	}
	return u.ReadInto(ctx, addrs, dst)
}
