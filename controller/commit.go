package controller

import (
	"fmt"
	"math"

	"github.com/tqgo/tq/engine"
)

// locCursor walks a commit field's row locations in row order, from Locs
// or Runs (the zero location when it has neither).
type locCursor struct {
	cf     *engine.CommitField
	run, k int
}

func (c *locCursor) next(i int) engine.CellLoc {
	switch {
	case c.cf.Runs != nil:
		for c.k == c.cf.Runs[c.run].Count {
			c.run, c.k = c.run+1, 0
		}
		c.k++
		return c.cf.Runs[c.run].Cell(c.k - 1)
	case c.cf.Locs != nil:
		return c.cf.Locs[i]
	}
	return engine.CellLoc{}
}

// validateCommit checks everything a commit could trip over before any
// state changes, so a rejected commit leaves the partition untouched.
func (p *partition) validateCommit(req *engine.CommitRequest) ([]*row, error) {
	n := len(req.Indexes)
	rows := make([]*row, n)
	seen := make(map[uint64]struct{}, n)
	var missing []uint64
	for i, gi := range req.Indexes {
		if _, dup := seen[gi]; dup {
			return nil, fmt.Errorf("row %d appears twice in the commit: %w", gi, engine.ErrInvalid)
		}
		seen[gi] = struct{}{}
		r, ok := p.rows.get(gi)
		if !ok {
			missing = append(missing, gi)
			continue
		}
		rows[i] = r
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("rows %s are not in partition %q: %w", engine.RowList(missing), p.id, engine.ErrNotFound)
	}
	if err := checkFields(req.Fields, n); err != nil {
		return nil, err
	}
	if err := p.checkDTypes(req.Fields); err != nil {
		return nil, err
	}
	return rows, nil
}

// checkFields checks a commit's fields for n rows on their own: names,
// dtypes, kinds, shapes and location counts.
func checkFields(fields []engine.CommitField, n int) error {
	names := make(map[string]struct{}, len(fields))
	for _, cf := range fields {
		if cf.Name == "" {
			return fmt.Errorf("commit of a field with an empty name: %w", engine.ErrInvalid)
		}
		if _, dup := names[cf.Name]; dup {
			return fmt.Errorf("field %q appears twice in the commit: %w", cf.Name, engine.ErrInvalid)
		}
		names[cf.Name] = struct{}{}
		if !cf.DType.Valid() {
			return fmt.Errorf("field %q has dtype %v: %w", cf.Name, cf.DType, engine.ErrInvalid)
		}
		switch cf.Kind {
		case engine.Opaque:
			if cf.DType != engine.Bytes {
				return fmt.Errorf("opaque field %q has dtype %v, want bytes: %w", cf.Name, cf.DType, engine.ErrInvalid)
			}
		case engine.Dense:
			if cf.DType == engine.Bytes {
				return fmt.Errorf("dense field %q has dtype bytes: %w", cf.Name, engine.ErrInvalid)
			}
			// Checked against the dtype: a cell's byte count that wrapped
			// around would let the shape claim bytes its cells lack.
			if _, err := cf.Shape.CellBytes(cf.DType); err != nil {
				return fmt.Errorf("field %q: %w", cf.Name, err)
			}
		case engine.Ragged:
			if cf.DType == engine.Bytes {
				return fmt.Errorf("ragged field %q has dtype bytes: %w", cf.Name, engine.ErrInvalid)
			}
			if len(cf.Shapes) != n {
				return fmt.Errorf("ragged field %q has %d shapes for %d rows: %w", cf.Name, len(cf.Shapes), n, engine.ErrInvalid)
			}
			for _, s := range cf.Shapes {
				if _, err := s.CellBytes(cf.DType); err != nil {
					return fmt.Errorf("field %q: %w", cf.Name, err)
				}
			}
		default:
			return fmt.Errorf("field %q has kind %v: %w", cf.Name, cf.Kind, engine.ErrInvalid)
		}
		if cf.Locs != nil && len(cf.Locs) != n {
			return fmt.Errorf("field %q has %d locations for %d rows: %w", cf.Name, len(cf.Locs), n, engine.ErrInvalid)
		}
		if cf.Runs != nil {
			if cf.Locs != nil {
				return fmt.Errorf("field %q has both locations and runs: %w", cf.Name, engine.ErrInvalid)
			}
			cells := 0
			for _, r := range cf.Runs {
				// More than the rows left is refused here, before the sum
				// could wrap around and pass.
				if r.Count <= 0 || r.Count > n-cells {
					return fmt.Errorf("field %q has a run of %d cells (%d of %d rows covered before it): %w", cf.Name, r.Count, cells, n, engine.ErrInvalid)
				}
				cells += r.Count
			}
			if cells != n {
				return fmt.Errorf("field %q has runs of %d cells for %d rows: %w", cf.Name, cells, n, engine.ErrInvalid)
			}
		}
	}
	return nil
}

// checkLens refuses a location whose length is not the bytes its cell's
// declared shape needs: product(dims) × the dtype's size, the field's
// Shape for a dense field and the row's Shapes[i] for a ragged one (see
// wire/spec.md, "Cell bytes"). Readers refuse such a cell as corrupt, so
// once committed it would fail every read of its row. An opaque field
// declares no length per row: its location's length is the row's length.
// Fields without locations (metadata-only use) and cells not stored
// (unit 0) carry no bytes and are not checked. row names row i in the
// error. The fields must have passed checkFields.
func checkLens(partition string, fields []engine.CommitField, row func(i int) string) error {
	for fi := range fields {
		cf := &fields[fi]
		if cf.Kind == engine.Opaque || cf.Locs == nil && cf.Runs == nil {
			continue
		}
		dense, _ := cf.Shape.CellBytes(cf.DType) // valid: checkFields passed
		check := func(i int, got uint64) error {
			s, want := cf.Shape, dense
			if cf.Kind == engine.Ragged {
				s = cf.Shapes[i]
				want, _ = s.CellBytes(cf.DType)
			}
			if got == uint64(want) {
				return nil
			}
			return fmt.Errorf("field %q of partition %q, %s: location holds %d bytes, %v%v needs %d: %w",
				cf.Name, partition, row(i), got, cf.DType, s, want, engine.ErrInvalid)
		}
		if cf.Runs != nil {
			// Every cell of a run has First.Len bytes: a dense field's run
			// is checked once, a ragged field's cell by cell.
			i := 0
			for _, r := range cf.Runs {
				for k := 0; r.Unit != 0 && k < r.Count; k++ {
					if err := check(i+k, r.First.Len); err != nil {
						return err
					}
					if cf.Kind == engine.Dense {
						break
					}
				}
				i += r.Count
			}
			continue
		}
		for i, l := range cf.Locs {
			if !l.Stored() {
				continue
			}
			if err := check(i, l.Addr.Len); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkLocs refuses a stored location no unit can hold:
//   - one naming a unit id above [engine.LostUnit]: ids are handed out
//     below it, and a cell keeps its unit in 31 bits (producedBit is the
//     32nd), so unit 2^31+1 would be recorded as unit 1, past the fences
//     and draining mark checked under the id as sent;
//   - one whose bytes end past 2^64, a run's (First.Offset + Count ×
//     First.Len) included: its end would read as a small offset, and
//     a run's later cells ([engine.CellRun.Cell]) would wrap around onto
//     the start of the segment. The wire decoder refuses these, so this
//     guards the Go API (an embedded client) and keeps the log, which is
//     written in the wire's form, loadable;
//   - one whose bytes end past the capacity its unit registered with: a
//     unit's extents lie within its segments, which together never exceed
//     its capacity, and a reader over TCP allocates a cell's length
//     before the unit checks anything (a cell of 1 TiB on a unit of 1 GiB
//     killed every reader of it for lack of memory). Only registered
//     units that reported a capacity are checked so: not
//     [engine.LostUnit], which names no unit, nor a unit evicted
//     (checkDraining refuses it), nor a unit id the registry does not
//     know (a client made with client.New may name units it made
//     itself).
//
// Not in checkFields, and not run on replay: a log written before these
// rules may hold such a commit, and replaying it keeps the log loadable.
// row names row i in the error. The fields must have passed checkFields.
func (c *Controller) checkLocs(fields []engine.CommitField, row func(i int) string) error {
	b := c.units.bounds()
	var last engine.UnitID
	var capacity uint64
	// check checks the bytes of a location (count 0) or of the run of
	// count cells from row i, on unit u.
	check := func(cf *engine.CommitField, i int, u engine.UnitID, a engine.RemoteAddr, count int) error {
		if u > engine.LostUnit {
			return fmt.Errorf("field %q: location on storage unit %d, past the highest unit id %d: %w", cf.Name, u, engine.LostUnit-1, engine.ErrInvalid)
		}
		if u == 0 {
			return nil // not stored
		}
		n, k := a.Len, max(uint64(count), 1)
		if n > 0 && (k > math.MaxUint64/n || a.Offset > math.MaxUint64-k*n) {
			if count > 0 {
				return fmt.Errorf("field %q: run of %d cells of %d bytes from offset %d on storage unit %d ends past 2^64: %w",
					cf.Name, count, n, a.Offset, u, engine.ErrInvalid)
			}
			return fmt.Errorf("field %q, %s: location of %d bytes from offset %d on storage unit %d ends past 2^64: %w",
				cf.Name, row(i), n, a.Offset, u, engine.ErrInvalid)
		}
		if u == engine.LostUnit {
			return nil
		}
		if u != last {
			last, capacity = u, b.caps[u]
		}
		if end := a.Offset + k*n; capacity != 0 && end > capacity {
			what := fmt.Sprintf("location of %d bytes", n)
			if count > 0 {
				what = fmt.Sprintf("run of %d cells of %d bytes", count, n)
			}
			return fmt.Errorf("field %q, %s: %s from offset %d on storage unit %d ends at byte %d, past the unit's capacity of %d bytes: %w",
				cf.Name, row(i), what, a.Offset, u, end, capacity, engine.ErrInvalid)
		}
		return nil
	}
	for fi := range fields {
		cf := &fields[fi]
		i := 0
		for _, r := range cf.Runs {
			if err := check(cf, i, r.Unit, r.First, r.Count); err != nil {
				return err
			}
			i += r.Count
		}
		for i, l := range cf.Locs {
			if err := check(cf, i, l.Unit, l.Addr, 0); err != nil {
				return err
			}
		}
	}
	return nil
}

// maxFields bounds a partition's fields (a row counts its produced cells
// in 16 bits).
const maxFields = 1<<16 - 1

// checkDTypes refuses fields whose dtype differs from the one the
// partition's produced cells of that field have, and new fields past
// maxFields or named with more than [engine.MaxNameBytes].
func (p *partition) checkDTypes(fields []engine.CommitField) error {
	added := 0
	for _, cf := range fields {
		f, ok := p.fields[cf.Name]
		if !ok {
			if err := engine.CheckNameSize("field", cf.Name); err != nil {
				return err
			}
			if added++; len(p.order)+added > maxFields {
				return fmt.Errorf("field %q would be partition %q's field number %d, past the limit of %d: %w", cf.Name, p.id, len(p.order)+added, maxFields, engine.ErrCapacity)
			}
		}
		if ok && f.dtype != engine.InvalidDType && f.dtype != cf.DType {
			// Overwriting every produced row of the field with a new dtype
			// would be legal in principle; we keep the reference's rule that
			// a field has one dtype for its lifetime in the partition.
			return fmt.Errorf("field %q of partition %q is %v, commit has %v: %w",
				cf.Name, p.id, f.dtype, cf.DType, engine.ErrDTypeMismatch)
		}
	}
	return nil
}

// applyCommit records validated cells and returns the locations of the
// cells they replaced (their storage can be freed).
func (p *partition) applyCommit(req *engine.CommitRequest, rows []*row) []engine.CellLoc {
	var replaced []engine.CellLoc
	fs := make([]*field, len(req.Fields))
	for i, cf := range req.Fields {
		f, ok := p.fields[cf.Name]
		if !ok {
			f = &field{name: cf.Name, slot: len(p.order)}
			p.fields[cf.Name] = f
			p.order = append(p.order, f)
		}
		fs[i] = f
	}
	for fi := range req.Fields {
		cf, f := &req.Fields[fi], fs[fi]
		locs := locCursor{cf: cf}
		if cf.Kind == engine.Dense && (f.produced == 0 || f.kind == engine.Dense && f.shape.Equal(cf.Shape)) {
			// Dense cells of the shape the field has (or a field with none
			// produced): the schema tracking only counts them.
			if f.produced == 0 {
				f.dtype, f.kind, f.shape, f.shapes, f.counts, f.base = cf.DType, engine.Dense, scalarIfNil(cf.Shape.Clone()), nil, nil, nil
			}
			kept := 0
			for i, r := range rows {
				if c := p.rows.cell(r, f.slot); c.produced() {
					replaced = append(replaced, c.loc())
					kept++
				}
				p.rows.set(r, f.slot, cellAt(locs.next(i)))
			}
			f.produced += len(rows) - kept
			continue
		}
		for i, r := range rows {
			if c := p.rows.cell(r, f.slot); c.produced() {
				replaced = append(replaced, c.loc())
				p.forgetCell(f, r.index)
			}
			p.rows.set(r, f.slot, cellAt(locs.next(i)))
			var s engine.Shape
			switch cf.Kind {
			case engine.Dense:
				s = scalarIfNil(cf.Shape)
			case engine.Ragged:
				s = scalarIfNil(cf.Shapes[i])
			}
			p.recordCell(f, r.index, cf.DType, cf.Kind == engine.Opaque, s)
		}
	}
	var activated []*row
	for _, r := range rows {
		if !r.active {
			r.active = true
			p.reserved.Delete(r.index)
			activated = append(activated, r)
		}
		if len(p.views) > 0 {
			p.refreshRow(r)
		}
	}
	// A commit straight to pre-allocated rows is the insert that made
	// them (replay commits alike).
	p.madeBy(activated)
	p.notify()
	return replaced
}

// scalarIfNil returns s, or the scalar shape () for nil: a commit may
// give a scalar cell's shape as nil (its bytes are counted as ()'s), and
// a nil shape reads as unknown on the wire (wire.ShapeToPB), so the
// schema tracking records (), as a state file's cells come back.
func scalarIfNil(s engine.Shape) engine.Shape {
	if s == nil {
		return engine.Shape{}
	}
	return s
}

// recordCell updates f's schema tracking for a newly produced cell: the
// first dtype wins (validated before), a shape change promotes a dense
// field to ragged, and a ragged field whose rows agree again turns dense.
func (p *partition) recordCell(f *field, gi uint64, dt engine.DType, opaque bool, s engine.Shape) {
	if f.produced == 0 {
		f.dtype = dt
		if opaque {
			f.kind = engine.Opaque
		} else {
			f.kind, f.shape = engine.Dense, s.Clone()
		}
	}
	f.produced++
	switch f.kind {
	case engine.Opaque:
		return
	case engine.Dense:
		if s.Equal(f.shape) {
			return
		}
		// Promote: every produced row so far had f.shape, which becomes
		// the base, so that the table starts empty: copying every row's
		// shape into it cost the partition's rows each time a row took
		// another shape (and dropped back to dense when it took the
		// field's shape again).
		f.shapes = newShapeTable(0)
		f.counts = map[string]int{shapeKey(f.shape): f.produced - 1}
		f.kind, f.base, f.shape = engine.Ragged, f.shape, nil
	}
	if s.Equal(f.base) {
		f.shapes.del(gi)
	} else {
		f.shapes.put(gi, s)
	}
	f.counts[shapeKey(s)]++
	if len(f.counts) == 1 {
		f.kind, f.shape, f.shapes, f.counts, f.base = engine.Dense, s.Clone(), nil, nil, nil
	}
}
