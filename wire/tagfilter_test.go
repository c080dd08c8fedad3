package wire

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire/wirepb"
)

func TestTagFilterRoundTrip(t *testing.T) {
	f := engine.TagFilter{
		{Name: "status", Test: engine.TagIn, Values: []any{"finished", nil, 3, []any{1.5, "x"}}},
		{Name: "is_prompt", Test: engine.TagExists},
		{Name: "taken", Test: engine.TagAbsent},
		{Name: "n", Test: engine.TagEquals, Values: []any{map[string]any{"k": true}}},
	}
	pb, err := TagFilterToPB(f)
	require.NoError(t, err)
	assert.Equal(t, [][]byte{[]byte(`"finished"`), []byte(`null`), []byte(`3`), []byte(`[1.5,"x"]`)}, pb[0].Values)
	got, err := TagFilterFromPB(pb)
	require.NoError(t, err)
	want := engine.TagFilter{
		{Name: "status", Test: engine.TagIn, Values: []any{"finished", nil, int64(3), []any{1.5, "x"}}},
		{Name: "is_prompt", Test: engine.TagExists},
		{Name: "taken", Test: engine.TagAbsent},
		{Name: "n", Test: engine.TagEquals, Values: []any{map[string]any{"k": true}}},
	}
	assert.Equal(t, want, got)

	none, err := TagFilterFromPB(nil)
	require.NoError(t, err)
	assert.Nil(t, none)
	for name, bad := range map[string][]*wirepb.TagCondition{
		"no test":     {{Name: "x"}},
		"empty name":  {{Test: wirepb.TagTest_TAG_TEST_EXISTS}},
		"empty value": {{Name: "x", Test: wirepb.TagTest_TAG_TEST_EQUALS, Values: [][]byte{nil}}},
		"two values":  {{Name: "x", Test: wirepb.TagTest_TAG_TEST_EQUALS, Values: [][]byte{[]byte(`1`), []byte(`2`)}}},
		"not JSON":    {{Name: "x", Test: wirepb.TagTest_TAG_TEST_EQUALS, Values: [][]byte{[]byte(`{`)}}},
		"two JSON":    {{Name: "x", Test: wirepb.TagTest_TAG_TEST_EQUALS, Values: [][]byte{[]byte(`1 2`)}}},
		"values":      {{Name: "x", Test: wirepb.TagTest_TAG_TEST_ABSENT, Values: [][]byte{[]byte(`1`)}}},
		"unknown":     {{Name: "x", Test: 9}},
	} {
		_, err := TagFilterFromPB(bad)
		assert.ErrorIs(t, err, engine.ErrInvalid, name)
	}
}

func TestTagValueRoundTrip(t *testing.T) {
	for _, v := range []any{nil, "s", int64(-3), 2.5, true, []any{int64(1), "a"}, map[string]any{"k": nil}} {
		b, err := TagValueToPB(v)
		require.NoError(t, err)
		got, err := TagValueFromPB(b)
		require.NoError(t, err)
		assert.Equal(t, v, got)
	}
	null, err := TagValueFromPB([]byte("null"))
	require.NoError(t, err)
	assert.Nil(t, null, "null decodes as absent")
	_, err = TagValueToPB(func() {})
	assert.ErrorIs(t, err, engine.ErrInvalid)
}

// Tags and tag values are one JSON value each, with numbers a float64
// holds: anything after the value, or a number beyond a float64's range
// (which would come back as +Inf, a value no JSON encoder writes), is
// bad input naming what is wrong, not a value stored and unreadable later.
func TestTagJSONRefused(t *testing.T) {
	for _, b := range []string{`1]`, `"x"}`, `true ]`, `1 2`, `1e400`, `[1, -1e999]`, `{"n": 1e309}`} {
		v, err := TagValueFromPB([]byte(b))
		assert.ErrorIs(t, err, engine.ErrInvalid, "tag value %q decoded as %v", b, v)
	}
	for _, b := range []string{`{"a":1} garbage`, `{"a":1}{"b":2}`, `{"a":1}]`, `{"n":1e400}`, `{"n":{"m":[-1e400]}}`} {
		m, err := JSONFromPB([]byte(b))
		assert.ErrorIs(t, err, engine.ErrInvalid, "tags %q decoded as %v", b, m)
	}
	_, err := JSONFromPB([]byte(`{"n":1e400}`))
	assert.ErrorContains(t, err, `tag "n": number 1e400 is not one a float64 holds`)
	m, err := JSONFromPB([]byte(" {\"a\":1e308, \"b\":18446744073709551616, \"c\":-9223372036854775809e0}\n "))
	require.NoError(t, err, "white space after the value, and numbers a float64 holds (2^64 exactly, a float written so)")
	assert.Equal(t, map[string]any{"a": 1e308, "b": 18446744073709551616.0, "c": -9223372036854775809e0}, m)
	// An integer past int64 that a float64 would round is refused, not
	// stored as another number.
	for _, b := range []string{`12345678901234567890`, `-9223372036854775809`, `[1, 18446744073709551617]`} {
		v, err := TagValueFromPB([]byte(b))
		require.ErrorIs(t, err, engine.ErrInvalid, "tag value %q decoded as %v", b, v)
		assert.ErrorContains(t, err, "fits no int64, and a float64 would round it")
	}
	_, err = JSONFromPB([]byte(`{"t": 12345678901234567890}`))
	assert.ErrorContains(t, err, `tag "t": integer 12345678901234567890 fits no int64, and a float64 would round it to 12345678901234567168`)
}
