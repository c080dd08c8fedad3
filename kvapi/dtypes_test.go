package kvapi

import (
	"context"
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
)

// The unsigned, float8 and complex dtypes go through a put and a get on
// the embedded cluster bit for bit, dense and ragged, by put and by
// reserved put; a field keeps its dtype against another of the same size.
func TestNewDTypesRoundTrip(t *testing.T) {
	kv, _ := newKV(t)
	ctx := context.Background()
	nan32 := math.Float32frombits(0x7fc0_1234)
	nan64 := math.Float64frombits(0x7ff8_0000_dead_beef)
	fields := []engine.Field{
		{Name: "u16", Col: col(t, []uint16{0, math.MaxUint16, 0x8001}, 1)},
		{Name: "u32", Col: col(t, []uint32{0, math.MaxUint32, 0x8000_0001})},
		{Name: "u64", Col: col(t, []uint64{0, math.MaxUint64, 1 << 63, 1, 2, 3}, 2)},
		// NaN, -NaN, ±448, -0, smallest subnormal.
		{Name: "e4m3", Col: col(t, []engine.F8E4M3FN{0x7f, 0xff, 0x7e, 0xfe, 0x80, 0x01}, 2)},
		// Inf, -Inf, NaNs, largest finite, -0.
		{Name: "e5m2", Col: col(t, []engine.F8E5M2{0x7c, 0xfc, 0x7d, 0xfe, 0x7b, 0x80}, 2)},
		{Name: "c64", Col: col(t, []complex64{complex(nan32, float32(math.Inf(-1))), 1 - 2i, complex(float32(math.Copysign(0, -1)), 0)})},
		{Name: "c128", Col: col(t, []complex128{complex(nan64, math.Inf(1)), complex(math.MaxFloat64, math.SmallestNonzeroFloat64), -1i}, 1)},
		{Name: "ragged_c128", Col: engine.RaggedOf([][]complex128{{1i}, {}, {complex(nan64, 2), 3}})},
		{Name: "ragged_u16", Col: engine.RaggedOf([][]uint16{{1, 2, 3}, {math.MaxUint16}, {}})},
		{Name: "ragged_e5m2", Col: engine.RaggedOf([][]engine.F8E5M2{{0x7d}, {0x01, 0x02}, {}})},
	}
	keys := []string{"a", "b", "c"}
	_, err := kv.BatchPut(ctx, "p", keys, engine.MustBatch(fields...), nil)
	require.NoError(t, err)
	got, err := kv.BatchGet(ctx, "p", keys)
	require.NoError(t, err)
	defer got.Release()
	for _, f := range fields {
		g := got.Col(f.Name)
		require.NotNil(t, g, f.Name)
		assert.Equal(t, f.Col.DType(), g.DType(), f.Name)
		assert.True(t, g.Equal(f.Col), "field %s did not round-trip bit-exactly", f.Name)
	}
	c128, err := engine.Values[complex128](got.Col("c128"))
	require.NoError(t, err)
	assert.Equal(t, math.Float64bits(nan64), math.Float64bits(real(c128[0])))
	assert.Equal(t, -1i, c128[2])

	// A reserved put of a new dtype, written in place.
	pb, err := kv.ReservePut(ctx, "q", []string{"x", "y"}, client.FieldSpec{Name: "v", DType: engine.Float8E4M3FN, Shape: engine.Shape{3}})
	require.NoError(t, err)
	v, err := engine.Values[engine.F8E4M3FN](pb.Column("v"))
	require.NoError(t, err)
	want := []engine.F8E4M3FN{0x7f, 0x7e, 0x01, 0x80, 0x38, 0xff}
	copy(v, want)
	_, err = pb.Commit(ctx)
	require.NoError(t, err)
	back, err := kv.BatchGet(ctx, "q", []string{"x", "y"}, "v")
	require.NoError(t, err)
	defer back.Release()
	gv, err := engine.Values[engine.F8E4M3FN](back.Col("v"))
	require.NoError(t, err)
	assert.Equal(t, want, gv)

	// Same size, other dtype: refused, and nothing changes.
	for _, tc := range []struct {
		field string
		col   *engine.Column
	}{
		{"u32", col(t, []int32{1})},
		{"u32", col(t, []float32{1})},
		{"u64", col(t, []complex64{1, 2}, 2)},
		{"u64", col(t, []int64{1, 2}, 2)},
		{"e4m3", col(t, []engine.F8E5M2{1, 2}, 2)},
		{"e4m3", col(t, []uint8{1, 2}, 2)},
		{"u16", col(t, []engine.F16{1}, 1)},
		{"c128", col(t, []float64{1, 2}, 2)},
	} {
		_, err := kv.Put(ctx, "p", "new", engine.MustBatch(engine.Field{Name: tc.field, Col: tc.col}), nil)
		assert.ErrorIs(t, err, engine.ErrDTypeMismatch, "%v onto %s", tc.col.DType(), tc.field)
		_, err = kv.ReservePut(ctx, "p", []string{"new"}, client.FieldSpec{Name: tc.field, DType: tc.col.DType(), Shape: tc.col.Shape()})
		assert.ErrorIs(t, err, engine.ErrDTypeMismatch, "reserved %v onto %s", tc.col.DType(), tc.field)
	}
	l, err := kv.List(ctx, "p")
	require.NoError(t, err)
	assert.Len(t, l["p"], len(keys), "a refused put added a key")
	again, err := kv.BatchGet(ctx, "p", keys, "u32")
	require.NoError(t, err)
	defer again.Release()
	assert.True(t, again.Col("u32").Equal(fields[1].Col))
}
