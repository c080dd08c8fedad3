package wire

import (
	"bytes"
	"encoding/json"
	"math"
	"slices"
	"strconv"
	"unicode/utf8"

	"github.com/tqgo/tq/engine"
)

// flatJSON decodes b as [JSONFromPB]'s encoding/json path does when b is
// one object whose values are strings without escapes, numbers, true,
// false or null (what tags mostly are), without a Decoder and reflection
// per object: listing a partition decodes one object per key. ok is false
// for anything else, nested values and bad input included, which
// encoding/json then decodes or words the error for.
func flatJSON(b []byte) (m map[string]any, ok bool) {
	i := skipSpace(b, 0)
	if i == len(b) || b[i] != '{' {
		return nil, false
	}
	m = make(map[string]any)
	if i = skipSpace(b, i+1); i < len(b) && b[i] == '}' {
		return m, skipSpace(b, i+1) == len(b)
	}
	for {
		k, j, ok := plainString(b, i)
		if !ok {
			return nil, false
		}
		if i = skipSpace(b, j); i == len(b) || b[i] != ':' {
			return nil, false
		}
		if i = skipSpace(b, i+1); i == len(b) {
			return nil, false
		}
		var v any
		switch c := b[i]; {
		case c == '"':
			if v, i, ok = plainString(b, i); !ok {
				return nil, false
			}
		case c == '-' || '0' <= c && c <= '9':
			j, ok := numberEnd(b, i)
			if !ok {
				return nil, false
			}
			n, err := engine.JSONNumber(json.Number(b[i:j]))
			if err != nil {
				return nil, false
			}
			v, i = n, j
		case bytes.HasPrefix(b[i:], []byte("true")):
			v, i = true, i+4
		case bytes.HasPrefix(b[i:], []byte("false")):
			v, i = false, i+5
		case bytes.HasPrefix(b[i:], []byte("null")):
			v, i = nil, i+4
		default:
			return nil, false
		}
		m[k] = v // a repeated name: the last one counts, as in encoding/json
		if i = skipSpace(b, i); i == len(b) {
			return nil, false
		}
		switch b[i] {
		case ',':
			i = skipSpace(b, i+1)
		case '}':
			return m, skipSpace(b, i+1) == len(b)
		default:
			return nil, false
		}
	}
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// plainString reads the string at b[i] when it has no escapes, control
// bytes or bad UTF-8 (which encoding/json would turn into U+FFFD); it
// returns the index past its closing quote.
func plainString(b []byte, i int) (string, int, bool) {
	if i == len(b) || b[i] != '"' {
		return "", 0, false
	}
	ascii := true
	for j := i + 1; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			if !ascii && !utf8.Valid(b[i+1:j]) {
				return "", 0, false
			}
			return string(b[i+1 : j]), j + 1, true
		case c < 0x20 || c == '\\':
			return "", 0, false
		case c >= utf8.RuneSelf:
			ascii = false
		}
	}
	return "", 0, false
}

// numberEnd returns the index past the JSON number at b[i]:
// -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func numberEnd(b []byte, i int) (int, bool) {
	digits := func(i int) int {
		for i < len(b) && '0' <= b[i] && b[i] <= '9' {
			i++
		}
		return i
	}
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i == len(b):
		return 0, false
	case b[i] == '0':
		i++
	case '1' <= b[i] && b[i] <= '9':
		i = digits(i + 1)
	default:
		return 0, false
	}
	if i < len(b) && b[i] == '.' {
		j := digits(i + 1)
		if j == i+1 {
			return 0, false
		}
		i = j
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		j := digits(i)
		if j == i {
			return 0, false
		}
		i = j
	}
	return i, true
}

// appendFlatJSON appends m as json.Marshal writes it when its names and
// string values are printable ASCII that encoding/json writes as is, and
// its values strings, int64s, ints, float64s, bools or nil: the
// controller encodes each key's tags in a listing. ok is false for
// anything else, left to json.Marshal.
func appendFlatJSON(b []byte, m map[string]any) (_ []byte, ok bool) {
	keys := make([]string, 0, len(m))
	size := 2 // room for it all, so that b grows once
	for k, v := range m {
		if !plainASCII(k) {
			return nil, false
		}
		keys = append(keys, k)
		size += len(k) + 4 + 24
		if s, ok := v.(string); ok {
			size += len(s)
		}
	}
	slices.Sort(keys)
	b = slices.Grow(b, size)
	b = append(b, '{')
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '"')
		b = append(b, k...)
		b = append(b, '"', ':')
		switch v := m[k].(type) {
		case string:
			if !plainASCII(v) {
				return nil, false
			}
			b = append(b, '"')
			b = append(b, v...)
			b = append(b, '"')
		case int64:
			b = strconv.AppendInt(b, v, 10)
		case int:
			b = strconv.AppendInt(b, int64(v), 10)
		case float64:
			if b, ok = appendFloat(b, v); !ok {
				return nil, false
			}
		case bool:
			b = strconv.AppendBool(b, v)
		case nil:
			b = append(b, "null"...)
		default:
			return nil, false
		}
	}
	return append(b, '}'), true
}

// plainASCII reports whether encoding/json writes s between quotes as it
// is: printable ASCII but for the quote, backslash and what it escapes
// for HTML.
func plainASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}

// appendFloat writes f as encoding/json's float64 encoder does; NaN and
// the infinities, which it refuses, are not ok.
func appendFloat(b []byte, f float64) ([]byte, bool) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return nil, false
	}
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' {
		// e-09 is written e-9
		if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b, true
}
