package controller

import (
	"context"
	"runtime"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// allocated returns the bytes f allocates (all goroutines; the tests that
// use it leave the controller idle meanwhile).
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// A request naming one field many times costs what naming it once does:
// the meta keys cells by field, so the repeats add nothing to the answer.
// Each repeat used to take its own rows-long share of the cell slab and
// its own pass over the rows: RowsMeta of 1,000 rows naming a field 1,000
// times allocated 32 MB for a meta of 1,000 cells (a peer naming it four
// million times over a large partition asked for terabytes).
func TestRepeatedFieldNamesCostOnce(t *testing.T) {
	ctx := context.Background()
	c := newController(t, DefaultConfig())
	const rows = 1000
	insert(t, c, "p", rows, "a")
	commitDense(t, c, "p", seq(0, rows), "a")
	once := []string{"a"}
	many := slices.Repeat(once, 1000)
	ops := map[string]func(fields []string) (*engine.BatchMeta, error){
		"rows meta":   func(fs []string) (*engine.BatchMeta, error) { return c.RowsMeta("p", seq(0, rows), fs) },
		"force fetch": func(fs []string) (*engine.BatchMeta, error) { return c.ForceFetch("p", fs) },
		"insert":      func(fs []string) (*engine.BatchMeta, error) { return c.Insert("p", rows, fs) },
		"fetch": func(fs []string) (*engine.BatchMeta, error) {
			return c.Fetch(ctx, engine.FetchRequest{Partition: "p", Task: "t", Fields: fs, BatchSize: 10})
		},
	}
	for name, op := range ops {
		var mOnce, mMany *engine.BatchMeta
		var errOnce, errMany error
		base := allocated(func() { mOnce, errOnce = op(once) })
		got := allocated(func() { mMany, errMany = op(many) })
		require.NoError(t, errOnce, name)
		require.NoError(t, errMany, name)
		require.Len(t, mMany.Cells, 1, name)
		require.Len(t, mMany.Cells["a"], len(mMany.Indexes), name)
		// The names' own slice (one pointer each) is the only part that
		// may grow with the repeats.
		require.LessOrEqualf(t, got, 2*base+uint64(len(many))*16, "%s naming a field %d times allocated %d bytes, once %d", name, len(many), got, base)
		_ = mOnce
	}
}
