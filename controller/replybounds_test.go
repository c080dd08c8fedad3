package controller

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// An INSERT whose reply could not fit a frame is refused before a row is
// made. Each row's meta names its partition: 1,024 rows of a partition
// whose id is 64 KiB make a reply of 67 MB, which the server used to
// refuse only once the rows were in: the caller heard an error, the rows
// stayed (a half-done call).
func TestInsertBeyondAReplyIsRefusedFirst(t *testing.T) {
	c := newController(t, DefaultConfig())
	s := NewServer(c, ServerConfig{})
	t.Cleanup(func() { s.Close() })
	call := func(partition string, n int64, fields ...string) (proto.Message, error) {
		body, err := proto.Marshal(&wirepb.InsertRequest{Partition: partition, N: n, Fields: fields})
		require.NoError(t, err)
		return s.call(context.Background(), wire.OpInsert, body, &effects{})
	}
	long := strings.Repeat("p", engine.MaxNameBytes)
	n := int64(wire.MaxBodyLen/(len(long)+4) + 1)
	_, err := call(long, n)
	require.ErrorIs(t, err, engine.ErrInvalid)
	require.ErrorContains(t, err, fmt.Sprintf("%d rows × 0 fields", n))
	require.Empty(t, c.Partitions(), "a refused insert made its partition")
	allocated, _ := c.Indexes()
	require.Zero(t, allocated, "a refused insert allocated rows")

	// Within a frame it answers as before.
	rep, err := call(long, n-1)
	require.NoError(t, err)
	require.Len(t, rep.(*wirepb.MetaReply).Meta.Indexes, int(n-1))
}

// The bound counts a cell location a row and known field (names given
// twice, or unknown, make none), as PRODUCTION_STATUS counts its cells.
func TestInsertBoundCountsKnownFieldsOnce(t *testing.T) {
	c := newController(t, DefaultConfig())
	insert(t, c, "p", 10, "a", "b")
	commitDense(t, c, "p", seq(0, 10), "a", "b")
	// 4 + len("p") + 2 known fields: 7 bytes a row.
	_, err := c.insert("p", 10, []string{"a", "b", "a", "zz"}, 70)
	require.NoError(t, err)
	_, err = c.insert("p", 11, []string{"a", "b", "a", "zz"}, 70)
	require.ErrorIs(t, err, engine.ErrInvalid)
	require.ErrorContains(t, err, "11 rows × 2 fields")
	require.ErrorContains(t, err, "70")
	allocated, _ := c.Indexes()
	require.Equal(t, 20, allocated, "a refused insert allocated rows")
	// The Go API has no frame, and no bound.
	_, err = c.Insert("p", 11, []string{"a", "b"})
	require.NoError(t, err)
}

// A FETCH whose batch could not fit a reply frame is refused before the
// sampler runs: 1,024 rows of a partition whose id is 64 KiB used to be
// consumed for the task, and their meta then refused as over the frame
// limit; the task never saw them.
func TestFetchBeyondAReplyIsRefusedFirst(t *testing.T) {
	c := newController(t, DefaultConfig())
	s := NewServer(c, ServerConfig{})
	t.Cleanup(func() { s.Close() })
	long := strings.Repeat("p", engine.MaxNameBytes)
	n := wire.MaxBodyLen/(len(long)+4+1) + 1
	insert(t, c, long, n, "a")
	commitDense(t, c, long, seq(0, uint64(n)), "a")
	call := func(batch int, fields ...string) (proto.Message, error) {
		body, err := proto.Marshal(&wirepb.FetchRequest{Partition: long, Task: "t", Fields: fields, BatchSize: int64(batch)})
		require.NoError(t, err)
		return s.call(context.Background(), wire.OpFetch, body, &effects{})
	}
	_, err := call(n, "a", "a")
	require.ErrorIs(t, err, engine.ErrInvalid)
	require.ErrorContains(t, err, fmt.Sprintf("%d rows × 1 fields", n))
	st, err := c.ConsumptionStatus(long, "t")
	require.NoError(t, err)
	require.NotContains(t, st.Consumed, true, "a refused fetch consumed rows")

	rep, err := call(n-1, "a")
	require.NoError(t, err)
	require.Len(t, rep.(*wirepb.MetaReply).Meta.Indexes, n-1)
}

// A RESOLVE_KEYS with create whose meta could not fit a reply frame is
// refused before a key gets a row. The meta repeats the partition id and
// holds the key of each row: 1,024 keys of 32 KiB in a partition whose id
// is 32 KiB (a request of 33 MB) made a reply of 67 MB, which the server
// used to refuse only once the keys had their rows.
func TestResolveKeysBeyondAReplyIsRefusedFirst(t *testing.T) {
	c := newController(t, DefaultConfig())
	s := NewServer(c, ServerConfig{})
	t.Cleanup(func() { s.Close() })
	half := engine.MaxNameBytes / 2
	pid := strings.Repeat("p", half)
	keys := func(n int) []string {
		ks := make([]string, n)
		for i := range ks {
			ks[i] = fmt.Sprintf("%0*d", half, i)
		}
		return ks
	}
	call := func(ks []string) (proto.Message, error) {
		body, err := proto.Marshal(&wirepb.ResolveKeysRequest{Partition: pid, Keys: ks, Create: true})
		require.NoError(t, err)
		return s.call(context.Background(), wire.OpResolveKeys, body, &effects{})
	}
	// Without the keys' bytes the rows alone (4 + 32 KiB each) would fit.
	n := 1024
	require.Less(t, n*(4+len(pid)), wire.MaxBodyLen)
	_, err := call(keys(n))
	require.ErrorIs(t, err, engine.ErrInvalid)
	require.ErrorContains(t, err, fmt.Sprintf("%d rows × 0 fields and %d bytes of keys", n, n*half))
	require.ErrorContains(t, err, fmt.Sprint(wire.MaxBodyLen))
	require.Empty(t, c.Partitions(), "a refused resolve made its partition")
	allocated, _ := c.Indexes()
	require.Zero(t, allocated, "a refused resolve made rows")

	// Within a frame it answers as before.
	rep, err := call(keys(n - 1))
	require.NoError(t, err)
	require.Len(t, rep.(*wirepb.ResolveKeysReply).Created, n-1)
}
