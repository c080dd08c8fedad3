package engine

import (
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"testing"

	"github.com/stretchr/testify/require"
)

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

// A number of client's BenchmarkRemoteListKeysTags's tags, as a listing
// reads it back for every key, and an integer.
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
