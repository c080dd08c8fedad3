package controller

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// TestShapesModelAcrossRestarts commits cells of random shapes (scalars
// given as nil and as (), short and long shapes) to random keys of two
// partitions as dense and ragged columns, clears keys, fields and
// partitions, snapshots, restarts from the log and loads checkpoints, and
// after every step compares each key's shape with a model: in the meta of
// the keys that hold the field (dense where they agree), in KeyCells, and
// the field's stats. A scalar is the empty shape, never nil (nil reads as
// an unknown shape on the wire). It guards the ragged field's base shape
// (a table of only the rows of other shapes).
func TestShapesModelAcrossRestarts(t *testing.T) {
	for seed := range uint64(4) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { shapesModel(t, seed) })
	}
}

func shapesModel(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 11))
	dir := t.TempDir()
	c := openDurable(t, dir, Config{SnapshotBytes: 1 << 40})
	defer func() { c.Close() }()
	ctx := context.Background()
	parts := []string{"a", "b"}
	keys := make([]string, 8)
	for i := range keys {
		keys[i] = fmt.Sprintf("k%d", i)
	}
	pool := []engine.Shape{nil, {}, {2}, {3}, {2, 2}, {1, 2, 3, 4}, {1, 2, 3, 5}}
	norm := func(s engine.Shape) engine.Shape {
		if s == nil {
			return engine.Shape{}
		}
		return slices.Clone(s)
	}
	// A skewed pick: one shape most of the time, so that fields go
	// ragged, dense and ragged again with a base that holds most rows.
	pickShape := func() engine.Shape {
		if rng.IntN(3) > 0 {
			return pool[2]
		}
		return pool[rng.IntN(len(pool))]
	}
	model := map[string]map[string]engine.Shape{"a": {}, "b": {}} // partition → key → shape of x
	check := func(step int, what string) {
		for _, p := range parts {
			distinct := map[string]engine.Shape{}
			var held []string
			for _, k := range keys {
				if s, ok := model[p][k]; ok {
					distinct[shapeKey(s)] = s
					held = append(held, k)
				}
			}
			fields, err := c.Fields(p)
			if err != nil {
				require.ErrorIs(t, err, engine.ErrNotFound)
			}
			var got *engine.FieldStats
			for i := range fields {
				if fields[i].Name == "x" {
					got = &fields[i]
				}
			}
			switch len(distinct) {
			case 0:
				require.True(t, got == nil || got.Produced == 0, "step %d (%s): partition %s field x: %+v, the model holds none", step, what, p, got)
				continue
			case 1:
				require.NotNil(t, got, "step %d (%s): partition %s has no field x", step, what, p)
				want := engine.FieldStats{Name: "x", DType: engine.Float32, Kind: engine.Dense, Shape: distinct[shapeKey(model[p][held[0]])], Produced: len(held)}
				require.Equal(t, want, *got, "step %d (%s): partition %s field x", step, what, p)
			default:
				require.NotNil(t, got, "step %d (%s): partition %s has no field x", step, what, p)
				want := engine.FieldStats{Name: "x", DType: engine.Float32, Kind: engine.Ragged, Produced: len(held)}
				require.Equal(t, want, *got, "step %d (%s): partition %s field x", step, what, p)
			}
			for _, k := range held {
				kc, ok := c.KeyCells(p, k, []string{"x"}, nil)
				require.True(t, ok, "step %d (%s): KeyCells %s/%s", step, what, p, k)
				require.Equal(t, engine.Dense, kc[0].Kind, "step %d (%s): KeyCells %s/%s", step, what, p, k)
				require.Equal(t, model[p][k], kc[0].Shape, "step %d (%s): KeyCells %s/%s shape", step, what, p, k)
			}
			// The meta over a random subset of the keys that hold x.
			sub := slices.DeleteFunc(slices.Clone(held), func(string) bool { return rng.IntN(3) == 0 })
			if len(sub) == 0 {
				sub = held[:1]
			}
			m, err := c.ResolveKeys(p, sub, []string{"x"}, false)
			require.NoError(t, err)
			want := engine.FieldSchema{DType: engine.Float32, Kind: engine.Ragged}
			for _, k := range sub {
				want.Shapes = append(want.Shapes, model[p][k])
			}
			if slices.IndexFunc(want.Shapes, func(s engine.Shape) bool { return !s.Equal(want.Shapes[0]) }) < 0 {
				want = engine.FieldSchema{DType: engine.Float32, Kind: engine.Dense, Shape: want.Shapes[0]}
			}
			require.Equal(t, want, m.Schema["x"], "step %d (%s): the schema of %s/x over %v", step, what, p, sub)
		}
	}
	for step := range 250 {
		p := parts[rng.IntN(len(parts))]
		var pick []string
		for _, k := range keys {
			if rng.IntN(3) == 0 {
				pick = append(pick, k)
			}
		}
		if len(pick) == 0 {
			pick = keys[rng.IntN(len(keys)):][:1]
		}
		var what string
		switch op := rng.IntN(20); {
		case op < 6:
			what = "dense commit"
			s := pickShape()
			_, err := c.CommitKeys(engine.KeysCommit{Partition: p, Keys: pick, Fields: []engine.CommitField{{Name: "x", DType: engine.Float32, Kind: engine.Dense, Shape: s}}})
			require.NoError(t, err)
			for _, k := range pick {
				model[p][k] = norm(s)
			}
		case op < 12:
			what = "ragged commit"
			cf := engine.CommitField{Name: "x", DType: engine.Float32, Kind: engine.Ragged, Shapes: make([]engine.Shape, len(pick))}
			for i, k := range pick {
				cf.Shapes[i] = pickShape()
				model[p][k] = norm(cf.Shapes[i])
			}
			_, err := c.CommitKeys(engine.KeysCommit{Partition: p, Keys: pick, Fields: []engine.CommitField{cf}})
			require.NoError(t, err)
		case op < 14:
			what = "clear keys"
			_, err := c.ClearKeys(p, pick)
			require.NoError(t, err)
			for _, k := range pick {
				delete(model[p], k)
			}
		case op < 16:
			what = "clear field"
			_, _, err := c.ClearFields(p, pick, []string{"x"})
			require.NoError(t, err)
			for _, k := range pick {
				delete(model[p], k)
			}
		case op == 16:
			what = "clear partition"
			_, err := c.ClearPartition(p)
			require.NoError(t, err)
			model[p] = map[string]engine.Shape{}
		case op == 17:
			what = "snapshot"
			require.NoError(t, c.snapshot())
		case op == 18:
			what = "restart"
			require.NoError(t, c.WaitDurable(ctx))
			crash(t, c)
			c = openDurable(t, dir, Config{SnapshotBytes: 1 << 40})
		default:
			what = "checkpoint save and load"
			ck := filepath.Join(t.TempDir(), "ck")
			require.NoError(t, c.Save(ck))
			_, err := c.Load(ck)
			require.NoError(t, err)
		}
		check(step, what)
	}
}
