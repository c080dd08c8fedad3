package controller

// rowTable maps a partition's global row indexes to rows, and holds the
// rows and their cells itself, in pages of pageSize rows keyed by
// index/pageSize:
//
//	pages  map page number → rowPage
//	rowPage
//	  rows  [pageSize]row       by value; row holds no pointers
//	  cols  [field slot][]cell  pageSize cells per field, nil until a row
//	                            of the page has a cell of the field
//
// Neither a row nor a cell holds a pointer (keys, tags and the rare
// consumption words past the first 64 tasks are side tables of the
// partition), so a partition of a million rows is a few thousand
// pointer-free objects to the garbage collector, not millions of small
// ones it must mark and scan on every cycle: before, that marking took a
// third of a fetch's CPU at a million rows. A batch of nearby indexes (the
// usual fetch: the lowest ready rows) touches a few pages, and a field's
// cells of a page are contiguous, so a meta's column is read in order.
//
// A *row handed out points into its page: it stays valid until the row is
// deleted (the page is not freed under it, the garbage collector keeps it),
// and must not be kept past that.
//
// A rowTable is not safe for concurrent use (the partition's lock guards it).

import (
	"slices"

	"github.com/tqgo/tq/engine"
)

// pageSize is the rows per page: small enough that a page sparsely used
// (indexes are shared by all partitions, so a partition's rows can be
// interleaved with others') wastes little, large enough that a fetch of a
// thousand rows looks up a handful.
const pageSize = 256

type rowPage struct {
	rows [pageSize]row
	cols [][]cell // by field slot
	n    int      // live rows in the page
}

type rowTable struct {
	pages map[uint64]*rowPage
	n     int
	// produced counts the rows with at least one produced cell (each
	// row's count is row.cells), so stats need not walk the rows.
	produced int
	// onUnit counts the stored cells (produced, of non-zero length) by
	// unit id, so that the units holding cells are known without a walk.
	onUnit map[uint32]int
	// last caches the most recently used page: consecutive lookups hit it.
	lastKey  uint64
	lastPage *rowPage
}

func newRowTable() rowTable { return rowTable{pages: make(map[uint64]*rowPage)} }

func (t *rowTable) page(gi uint64) *rowPage {
	k := gi / pageSize
	if t.lastPage != nil && t.lastKey == k {
		return t.lastPage
	}
	p := t.pages[k]
	if p != nil {
		t.lastKey, t.lastPage = k, p
	}
	return p
}

// get returns the row with index gi.
func (t *rowTable) get(gi uint64) (*row, bool) {
	p := t.page(gi)
	if p == nil {
		return nil, false
	}
	r := &p.rows[gi%pageSize]
	if !r.live {
		return nil, false
	}
	return r, true
}

// add makes a new row with index gi, with no cells, and returns it. A row
// already there is replaced.
func (t *rowTable) add(gi uint64) *row {
	p := t.page(gi)
	if p == nil {
		p = &rowPage{}
		t.pages[gi/pageSize] = p
		t.lastKey, t.lastPage = gi/pageSize, p
	}
	i := gi % pageSize
	r := &p.rows[i]
	if r.live {
		t.clearCells(p, i)
		t.forgetCells(r)
	} else {
		p.n++
		t.n++
	}
	*r = row{index: gi, live: true}
	return r
}

func (t *rowTable) clearCells(p *rowPage, i uint64) {
	for _, col := range p.cols {
		if col != nil {
			t.countOnUnit(col[i], -1)
			col[i] = cell{}
		}
	}
}

// countOnUnit adds d to the count of c's unit if c is a stored cell.
func (t *rowTable) countOnUnit(c cell, d int) {
	if !c.produced() || c.len == 0 {
		return
	}
	u := c.unit &^ producedBit
	if n := t.onUnit[u] + d; n > 0 {
		if t.onUnit == nil {
			t.onUnit = make(map[uint32]int)
		}
		t.onUnit[u] = n
	} else {
		delete(t.onUnit, u)
	}
}

// unitsWithCells calls fn with each unit that holds stored cells of the
// table and their count.
func (t *rowTable) unitsWithCells(fn func(engine.UnitID, int)) {
	for u, n := range t.onUnit {
		fn(engine.UnitID(u), n)
	}
}

// forgetCells takes r's produced cells, cleared, out of the count.
func (t *rowTable) forgetCells(r *row) {
	if r.cells > 0 {
		t.produced--
		r.cells = 0
	}
}

// del removes the row with index gi, if any, and its cells. A *row of it
// still reads as it was (its index, say) until the index is added again.
func (t *rowTable) del(gi uint64) {
	p := t.page(gi)
	if p == nil || !p.rows[gi%pageSize].live {
		return
	}
	i := gi % pageSize
	p.rows[i].live = false
	t.clearCells(p, i)
	t.forgetCells(&p.rows[i])
	p.n--
	t.n--
	if p.n == 0 {
		delete(t.pages, gi/pageSize)
		if t.lastPage == p {
			t.lastPage = nil
		}
	}
}

func (t *rowTable) len() int { return t.n }

// producedRows counts the rows with at least one produced cell.
func (t *rowTable) producedRows() int { return t.produced }

// cell returns r's cell of field slot (the zero cell, not produced, when
// there is none).
func (t *rowTable) cell(r *row, slot int) cell {
	p := t.page(r.index)
	if slot >= len(p.cols) || p.cols[slot] == nil {
		return cell{}
	}
	return p.cols[slot][r.index%pageSize]
}

// column returns the cells of field slot of the page that holds row gi
// (nil when none of its rows has one): the rows of a batch in one page
// cost one lookup.
func (t *rowTable) column(gi uint64, slot int) []cell {
	p := t.page(gi)
	if p == nil || slot >= len(p.cols) {
		return nil
	}
	return p.cols[slot]
}

// has reports whether r's cell of field slot is produced.
func (t *rowTable) has(r *row, slot int) bool { return t.cell(r, slot).produced() }

// set stores r's cell of field slot.
func (t *rowTable) set(r *row, slot int, c cell) {
	p := t.page(r.index)
	if slot >= len(p.cols) {
		if !c.produced() && c == (cell{}) {
			return
		}
		p.cols = append(p.cols, make([][]cell, slot+1-len(p.cols))...)
	}
	col := p.cols[slot]
	if col == nil {
		if c == (cell{}) {
			return
		}
		col = make([]cell, pageSize)
		p.cols[slot] = col
	}
	i := r.index % pageSize
	if old := col[i]; old.unit != c.unit || (old.len == 0) != (c.len == 0) {
		t.countOnUnit(old, -1)
		t.countOnUnit(c, 1)
	}
	switch was := col[i].produced(); {
	case c.produced() && !was:
		if r.cells++; r.cells == 1 {
			t.produced++
		}
	case !c.produced() && was:
		if r.cells--; r.cells == 0 {
			t.produced--
		}
	}
	col[i] = c
}

// cells calls fn for each produced cell of r, by field slot.
func (t *rowTable) cells(r *row, fn func(slot int, c cell)) {
	p := t.page(r.index)
	i := r.index % pageSize
	for slot, col := range p.cols {
		if col != nil && col[i].produced() {
			fn(slot, col[i])
		}
	}
}

// pagesInOrder calls fn for every page, with the index of its first slot,
// in ascending order. fn must not add or delete rows.
func (t *rowTable) pagesInOrder(fn func(base uint64, p *rowPage)) {
	keys := make([]uint64, 0, len(t.pages))
	for k := range t.pages {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fn(k*pageSize, t.pages[k])
	}
}

// all calls fn for every row in ascending index order. fn may change the
// rows and their cells but not add or delete rows.
func (t *rowTable) all(fn func(*row)) {
	keys := make([]uint64, 0, len(t.pages))
	for k := range t.pages {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		p := t.pages[k]
		t.lastKey, t.lastPage = k, p // cell lookups of fn's row hit it
		for i := range p.rows {
			if r := &p.rows[i]; r.live {
				fn(r)
			}
		}
	}
}

// from calls fn for every row with an index at or above gi, in ascending
// index order, until fn returns false. fn must not add or delete rows.
func (t *rowTable) from(gi uint64, fn func(*row) bool) {
	keys := make([]uint64, 0, len(t.pages))
	for k := range t.pages {
		if k >= gi/pageSize {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		p := t.pages[k]
		t.lastKey, t.lastPage = k, p // cell lookups of fn's row hit it
		for i := range p.rows {
			if r := &p.rows[i]; r.live && r.index >= gi && !fn(r) {
				return
			}
		}
	}
}
