package wire

import (
	"encoding/json"
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// What tags decode to, value types included: whole numbers that fit are
// int64, others float64, nested objects map[string]any, lists []any; a
// repeated name keeps its last value; escapes and bad UTF-8 read as
// encoding/json reads them. Listing a partition decodes every key's tags
// so, by flatJSON when they are flat, and callers get these types.
func TestJSONFromPBTypes(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want map[string]any
	}{
		{`{}`, map[string]any{}},
		{` {"a" : 1 } ` + "\n", map[string]any{"a": int64(1)}},
		{`{"s":"x","i":7,"neg":-3,"z":-0,"f":0.5,"e":1e3,"E":-2.5E-1,"big":18446744073709551616,"t":true,"F":false,"n":null}`,
			map[string]any{"s": "x", "i": int64(7), "neg": int64(-3), "z": int64(0), "f": 0.5, "e": 1000.0, "E": -0.25,
				"big": 18446744073709551616.0, "t": true, "F": false, "n": nil}},
		{`{"é":"ü😀","":""}`, map[string]any{"é": "ü😀", "": ""}},
		{`{"a":1,"a":"x"}`, map[string]any{"a": "x"}},
		{`{"a\"b":"\u00e9\n","c":"\ud83d\ude00"}`, map[string]any{`a"b`: "é\n", "c": "😀"}},
		{"{\"bad\":\"\xff\"}", map[string]any{"bad": "\ufffd"}},
		{`{"o":{"a":1,"b":[1,2.5,"s",null]}}`, map[string]any{"o": map[string]any{"a": int64(1), "b": []any{int64(1), 2.5, "s", nil}}}},
	} {
		got, err := JSONFromPB([]byte(tc.in))
		require.NoError(t, err, tc.in)
		assert.Equal(t, tc.want, got, tc.in)
	}
	got, err := JSONFromPB([]byte(`null`))
	require.NoError(t, err)
	assert.Nil(t, got)
}

// flatJSON takes what it can and leaves the rest to encoding/json:
// JSONFromPB decodes every input, good or bad, as encoding/json alone
// does, refusing what it refuses.
func FuzzJSONFromPB(f *testing.F) {
	for _, seed := range []string{
		`{}`, `{"a":1}`, `{"a":1,}`, `{"a" 1}`, `{"a":01}`, `{"a":1.}`, `{"a":.5}`, `{"a":1e}`, `{"a":1e+}`, `{"a":-}`,
		`{"a":1e400}`, `{"a":12345678901234567890}`, `{"a":tru}`, `{"a":truex}`, `{"a":nul}`, `{"a":1}x`, `{"a":1}{}`,
		`{"a":"x` + "\x01" + `"}`, `{"a":"` + "\xed\xa0\x80" + `"}`, `{"a":"\/"}`, `{a:1}`, `{"a":1 "b":2}`, `[]`, `"x"`,
		`1`, `null`, ` `, `{`, `{"a"`, `{"a":`, `{"a":1`, `{"a":[1]}`, `{"a":{}}`, `{"a":-0.0e-0}`, `{"a":"é"}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) == 0 {
			return
		}
		want, wantErr := jsonFromPBSlow(b)
		got, err := JSONFromPB(b)
		if wantErr != nil {
			// flatJSON never errs: it leaves bad input to the same
			// encoding/json path.
			require.Error(t, err, "%q decoded as %v", b, got)
			return
		}
		require.NoError(t, err, "%q", b)
		require.Equal(t, want, got, "%q", b)
	})
}

// JSONToPB writes exactly the bytes json.Marshal does, by appendFlatJSON
// where it can: the wire and the estimates of engine.Tags.JSONSize are
// json.Marshal's.
func TestJSONToPBAsMarshal(t *testing.T) {
	for _, m := range []map[string]any{
		{},
		{"note": "plain ~text 0123", "step": int64(-42), "n": 7, "t": true, "f": false, "z": nil},
		{"b": 1.0, "a": 0.5, "c": -0.0, "d": 1e-7, "e": 1e21, "g": 123456789e-15, "h": 1e20, "i": 5e-324, "j": math.MaxFloat64},
		{"html": "<a&b>", "q": `"`, "bs": `\`, "ctl": "\x01", "del": "\x7f", "u": "é", "ls": "\u2028", "bad": "\xff"},
		{"<k>": 1}, {"k\n": 1}, {"é": 1},
		{"f32": float32(0.1), "u": uint8(3), "num": json.Number("12"), "l": []any{1}, "o": map[string]any{"b": 1, "a": 2}},
	} {
		want, err := json.Marshal(m)
		require.NoError(t, err)
		got, err := JSONToPB(m)
		require.NoError(t, err)
		assert.Equal(t, string(want), string(got), "%#v", m)
	}
	for _, f := range []float64{math.NaN(), math.Inf(1), math.Inf(-1)} {
		_, err := JSONToPB(map[string]any{"a": "x", "f": f})
		assert.ErrorContains(t, err, "unsupported value", "%v", f)
	}
}

// FuzzJSONToPB: appendFlatJSON writes what json.Marshal writes.
func FuzzJSONToPB(f *testing.F) {
	f.Add("note", "x", "step", int64(3), 0.5)
	f.Add("<", "\u2028", "", int64(-1), 1e-7)
	f.Add("a", "b&c", "a", int64(0), 1e21)
	f.Fuzz(func(t *testing.T, k1, v1, k2 string, n int64, x float64) {
		m := map[string]any{k1: v1, k2: n, k1 + k2: x, v1: nil}
		want, wantErr := json.Marshal(m)
		got, err := JSONToPB(m)
		if wantErr != nil {
			require.Error(t, err)
			return
		}
		require.NoError(t, err)
		require.Equal(t, string(want), string(got), "%#v", m)
	})
}
