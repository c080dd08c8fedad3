package controller

// rowTable maps a partition's global row indexes to rows. Rows live in
// pages of pageSize slots keyed by index/pageSize, so a batch of nearby
// indexes (the usual fetch: the lowest ready rows) touches a few pages
// instead of probing a hash map once per row, which on a partition of a
// million rows is a cache miss per row. Iteration is in index order.

import (
	"slices"
)

const pageSize = 1024

type rowPage struct {
	slots [pageSize]*row
	n     int // rows in the page
}

type rowTable struct {
	pages map[uint64]*rowPage
	n     int
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
	r := p.slots[gi%pageSize]
	return r, r != nil
}

// put stores r under r.index (replacing any row there).
func (t *rowTable) put(r *row) {
	p := t.page(r.index)
	if p == nil {
		p = &rowPage{}
		t.pages[r.index/pageSize] = p
		t.lastKey, t.lastPage = r.index/pageSize, p
	}
	s := &p.slots[r.index%pageSize]
	if *s == nil {
		p.n++
		t.n++
	}
	*s = r
}

// del removes the row with index gi, if any.
func (t *rowTable) del(gi uint64) {
	p := t.page(gi)
	if p == nil || p.slots[gi%pageSize] == nil {
		return
	}
	p.slots[gi%pageSize] = nil
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

// all calls fn for every row in ascending index order.
func (t *rowTable) all(fn func(*row)) {
	keys := make([]uint64, 0, len(t.pages))
	for k := range t.pages {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		for _, r := range t.pages[k].slots {
			if r != nil {
				fn(r)
			}
		}
	}
}

// from calls fn for every row with an index at or above gi, in ascending
// index order, until fn returns false.
func (t *rowTable) from(gi uint64, fn func(*row) bool) {
	keys := make([]uint64, 0, len(t.pages))
	for k := range t.pages {
		if k >= gi/pageSize {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		for i, r := range t.pages[k].slots {
			if r == nil || k*pageSize+uint64(i) < gi {
				continue
			}
			if !fn(r) {
				return
			}
		}
	}
}
