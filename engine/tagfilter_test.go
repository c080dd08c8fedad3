package engine

import (
	"encoding/json"
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestTagValueEqual(t *testing.T) {
	for _, tc := range []struct {
		a, b any
		want bool
	}{
		{nil, nil, true},
		{"x", "x", true},
		{"x", "y", false},
		{"1", 1, false},
		{true, true, true},
		{true, 1, false},
		{1, int64(1), true},
		{1, 1.0, true},
		{int32(7), uint8(7), true},
		{1.5, 1.5, true},
		{1.5, 1, false},
		{nil, false, false},
		{0, nil, false},
		{[]any{1, "a"}, []any{1.0, "a"}, true},
		{[]any{1, "a"}, []any{"a", 1}, false},
		{map[string]any{"k": 1, "l": []any{true}}, map[string]any{"l": []any{true}, "k": int64(1)}, true},
		{[]string{"a"}, []any{"a"}, true},
		{math.NaN(), math.NaN(), false},
		// One number written two ways, as JSON reads it back.
		{json.Number("1.0"), 1, true},
		{json.Number("1e2"), int64(100), true},
		{json.Number("1.50"), 1.5, true},
		{json.Number("1.5"), 1, false},
		{[]any{json.Number("1.0")}, []any{1}, true},
		{[]any{math.Copysign(0, -1)}, []any{0}, true},
		{map[string]any{"x": json.Number("2.50")}, map[string]any{"x": 2.5}, true},
		{map[string]any{"x": 1}, map[string]any{"y": 1}, false},
		{[]any{json.Number("1"), "a"}, []any{1, "b"}, false},
		{[]any{float64(1 << 53)}, []any{int64(1<<53 + 1)}, false},
		{func() {}, func() {}, false},
	} {
		assert.Equal(t, tc.want, TagValueEqual(tc.a, tc.b), "%v == %v", tc.a, tc.b)
		assert.Equal(t, tc.want, TagValueEqual(tc.b, tc.a), "%v == %v", tc.b, tc.a)
	}
}

func TestTagFilter(t *testing.T) {
	tags := Tags{"status": "finished", "n": int64(3), "null": nil}
	for _, tc := range []struct {
		f    TagFilter
		want bool
	}{
		{nil, true},
		{TagFilter{{Name: "status", Test: TagEquals, Values: []any{"finished"}}}, true},
		{TagFilter{{Name: "status", Test: TagEquals, Values: []any{"running"}}}, false},
		{TagFilter{{Name: "status", Test: TagIn, Values: []any{"running", "finished"}}}, true},
		{TagFilter{{Name: "n", Test: TagEquals, Values: []any{3.0}}}, true},
		{TagFilter{{Name: "null", Test: TagExists}}, true},
		{TagFilter{{Name: "null", Test: TagEquals, Values: []any{nil}}}, true},
		{TagFilter{{Name: "missing", Test: TagEquals, Values: []any{nil}}}, false},
		{TagFilter{{Name: "missing", Test: TagAbsent}}, true},
		{TagFilter{{Name: "missing", Test: TagAbsent}, {Name: "n", Test: TagIn, Values: []any{1, 2}}}, false},
		{TagFilter{{Name: "missing", Test: TagAbsent}, {Name: "n", Test: TagIn, Values: []any{1, 3}}}, true},
	} {
		require.NoError(t, tc.f.Validate())
		assert.Equal(t, tc.want, tc.f.Match(tags), "%v", tc.f)
	}
	too := make(TagFilter, MaxTagConditions+1)
	for i := range too {
		too[i] = TagCondition{Name: "x", Test: TagExists}
	}
	assert.ErrorIs(t, too.Validate(), ErrInvalid)
	assert.ErrorIs(t, TagFilter{{Name: "s", Test: TagIn, Values: make([]any, MaxTagValues+1)}}.Validate(), ErrInvalid)
	assert.ErrorIs(t, TagFilter{{Name: "\xff", Test: TagExists}}.Validate(), ErrInvalid)
	assert.Equal(t, "status == finished", TagCondition{Name: "status", Test: TagEquals, Values: []any{"finished"}}.String())
}

func TestTagsWithout(t *testing.T) {
	orig := Tags{"a": 1, "b": 2}
	assert.Equal(t, Tags{"b": 2}, orig.Without("a", "z"))
	assert.Nil(t, orig.Without("a", "b"))
	assert.Equal(t, Tags{"a": 1, "b": 2}, orig, "the original is kept")
	assert.Nil(t, Tags(nil).Without("a"))
}
