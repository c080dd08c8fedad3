package resp

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestHSetGeneralCountsNewFields checks the count the general way of
// HSET answers (taken when every unit of the process drains): a field
// the key holds is not new, one it never held is, and so is one the
// partition holds only for another key.
func TestHSetGeneralCountsNewFields(t *testing.T) {
	ctx := context.Background()
	e := newEndpoint(t, Config{})
	st := e.srv.st
	one := func(fields ...string) [][][]byte {
		vals := make([][][]byte, len(fields))
		for j, f := range fields {
			vals[j] = [][]byte{[]byte("v-" + f)}
		}
		return vals
	}
	n, err := st.hsetGeneral(ctx, "p", "k", []string{"a", "b", "c"}, one("a", "b", "c"), nil)
	require.NoError(t, err)
	assert.Equal(t, 3, n, "a new key's fields")
	n, err = st.hsetGeneral(ctx, "p", "other", []string{"x"}, one("x"), nil)
	require.NoError(t, err)
	assert.Equal(t, 1, n, "another key's field")
	n, err = st.hsetGeneral(ctx, "p", "k", []string{"c", "x", "a", "d"}, one("c", "x", "a", "d"), nil)
	require.NoError(t, err)
	assert.Equal(t, 2, n, "x (held only by another key) and d are new to k; a and c are not")
	n, err = st.hsetGeneral(ctx, "p", "k", []string{"d", "b"}, one("d", "b"), nil)
	require.NoError(t, err)
	assert.Equal(t, 0, n, "k holds d and b")
}

// BenchmarkHSetGeneral: an HSET the general way of n fields of a key
// that holds those n fields already: it costs the fields, not the
// fields times the fields the key holds.
func BenchmarkHSetGeneral(b *testing.B) {
	for _, n := range []int{1 << 10, 1 << 13} {
		b.Run(fmt.Sprintf("fields=%d", n), func(b *testing.B) {
			ctx := context.Background()
			e := newEndpoint(b, Config{})
			st := e.srv.st
			fields, vals := make([]string, n), make([][][]byte, n)
			for j := range n {
				fields[j], vals[j] = fmt.Sprintf("field-%d", j), [][]byte{[]byte("v")}
			}
			if _, err := st.hsetGeneral(ctx, "p", "k", fields, vals, nil); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for range b.N {
				if got, err := st.hsetGeneral(ctx, "p", "k", fields, vals, nil); err != nil || got != 0 {
					b.Fatalf("answered %d, %v; want 0 new", got, err)
				}
			}
		})
	}
}
