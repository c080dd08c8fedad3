package resp

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestScanTypeSkipsKeysDeletedMidPage checks that a key deleted between
// SCAN's page of keys and its type lookup is left out, whatever TYPE
// asks for: Redis's "TYPE none" matches nothing. Before, the lookup
// answered "none" for an absent key, so "TYPE none" listed it.
func TestScanTypeSkipsKeysDeletedMidPage(t *testing.T) {
	ctx := context.Background()
	e := newEndpoint(t, Config{})
	rc := e.client(t, nil)
	for _, typ := range []string{"none", "string", "hash"} {
		t.Run("type="+typ, func(t *testing.T) {
			require.NoError(t, rc.Set(ctx, "gone", "v", 0).Err())
			require.NoError(t, rc.Set(ctx, "kept", "v", 0).Err())
			hook := func() {
				_, err := e.srv.st.del(ctx, "default", []string{"gone"}, nil)
				require.NoError(t, err)
			}
			testHookScan.Store(&hook)
			t.Cleanup(func() { testHookScan.Store(nil) })
			keys, _, err := rc.ScanType(ctx, 0, "", 100, typ).Result()
			testHookScan.Store(nil)
			require.NoError(t, err)
			want := []string{}
			if typ == "string" {
				want = []string{"kept"}
			}
			assert.ElementsMatch(t, want, keys, "SCAN 0 TYPE %q", typ)
		})
	}
}
