package controller

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// A commit of cells written to the units of another cluster (a client
// that listed the units before this controller started without the last
// one's state: its unit ids name other units here) is refused as lost and
// changes nothing; one naming this cluster, or none, is taken.
func TestCommitOfAnotherClustersCellsIsLost(t *testing.T) {
	c := newController(t, DefaultConfig())
	other := "not-" + c.Info().ClusterID
	x := []engine.CommitField{{Name: "x", DType: engine.Int64, Kind: engine.Dense, Locs: cellsFrom(0, 8)}}
	m := insert(t, c, "p", 1, "x")

	_, err := c.Commit(engine.CommitRequest{Partition: "p", Indexes: m.Indexes, Fields: x, Cluster: other})
	require.ErrorIs(t, err, engine.ErrLost)
	assert.ErrorContains(t, err, "written to the storage units of cluster "+other+", and this controller is cluster "+c.Info().ClusterID)
	_, err = c.ProductionStatus("p", []string{"x"})
	assert.ErrorIs(t, err, engine.ErrNotFound, "x after a refused commit")

	_, err = c.CommitKeys(engine.KeysCommit{Partition: "kv", Keys: []string{"k"}, Fields: x, Cluster: other})
	require.ErrorIs(t, err, engine.ErrLost)
	assert.NotContains(t, c.Partitions(), "kv", "a refused put creates no partition")

	_, err = c.Commit(engine.CommitRequest{Partition: "p", Indexes: m.Indexes, Fields: x, Cluster: c.Info().ClusterID})
	require.NoError(t, err)
	_, err = c.CommitKeys(engine.KeysCommit{Partition: "kv", Keys: []string{"k"}, Fields: x})
	require.NoError(t, err, "a commit that names no cluster")
}
