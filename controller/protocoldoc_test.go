package controller

import (
	"context"
	"fmt"
	"math/bits"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// controlOpNames are the ops ops.go numbers for the controller (16–63): every
// one of them the controller serves, and protocol.md describes.
func controlOpNames() map[string]bool {
	ops := map[string]bool{}
	for n := 16; n < 64; n++ {
		if name := wire.Op(n).String(); !strings.HasPrefix(name, "OP_") {
			ops[name] = true
		}
	}
	return ops
}

// protocolOpRow matches a row of protocol.md's op table: | FETCH | … or
// | CLEAR_ROWS, CLEAR_KEYS | ….
var protocolOpRow = regexp.MustCompile("(?m)^\\| ([A-Z_]+(?:, [A-Z_]+)*) \\|")

// protocol.md's op table names every control op of ops.go, once, and no
// other; and the server has a handler for each.
func TestProtocolDocListsEveryControlOp(t *testing.T) {
	doc, err := os.ReadFile("protocol.md")
	require.NoError(t, err)
	listed := map[string]bool{}
	for _, m := range protocolOpRow.FindAllStringSubmatch(string(doc), -1) {
		for _, name := range strings.Split(m[1], ", ") {
			require.False(t, listed[name], "protocol.md lists %s twice", name)
			listed[name] = true
		}
	}
	assert.Equal(t, controlOpNames(), listed, "protocol.md's op table against ops.go's control ops")

	served := map[string]bool{}
	s := NewServer(newController(t, Config{}), ServerConfig{})
	defer s.Close()
	for op := range s.handlers {
		served[op.String()] = true
	}
	// They carry payloads and have wire handlers of their own (NewServer).
	for _, op := range []wire.Op{wire.OpKVPut, wire.OpKVSet, wire.OpKVGet, wire.OpKVGetValue} {
		served[op.String()] = true
	}
	assert.Equal(t, controlOpNames(), served, "the controller's handlers against ops.go's control ops")
}

// specFeatureRow matches a row of wire/spec.md's feature table.
var specFeatureRow = regexp.MustCompile("(?m)^\\| `([a-z_]+)` \\|")

// The features a controller's HELLO reply names are those wire/spec.md's
// feature table describes, and only those.
func TestSpecListsEveryHelloFeature(t *testing.T) {
	spec, err := os.ReadFile("../wire/spec.md")
	require.NoError(t, err)
	var documented []string
	for _, m := range specFeatureRow.FindAllStringSubmatch(string(spec), -1) {
		documented = append(documented, m[1])
	}
	require.NotEmpty(t, documented, "wire/spec.md has no feature table")

	_, addr := startServer(t, newController(t, Config{}), ServerConfig{}, "unix")
	c, hello, err := wire.Dial(context.Background(), addr, &wirepb.Hello{Role: "client"}, wire.ConnConfig{})
	require.NoError(t, err)
	defer c.Close()
	assert.ElementsMatch(t, documented, hello.Features)
}

// The controller's limits are the numbers protocol.md and wire/spec.md
// state: each phrase, made from the constant, is in the documents (white
// space folded), so a limit changed in the code fails here until the
// documents say so too.
func TestProtocolDocsStateTheLimits(t *testing.T) {
	var docs []string
	for _, f := range []string{"protocol.md", "durability.md", "../wire/spec.md"} {
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		docs = append(docs, strings.Join(strings.Fields(string(b)), " "))
	}
	all := strings.Join(docs, "\n")
	mib := func(n int) string { return fmt.Sprintf("%d MiB", n>>20) }
	for _, phrase := range []string{
		fmt.Sprintf("%d by default, negative for no limit", DefaultMaxPartitions),
		fmt.Sprintf("at most %d tasks and at most %d ready views", maxTasks, maxViews),
		fmt.Sprintf("A fetch may carry a `key`: 1 to %d bytes", maxFetchKeyLen),
		fmt.Sprintf("at most %d keys per partition", maxFetchKeys),
		fmt.Sprintf("the last %s held fetches", commas(maxGivenBack)),
		fmt.Sprintf("`hold_group` (with `hold`; at most %d bytes", maxHoldGroupLen),
		fmt.Sprintf("one per spec (at most %d)", maxNamedSamplers),
		"(0: the server's limit, 5 min by default;",
		fmt.Sprintf("(0: %d; at most %d) and about %s", DefaultKeysPage, maxKeysPage, mib(maxKeysPageBytes)),
		fmt.Sprintf("no more than %d keys", maxKeysScan),
		fmt.Sprintf("(0 or above %d: %d) and about %s", maxStatsPage, maxStatsPage, mib(statsPageBytes)),
		fmt.Sprintf("(0 or above %d: %d) and about %s", maxCheckpointsPage, maxCheckpointsPage, mib(checkpointsPageBytes)),
		fmt.Sprintf("a JSON object of at most %d KiB", MaxCheckpointMetadata>>10),
		fmt.Sprintf("nesting at most %d deep", maxMetadataDepth),
		fmt.Sprintf("At most %s of payload", mib(MaxKVPayload)),
		fmt.Sprintf("a key's tags ≤ %s as JSON", mib(engine.MaxTagsBytes)),
		fmt.Sprintf("more than %s of its keys' tags", mib(maxReplyTagsBytes)),
		fmt.Sprintf("≤ %s fields", commas(maxFields)),
		fmt.Sprintf("names ≤ %d addresses, and its host id, name and each address are ≤ %d bytes", maxUnitAddrs, maxUnitString),
		fmt.Sprintf("longer than %d bytes (which the controller ignores)", maxClientID),
		fmt.Sprintf("The registry holds at most %d units", MaxUnits),
		fmt.Sprintf("(≤ %d s)", int(maxUnitSyncWait/time.Second)),
		fmt.Sprintf("the newest %d", maxCleared),
		fmt.Sprintf("the last 2^%d moves", bits.Len(maxMoves)-1),
		fmt.Sprintf("the last 2^%d before it", bits.Len(maxSavedMoves)-1),
		fmt.Sprintf("at most `limit` cells (0: %d; ≤ %d) and about `max_bytes` of them (0: %s)", DefaultUnitCellsPage, MaxUnitCellsPage, mib(DefaultUnitCellsBytes)),
		"10 minutes by default; negative: never",
		fmt.Sprintf("`tq serve --held-client-grace`, %d s", int(DefaultHeldClientGrace/time.Second)),
	} {
		assert.True(t, strings.Contains(all, phrase), "protocol.md, durability.md and wire/spec.md do not state %q", phrase)
	}
	assert.Equal(t, 10*time.Minute, DefaultHeldFetchTTL, "the held-fetch TTL protocol.md states")
	assert.Equal(t, 5*time.Minute, ServerConfig{}.withDefaults().MaxFetchWait, "the fetch wait limit protocol.md states")
}

// commas writes n with thousands separators, as the documents do: 65,536.
func commas(n int) string {
	s := strconv.Itoa(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
