package engine

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A bool column's bytes come from whoever wrote them: a torch
// .view(torch.bool) or any raw put can store bytes other than 0 and 1.
// Values and Row read every nonzero byte as true (as numpy and torch do),
// so each value is a valid Go bool: equal to true, and one map key.
func TestBoolValuesFromBytesOtherThanZeroAndOne(t *testing.T) {
	data := []byte{1, 2, 0, 0xff, 1, 0, 1, 1, 0, 0, 1, 0, 0, 0x80, 0, 1, 1, 0, 7}
	want := make([]bool, len(data))
	for i, b := range data {
		want[i] = b != 0
	}
	orig := append([]byte(nil), data...)

	c, err := NewDense(Bool, len(data), Shape{}, data)
	require.NoError(t, err)
	v, err := Values[bool](c)
	require.NoError(t, err)
	require.Equal(t, want, v)
	assert.True(t, v[0] == v[1], "rows over bytes 1 and 2 differ")
	assert.Len(t, map[bool]int{v[0]: 1, v[1]: 2, v[3]: 3, v[13]: 4}, 1, "true is more than one map key")
	for i := range data {
		r, err := Row[bool](c, i)
		require.NoError(t, err)
		require.Equal(t, []bool{want[i]}, r, "row %d over byte %#x", i, data[i])
		assert.True(t, r[0] == want[i], "row %d over byte %#x", i, data[i])
	}
	f, err := Values[Flag](c)
	require.NoError(t, err)
	assert.True(t, f[1] == Flag(true), "a named bool type over byte 2")
	assert.Equal(t, orig, data, "reading changed the column's bytes")

	r, err := NewRagged(Bool, []Shape{{2}, {3}}, []byte{0, 3, 1, 0, 9})
	require.NoError(t, err)
	row1, err := Row[bool](r, 1)
	require.NoError(t, err)
	assert.Equal(t, []bool{true, false, true}, row1)
	assert.True(t, row1[2] == true)

	// Bytes that are all 0 or 1 are still viewed in place, not copied.
	ok := []byte{1, 0, 1}
	c, err = NewDense(Bool, 3, Shape{}, ok)
	require.NoError(t, err)
	v, err = Values[bool](c)
	require.NoError(t, err)
	ok[1] = 1
	assert.Equal(t, []bool{true, true, true}, v, "a valid bool column was copied")
}

// boolBytes finds a byte other than 0 or 1 wherever it lies, in the
// 8-byte words or the tail, and copies only then.
func TestBoolBytes(t *testing.T) {
	for n := range 20 {
		ones := make([]byte, n)
		for i := range ones {
			ones[i] = byte(i % 2)
		}
		got := boolBytes(ones)
		require.Equal(t, ones, got)
		if n > 0 {
			assert.Same(t, &ones[0], &got[0], "%d valid bytes were copied", n)
		}
		for at := range n {
			b := append([]byte(nil), ones...)
			b[at] = 0x10
			want := append([]byte(nil), ones...)
			want[at] = 1
			assert.Equal(t, want, boolBytes(b), "%d bytes, 0x10 at %d", n, at)
			assert.Equal(t, byte(0x10), b[at], "the source was changed")
		}
	}
}
