package controller

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/tqgo/tq/engine"
)

func keysCommit(partition string, keys []string, unit engine.UnitID, fields ...string) engine.KeysCommit {
	req := engine.KeysCommit{Partition: partition, Keys: keys}
	for fi, f := range fields {
		locs := make([]engine.CellLoc, len(keys))
		for i := range locs {
			locs[i] = engine.CellLoc{Unit: unit, Addr: engine.RemoteAddr{Segment: 1, Gen: 1, Offset: uint64(fi*len(keys)+i) * 8, Len: 8}}
		}
		req.Fields = append(req.Fields, engine.CommitField{Name: f, DType: engine.Float32, Kind: engine.Dense, Shape: engine.Shape{2}, Locs: locs})
	}
	return req
}

func TestCommitKeys(t *testing.T) {
	c := newController(t, DefaultConfig())
	// Creates the partition and the keys; the rows are readable at once.
	req := keysCommit("p", []string{"a", "b"}, 1, "x", "y")
	req.Tags = []engine.Tags{{"n": 1}, nil}
	got, err := c.CommitKeys(req)
	if err != nil {
		t.Fatal(err)
	}
	want := engine.KeysCommitted{Tags: []engine.Tags{{"n": 1}, nil}, Fields: []string{"x", "y"}}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("first commit (-want +got):\n%s", d)
	}
	m, err := c.ResolveKeys("p", []string{"b", "a"}, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(m.Ready, []bool{true, true}) || !slices.Equal(m.FieldNames(), []string{"x", "y"}) {
		t.Fatalf("after commit: ready %v, fields %v", m.Ready, m.FieldNames())
	}
	if l := m.Cells["y"][1]; l.Unit != 1 || l.Addr.Offset != 2*8 {
		t.Errorf("a's y cell at %+v", l)
	}

	// An existing key and a new one: a's x is replaced, c is created; the
	// fields every key holds are the intersection.
	req = keysCommit("p", []string{"a", "c"}, 2, "x")
	req.Tags = []engine.Tags{{"m": "v"}, {"n": 2}}
	got, err = c.CommitKeys(req)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Replaced) != 1 || got.Replaced[0].Unit != 1 || got.Replaced[0].Addr.Offset != 0 {
		t.Errorf("replaced %+v, want a's old x", got.Replaced)
	}
	want = engine.KeysCommitted{Replaced: got.Replaced, Tags: []engine.Tags{{"n": 1, "m": "v"}, {"n": 2}}, Fields: []string{"x"}}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("second commit (-want +got):\n%s", d)
	}
	if keys := c.ListKeys("p")["p"]; len(keys) != 3 || keys[2].Key != "c" {
		t.Errorf("keys %+v", keys)
	}

	// Tags only.
	got, err = c.CommitKeys(engine.KeysCommit{Partition: "p", Keys: []string{"d"}, Tags: []engine.Tags{{"t": true}}})
	if err != nil || got.Fields != nil || !cmp.Equal(got.Tags, []engine.Tags{{"t": true}}) {
		t.Errorf("tags-only commit: %+v, %v", got, err)
	}
}

// A rejected commit creates no key, no partition and no cell.
func TestCommitKeysRejected(t *testing.T) {
	c := newController(t, DefaultConfig())
	if _, err := c.CommitKeys(keysCommit("p", []string{"a"}, 1, "x")); err != nil {
		t.Fatal(err)
	}
	mismatch := keysCommit("p", []string{"new1", "a", "new2"}, 1, "x")
	mismatch.Fields[0].DType = engine.Int32 // float32's size: the cells' lengths fit it
	for _, tc := range []struct {
		name string
		req  engine.KeysCommit
		want error
	}{
		{"dtype", mismatch, engine.ErrDTypeMismatch},
		{"no keys", engine.KeysCommit{Partition: "p", Tags: []engine.Tags{}}, engine.ErrInvalid},
		{"duplicate key", keysCommit("p", []string{"n", "n"}, 1, "x"), engine.ErrInvalid},
		{"nothing to put", engine.KeysCommit{Partition: "p", Keys: []string{"n"}}, engine.ErrInvalid},
		{"tag count", engine.KeysCommit{Partition: "p", Keys: []string{"n"}, Tags: []engine.Tags{nil, nil}}, engine.ErrInvalid},
		{"location count", func() engine.KeysCommit {
			r := keysCommit("q", []string{"n", "m"}, 1, "x")
			r.Fields[0].Locs = r.Fields[0].Locs[:1]
			return r
		}(), engine.ErrInvalid},
	} {
		if _, err := c.CommitKeys(tc.req); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	if keys := c.ListKeys("")["p"]; len(keys) != 1 || keys[0].Key != "a" {
		t.Errorf("keys after rejected commits: %+v", keys)
	}
	if ps := c.Partitions(); !slices.Equal(ps, []string{"p"}) {
		t.Errorf("partitions %v: a rejected commit created one", ps)
	}
}

// A field's cells may come as runs; they mean the cells they expand to.
func TestCommitRuns(t *testing.T) {
	c := newController(t, DefaultConfig())
	keys := []string{"a", "b", "c", "d", "e"}
	runs := []engine.CellRun{
		{Unit: 1, First: engine.RemoteAddr{Segment: 2, Gen: 3, Offset: 100, Len: 8}, Count: 3},
		{Unit: 2, First: engine.RemoteAddr{Segment: 1, Gen: 1, Offset: 0, Len: 8}, Count: 2},
	}
	req := engine.KeysCommit{Partition: "p", Keys: keys, Fields: []engine.CommitField{{Name: "x", DType: engine.Float32, Kind: engine.Dense, Shape: engine.Shape{2}, Runs: runs}}}
	if _, err := c.CommitKeys(req); err != nil {
		t.Fatal(err)
	}
	m, err := c.ResolveKeys("p", keys, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	var want []engine.CellLoc
	for _, r := range runs {
		for k := range r.Count {
			want = append(want, r.Cell(k))
		}
	}
	if d := cmp.Diff(want, m.Cells["x"]); d != "" {
		t.Fatalf("cells (-want +got):\n%s", d)
	}
	if want[1].Addr.Offset != 108 || want[4].Addr.Offset != 8 {
		t.Fatalf("Cell: %+v", want)
	}
	for name, bad := range map[string][]engine.CellRun{
		"short":     runs[:1],
		"empty run": {runs[0], runs[1], {Unit: 1, Count: 0}},
		"negative":  {{Unit: 1, Count: -1}, runs[0], runs[1]},
	} {
		r := req
		r.Fields = []engine.CommitField{{Name: "x", DType: engine.Float32, Kind: engine.Dense, Shape: engine.Shape{2}, Runs: bad}}
		if _, err := c.CommitKeys(r); !errors.Is(err, engine.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
	r := req
	r.Fields = []engine.CommitField{{Name: "x", DType: engine.Float32, Kind: engine.Dense, Shape: engine.Shape{2}, Runs: runs, Locs: want}}
	if _, err := c.CommitKeys(r); !errors.Is(err, engine.ErrInvalid) {
		t.Errorf("runs and locations: %v, want ErrInvalid", err)
	}
}

// TestSchemaTrackingModel commits random mixes of dense cells of two
// shapes and ragged cells over random subsets of rows, overwriting and
// clearing, and checks after every step that the field's kind, shape and
// produced count are what the rows hold: one shape → dense with it,
// several → ragged, none → forgotten. It covers both ways a commit
// records cells (the dense fast path and cell by cell).
func TestSchemaTrackingModel(t *testing.T) {
	c := newController(t, DefaultConfig())
	r := rand.New(rand.NewPCG(5, 6))
	const rows = 12
	keys := make([]string, rows)
	for i := range keys {
		keys[i] = fmt.Sprintf("k%d", i)
	}
	model := map[string]engine.Shape{} // key → shape of its produced x
	shapes := []engine.Shape{{2}, {3}, {2, 2}}
	for step := range 400 {
		var pick []string
		for _, k := range keys {
			if r.IntN(3) == 0 {
				pick = append(pick, k)
			}
		}
		if len(pick) == 0 {
			continue
		}
		switch op := r.IntN(5); op {
		case 0: // clear
			if _, err := c.ClearKeys("p", pick); err != nil {
				t.Fatal(err)
			}
			for _, k := range pick {
				delete(model, k)
			}
		case 1: // ragged
			cf := engine.CommitField{Name: "x", DType: engine.Float32, Kind: engine.Ragged, Shapes: make([]engine.Shape, len(pick))}
			for i, k := range pick {
				cf.Shapes[i] = shapes[r.IntN(len(shapes))]
				model[k] = cf.Shapes[i]
			}
			if _, err := c.CommitKeys(engine.KeysCommit{Partition: "p", Keys: pick, Fields: []engine.CommitField{cf}}); err != nil {
				t.Fatal(err)
			}
		default: // dense
			s := shapes[r.IntN(len(shapes))]
			if _, err := c.CommitKeys(engine.KeysCommit{Partition: "p", Keys: pick, Fields: []engine.CommitField{{Name: "x", DType: engine.Float32, Kind: engine.Dense, Shape: s}}}); err != nil {
				t.Fatal(err)
			}
			for _, k := range pick {
				model[k] = s
			}
		}
		fields, err := c.Fields("p")
		if err != nil {
			t.Fatal(err)
		}
		var got engine.FieldStats
		for _, f := range fields {
			if f.Name == "x" {
				got = f
			}
		}
		distinct := map[string]engine.Shape{}
		for _, s := range model {
			distinct[shapeKey(s)] = s
		}
		want := engine.FieldStats{Name: "x", Produced: len(model)}
		switch len(distinct) {
		case 0:
			want.Name = got.Name // a field with nothing produced may or may not be listed
		case 1:
			want.DType, want.Kind = engine.Float32, engine.Dense
			for _, s := range distinct {
				want.Shape = s
			}
		default:
			want.DType, want.Kind = engine.Float32, engine.Ragged
		}
		if d := cmp.Diff(want, got, cmpopts.EquateEmpty()); d != "" {
			t.Fatalf("step %d: field x (-model +controller):\n%s", step, d)
		}
		// And each key's shape, in the meta of the keys that hold x.
		var held []string
		for _, k := range keys {
			if _, ok := model[k]; ok {
				held = append(held, k)
			}
		}
		if len(held) == 0 {
			continue
		}
		m, err := c.ResolveKeys("p", held, []string{"x"}, false)
		if err != nil {
			t.Fatal(err)
		}
		wantSchema := engine.FieldSchema{DType: engine.Float32, Kind: engine.Dense, Shape: model[held[0]]}
		if len(distinct) > 1 {
			wantSchema = engine.FieldSchema{DType: engine.Float32, Kind: engine.Ragged}
			for _, k := range held {
				wantSchema.Shapes = append(wantSchema.Shapes, model[k])
			}
		}
		if d := cmp.Diff(wantSchema, m.Schema["x"], cmpopts.EquateEmpty()); d != "" {
			t.Fatalf("step %d: the schema of x over %v (-model +controller):\n%s", step, held, d)
		}
	}
}
