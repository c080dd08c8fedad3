package resp

import (
	"context"
	"encoding/json"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// TestGlobMatchesRedis checks globMatch against what redis-server's KEYS
// answered for each pattern over the same keys (testdata/glob_redis.json):
// brackets, ranges, negation, escapes, unclosed brackets and runs of *.
func TestGlobMatchesRedis(t *testing.T) {
	b, err := os.ReadFile("testdata/glob_redis.json")
	require.NoError(t, err)
	var golden struct {
		Keys    []string
		Matches map[string][]string
	}
	require.NoError(t, json.Unmarshal(b, &golden))
	for pattern, want := range golden.Matches {
		var got []string
		for _, k := range golden.Keys {
			if globMatch(pattern, k) {
				got = append(got, k)
			}
		}
		slices.Sort(got)
		if want == nil {
			want = []string{}
		}
		if got == nil {
			got = []string{}
		}
		if d := cmp.Diff(want, got); d != "" {
			t.Errorf("pattern %q: keys matched differ from Redis's (-redis +got):\n%s", pattern, d)
		}
	}
}

// TestKeysAndScanMatchRedisGlobs checks that KEYS and SCAN MATCH take a
// Redis glob, brackets included.
func TestKeysAndScanMatchRedisGlobs(t *testing.T) {
	ctx := context.Background()
	e := newEndpoint(t, Config{})
	rc := e.client(t, nil)
	for _, k := range []string{"k1", "k2", "k3", "k12"} {
		require.NoError(t, rc.Set(ctx, k, "v", 0).Err())
	}
	keys, err := rc.Keys(ctx, "k[12]").Result()
	require.NoError(t, err)
	slices.Sort(keys)
	require.Equal(t, []string{"k1", "k2"}, keys)
	keys, _, err = rc.Scan(ctx, 0, "k[^12]", 100).Result()
	require.NoError(t, err)
	require.Equal(t, []string{"k3"}, keys)
}

// TestKeysAndScanBoundGlobWork checks that a MATCH pattern whose matching
// takes time in the product of its length and a key's (here "*", 32 Ki
// a's, "b" against keys of 64 Ki a's: a billion steps a key, seconds of
// CPU, as in Redis) is refused with an error naming the bound, rather
// than holding a CPU for as long as the client likes; patterns that cost
// what listing the keys costs still match, and the connection goes on.
func TestKeysAndScanBoundGlobWork(t *testing.T) {
	ctx := context.Background()
	e := newEndpoint(t, Config{})
	rc := e.client(t, &redis.Options{ReadTimeout: time.Minute})
	long := strings.Repeat("a", engine.MaxNameBytes-1) // keys of the longest length
	for i := range 2 {
		require.NoError(t, rc.Set(ctx, strconv.Itoa(i)+long, "v", 0).Err())
	}
	slow := "*" + strings.Repeat("a", 32<<10) + "b"
	for _, cmd := range [][]any{{"KEYS", slow}, {"SCAN", "0", "MATCH", slow, "COUNT", "100"}} {
		// The error says the match stopped at its step budget (glob.go
		// counts the steps): no wall-clock bound, which a loaded machine
		// broke (1.3 s for SCAN under make test with other work beside).
		err := rc.Do(ctx, cmd...).Err()
		require.Error(t, err, "%s", cmd[0])
		assert.Contains(t, err.Error(), "ERR MATCH pattern", "%s", cmd[0])
		assert.Contains(t, err.Error(), "steps", "%s", cmd[0])
	}
	keys, err := rc.Keys(ctx, "1*a").Result()
	require.NoError(t, err)
	assert.Equal(t, []string{"1" + long}, keys)
	keys, _, err = rc.Scan(ctx, 0, "*"+strings.Repeat("a", 100)+"*", 100).Result()
	require.NoError(t, err)
	assert.Len(t, keys, 2)
}
