package engine

import (
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// quotedSizeSlow is quotedSize a byte at a time, as it was.
func quotedSizeSlow(s string) int {
	n := 2
	for i := range len(s) {
		switch b := s[i]; {
		case b < 0x20, b == '"', b == '\\', b == '<', b == '>', b == '&':
			n += 6
		case b >= 0x80:
			n += 2
		default:
			n++
		}
	}
	return n
}

// quotedSize counts eight plain bytes at a time and the rest one by one:
// the same as a byte at a time wherever an escaped or non-ASCII byte sits
// in a word.
func FuzzQuotedSize(f *testing.F) {
	plain := strings.Repeat("0123456789abcdef", 4)
	for _, c := range []string{"\x00", "\x1f", " ", "\"", "\\", "<", ">", "&", "\x7f", "\x80", "é", "\xff", "=", "?", "%", "'"} {
		for _, at := range []int{0, 3, 7, 8, 15, 63} {
			f.Add(plain[:at] + c + plain[at:])
		}
	}
	f.Fuzz(func(t *testing.T, s string) {
		require.Equal(t, quotedSizeSlow(s), quotedSize(s), "%q", s)
	})
}

// jsonNumberSlow is JSONNumber trying strconv and math/big on every
// number.
func jsonNumberSlow(n json.Number) (any, error) {
	if i, err := n.Int64(); err == nil {
		return i, nil
	}
	f, err := n.Float64()
	if err != nil || math.IsInf(f, 0) {
		return nil, fmt.Errorf("number %s is not one a float64 holds", n)
	}
	if i, ok := new(big.Int).SetString(string(n), 10); ok {
		if exact, _ := new(big.Float).SetFloat64(f).Int(nil); exact.Cmp(i) != 0 {
			return nil, fmt.Errorf("integer %s fits no int64, and a float64 would round it to %s: write it as a string to keep it", n, exact)
		}
	}
	return f, nil
}

// JSONNumber skips the integer parsers for a number with a fraction or
// an exponent, which they refuse: it keeps what it kept before, and
// refuses what it refused, with the same words.
func FuzzJSONNumber(f *testing.F) {
	for _, s := range []string{"0", "-0", "1", "-7", "0.5", "1e3", "1E3", "-2.5E-1", "1e400", "-1e400", "1.5e-400",
		"9223372036854775807", "9223372036854775808", "-9223372036854775809", "12345678901234567890",
		"18446744073709551616", "1.0", "+1", "01", "NaN", "Inf", "-Infinity", "0x10", "0x1p-2", "1_000", ".5", "1.", "e5", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want, wantErr := jsonNumberSlow(json.Number(s))
		got, err := JSONNumber(json.Number(s))
		if wantErr != nil {
			require.EqualError(t, err, wantErr.Error(), "%q", s)
			return
		}
		require.NoError(t, err, "%q", s)
		if w, ok := want.(float64); ok && math.IsNaN(w) {
			g, ok := got.(float64)
			require.True(t, ok && math.IsNaN(g), "%q: got %#v", s, got)
			return
		}
		require.Equal(t, want, got, "%q", s)
	})
}

// The tags of client's BenchmarkRemoteListKeysTags: what a listing sizes
// (JSONSize) and reads back (JSONNumber) for every key.
func BenchmarkJSONSize(b *testing.B) {
	t := Tags{"note": fmt.Sprintf("%0240d", 12345), "step": int64(12345), "reward": 12345.5}
	for b.Loop() {
		t.JSONSize()
	}
}

func BenchmarkJSONNumber(b *testing.B) {
	for _, n := range []json.Number{"12345", "12345.5"} {
		b.Run(string(n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := JSONNumber(n); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// JSONSize bounds what encoding/json writes for strings as it does for
// numbers: valid UTF-8 with every byte it escapes ('<', '>', '&' by
// default, U+2028 and U+2029, controls), 0x7f, multi-byte characters,
// at every length (eight bytes at a time and the rest), as values, keys
// and list elements.
func TestJSONSizeBoundsTheStrings(t *testing.T) {
	alpha := []string{"a", "<", ">", "&", "\x7f", "\x00", "\x1f", "\"", "\\", "é", "\u2028", "\u2029", "😀", "\t", "\n", "~", " "}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 20000 {
		var sb strings.Builder
		for range rng.IntN(40) {
			sb.WriteString(alpha[rng.IntN(len(alpha))])
		}
		s := sb.String()
		b, err := json.Marshal(s)
		require.NoError(t, err)
		require.GreaterOrEqual(t, quotedSize(s), len(b), "%q", s)
		tags := Tags{s: s, "list": []any{s, s}}
		b, err = json.Marshal(tags)
		require.NoError(t, err)
		require.GreaterOrEqual(t, tags.JSONSize(), len(b), "tags holding %q", s)
	}
}
