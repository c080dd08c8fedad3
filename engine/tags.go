package engine

import (
	"bytes"
	"encoding"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"math/big"
	"reflect"
	"slices"
	"unicode/utf8"
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

// cloneValue deep-copies a tag or Extra value. A nil slice or map stays
// nil and an empty one empty: JSON writes the one as null and the other as
// [], {} or "", and [reflect.DeepEqual] (which ConcatMetas compares Extra
// with) tells them apart.
func cloneValue(v any) any {
	switch x := v.(type) {
	case map[string]any:
		if x == nil {
			return v
		}
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[k] = cloneValue(e)
		}
		return m
	case Tags:
		return x.Clone()
	case []any:
		if x == nil {
			return v
		}
		s := make([]any, len(x))
		for i, e := range x {
			s[i] = cloneValue(e)
		}
		return s
	case []byte:
		return bytes.Clone(x)
	case nil, bool, string, float64, float32, int, int64, int32:
		return v
	}
	// Typed slices and maps ([]string, []int64, map[string]int, …) are
	// outside the JSON-like set but easy to put in a tag or an Extra map;
	// copy them too so that a clone never shares memory with its source.
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Slice:
		if rv.IsNil() {
			return v
		}
		out := reflect.MakeSlice(rv.Type(), rv.Len(), rv.Len())
		for i := range rv.Len() {
			out.Index(i).Set(cloneReflect(rv.Index(i)))
		}
		return out.Interface()
	case reflect.Map:
		if rv.IsNil() {
			return v
		}
		out := reflect.MakeMapWithSize(rv.Type(), rv.Len())
		for it := rv.MapRange(); it.Next(); {
			out.SetMapIndex(it.Key(), cloneReflect(it.Value()))
		}
		return out.Interface()
	}
	return v
}

// cloneReflect deep-copies a slice element or map value found through
// reflection; the result is assignable to v's type.
func cloneReflect(v reflect.Value) reflect.Value {
	switch v.Kind() {
	case reflect.Interface:
		if v.IsNil() {
			return v
		}
		return reflect.ValueOf(cloneValue(v.Interface()))
	case reflect.Slice, reflect.Map:
		if v.IsNil() {
			return v
		}
		return reflect.ValueOf(cloneValue(v.Interface()))
	}
	return v
}

// Same reports whether t and u are one map (not merely equal ones; two nil
// maps are the same).
func (t Tags) Same(u Tags) bool {
	if t == nil || u == nil {
		return t == nil && u == nil
	}
	return reflect.ValueOf(t).UnsafePointer() == reflect.ValueOf(u).UnsafePointer()
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

// Without returns a copy of t without the tags names, nil when none is
// left.
func (t Tags) Without(names ...string) Tags {
	out := t.Clone()
	for _, n := range names {
		delete(out, n)
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// Equal reports whether two tag maps hold the same values once encoded as
// JSON (so int 1 and float64 1 are equal, as they are after a round trip).
func (t Tags) Equal(u Tags) bool {
	if len(t) != len(u) {
		return false
	}
	if len(t) == 0 {
		return true // nil and empty marshal differently ("null", "{}") but hold the same tags
	}
	a, err1 := json.Marshal(t)
	b, err2 := json.Marshal(u)
	return err1 == nil && err2 == nil && string(a) == string(b)
}

// Check reports the first tag that cannot be written as JSON, as tags
// are kept and sent, and read back the same: a name that is empty or not
// UTF-8, a string that is not UTF-8 (JSON would change its bytes), a NaN
// or infinite number, a channel, a map with keys that are not strings.
// The error wraps [ErrInvalid] and names the tag. A controller refuses
// such tags whether or not it keeps a log, so that what one accepts
// another can write back out.
func (t Tags) Check() error {
	for k, v := range t {
		if err := CheckTagName(k); err != nil {
			return err
		}
		if err := CheckTagValue(v); err != nil {
			return fmt.Errorf("tag %q: %w", k, err)
		}
	}
	return nil
}

// CheckTagName refuses an empty tag name or one that is not valid UTF-8,
// with an error wrapping [ErrInvalid].
func CheckTagName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("empty tag name: %w", ErrInvalid)
	case !utf8.ValidString(name):
		return fmt.Errorf("tag name %q is not valid UTF-8: %w", name, ErrInvalid)
	}
	return nil
}

// JSONNumber is the value a reader of JSON keeps for n, as TQ's readers
// of tags do: an int64 when n is a whole number that fits, else a finite
// float64; an error for a number no float64 holds (1e400), and for an
// integer written without a fraction or exponent that fits no int64 and
// that a float64 would round (12345678901234567890 would come back as
// 12345678901234567168: nothing stored is changed unsaid).
func JSONNumber(n json.Number) (any, error) {
	// With a fraction or an exponent neither strconv.ParseInt nor
	// big.Int.SetString takes it: skip both (a listing reads one such
	// number a key, and ParseInt's error alone allocates twice).
	integer := true
	for i := 0; i < len(n) && integer; i++ {
		integer = n[i] != '.' && n[i] != 'e' && n[i] != 'E'
	}
	if integer {
		if i, err := n.Int64(); err == nil {
			return i, nil
		}
	}
	f, err := n.Float64()
	if err != nil || math.IsInf(f, 0) {
		return nil, fmt.Errorf("number %s is not one a float64 holds", n)
	}
	if !integer {
		return f, nil
	}
	if i, ok := new(big.Int).SetString(string(n), 10); ok {
		if exact, _ := new(big.Float).SetFloat64(f).Int(nil); exact.Cmp(i) != 0 {
			return nil, fmt.Errorf("integer %s fits no int64, and a float64 would round it to %s: write it as a string to keep it", n, exact)
		}
	}
	return f, nil
}

// CheckTagValue is [Tags.Check] for one value: an error wrapping
// [ErrInvalid] when it cannot be written as JSON and read back the same.
func CheckTagValue(v any) error {
	if err := checkJSON(v); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return nil
}

// checkJSON walks the JSON-like values and has encoding/json judge the
// rest.
func checkJSON(v any) error {
	switch x := v.(type) {
	case nil, bool, int, int64, int32, int16, int8, uint32, uint16, uint8:
		return nil
	case uint:
		return checkUint(uint64(x))
	case uint64:
		return checkUint(x)
	case json.Number:
		// JSONNumber parses with strconv, which takes what JSON does not
		// ("NaN", "01", "+1", ".5"); encoding/json refuses to write those.
		if _, err := json.Marshal(x); err != nil {
			return err
		}
		_, err := JSONNumber(x)
		return err
	case string:
		return checkUTF8(x)
	case float64:
		return checkFloat(x)
	case float32:
		return checkFloat(float64(x))
	case map[string]any:
		for k, e := range x {
			if err := checkUTF8(k); err != nil {
				return fmt.Errorf("key: %w", err)
			}
			if err := checkJSON(e); err != nil {
				return fmt.Errorf("%q: %w", k, err)
			}
		}
		return nil
	case Tags:
		return checkJSON(map[string]any(x))
	case []any:
		for i, e := range x {
			if err := checkJSON(e); err != nil {
				return fmt.Errorf("[%d]: %w", i, err)
			}
		}
		return nil
	}
	return checkReflect(reflect.ValueOf(v))
}

var (
	jsonMarshaler = reflect.TypeFor[json.Marshaler]()
	textMarshaler = reflect.TypeFor[encoding.TextMarshaler]()
)

// checkReflect walks the typed slices, arrays, maps and pointers outside
// the JSON-like set ([]string, map[string]string, …). encoding/json writes
// them without complaint where a string is not UTF-8 (it puts U+FFFD in
// its place), a map key is not a string (it writes the number as one) or
// an unsigned integer is past int64, none of which reads back the same.
// What they hold goes through checkJSON; the rest (structs, values that
// marshal themselves) encoding/json judges.
func checkReflect(rv reflect.Value) error {
	if t := rv.Type(); t.Implements(jsonMarshaler) || t.Implements(textMarshaler) {
		_, err := json.Marshal(rv.Interface())
		return err
	}
	switch rv.Kind() {
	case reflect.String:
		return checkUTF8(rv.String())
	case reflect.Float32, reflect.Float64:
		return checkFloat(rv.Float())
	case reflect.Uint, reflect.Uint64, reflect.Uintptr:
		return checkUint(rv.Uint())
	case reflect.Pointer:
		if rv.IsNil() {
			return nil
		}
		return checkJSON(rv.Elem().Interface())
	case reflect.Slice, reflect.Array:
		if rv.Kind() == reflect.Slice && rv.Type().Elem().Kind() == reflect.Uint8 {
			return nil // bytes, written as base64
		}
		for i := range rv.Len() {
			if err := checkJSON(rv.Index(i).Interface()); err != nil {
				return fmt.Errorf("[%d]: %w", i, err)
			}
		}
		return nil
	case reflect.Map:
		if rv.Type().Key().Kind() != reflect.String {
			return fmt.Errorf("map keys of type %v are not strings", rv.Type().Key())
		}
		for it := rv.MapRange(); it.Next(); {
			k := it.Key().String()
			if err := checkUTF8(k); err != nil {
				return fmt.Errorf("key: %w", err)
			}
			if err := checkJSON(it.Value().Interface()); err != nil {
				return fmt.Errorf("%q: %w", k, err)
			}
		}
		return nil
	}
	_, err := json.Marshal(rv.Interface())
	return err
}

// checkUint refuses what a reader of the JSON would take back as another
// number: it keeps whole numbers as int64, others as float64.
func checkUint(u uint64) error {
	if u > math.MaxInt64 {
		return fmt.Errorf("%d is beyond an int64, and would read back as %v", u, float64(u))
	}
	return nil
}

func checkUTF8(s string) error {
	if !utf8.ValidString(s) {
		return fmt.Errorf("%q is not valid UTF-8 (JSON would change its bytes)", s)
	}
	return nil
}

func checkFloat(f float64) error {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return fmt.Errorf("%v has no JSON form", f)
	}
	return nil
}

// MaxTagsBytes bounds one key's tags, as [Tags.JSONSize] counts them: a
// put, a tag set or a compare-and-set that would make a key's tags
// larger is refused ([ErrInvalid]), so that every key can be listed,
// sent and followed on the change feed in a frame.
const MaxTagsBytes = 1 << 20

// MergedJSONSize is [Tags.JSONSize] of t.Merge(u), without making it.
func (t Tags) MergedJSONSize(u Tags) int {
	n := 2
	for k, v := range t {
		if _, over := u[k]; !over {
			n += quotedSize(k) + 2 + jsonSize(v)
		}
	}
	for k, v := range u {
		n += quotedSize(k) + 2 + jsonSize(v)
	}
	return n
}

// JSONSize estimates the length of t written as JSON, from above for the
// JSON-like values (strings count every byte that may be escaped at its
// escape's length; a byte of a multi-byte character as two, a bound that
// only invalid UTF-8 exceeds), for pages that must fit a frame.
func (t Tags) JSONSize() int {
	if t == nil {
		return 4
	}
	return jsonSize(map[string]any(t))
}

func jsonSize(v any) int {
	switch x := v.(type) {
	case nil:
		return 4
	case bool:
		return 5
	case string:
		return quotedSize(x)
	case int, int64, int32, int16, int8, uint, uint64, uint32, uint16, uint8:
		return 20
	case float64:
		// The longest encoding/json writes: a negative number in
		// [1e-6, 1e-5) with 17 significant digits, without an exponent
		// ("-0.0000012345678901234567").
		return 25
	case float32:
		return 24
	case json.Number:
		return len(x)
	case map[string]any:
		n := 2
		for k, e := range x {
			n += quotedSize(k) + 2 + jsonSize(e)
		}
		return n
	case Tags:
		return jsonSize(map[string]any(x))
	case []any:
		n := 2
		for _, e := range x {
			n += jsonSize(e) + 1
		}
		return n
	}
	b, _ := json.Marshal(v)
	return len(b)
}

func quotedSize(s string) int {
	n, i := 2, 0
	// Eight bytes at a time where none is escaped or past ASCII: a
	// listing's page bound sizes every key's tags, mostly plain text.
	for ; i+8 <= len(s); i += 8 {
		x := uint64(s[i]) | uint64(s[i+1])<<8 | uint64(s[i+2])<<16 | uint64(s[i+3])<<24 |
			uint64(s[i+4])<<32 | uint64(s[i+5])<<40 | uint64(s[i+6])<<48 | uint64(s[i+7])<<56
		if x&hiBits != 0 || byteBelow(x, 0x20) || byteIs(x, '"') || byteIs(x, '\\') ||
			byteIs(x, '<') || byteIs(x, '>') || byteIs(x, '&') {
			for j := i; j < i+8; j++ {
				n += quotedByteSize(s[j])
			}
		} else {
			n += 8
		}
	}
	for ; i < len(s); i++ {
		n += quotedByteSize(s[i])
	}
	return n
}

func quotedByteSize(b byte) int {
	switch {
	case b < 0x20, b == '"', b == '\\', b == '<', b == '>', b == '&':
		return 6
	case b >= 0x80:
		return 2
	}
	return 1
}

const (
	loBits = 0x0101010101010101
	hiBits = 0x8080808080808080
)

// byteBelow reports whether a byte of x, all of whose bytes are below
// 0x80, is below c (at most 0x80).
func byteBelow(x uint64, c byte) bool { return (x-loBits*uint64(c))&^x&hiBits != 0 }

// byteIs reports whether a byte of x is c.
func byteIs(x uint64, c byte) bool {
	y := x ^ loBits*uint64(c)
	return (y-loBits)&^y&hiBits != 0
}

// Keys returns the tag names (unordered).
func (t Tags) Keys() []string { return slices.Collect(maps.Keys(t)) }

// Int returns tag k as an int64 when it holds an integer: a Go integer
// that fits in an int64, or a float with no fractional part inside the
// int64 range (JSON decodes every number as float64).
func (t Tags) Int(k string) (int64, bool) {
	switch v := t[k].(type) {
	case int:
		return int64(v), true
	case int64:
		return v, true
	case int32:
		return int64(v), true
	case int16:
		return int64(v), true
	case int8:
		return int64(v), true
	case uint:
		return uintToInt64(uint64(v))
	case uint64:
		return uintToInt64(v)
	case uint32:
		return int64(v), true
	case uint16:
		return int64(v), true
	case uint8:
		return int64(v), true
	case float64:
		return floatToInt64(v)
	case float32:
		return floatToInt64(float64(v))
	case json.Number:
		i, err := v.Int64()
		return i, err == nil
	}
	return 0, false
}

func uintToInt64(v uint64) (int64, bool) {
	if v > math.MaxInt64 {
		return 0, false
	}
	return int64(v), true
}

func floatToInt64(f float64) (int64, bool) {
	// -2^63 is exact in float64; 2^63 is the first value past the range.
	if f != math.Trunc(f) || f < -(1<<63) || f >= 1<<63 {
		return 0, false // fraction, NaN, ±Inf or out of range
	}
	return int64(f), true
}
