package controller

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/controller/sampler"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// readSpec returns wire/spec.md with its white space folded.
func readSpec(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../wire/spec.md")
	require.NoError(t, err)
	return strings.Join(strings.Fields(string(b)), " ")
}

// The controller's limits and defaults are the numbers wire/spec.md
// states in its own words (TestProtocolDocsStateTheLimits finds others
// in any of the documents): each phrase, made from the constant, is in it.
func TestSpecStatesTheControllerLimits(t *testing.T) {
	spec := readSpec(t)
	mib := func(n int) string { return fmt.Sprintf("%d MiB", n>>20) }
	for _, phrase := range []string{
		fmt.Sprintf("a controller keeps at most %d such samplers", maxNamedSamplers),
		fmt.Sprintf("`n` and `dp_size` of 0 mean 1, at most %d", sampler.MaxSpecParam),
		fmt.Sprintf("With a `key` (1–%d bytes;", maxFetchKeyLen),
		fmt.Sprintf("(`tq serve --held-fetch-ttl`, %d minutes by default)", int(DefaultHeldFetchTTL/time.Minute)),
		fmt.Sprintf("(`tq serve --max-partitions`, %d by default)", DefaultMaxPartitions),
		fmt.Sprintf("a partition's %d tasks or ready views, or its %s fields", maxTasks, commas(maxFields)),
		fmt.Sprintf("hold at most `max_bytes` (at most %s)", mib(MaxKVPayload)),
		fmt.Sprintf("the payload (at most %s)", mib(MaxKVPayload)),
		fmt.Sprintf("a JSON object of at most %d KiB in valid UTF-8, nested at most %d deep", MaxCheckpointMetadata>>10, maxMetadataDepth),
		fmt.Sprintf("≤ %s bytes (%d KiB; Go's `engine.MaxNameBytes`)", commas(engine.MaxNameBytes), engine.MaxNameBytes>>10),
		fmt.Sprintf("a key's tags ≤ %s as JSON (Go's `engine.MaxTagsBytes`)", mib(engine.MaxTagsBytes)),
		fmt.Sprintf("A request holds at most %d conditions", engine.MaxTagConditions),
		fmt.Sprintf("present and equal to one of 1–%d values", engine.MaxTagValues),
		fmt.Sprintf("the first %d, and the message spells out the first 16", engine.MaxErrorKeys),
	} {
		assert.True(t, strings.Contains(spec, phrase), "wire/spec.md does not state %q", phrase)
	}
	assert.Equal(t, maxTasks, maxViews)
}

// A DELETE_TAGS naming unknown keys names them, in Error.keys over the
// wire (wire/spec.md "Errors"), and changes nothing.
func TestDeleteTagsNamesTheUnknownKeys(t *testing.T) {
	c := newController(t, DefaultConfig())
	_, err := c.CommitKeys(keysCommit("p", []string{"a"}, 1, "x"))
	require.NoError(t, err)
	_, addr := startServer(t, c, ServerConfig{}, "unix")
	conn := dialRaw(t, addr, "")
	err = do(conn, wire.OpDeleteTags, &wirepb.DeleteTagsRequest{Partition: "p", Keys: []string{"a", "b", "c"}, Names: []string{"t"}}, &wirepb.DeleteTagsReply{})
	ke, ok := errors.AsType[*engine.KeysError](err)
	require.True(t, ok, "%v", err)
	assert.Equal(t, []string{"b", "c"}, ke.Keys)
	assert.ErrorIs(t, err, engine.ErrNotFound)
}
