package engine

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestNewDTypes(t *testing.T) {
	for _, tt := range []struct {
		dt   DType
		name string
		size int
	}{
		{Uint16, "uint16", 2},
		{Uint32, "uint32", 4},
		{Uint64, "uint64", 8},
		{Float8E4M3FN, "float8_e4m3fn", 1},
		{Float8E5M2, "float8_e5m2", 1},
		{Complex64, "complex64", 8},
		{Complex128, "complex128", 16},
	} {
		t.Run(tt.name, func(t *testing.T) {
			assert.True(t, tt.dt.Valid())
			assert.Equal(t, tt.name, tt.dt.String())
			assert.Equal(t, tt.size, tt.dt.Size())
			got, err := ParseDType(tt.name)
			require.NoError(t, err)
			assert.Equal(t, tt.dt, got)
		})
	}
	// The dtypes that were there before keep their numbers (they are not
	// persisted, but nothing gains from moving them).
	assert.Equal(t, DType(11), Bytes)
}

// A dtype is never read as another of the same size.
func TestSameSizeDTypesDoNotMix(t *testing.T) {
	i32, err := DenseOf([]int32{-1, 2})
	require.NoError(t, err)
	u32, err := DenseOf([]uint32{1, 2})
	require.NoError(t, err)
	_, err = Values[uint32](i32)
	require.ErrorIs(t, err, ErrDTypeMismatch)
	_, err = Row[int32](u32, 0)
	require.ErrorIs(t, err, ErrDTypeMismatch)
	_, err = ConcatColumns(i32, u32)
	require.ErrorIs(t, err, ErrDTypeMismatch)

	f8, err := DenseOf([]F8E4M3FN{0x38})
	require.NoError(t, err)
	_, err = Values[uint8](f8)
	require.ErrorIs(t, err, ErrDTypeMismatch)
	_, err = Values[F8E5M2](f8)
	require.ErrorIs(t, err, ErrDTypeMismatch)
	c64, err := DenseOf([]complex64{1i})
	require.NoError(t, err)
	_, err = Values[uint64](c64)
	require.ErrorIs(t, err, ErrDTypeMismatch)
	u64, err := NewDense(Uint64, 1, nil, c64.Data())
	require.NoError(t, err)
	assert.False(t, c64.Equal(u64), "a complex64 column equals a uint64 one with the same bytes")
}

// complex128 needs 8-byte alignment, not 16: memory at an 8-byte boundary
// is viewed in place.
func TestComplex128ViewsEightByteAlignedMemory(t *testing.T) {
	vals := []complex128{1 + 2i, 3 - 4i}
	b := asBytes(make([]uint64, 1+2*len(vals))) // 8-byte aligned
	off := 8
	if !aligned(b, 16) {
		off = 0
	}
	data := b[off : off+16*len(vals)]
	require.False(t, aligned(data, 16), "the test needs memory that is not 16-byte aligned")
	copy(data, asBytes(vals))
	c, err := NewDense(Complex128, len(vals), nil, data)
	require.NoError(t, err)
	got, err := Values[complex128](c)
	require.NoError(t, err)
	assert.Equal(t, vals, got)
	copy(data, asBytes([]complex128{5i}))
	assert.Equal(t, 5i, got[0], "an 8-byte aligned complex128 column was copied, not viewed")
}
