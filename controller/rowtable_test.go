package controller

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// rowTable against a plain map, with random puts and deletes across pages.
func TestRowTableMatchesMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	tab := newRowTable()
	ref := map[uint64]*row{}
	for range 20000 {
		gi := uint64(rng.IntN(5 * pageSize))
		if rng.IntN(3) == 0 {
			tab.del(gi)
			delete(ref, gi)
		} else {
			r := &row{index: gi}
			tab.put(r)
			ref[gi] = r
		}
		probe := uint64(rng.IntN(5 * pageSize))
		got, ok := tab.get(probe)
		want, wok := ref[probe]
		if ok != wok || got != want {
			t.Fatalf("get(%d) = %v %v, want %v %v", probe, got, ok, want, wok)
		}
	}
	if tab.len() != len(ref) {
		t.Fatalf("len = %d, want %d", tab.len(), len(ref))
	}
	var order []uint64
	tab.all(func(r *row) { order = append(order, r.index) })
	if len(order) != len(ref) || !slices.IsSorted(order) {
		t.Fatalf("all visited %d rows (want %d), sorted %v", len(order), len(ref), slices.IsSorted(order))
	}
	for _, gi := range order {
		tab.del(gi)
	}
	if tab.len() != 0 || len(tab.pages) != 0 {
		t.Fatalf("after deleting everything: %d rows, %d pages", tab.len(), len(tab.pages))
	}
}
