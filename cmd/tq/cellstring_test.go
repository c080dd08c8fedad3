package main

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// Every dtype prints its values, the float bit patterns as numbers.
func TestCellStringEveryDType(t *testing.T) {
	dense := func(c *engine.Column, err error) *engine.Column {
		t.Helper()
		require.NoError(t, err)
		return c
	}
	for _, tc := range []struct {
		col  *engine.Column
		want string
	}{
		{dense(engine.DenseOf([]float64{1.5, -2}, 2)), "[1.5 -2]"},
		{dense(engine.DenseOf([]float32{0.25}, 1)), "[0.25]"},
		{dense(engine.DenseOf([]engine.F16{0x3c00, 0xc000}, 2)), "[1 -2]"},
		{dense(engine.DenseOf([]engine.BF16{0x3f80}, 1)), "[1]"},
		{dense(engine.DenseOf([]engine.F8E4M3FN{0x7e, 0x7f}, 2)), "[448 NaN]"},
		{dense(engine.DenseOf([]engine.F8E5M2{0x7b, 0xfc}, 2)), "[57344 -Inf]"},
		{dense(engine.DenseOf([]int64{-1}, 1)), "[-1]"},
		{dense(engine.DenseOf([]int32{-2}, 1)), "[-2]"},
		{dense(engine.DenseOf([]int16{-3}, 1)), "[-3]"},
		{dense(engine.DenseOf([]int8{-4}, 1)), "[-4]"},
		{dense(engine.DenseOf([]uint64{1 << 63}, 1)), "[9223372036854775808]"},
		{dense(engine.DenseOf([]uint32{4294967295}, 1)), "[4294967295]"},
		{dense(engine.DenseOf([]uint16{65535}, 1)), "[65535]"},
		{dense(engine.DenseOf([]uint8{255}, 1)), "[255]"},
		{dense(engine.DenseOf([]bool{true}, 1)), "[true]"},
		{dense(engine.DenseOf([]complex64{1 - 2i}, 1)), "[(1-2i)]"},
		{dense(engine.DenseOf([]complex128{3i}, 1)), "[(0+3i)]"},
		{engine.StringsOf([]string{"hi"}), `"hi"`},
	} {
		t.Run(tc.col.DType().String(), func(t *testing.T) {
			got, err := cellString(tc.col, 0)
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}
