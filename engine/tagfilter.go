package engine

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"unicode/utf8"
)

// TagTest is what a [TagCondition] checks of a key's tag.
type TagTest uint8

const (
	// TagEquals holds when the tag is present and equals Values[0].
	TagEquals TagTest = iota + 1
	// TagIn holds when the tag is present and equals one of Values.
	TagIn
	// TagExists holds when the key has the tag, whatever its value (null
	// included).
	TagExists
	// TagAbsent holds when the key does not have the tag.
	TagAbsent
)

func (t TagTest) String() string {
	switch t {
	case TagEquals:
		return "equals"
	case TagIn:
		return "in"
	case TagExists:
		return "exists"
	case TagAbsent:
		return "absent"
	}
	return fmt.Sprintf("TagTest(%d)", uint8(t))
}

// MaxTagConditions bounds the conditions of one [TagFilter], and
// MaxTagValues the values of one condition.
const (
	MaxTagConditions = 64
	MaxTagValues     = 1024
)

// TagCondition is one test of a key's tag Name. Values are compared as
// JSON values (see [TagValueEqual]): 1 equals 1.0, "1" does not.
type TagCondition struct {
	Name   string
	Test   TagTest
	Values []any // TagEquals: exactly one; TagIn: one or more; others: none
}

// Validate reports a malformed condition: an empty or non-UTF-8 name, an
// unknown test, the wrong number of values, or a value JSON cannot carry.
func (c TagCondition) Validate() error {
	if c.Name == "" {
		return fmt.Errorf("tag condition with an empty tag name: %w", ErrInvalid)
	}
	if !utf8.ValidString(c.Name) {
		return fmt.Errorf("tag name %q is not valid UTF-8: %w", c.Name, ErrInvalid)
	}
	switch c.Test {
	case TagEquals:
		if len(c.Values) != 1 {
			return fmt.Errorf("tag %q equals %d values (want one): %w", c.Name, len(c.Values), ErrInvalid)
		}
	case TagIn:
		if len(c.Values) == 0 || len(c.Values) > MaxTagValues {
			return fmt.Errorf("tag %q in %d values (1 to %d): %w", c.Name, len(c.Values), MaxTagValues, ErrInvalid)
		}
	case TagExists, TagAbsent:
		if len(c.Values) != 0 {
			return fmt.Errorf("tag %q %v with %d values (want none): %w", c.Name, c.Test, len(c.Values), ErrInvalid)
		}
	default:
		return fmt.Errorf("tag %q: unknown test %v: %w", c.Name, c.Test, ErrInvalid)
	}
	for _, v := range c.Values {
		// A value JSON would change (a string that is not UTF-8) could
		// match nothing a tag holds, and would match something else once
		// sent.
		if err := CheckTagValue(v); err != nil {
			return fmt.Errorf("tag %q: value %v: %w", c.Name, v, err)
		}
	}
	return nil
}

// Match reports whether t passes the condition.
func (c TagCondition) Match(t Tags) bool {
	v, ok := t[c.Name]
	switch c.Test {
	case TagExists:
		return ok
	case TagAbsent:
		return !ok
	case TagEquals, TagIn:
		if !ok {
			return false
		}
		for _, want := range c.Values {
			if TagValueEqual(v, want) {
				return true
			}
		}
	}
	return false
}

func (c TagCondition) String() string {
	switch c.Test {
	case TagEquals:
		if len(c.Values) == 1 {
			return fmt.Sprintf("%s == %v", c.Name, c.Values[0])
		}
	case TagIn:
		return fmt.Sprintf("%s in %v", c.Name, c.Values)
	}
	return fmt.Sprintf("%s %v", c.Name, c.Test)
}

// TagFilter is a conjunction of conditions: a key passes when every one
// holds. The empty filter passes every key.
type TagFilter []TagCondition

// Validate reports a malformed filter: too many conditions, or one that
// is malformed itself.
func (f TagFilter) Validate() error {
	if len(f) > MaxTagConditions {
		return fmt.Errorf("tag filter of %d conditions (at most %d): %w", len(f), MaxTagConditions, ErrInvalid)
	}
	for _, c := range f {
		if err := c.Validate(); err != nil {
			return err
		}
	}
	return nil
}

// Match reports whether t passes every condition.
func (f TagFilter) Match(t Tags) bool {
	for _, c := range f {
		if !c.Match(t) {
			return false
		}
	}
	return true
}

// TagValueEqual reports whether two tag values are the same JSON value:
// numbers compare by value (int 1, int64 1 and float64 1 are equal, as
// they are after a trip through JSON), strings, bools and null exactly,
// lists and objects element by element. A typed nil (a nil slice, map or
// pointer) is null, as JSON writes it. Values JSON cannot encode are
// equal to nothing.
func TagValueEqual(a, b any) bool {
	if isNull(a) || isNull(b) {
		return isNull(a) && isNull(b)
	}
	switch x := a.(type) {
	case string:
		y, ok := b.(string)
		return ok && x == y
	case bool:
		y, ok := b.(bool)
		return ok && x == y
	case float64:
		if y, ok := b.(float64); ok {
			return x == y
		}
	}
	ta, tb := Tags{"": a}, Tags{"": b}
	if i, ok := ta.Int(""); ok {
		if j, ok := tb.Int(""); ok {
			return i == j
		}
	}
	ja, err := json.Marshal(a)
	if err != nil {
		return false
	}
	jb, err := json.Marshal(b)
	if err != nil {
		return false
	}
	if string(ja) == string(jb) {
		return true
	}
	// The same value may be written two ways: a json.Number as given
	// ("1.0"), a -0 inside a list. Compare what a reader of the JSON
	// keeps, as a restart or the wire would.
	va, oka := readJSON(ja)
	vb, okb := readJSON(jb)
	return oka && okb && jsonEqual(va, vb)
}

// readJSON decodes one JSON value, its numbers as json.Number.
func readJSON(b []byte) (any, bool) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	return v, dec.Decode(&v) == nil
}

// jsonEqual compares values readJSON decoded: numbers by value (as
// [JSONNumber] keeps them), the rest exactly.
func jsonEqual(a, b any) bool {
	switch x := a.(type) {
	case json.Number:
		y, ok := b.(json.Number)
		if !ok {
			return false
		}
		na, err := JSONNumber(x)
		if err != nil {
			return false
		}
		nb, err := JSONNumber(y)
		if err != nil {
			return false
		}
		ta, tb := Tags{"": na}, Tags{"": nb}
		if i, ok := ta.Int(""); ok {
			j, ok := tb.Int("")
			return ok && i == j
		}
		fa, oka := na.(float64)
		fb, okb := nb.(float64)
		return oka && okb && fa == fb
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !jsonEqual(x[i], y[i]) {
				return false
			}
		}
		return true
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for k, e := range x {
			f, ok := y[k]
			if !ok || !jsonEqual(e, f) {
				return false
			}
		}
		return true
	}
	return a == b // string, bool or nil
}

// isNull reports a value JSON writes as null: nil, or a nil slice, map or
// pointer.
func isNull(v any) bool {
	if v == nil {
		return true
	}
	switch rv := reflect.ValueOf(v); rv.Kind() {
	case reflect.Slice, reflect.Map, reflect.Pointer, reflect.Interface:
		return rv.IsNil()
	}
	return false
}
