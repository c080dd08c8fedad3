package controller

import (
	"fmt"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire/wirepb"
)

// ClearFields drops the cells of fields from each of keys, in one change:
// the keys stay, with their other fields and tags (Redis's HDEL). It
// returns how many cells were dropped and their locations, to be freed
// once the change is durable. A field a key does not hold is skipped, a
// field named again is cleared once; an unknown partition or key drops
// nothing.
//
// Errors: [engine.ErrInvalid] for no keys, an empty or repeated key, or no
// fields.
func (c *Controller) ClearFields(partition string, keys, fields []string) (int, []engine.CellLoc, error) {
	err := checkKeys(keys)
	if err == nil && len(fields) == 0 {
		err = fmt.Errorf("no fields to clear: %w", engine.ErrInvalid)
	}
	if err != nil {
		return 0, nil, opErr("clear fields", partition, err)
	}
	p, err := c.lock(partition)
	if err != nil {
		return 0, nil, opErr("clear fields", partition, err)
	}
	if p == nil {
		return 0, nil, nil
	}
	defer p.mu.Unlock()
	rows, _ := p.lookupKeys(keys)
	var touched []*row
	var freed []engine.CellLoc
	var names []string
	asked := make(map[string]struct{}, len(fields))
	for _, name := range fields {
		f, ok := p.fields[name]
		if _, again := asked[name]; again || !ok {
			continue // a name given again walks the keys once
		}
		asked[name] = struct{}{}
		names = append(names, name)
		if testHookClearFieldsWalk != nil {
			testHookClearFieldsWalk(len(rows))
		}
		for _, r := range rows {
			if r == nil || !p.has(r, f.slot) {
				continue
			}
			freed = append(freed, p.rows.cell(r, f.slot).loc())
			p.clearCell(f, r)
			touched = append(touched, r)
		}
	}
	if len(freed) == 0 {
		return 0, nil, nil
	}
	touched = uniqueRows(touched)
	p.unready(touched)
	n := p.feed.touch(touched)
	if c.logging() {
		idx := make([]uint64, len(touched))
		for i, r := range touched {
			idx[i] = r.index
		}
		stamp(touched, c.log(&wirepb.LogOp{Op: &wirepb.LogOp_ClearCells{ClearCells: &wirepb.ClearCellsOp{
			Partition: p.id, Gen: p.gen, Indexes: idx, Fields: names, ChangeSeq: n}}}))
	}
	return len(freed), freed, nil
}

// testHookClearFieldsWalk, when set (by tests only), runs each time
// ClearFields walks the keys' rows for a field, with how many.
var testHookClearFieldsWalk func(rows int)

// clearCell drops row r's cell of field f.
func (p *partition) clearCell(f *field, r *row) {
	p.forgetCell(f, r.index)
	p.rows.set(r, f.slot, cell{})
}

// unready takes rows that lost a cell out of the consumption views whose
// fields they no longer all hold.
func (p *partition) unready(rows []*row) {
	for _, v := range p.views {
		for _, r := range rows {
			if !p.rowReady(r, v.slots) {
				v.set.remove(r.index)
			}
		}
	}
}

// uniqueRows drops repeats, keeping the first of each.
func uniqueRows(rows []*row) []*row {
	seen := make(map[*row]bool, len(rows))
	out := rows[:0]
	for _, r := range rows {
		if !seen[r] {
			seen[r] = true
			out = append(out, r)
		}
	}
	return out
}
