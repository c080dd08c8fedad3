package engine

import (
	"encoding/json"
	"maps"
)

// Tags is a small per-row map of JSON-like values: nil, bool, float64,
// int64/int, string, []any and map[string]any. Tags travel as JSON.
type Tags map[string]any

// Clone returns a deep copy of t.
func (t Tags) Clone() Tags {
	if t == nil {
		return nil
	}
	out := make(Tags, len(t))
	for k, v := range t {
		out[k] = cloneValue(v)
	}
	return out
}

func cloneValue(v any) any {
	switch x := v.(type) {
	case map[string]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[k] = cloneValue(e)
		}
		return m
	case Tags:
		return x.Clone()
	case []any:
		s := make([]any, len(x))
		for i, e := range x {
			s[i] = cloneValue(e)
		}
		return s
	case []byte:
		return append([]byte(nil), x...)
	}
	return v
}

// Merge returns a copy of t with every key of u set to u's value (u wins).
func (t Tags) Merge(u Tags) Tags {
	out := t.Clone()
	if out == nil && len(u) > 0 {
		out = make(Tags, len(u))
	}
	for k, v := range u {
		out[k] = cloneValue(v)
	}
	return out
}

// Equal reports whether two tag maps hold the same values once encoded as
// JSON (so int 1 and float64 1 are equal, as they are after a round trip).
func (t Tags) Equal(u Tags) bool {
	if len(t) != len(u) {
		return false
	}
	a, err1 := json.Marshal(t)
	b, err2 := json.Marshal(u)
	return err1 == nil && err2 == nil && string(a) == string(b)
}

// Keys returns the tag names (unordered).
func (t Tags) Keys() []string {
	return mapsKeys(t)
}

func mapsKeys(t Tags) []string {
	out := make([]string, 0, len(t))
	for k := range maps.Keys(t) {
		out = append(out, k)
	}
	return out
}

// Int returns tag k as an int64 when it holds a number.
func (t Tags) Int(k string) (int64, bool) {
	switch v := t[k].(type) {
	case int:
		return int64(v), true
	case int64:
		return v, true
	case int32:
		return int64(v), true
	case float64:
		return int64(v), true
	case float32:
		return int64(v), true
	case json.Number:
		i, err := v.Int64()
		return i, err == nil
	}
	return 0, false
}
