package controller

import (
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"

	"github.com/tqgo/tq/engine"
)

// rowTable against a plain map of rows and their cells, with random adds,
// deletes and cell writes across pages: a reused index starts with no
// cells, and pages are freed when their last row goes.
func TestRowTableMatchesMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	tab := newRowTable()
	type refRow struct {
		seq   uint64
		cells map[int]cell
	}
	ref := map[uint64]*refRow{}
	for i := range 20000 {
		gi := uint64(rng.IntN(5 * pageSize))
		switch rng.IntN(4) {
		case 0:
			tab.del(gi)
			delete(ref, gi)
		case 1:
			r := tab.add(gi)
			r.seq = uint64(i)
			ref[gi] = &refRow{seq: uint64(i), cells: map[int]cell{}}
		default:
			r, ok := tab.get(gi)
			if !ok {
				continue
			}
			slot := rng.IntN(4)
			c := cell{off: uint64(i), len: 8, unit: 1 | producedBit}
			if rng.IntN(4) == 0 {
				c = cell{}
			}
			tab.set(r, slot, c)
			if c.produced() {
				ref[gi].cells[slot] = c
			} else {
				delete(ref[gi].cells, slot)
			}
		}
		probe := uint64(rng.IntN(5 * pageSize))
		got, ok := tab.get(probe)
		want, wok := ref[probe]
		if ok != wok || ok && (got.index != probe || got.seq != want.seq) {
			t.Fatalf("step %d: get(%d) = %+v %v, want %+v %v", i, probe, got, ok, want, wok)
		}
		if ok {
			cells := map[int]cell{}
			tab.cells(got, func(slot int, c cell) { cells[slot] = c })
			if !reflect.DeepEqual(cells, want.cells) {
				t.Fatalf("step %d: cells of %d = %v, want %v", i, probe, cells, want.cells)
			}
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

// The row a partition keeps per index holds no pointer: the garbage
// collector must not scan a page of rows (rowtable.go), so a field that
// brings one back fails here.
func TestRowHasNoPointers(t *testing.T) {
	for _, typ := range []reflect.Type{reflect.TypeFor[row](), reflect.TypeFor[cell](), reflect.TypeFor[inlineShape]()} {
		for i := range typ.NumField() {
			ft := typ.Field(i).Type
			if ft.Kind() == reflect.Array {
				ft = ft.Elem()
			}
			switch k := ft.Kind(); k {
			case reflect.Bool, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Int, reflect.Int64:
			default:
				t.Errorf("%s.%s is a %v: rows, cells and inline shapes must hold no pointers", typ.Name(), typ.Field(i).Name, k)
			}
		}
	}
}

// shapeTable against a map of shapes, short and long: what get returns,
// and key agrees with shapeKey.
func TestShapeTableMatchesMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	tab := newShapeTable(0)
	ref := map[uint64]engine.Shape{}
	for i := range 5000 {
		gi := uint64(rng.IntN(64))
		if rng.IntN(3) == 0 {
			tab.del(gi)
			delete(ref, gi)
		} else {
			s := make(engine.Shape, rng.IntN(6))
			for j := range s {
				s[j] = rng.IntN(1 << 20)
			}
			tab.put(gi, s)
			ref[gi] = s.Clone()
			if len(s) > 0 {
				s[0] = -1 // the table keeps its own copy
			}
		}
		probe := uint64(rng.IntN(64))
		got, ok := tab.get(probe)
		want, wok := ref[probe]
		if ok != wok || !got.Equal(want) || tab.has(probe) != wok {
			t.Fatalf("step %d: get(%d) = %v %v, want %v %v", i, probe, got, ok, want, wok)
		}
		if ok && tab.key(probe) != shapeKey(want) {
			t.Fatalf("step %d: key(%d) differs from shapeKey(%v)", i, probe, want)
		}
	}
	if tab.len() != len(ref) {
		t.Fatalf("len = %d, want %d", tab.len(), len(ref))
	}
}
