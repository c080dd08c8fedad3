package engine

import (
	"encoding/json"
	"errors"
	"math"
	"sort"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/stretchr/testify/assert"
)

func TestTagsClone(t *testing.T) {
	orig := Tags{
		"n":      int64(3),
		"s":      "x",
		"nested": map[string]any{"list": []any{1.0, map[string]any{"deep": "y"}}},
		"tags":   Tags{"k": "v"},
		"bytes":  []byte{1, 2},
		"strs":   []string{"a", "b"},
		"ints":   []int64{1, 2},
		"typed":  map[string][]int{"a": {1}},
		"nil":    nil,
	}
	want := Tags{
		"n":      int64(3),
		"s":      "x",
		"nested": map[string]any{"list": []any{1.0, map[string]any{"deep": "y"}}},
		"tags":   Tags{"k": "v"},
		"bytes":  []byte{1, 2},
		"strs":   []string{"a", "b"},
		"ints":   []int64{1, 2},
		"typed":  map[string][]int{"a": {1}},
		"nil":    nil,
	}
	c := orig.Clone()
	if diff := cmp.Diff(want, c); diff != "" {
		t.Fatalf("clone (-want +got):\n%s", diff)
	}
	// Change every reachable part of the clone.
	c["n"] = 4
	c["nested"].(map[string]any)["list"].([]any)[1].(map[string]any)["deep"] = "changed"
	c["nested"].(map[string]any)["list"].([]any)[0] = 2.0
	c["tags"].(Tags)["k"] = "changed"
	c["bytes"].([]byte)[0] = 9
	c["strs"].([]string)[0] = "changed"
	c["ints"].([]int64)[0] = 9
	c["typed"].(map[string][]int)["a"][0] = 9
	if diff := cmp.Diff(want, orig); diff != "" {
		t.Errorf("changing the clone changed the source (-want +got):\n%s", diff)
	}
	if Tags(nil).Clone() != nil {
		t.Error("Clone of nil: got non-nil")
	}
}

// TestTagsCloneKeepsNil checks that a clone writes the same JSON as its
// source: a nil list or object is null, an empty one [] or {}, and an
// empty []byte "" where a nil one is null.
func TestTagsCloneKeepsNil(t *testing.T) {
	orig := Tags{
		"nil list":    []any(nil),
		"nil object":  map[string]any(nil),
		"empty list":  []any{},
		"empty obj":   map[string]any{},
		"nil bytes":   []byte(nil),
		"empty bytes": []byte{},
		"nested":      map[string]any{"l": []any{[]any(nil), map[string]any(nil)}},
	}
	c := orig.Clone()
	if diff := cmp.Diff(orig, c); diff != "" {
		t.Errorf("clone (-want +got):\n%s", diff)
	}
	want, _ := json.Marshal(orig)
	if got, _ := json.Marshal(c); string(got) != string(want) {
		t.Errorf("clone writes %s, want %s", got, want)
	}
	isNull := TagFilter{{Name: "nil list", Test: TagEquals, Values: []any{nil}}}
	if !isNull.Match(c) {
		t.Errorf("clone's nil list does not equal null")
	}

	// Metas with the same Extra concatenate (the inputs' values are
	// compared with a clone of the first's).
	a, b := metaOf("p", 0, 1), metaOf("p", 1, 1)
	a.Extra = map[string]any{"x": []any(nil), "y": map[string]any(nil)}
	b.Extra = map[string]any{"x": []any(nil), "y": map[string]any(nil)}
	if _, err := ConcatMetas(a, b); err != nil {
		t.Errorf("ConcatMetas of metas with equal Extra: %v", err)
	}
}

func TestTagsMerge(t *testing.T) {
	tests := []struct {
		name string
		t, u Tags
		want Tags
	}{
		{"u wins", Tags{"a": 1, "b": 2}, Tags{"b": 3, "c": 4}, Tags{"a": 1, "b": 3, "c": 4}},
		{"nil t", nil, Tags{"a": 1}, Tags{"a": 1}},
		{"nil u", Tags{"a": 1}, nil, Tags{"a": 1}},
		{"both nil", nil, nil, nil},
		{"u sets nil", Tags{"a": 1}, Tags{"a": nil}, Tags{"a": nil}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := tt.t.Clone()
			got := tt.t.Merge(tt.u)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("merge (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(before, tt.t); diff != "" {
				t.Errorf("Merge changed its receiver (-want +got):\n%s", diff)
			}
		})
	}
	t.Run("values copied", func(t *testing.T) {
		u := Tags{"l": []any{"x"}}
		got := Tags{}.Merge(u)
		u["l"].([]any)[0] = "changed"
		if got["l"].([]any)[0] != "x" {
			t.Errorf("got %v, want the merged value unaffected", got["l"])
		}
	})
}

func TestTagsEqual(t *testing.T) {
	var decoded Tags
	if err := json.Unmarshal([]byte(`{"n": 1, "l": [1, "a"]}`), &decoded); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		a, b Tags
		want bool
	}{
		{"int and float", Tags{"n": 1}, Tags{"n": 1.0}, true},
		{"after a JSON round trip", Tags{"n": int64(1), "l": []any{1, "a"}}, decoded, true},
		{"different values", Tags{"n": 1}, Tags{"n": 2}, false},
		{"different keys", Tags{"n": 1}, Tags{"m": 1}, false},
		{"different sizes", Tags{"n": 1}, Tags{"n": 1, "m": 2}, false},
		{"nil and empty", nil, Tags{}, true},
		{"not encodable", Tags{"f": func() {}}, Tags{"f": func() {}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.a.Equal(tt.b); got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestTagsKeys(t *testing.T) {
	got := Tags{"b": 1, "a": 2}.Keys()
	sort.Strings(got)
	if diff := cmp.Diff([]string{"a", "b"}, got); diff != "" {
		t.Errorf("keys (-want +got):\n%s", diff)
	}
}

func TestTagsInt(t *testing.T) {
	tests := []struct {
		name   string
		v      any
		want   int64
		wantOK bool
	}{
		{"int", 7, 7, true},
		{"int64", int64(-7), -7, true},
		{"int32", int32(7), 7, true},
		{"int16", int16(7), 7, true},
		{"int8", int8(-7), -7, true},
		{"uint8", uint8(7), 7, true},
		{"uint32", uint32(7), 7, true},
		{"uint64", uint64(7), 7, true},
		{"uint64 too big", uint64(math.MaxUint64), 0, false},
		{"float64 integral", 1024.0, 1024, true},
		{"float64 from JSON", func() any { var v any; _ = json.Unmarshal([]byte("42"), &v); return v }(), 42, true},
		{"float32 integral", float32(-3), -3, true},
		{"float64 fraction", 1.5, 0, false},
		{"float64 NaN", math.NaN(), 0, false},
		{"float64 +Inf", math.Inf(1), 0, false},
		{"float64 too big", 1e19, 0, false},
		{"float64 min int64", -9223372036854775808.0, math.MinInt64, true},
		{"json.Number", json.Number("12"), 12, true},
		{"json.Number fraction", json.Number("1.5"), 0, false},
		{"string", "12", 0, false},
		{"bool", true, 0, false},
		{"nil", nil, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := Tags{"k": tt.v}.Int("k")
			if got != tt.want || ok != tt.wantOK {
				t.Errorf("got %d, %v, want %d, %v", got, ok, tt.want, tt.wantOK)
			}
		})
	}
	if _, ok := (Tags{}).Int("missing"); ok {
		t.Error("missing key: got ok")
	}
}

func TestTagsCheck(t *testing.T) {
	type named string
	tests := []struct {
		name string
		v    any
		ok   bool
	}{
		{"string", "a", true},
		{"int", 1, true},
		{"nested", map[string]any{"l": []any{1.5, "x", nil}}, true},
		{"typed list", []string{"a", "b"}, true},
		{"typed map", map[string][]int64{"a": {1}}, true},
		{"named string key", map[named]int{"a": 1}, true},
		{"bytes", []byte{0xff}, true}, // base64, whatever the bytes
		{"nil typed list", []string(nil), true},
		{"pointer", new(int), true},
		{"invalid string", "a\xffb", false},
		{"invalid string in a list", []any{"a\xffb"}, false},
		{"invalid string in a typed list", []string{"a\xffb"}, false},
		{"invalid string in an array", [1]string{"a\xffb"}, false},
		{"invalid key of a typed map", map[string]string{"a\xffb": "c"}, false},
		{"invalid value of a typed map", map[string]string{"c": "a\xffb"}, false},
		{"int keys", map[int]string{1: "a"}, false},
		{"NaN in a typed list", []float64{math.NaN()}, false},
		{"huge uint in a typed list", []uint64{math.MaxUint64}, false},
		{"channel", make(chan int), false},
		{"json.Number", json.Number("-1.5e3"), true},
		{"json.Number NaN", json.Number("NaN"), false}, // strconv reads it, JSON has no such literal
		{"json.Number with a leading zero", json.Number("01"), false},
		{"json.Number with a plus", json.Number("+1"), false},
		{"json.Number in a list", []any{json.Number(".5")}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Tags{"t": tt.v}.Check()
			if got := err == nil; got != tt.ok {
				t.Fatalf("Check of %#v: got error %v, want ok %v", tt.v, err, tt.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalid) {
				t.Errorf("Check of %#v: got error %v, want one wrapping ErrInvalid", tt.v, err)
			}
		})
	}
}

func TestMergedJSONSize(t *testing.T) {
	for _, c := range []struct{ a, b Tags }{
		{nil, Tags{"s": "x"}},
		{Tags{"s": "long value", "n": 1}, Tags{"s": "y"}},
		{Tags{"s": "é<>"}, Tags{"t": []any{1.5, "a"}, "m": map[string]any{"k": nil}}},
	} {
		assert.Equal(t, c.a.Merge(c.b).JSONSize(), c.a.MergedJSONSize(c.b), "%v + %v", c.a, c.b)
	}
}

// TestJSONSizeBoundsTheJSON: JSONSize bounds the JSON from above for
// every number, so that a key's tags measured within MaxTagsBytes, and
// a page of keys measured to fit a reply, are so once written. The
// longest float64 encoding/json writes is a negative one between 1e-6
// and 1e-5 with 17 significant digits, written without an exponent:
// "-0.0000012345678901234567", 25 bytes.
func TestJSONSizeBoundsTheJSON(t *testing.T) {
	for _, v := range []any{
		-1.2345678901234567e-6, 1.2345678901234567e-6, -9.999999999999999e-6,
		-1.2345678901234567e-308, -math.MaxFloat64, -123456789012345680000.0,
		-math.SmallestNonzeroFloat64, float32(-1.2345678e-6), float32(-math.MaxFloat32),
		int64(math.MinInt64), uint64(math.MaxUint64), int(math.MinInt),
	} {
		one, err := json.Marshal(v)
		assert.NoError(t, err)
		list := make([]any, 1000)
		for i := range list {
			list[i] = v
		}
		tags := Tags{"v": v, "list": list}
		b, err := json.Marshal(tags)
		assert.NoError(t, err)
		assert.GreaterOrEqual(t, tags.JSONSize(), len(b), "tags holding %T %s", v, one)
		assert.GreaterOrEqual(t, Tags(nil).MergedJSONSize(tags), len(b), "merged tags holding %T %s", v, one)
	}
}
