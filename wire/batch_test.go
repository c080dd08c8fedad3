package wire

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire/wirepb"
)

// TestBatchFromPBRefusesBadPayloads: a KV_PUT (or KV_GET answer) whose
// schema, row lengths and payload disagree is refused, naming what was
// wrong.
func TestBatchFromPBRefusesBadPayloads(t *testing.T) {
	dense := CommitFieldsToPB([]engine.CommitField{{Name: "d", DType: engine.Int32, Kind: engine.Dense, Shape: engine.Shape{2}}})[0]
	opaque := CommitFieldsToPB([]engine.CommitField{{Name: "o", DType: engine.Bytes, Kind: engine.Opaque}})[0]
	lens := func(ls ...uint64) *wirepb.RowLens { return &wirepb.RowLens{Lens: ls} }
	none := lens()

	b, err := BatchFromPB([]*wirepb.CommitField{dense, opaque}, []*wirepb.RowLens{none, lens(1, 2)}, 2, make([]byte, 16+3))
	require.NoError(t, err)
	assert.Equal(t, 2, b.Rows())

	for _, tc := range []struct {
		name   string
		fields []*wirepb.CommitField
		lens   []*wirepb.RowLens
		n      int
		data   int
		says   string
	}{
		{"short payload", []*wirepb.CommitField{dense}, []*wirepb.RowLens{none}, 2, 15, `field "d": 2 rows of shape (2) exceed the 15 payload bytes left`},
		{"extra bytes", []*wirepb.CommitField{dense}, []*wirepb.RowLens{none}, 2, 17, "take 16 of 17"},
		{"lens per field", []*wirepb.CommitField{dense, opaque}, []*wirepb.RowLens{none}, 2, 16, "1 row length lists for 2 fields"},
		{"lens per row", []*wirepb.CommitField{opaque}, []*wirepb.RowLens{lens(1)}, 2, 1, "1 row lengths for 2 keys"},
		{"huge row", []*wirepb.CommitField{opaque}, []*wirepb.RowLens{lens(1<<62, 1)}, 2, 4, "a row of 4611686018427387904 bytes, 4 payload bytes left"},
		{"bytes, no fields", nil, nil, 1, 3, "3 payload bytes and no fields"},
		{"shape overflow", []*wirepb.CommitField{CommitFieldsToPB([]engine.CommitField{{Name: "h", DType: engine.Int64, Kind: engine.Dense, Shape: engine.Shape{1 << 30, 1 << 30, 1 << 30}}})[0]}, []*wirepb.RowLens{none}, 1, 8, `("h"): shape (1073741824,1073741824,1073741824) holds more than`},
		{"many rows", []*wirepb.CommitField{dense}, []*wirepb.RowLens{none}, 1 << 40, 16, `field "d": 1099511627776 rows`},
	} {
		_, err := BatchFromPB(tc.fields, tc.lens, tc.n, make([]byte, tc.data))
		require.ErrorIs(t, err, engine.ErrInvalid, tc.name)
		assert.Contains(t, err.Error(), tc.says, tc.name)
	}
}

// TestBatchRoundTrip: every kind of column goes out with BatchToPB and
// comes back equal with BatchFromPB.
func TestBatchRoundTrip(t *testing.T) {
	dense, err := engine.DenseOf([]int64{1, 2, 3, 4}, 2)
	require.NoError(t, err)
	b := engine.MustBatch(
		engine.Field{Name: "d", Col: dense},
		engine.Field{Name: "r", Col: engine.RaggedOf([][]float32{{}, {1.5, -2}})},
		engine.Field{Name: "o", Col: engine.StringsOf([]string{"x", ""})},
	)
	fs, lens, payload := BatchToPB(b)
	var data []byte
	for _, p := range payload {
		data = append(data, p...)
	}
	got, err := BatchFromPB(fs, lens, 2, data)
	require.NoError(t, err)
	for _, name := range b.Names() {
		assert.True(t, b.Col(name).Equal(got.Col(name)), name)
	}
}

// TestRaggedScalarRowIsNotUnknown: a ragged row built with a nil shape
// (no dimensions: a scalar, one element) goes out as the shape (), not as
// unknown, which a reader takes for a row whose shape is not known (the
// Python client reads it as None and cannot size the row).
func TestRaggedScalarRowIsNotUnknown(t *testing.T) {
	c, err := engine.NewRagged(engine.Float32, []engine.Shape{nil, {2}}, make([]byte, 12))
	require.NoError(t, err)
	require.NotNil(t, c.RowShape(0), "a scalar row's shape reads as nil")
	fs, _, _ := BatchToPB(engine.MustBatch(engine.Field{Name: "r", Col: c}))
	require.Len(t, fs[0].Shapes, 2)
	assert.False(t, fs[0].Shapes[0].Unknown, "a scalar row goes out as unknown")
	assert.Empty(t, fs[0].Shapes[0].Dims)

	cat, err := engine.ConcatColumns(c, c)
	require.NoError(t, err)
	require.NotNil(t, cat.RowShape(0), "a concatenated scalar row's shape reads as nil")
}
