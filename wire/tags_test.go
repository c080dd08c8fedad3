package wire

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// TestTagsFromPBRepeatedRows: rows with the same bytes as the row before
// decode to equal tags that are still each row's own (changing one
// changes no other), empty rows stay nil, and a bad row is named even
// after good ones it follows.
func TestTagsFromPBRepeatedRows(t *testing.T) {
	same := []byte(`{"status":"finished","n":1,"nested":{"a":[1,2]}}`)
	got, err := TagsFromPB([][]byte{same, same, nil, []byte(`{"x":2.5}`), same})
	require.NoError(t, err)
	want := engine.Tags{"status": "finished", "n": int64(1), "nested": map[string]any{"a": []any{int64(1), int64(2)}}}
	for _, i := range []int{0, 1, 4} {
		assert.Equal(t, want, got[i], "row %d", i)
	}
	assert.Nil(t, got[2])
	assert.Equal(t, engine.Tags{"x": 2.5}, got[3])
	got[1]["status"] = "changed"
	got[1]["nested"].(map[string]any)["a"].([]any)[0] = int64(9)
	assert.Equal(t, want, got[0], "row 0 is its own")
	assert.Equal(t, want, got[4])

	_, err = TagsFromPB([][]byte{same, same, []byte(`{"status":`)})
	require.ErrorIs(t, err, engine.ErrInvalid)
	assert.Contains(t, err.Error(), "row 2")
}

func BenchmarkTagsFromPB(b *testing.B) {
	rows := make([][]byte, 4096)
	for i := range rows {
		rows[i] = []byte(`{"status":"finished"}`)
	}
	for b.Loop() {
		if _, err := TagsFromPB(rows); err != nil {
			b.Fatal(err)
		}
	}
}

// TagsFromPBShared gives rows with the bytes of the row before the same
// map; TagsToPB encodes a map that rows share once, and equal maps that
// are not shared each (the same bytes).
func TestTagsSharedRows(t *testing.T) {
	same := []byte(`{"status":"finished"}`)
	got, err := TagsFromPBShared([][]byte{same, same, nil, []byte(`{"x":2.5}`), same})
	require.NoError(t, err)
	assert.True(t, got[0].Same(got[1]))
	assert.Nil(t, got[2])
	assert.False(t, got[4].Same(got[0]), "not after another row")
	assert.Equal(t, got[0], got[4])

	b, err := TagsToPB(got)
	require.NoError(t, err)
	assert.Same(t, &b[0][0], &b[1][0], "a shared map is encoded once")
	assert.NotSame(t, &b[0][0], &b[4][0])
	for i, want := range []string{string(same), string(same), "", `{"x":2.5}`, string(same)} {
		assert.Equal(t, want, string(b[i]), "row %d", i)
	}
}

// TagsToPB's shortcut for rows like the one before gives every row the
// bytes its own encoding would: random runs of equal, near-equal (0 and
// -0, 7 as int, int64 and float64, a nested value) and shared maps.
func TestTagsToPBMatchesEachRow(t *testing.T) {
	values := []any{"a", "b", "", 0.0, math.Copysign(0, -1), 7, int64(7), 7.0, 2.5, true, false, nil,
		map[string]any{"x": 1}, []any{"y"}}
	twins := [][2]any{{0.0, math.Copysign(0, -1)}, {7, int64(7)}, {int64(7), 7.0}, {"", nil}}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 200 {
		var prev engine.Tags
		rows := make([]engine.Tags, 1+rng.IntN(12))
		for i := range rows {
			switch rng.IntN(5) {
			case 0:
				rows[i] = prev // the same map (or nil)
			case 1:
				rows[i] = prev.Clone()
			case 2: // a twin: one value swapped for one that compares or encodes alike
				rows[i] = prev.Clone()
				for k, v := range rows[i] {
					for _, pair := range twins {
						if v == pair[0] {
							rows[i][k] = pair[1]
						} else if v == pair[1] {
							rows[i][k] = pair[0]
						}
					}
					break
				}
			default:
				m := engine.Tags{}
				for range rng.IntN(3) {
					m[[]string{"status", "step", "score"}[rng.IntN(3)]] = values[rng.IntN(len(values))]
				}
				if rng.IntN(8) == 0 {
					m = nil
				}
				rows[i] = m
			}
			prev = rows[i]
		}
		got, err := TagsToPB(rows)
		require.NoError(t, err)
		for i, m := range rows {
			want, err := JSONToPB(m)
			require.NoError(t, err)
			require.Equal(t, string(want), string(got[i]), "row %d of %v", i, rows)
		}
	}
	_, err := TagsToPB([]engine.Tags{{"x": 1.0}, {"x": math.NaN()}})
	require.ErrorIs(t, err, engine.ErrInvalid, "a NaN is refused, not shortcut")
}
