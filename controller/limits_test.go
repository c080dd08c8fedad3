package controller

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// protocol.md's limits, over the wire: a request at each limit is served,
// one past it is CODE_INVALID naming what was wrong, and changes nothing.
func TestProtocolLimitsAtAndOnePast(t *testing.T) {
	ctrl := newController(t, DefaultConfig())
	commitDense(t, ctrl, "p", insert(t, ctrl, "p", 3, "x").Indexes, "x")
	root := t.TempDir()
	_, addr := startServer(t, ctrl, ServerConfig{CheckpointDir: root}, "unix")
	c := dialRaw(t, addr, "")
	invalid := func(t *testing.T, err error, want string) {
		t.Helper()
		require.Error(t, err)
		assert.Equal(t, wirepb.Code_CODE_INVALID, codeOf(err), "%v", err)
		assert.ErrorContains(t, err, want)
	}

	t.Run("fetch key", func(t *testing.T) {
		fetch := func(key string) error {
			return do(c, wire.OpFetch, &wirepb.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 1, Key: []byte(key)}, &wirepb.MetaReply{})
		}
		invalid(t, fetch(strings.Repeat("k", 65)), "fetch key of 65 bytes, at most 64")
		var st wirepb.ConsumptionStatusReply
		require.NoError(t, do(c, wire.OpConsumptionStatus, &wirepb.ConsumptionStatusRequest{Partition: "p", Task: "t"}, &st))
		assert.Equal(t, []bool{false, false, false}, st.Consumed, "the refused fetch consumed nothing")
		require.NoError(t, fetch(strings.Repeat("k", 64)))
	})

	t.Run("sampler parameters", func(t *testing.T) {
		fetch := func(spec *wirepb.SamplerSpec) error {
			return do(c, wire.OpFetch, &wirepb.FetchRequest{Partition: "p", Task: "s", Fields: []string{"x"}, BatchSize: 1 << 16, Sampler: spec}, &wirepb.MetaReply{})
		}
		invalid(t, fetch(&wirepb.SamplerSpec{Name: "grpo", N: 65537}), `sampler "grpo": group size 65537 or dp size 0 above 65536`)
		invalid(t, fetch(&wirepb.SamplerSpec{Name: "seqlen_balanced", DpSize: 65537}), "dp size 65537 above 65536")
		invalid(t, fetch(&wirepb.SamplerSpec{Name: "grpo", N: 1 << 40}), "above 65536")
		invalid(t, fetch(&wirepb.SamplerSpec{Name: "grpo", N: -1}), "negative group size -1")
		invalid(t, fetch(&wirepb.SamplerSpec{Name: "sequential", N: 2}), `sampler "sequential" takes no group size`)
		invalid(t, fetch(&wirepb.SamplerSpec{Name: "no-such"}), `sampler "no-such": unknown`)
		var st wirepb.ConsumptionStatusReply
		require.NoError(t, do(c, wire.OpConsumptionStatus, &wirepb.ConsumptionStatusRequest{Partition: "p", Task: "s"}, &st))
		assert.Equal(t, []bool{false, false, false}, st.Consumed, "the refused fetches consumed nothing")
		require.NoError(t, fetch(&wirepb.SamplerSpec{Name: "grpo", N: 65536}), "a group size at the limit")
	})

	t.Run("checkpoint name", func(t *testing.T) {
		require.NoError(t, do(c, wire.OpSaveCheckpoint, &wirepb.CheckpointRequest{Name: strings.Repeat("n", 128)}, &wirepb.CheckpointInfo{}))
		for _, name := range []string{strings.Repeat("n", 129), "-x", ".x", "a/b", "a b"} {
			invalid(t, do(c, wire.OpSaveCheckpoint, &wirepb.CheckpointRequest{Name: name}, &wirepb.CheckpointInfo{}), "checkpoint name")
		}
	})

	t.Run("checkpoint metadata", func(t *testing.T) {
		// {"m":"xxx…"} of exactly n bytes.
		sized := func(n int) []byte { return []byte(`{"m":"` + strings.Repeat("x", n-8) + `"}`) }
		nested := func(d int) []byte {
			return []byte(`{"a":` + strings.Repeat("[", d-1) + strings.Repeat("]", d-1) + `}`)
		}
		save := func(md []byte) error {
			return do(c, wire.OpSaveCheckpoint, &wirepb.CheckpointRequest{Name: "md", Metadata: md}, &wirepb.CheckpointInfo{})
		}
		require.NoError(t, save(nested(maxMetadataDepth)))
		invalid(t, save(nested(maxMetadataDepth+1)), "checkpoint metadata nests 257 deep, at most 256")
		require.Len(t, sized(MaxCheckpointMetadata), MaxCheckpointMetadata)
		require.NoError(t, save(sized(MaxCheckpointMetadata)))
		invalid(t, save(sized(MaxCheckpointMetadata+1)), "checkpoint metadata of 65537 bytes, at most 65536")
		invalid(t, save([]byte(`[1]`)), "not a JSON object")
		invalid(t, save([]byte("{\"a\":\"\xff\"}")), "not valid UTF-8")

		// The refused saves left the last good one: a load answers with it.
		var info wirepb.CheckpointInfo
		require.NoError(t, do(c, wire.OpLoadCheckpoint, &wirepb.CheckpointRequest{Name: "md"}, &info))
		assert.Equal(t, sized(MaxCheckpointMetadata), info.Metadata)
		invalid(t, do(c, wire.OpLoadCheckpoint, &wirepb.CheckpointRequest{Name: "md", Metadata: []byte(`{}`)}, &wirepb.CheckpointInfo{}), "metadata")
	})
}
