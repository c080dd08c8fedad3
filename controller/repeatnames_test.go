package controller

import (
	"context"
	"runtime"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
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

// PRODUCTION_STATUS answers a bool per row and named field: a request
// whose rows × fields could not fit a reply frame is refused before the
// table is made. A peer naming one field 70,000 times (210 KB of
// request) over 1,000 rows used to make a 70 MB table, only for the
// reply to be refused as too large; over a million rows, 70 GB.
func TestProductionStatusBeyondAReplyIsRefusedFirst(t *testing.T) {
	c := newController(t, DefaultConfig())
	const rows = 1000
	insert(t, c, "p", rows, "a")
	commitDense(t, c, "p", seq(0, rows), "a")
	s := NewServer(c, ServerConfig{})
	t.Cleanup(func() { s.Close() })
	call := func(fields []string) (proto.Message, error) {
		body, err := proto.Marshal(&wirepb.ProductionStatusRequest{Partition: "p", Fields: fields})
		require.NoError(t, err)
		return s.productionStatus(context.Background(), body, &effects{})
	}
	many := slices.Repeat([]string{"a"}, wire.MaxBodyLen/rows+1)
	var err error
	got := allocated(func() { _, err = call(many) })
	require.ErrorIs(t, err, engine.ErrInvalid)
	require.ErrorContains(t, err, "1000 rows")
	// Decoding the names costs some tens of bytes each; the table, a
	// thousand each.
	require.LessOrEqualf(t, got, uint64(len(many))*128, "a refused status allocated %d bytes", got)

	// Within the frame, the answer is as before, one column per name.
	rep, err := call([]string{"a", "a"})
	require.NoError(t, err)
	st := rep.(*wirepb.ProductionStatusReply)
	require.Equal(t, []string{"a", "a"}, st.Fields)
	require.Len(t, st.Produced, 2*rows)
	require.NotContains(t, st.Produced, false)
}
