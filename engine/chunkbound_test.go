package engine

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// A chunk count far past the rows is refused, naming it, rather than
// allocating a meta per part (1<<62 parts panicked in makeslice; 1<<35
// ran out of memory); up to MaxChunks parts still give empty chunks.
func TestChunkOfTooManyPartsIsRefused(t *testing.T) {
	m := &BatchMeta{Indexes: []uint64{1, 2}, Partitions: []string{"p", "p"}, Ready: []bool{true, true}, Tags: []Tags{nil, nil}}
	for _, n := range []int{MaxChunks + 1, 1 << 35, 1 << 62} {
		_, err := m.Chunk(n)
		require.ErrorIs(t, err, ErrInvalid, "Chunk(%d)", n)
		require.ErrorContains(t, err, "parts")
		_, err = (&KVMeta{Partition: "p", Keys: []string{"a"}}).Chunk(n)
		require.ErrorIs(t, err, ErrInvalid, "KVMeta.Chunk(%d)", n)
	}
	out, err := m.Chunk(4)
	require.NoError(t, err)
	require.Len(t, out, 4)
	require.Equal(t, 0, out[3].Len())
}
