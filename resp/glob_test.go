package resp

import (
	"context"
	"encoding/json"
	"os"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/stretchr/testify/require"
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
