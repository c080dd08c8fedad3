package controller

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// A request that would make a key, partition, field or task named with
// more than engine.MaxNameBytes is refused by the controller itself, as
// a peer that is not the Go client sends it: CODE_INVALID naming which
// name, its length and the limit, quoting only its first bytes; nothing
// is made. A name of exactly the limit is taken.
func TestServerRefusesLongNames(t *testing.T) {
	ctrl := newController(t, DefaultConfig())
	m := insert(t, ctrl, "p", 2, "x")
	commitDense(t, ctrl, "p", m.Indexes, "x")
	_, addr := startServer(t, ctrl, ServerConfig{}, "unix")
	c := dialRaw(t, addr, "")
	long := strings.Repeat("n", engine.MaxNameBytes+1)
	field := func(name string) []*wirepb.CommitField {
		return []*wirepb.CommitField{{Name: name, Dtype: "float32", Kind: "dense"}}
	}
	for _, tc := range []struct {
		name, what string
		op         wire.Op
		req        proto.Message
	}{
		{"insert: partition", "partition", wire.OpInsert, &wirepb.InsertRequest{Partition: long, N: 1}},
		{"mark done: partition", "partition", wire.OpMarkDone, &wirepb.MarkDoneRequest{Partition: long}},
		{"resolve keys: partition", "partition", wire.OpResolveKeys, &wirepb.ResolveKeysRequest{Partition: long, Keys: []string{"k"}, Create: true}},
		{"resolve keys: key", "key", wire.OpResolveKeys, &wirepb.ResolveKeysRequest{Partition: "p", Keys: []string{"k", long}, Create: true}},
		{"commit keys: key", "key", wire.OpCommitKeys, &wirepb.CommitKeysRequest{Partition: "p", Keys: []string{long}, HasTags: true, Tags: [][]byte{[]byte(`{"a":1}`)}}},
		{"commit keys: field", "field", wire.OpCommitKeys, &wirepb.CommitKeysRequest{Partition: "p", Keys: []string{"k"}, Fields: field(long)}},
		{"commit: field", "field", wire.OpCommit, &wirepb.CommitRequest{Partition: "p", Indexes: m.Indexes, Fields: field(long)}},
		{"compare and set tag: key", "key", wire.OpCompareAndSetTag, &wirepb.CompareAndSetTagRequest{Partition: "p", Key: long, Name: "a", NewValue: []byte("1")}},
		{"fetch: task", "task", wire.OpFetch, &wirepb.FetchRequest{Partition: "p", Task: long, Fields: []string{"x"}, BatchSize: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := do(c, tc.op, tc.req, nil)
			require.ErrorIs(t, err, engine.ErrInvalid)
			assert.Equal(t, wirepb.Code_CODE_INVALID, codeOf(err))
			assert.Contains(t, err.Error(), fmt.Sprintf("%s %q… is %d bytes long, past the limit of %d", tc.what, long[:32], len(long), engine.MaxNameBytes))
			assert.Less(t, len(err.Error()), 2048, "the error quotes only the name's first bytes")
		})
	}
	assert.Equal(t, []string{"p"}, ctrl.Partitions(), "no partition was made")
	n, err := ctrl.KeyCount("p")
	require.NoError(t, err)
	assert.Zero(t, n, "no key was made")
	fs, err := ctrl.Fields("p")
	require.NoError(t, err)
	require.Len(t, fs, 1, "no field was made")

	// Exactly the limit: taken.
	most := strings.Repeat("m", engine.MaxNameBytes)
	require.NoError(t, do(c, wire.OpCommitKeys, &wirepb.CommitKeysRequest{Partition: most, Keys: []string{most}, Fields: field(most)}, nil))
	require.NoError(t, do(c, wire.OpFetch, &wirepb.FetchRequest{Partition: "p", Task: most, Fields: []string{"x"}, BatchSize: 1}, &wirepb.MetaReply{}))
	assert.Equal(t, []bool{true}, ctrl.HasKeys(most, []string{most}))
}
