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

// A FETCH whose rows' keys and tags make a meta beyond a reply frame,
// which no bound on the batch size can know before the sampler chose,
// gives its rows back (as UNCONSUME of its key would) and is refused. It
// used to consume them and then have its reply refused: the task never
// saw them, and the same fetch key asked again answered the same
// too-large meta.
func TestFetchWhoseKeysOutgrowAReplyGivesItsRowsBack(t *testing.T) {
	dir := t.TempDir()
	c := openDurable(t, dir, DefaultConfig())
	s := NewServer(c, ServerConfig{})
	n := wire.MaxBodyLen / engine.MaxNameBytes // keys of 64 KiB: 64 MiB and more
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("%0*d", engine.MaxNameBytes, i)
	}
	m, err := c.ResolveKeys("p", keys, nil, true)
	require.NoError(t, err)
	commitDense(t, c, "p", m.Indexes, "a")
	call := func(req *wirepb.FetchRequest) (proto.Message, error) {
		req.Partition, req.Task, req.Fields = "p", "t", []string{"a"}
		body, err := proto.Marshal(req)
		require.NoError(t, err)
		return s.call(context.Background(), wire.OpFetch, body, &effects{})
	}
	consumed := func(c *Controller) int {
		st, err := c.ConsumptionStatus("p", "t")
		require.NoError(t, err)
		return trues(st.Consumed)
	}

	_, err = call(&wirepb.FetchRequest{BatchSize: int64(n)})
	require.ErrorIs(t, err, engine.ErrInvalid)
	require.ErrorContains(t, err, fmt.Sprintf("%d rows", n))
	require.ErrorContains(t, err, "keys and tags")
	require.Zero(t, consumed(c), "a fetch whose reply was refused kept its rows")

	// Keyed and held: given back as UNCONSUME of the key gives them back,
	// the key spent (asked again, it is given back, not the same meta).
	_, err = call(&wirepb.FetchRequest{BatchSize: int64(n), Key: []byte("k"), Hold: true})
	require.ErrorIs(t, err, engine.ErrInvalid)
	require.Zero(t, consumed(c), "a keyed fetch whose reply was refused kept its rows")
	_, err = call(&wirepb.FetchRequest{BatchSize: int64(n), Key: []byte("k"), Hold: true})
	require.ErrorIs(t, err, context.Canceled)
	st, err := c.ConsumptionStatus("p", "t")
	require.NoError(t, err)
	require.Empty(t, st.Held, "a fetch whose reply was refused holds rows")

	// A smaller batch answers, and takes only its rows.
	rep, err := call(&wirepb.FetchRequest{BatchSize: int64(n / 2), Key: []byte("k2")})
	require.NoError(t, err)
	require.Len(t, rep.(*wirepb.MetaReply).Meta.Indexes, n/2)
	require.Equal(t, n/2, consumed(c))

	// The log agrees: a restart has the same consumption and fetch keys.
	want := stateBytes(t, c)
	require.NoError(t, s.Close())
	crash(t, c)
	c2 := openDurable(t, dir, DefaultConfig())
	t.Cleanup(func() { c2.Close() })
	require.Equal(t, n/2, consumed(c2))
	require.Equal(t, want, stateBytes(t, c2))
}

// A batch a caching sampler keeps for a DP group whose meta is beyond a
// reply is dropped from the sampler and its rows given back, so that the
// group asking again (for a smaller batch) gets one. It used to stay kept:
// every fetch of the batch index, by the rank or its peers and whatever
// the batch size, answered the same too-large meta, and the rows stayed
// consumed for the task. A sampler that splits a batch between the ranks
// drops the rank's part; the other ranks' parts stay theirs.
func TestKeptBatchWhoseMetaOutgrowsAReplyIsDropped(t *testing.T) {
	for _, tc := range []struct {
		spec engine.SamplerSpec
		rows int
		left int // rows consumed once the rank's batch is dropped: the other ranks' parts
	}{
		{rankAware, 8, 0},
		{engine.SamplerSpec{Name: engine.SamplerSeqlenBalanced, N: 1, DPSize: 2}, 16, 8},
	} {
		t.Run(tc.spec.Name, func(t *testing.T) {
			dir := t.TempDir()
			c := openDurable(t, dir, DefaultConfig())
			keys := make([]string, tc.rows)
			for i := range keys {
				keys[i] = fmt.Sprintf("%01000d", i) // 1,000 bytes each
			}
			m, err := c.ResolveKeys("p", keys, nil, true)
			require.NoError(t, err)
			commitDense(t, c, "p", m.Indexes, "x")
			ctx := context.Background()
			const maxReply = 4000 // three rows' keys fit, eight do not
			fetch := func(rank, size int, key string) (*engine.BatchMeta, error) {
				req := specFetch(tc.spec, rank, 0, size)
				req.Key = key
				return c.fetch(ctx, req, &fetchReply{max: maxReply})
			}
			consumed := func(c *Controller) int {
				st, err := c.ConsumptionStatus("p", "t")
				require.NoError(t, err)
				return trues(st.Consumed)
			}

			_, err = fetch(0, 8, "k0")
			require.ErrorIs(t, err, engine.ErrInvalid)
			require.ErrorContains(t, err, "fetch p:")
			require.ErrorContains(t, err, `task "t"`)
			require.ErrorContains(t, err, "8 rows")
			require.ErrorContains(t, err, fmt.Sprint(maxReply))
			require.ErrorContains(t, err, "batch 0 kept for DP rank 0 was dropped")
			require.Equal(t, tc.left, consumed(c), "a kept batch whose reply was refused kept its rows")
			_, err = fetch(0, 8, "k0")
			require.ErrorIs(t, err, context.Canceled, "the refused fetch's key is spent")

			// The rank (or a peer) asking again for a smaller batch gets
			// one, and the group's peers get the same.
			a, err := fetch(0, 2, "k1")
			require.NoError(t, err)
			require.Equal(t, 2, a.Len())
			peer, err := fetch(0, 8, "k2")
			require.NoError(t, err)
			require.Equal(t, a.Indexes, peer.Indexes, "the group's peer got another batch")
			require.Equal(t, tc.left+2, consumed(c))

			// The log agrees: a restart has the same state.
			require.NoError(t, c.WaitDurable(ctx))
			want := stateBytes(t, c)
			crash(t, c)
			c2 := openDurable(t, dir, DefaultConfig())
			t.Cleanup(func() { c2.Close() })
			require.Equal(t, tc.left+2, consumed(c2))
			require.Equal(t, want, stateBytes(t, c2))
		})
	}
}
