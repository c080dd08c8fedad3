package wire

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire/wirepb"
)

// propDTypes are the dtypes a dense or ragged field may have.
var propDTypes = []engine.DType{
	engine.Float64, engine.Float32, engine.Float16, engine.BFloat16,
	engine.Int64, engine.Int32, engine.Int16, engine.Int8,
	engine.Uint64, engine.Uint32, engine.Uint16, engine.Uint8, engine.Bool,
	engine.Float8E4M3FN, engine.Float8E5M2, engine.Complex64, engine.Complex128,
}

// randShape is a shape of up to 3 dimensions, a zero one now and then.
func randShape(r *rand.Rand) engine.Shape {
	s := make(engine.Shape, r.IntN(4))
	for i := range s {
		s[i] = r.IntN(4)
	}
	return s
}

// randCells fills n bytes: random bits (NaN payloads, subnormals, -0,
// the extremes of every integer type come up), 0 or 1 for bool.
func randCells(r *rand.Rand, dt engine.DType, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
		if dt == engine.Bool {
			b[i] &= 1
		}
	}
	return b
}

// randColumn is a dense, ragged or opaque column of n rows.
func randColumn(t *testing.T, r *rand.Rand, n int) *engine.Column {
	t.Helper()
	dt := propDTypes[r.IntN(len(propDTypes))]
	var c *engine.Column
	var err error
	switch r.IntN(3) {
	case 0:
		s := randShape(r)
		c, err = engine.NewDense(dt, n, s, randCells(r, dt, n*s.NumElems()*dt.Size()))
	case 1:
		shapes := make([]engine.Shape, n)
		total := 0
		allEmpty := r.IntN(4) == 0
		for i := range shapes {
			shapes[i] = randShape(r)
			if allEmpty {
				shapes[i] = engine.Shape{0}
			}
			total += shapes[i].NumElems()
		}
		c, err = engine.NewRagged(dt, shapes, randCells(r, dt, total*dt.Size()))
	default:
		rows := make([][]byte, n)
		for i := range rows {
			rows[i] = randCells(r, engine.Uint8, r.IntN(5))
		}
		c = engine.BytesOf(rows)
	}
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestBatchRoundTripProperty: random batches of every dtype and kind
// (zero dimensions, scalars, ragged rows all empty, one row, no rows) go
// out with BatchToPB, through protobuf, and come back bit for bit with
// BatchFromPB, their payload at an odd address as a frame may put it.
func TestBatchRoundTripProperty(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for iter := range 500 {
		n := 1 + r.IntN(3)
		fields := make([]engine.Field, 1+r.IntN(4))
		for i := range fields {
			fields[i] = engine.Field{Name: string(rune('a' + i)), Col: randColumn(t, r, n)}
		}
		b := engine.MustBatch(fields...)
		fs, lens, payload := BatchToPB(b)
		// Through protobuf, as a peer would see them.
		for i := range fs {
			enc, err := proto.Marshal(fs[i])
			if err != nil {
				t.Fatal(err)
			}
			fs[i] = &wirepb.CommitField{}
			if err := proto.Unmarshal(enc, fs[i]); err != nil {
				t.Fatal(err)
			}
		}
		data := append([]byte{0}, bytes.Join(payload, nil)...)[1:]
		got, err := BatchFromPB(fs, lens, n, data)
		if err != nil {
			t.Fatalf("iteration %d: %v", iter, err)
		}
		if got.Rows() != n {
			t.Fatalf("iteration %d: got %d rows, want %d", iter, got.Rows(), n)
		}
		for _, f := range fields {
			g := got.Col(f.Name)
			if !f.Col.Equal(g) || g.Kind() != f.Col.Kind() {
				t.Fatalf("iteration %d: field %q: got %v %v %v, want %v %v %v", iter, f.Name,
					g.Kind(), g.DType(), g.Shapes(), f.Col.Kind(), f.Col.DType(), f.Col.Shapes())
			}
			if f.Col.Kind() == engine.Dense && !g.Shape().Equal(f.Col.Shape()) {
				t.Fatalf("iteration %d: field %q: got shape %v, want %v", iter, f.Name, g.Shape(), f.Col.Shape())
			}
		}
	}
}
