package embedded

import (
	"context"
	"math"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// TestBadTagsRefusedAlikeOnBothPaths: a one-key put with tags JSON cannot
// carry (NaN, a name or string that is not UTF-8) is refused with the
// same error, naming the key, through the fast path (KV_PUT's OneKey) as
// through the general one (a client's PutKeys), and writes nothing.
func TestBadTagsRefusedAlikeOnBothPaths(t *testing.T) {
	_, units, kd, cl := kvPair(t)
	ctx := context.Background()
	b := engine.MustBatch(engine.Field{Name: "v", Col: engine.BytesOf([][]byte{[]byte("x")})})
	for name, tags := range map[string]engine.Tags{
		"NaN":              {"n": math.NaN()},
		"name not UTF-8":   {"\xff": 1},
		"string not UTF-8": {"s": "\xff"},
	} {
		t.Run(name, func(t *testing.T) {
			_, fast := kd.PutKeys(ctx, "p", []string{"k"}, b, []engine.Tags{tags})
			_, general := cl.PutKeys(ctx, "p", []string{"k"}, b, []engine.Tags{tags})
			require.ErrorIs(t, fast, engine.ErrInvalid)
			require.ErrorIs(t, general, engine.ErrInvalid)
			require.Contains(t, general.Error(), `key "k"`, "the error names the key")
			require.Equal(t, general.Error(), fast.Error(), "the fast path refuses the tags as the general one does")
			require.Zero(t, used(units), "a refused put writes nothing")
		})
	}
}
