package engine

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// TestDerivedMetaKeepsPartitionGen: a fetch's meta carries the generation
// of its partition, which a later fetch passes back (FetchRequest.
// PartitionGen) to learn of a partition cleared and made again. A meta
// made from it (a copy, some of its rows or fields, its rows in chunks)
// describes rows of that same generation and keeps it, as it keeps
// Cluster, the other half of the pair.
func TestDerivedMetaKeepsPartitionGen(t *testing.T) {
	m := NewBatchMeta("p", []uint64{1, 2, 3, 4})
	m.Schema["x"] = FieldSchema{DType: Int64, Kind: Dense, Shape: Shape{}}
	m.PartitionGen, m.Cluster = 7, "c1"

	require.Equal(t, uint64(7), m.Clone().PartitionGen, "Clone")
	sel, err := m.SelectRows([]int{2, 0})
	require.NoError(t, err)
	require.Equal(t, uint64(7), sel.PartitionGen, "SelectRows")
	fs, err := m.SelectFields([]string{"x"})
	require.NoError(t, err)
	require.Equal(t, uint64(7), fs.PartitionGen, "SelectFields")
	re, err := m.Reorder([]int{3, 2, 1, 0})
	require.NoError(t, err)
	require.Equal(t, uint64(7), re.PartitionGen, "Reorder")
	chunks, err := m.Chunk(2)
	require.NoError(t, err)
	for i, c := range chunks {
		require.Equal(t, uint64(7), c.PartitionGen, "Chunk %d", i)
	}
	for i, c := range m.ChunkByPartition() {
		require.Equal(t, uint64(7), c.PartitionGen, "ChunkByPartition %d", i)
	}

	// The chunks joined again are the rows of the one generation.
	joined, err := ConcatMetas(chunks...)
	require.NoError(t, err)
	require.Equal(t, uint64(7), joined.PartitionGen, "ConcatMetas of one generation")
	// Rows of two generations (or two clusters) have none.
	other := NewBatchMeta("p", []uint64{5})
	other.Schema["x"] = m.Schema["x"]
	other.PartitionGen, other.Cluster = 8, "c1"
	mixed, err := ConcatMetas(m, other)
	require.NoError(t, err)
	require.Zero(t, mixed.PartitionGen, "ConcatMetas of two generations")
	other.PartitionGen, other.Cluster = 7, "c2"
	mixed, err = ConcatMetas(m, other)
	require.NoError(t, err)
	require.Zero(t, mixed.PartitionGen, "ConcatMetas of two clusters")

	// A union with a meta that knows no generation (a put's) keeps the
	// fetch's, whichever side it is on; two that differ leave none.
	put := NewBatchMeta("p", []uint64{1, 2, 3, 4})
	put.Schema["y"] = FieldSchema{DType: Int64, Kind: Dense, Shape: Shape{}}
	u, err := m.Union(put)
	require.NoError(t, err)
	require.Equal(t, uint64(7), u.PartitionGen, "Union, generation on the left")
	u, err = put.Union(m)
	require.NoError(t, err)
	require.Equal(t, uint64(7), u.PartitionGen, "Union, generation on the right")
	put.PartitionGen = 9
	u, err = m.Union(put)
	require.NoError(t, err)
	require.Zero(t, u.PartitionGen, "Union of two generations")
}
