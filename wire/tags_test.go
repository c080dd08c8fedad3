package wire

import (
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
