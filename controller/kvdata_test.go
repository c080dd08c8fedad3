package controller

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// TestKVBatchRefusesBadPayloads: a KV_PUT whose schema, row lengths and
// payload disagree is refused, naming what was wrong.
func TestKVBatchRefusesBadPayloads(t *testing.T) {
	dense := wire.CommitFieldsToPB([]engine.CommitField{{Name: "d", DType: engine.Int32, Kind: engine.Dense, Shape: engine.Shape{2}}})[0]
	opaque := wire.CommitFieldsToPB([]engine.CommitField{{Name: "o", DType: engine.Bytes, Kind: engine.Opaque}})[0]
	lens := func(ls ...uint64) *wirepb.RowLens { return &wirepb.RowLens{Lens: ls} }
	none := lens()

	b, err := kvBatch([]*wirepb.CommitField{dense, opaque}, []*wirepb.RowLens{none, lens(1, 2)}, 2, make([]byte, 16+3))
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
		{"huge row", []*wirepb.CommitField{opaque}, []*wirepb.RowLens{lens(1<<62, 1)}, 2, 4, "a row of 4611686018427387904 bytes"},
		{"bytes, no fields", nil, nil, 1, 3, "3 payload bytes and no fields"},
		{"shape overflow", []*wirepb.CommitField{wire.CommitFieldsToPB([]engine.CommitField{{Name: "h", DType: engine.Int64, Kind: engine.Dense, Shape: engine.Shape{1 << 30, 1 << 30, 1 << 30}}})[0]}, []*wirepb.RowLens{none}, 1, 8, `field "h": 1 rows of shape`},
		{"many rows", []*wirepb.CommitField{dense}, []*wirepb.RowLens{none}, 1 << 40, 16, `field "d": 1099511627776 rows`},
	} {
		_, err := kvBatch(tc.fields, tc.lens, tc.n, make([]byte, tc.data))
		require.ErrorIs(t, err, engine.ErrInvalid, tc.name)
		assert.Contains(t, err.Error(), tc.says, tc.name)
	}
}
