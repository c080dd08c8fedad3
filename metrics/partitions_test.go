package metrics_test

import (
	"fmt"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/metrics"
)

// TestPartitionSeriesAreBounded: partitions are named by the workload (a
// Redis {tag} per user, a KV put to a new partition each), up to
// controller.DefaultMaxPartitions (65536), and each had series of its own
// for every partition, with up to 64 fields and 64 tasks each: a client
// that made partitions could put some 13 million series in every scrape.
// Only the first MaxPartitionSeries partitions by name get them;
// tq_partitions counts them all.
func TestPartitionSeriesAreBounded(t *testing.T) {
	c, err := controller.New(controller.Config{})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	const limit = metrics.MaxPartitionSeries
	const n = 2*limit + 7
	for i := range n {
		_, err := c.Insert(fmt.Sprintf("p%05d", n-1-i), 1, []string{"x"})
		require.NoError(t, err)
	}

	reg := metrics.New()
	reg.AddController(c, nil)
	parts := partitionLabels(t, reg)
	assert.Len(t, parts, limit, "tq_partition_rows series")
	slices.Sort(parts)
	if assert.NotEmpty(t, parts) {
		assert.Equal(t, "p00000", parts[0], "the first partition by name")
		assert.Equal(t, fmt.Sprintf("p%05d", limit-1), parts[len(parts)-1], "the last partition with series")
	}
	cl := &cluster{reg: reg}
	assert.Equal(t, float64(n), cl.value(t, "tq_partitions"), "tq_partitions counts every partition")
}
