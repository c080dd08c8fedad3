package engine

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// RepeatedKeys agrees with a map on random batches with and without
// repeats, including keys that repeat several times.
func TestRepeatedKeys(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	for trial := range 300 {
		n := r.IntN(200)
		keys := make([]string, n)
		for i := range keys {
			keys[i] = fmt.Sprintf("k%d", r.IntN(max(1, n*(1+trial%3))))
		}
		var want []string
		seen := map[string]bool{}
		for _, k := range keys {
			if seen[k] {
				want = append(want, k)
			}
			seen[k] = true
		}
		if got := RepeatedKeys(keys); !slices.Equal(got, want) {
			t.Fatalf("trial %d: %q, want %q", trial, got, want)
		}
	}
	if RepeatedKeys([]string{"", "a", ""}) == nil {
		t.Error("a repeated empty key not found")
	}
}

func BenchmarkRepeatedKeys(b *testing.B) {
	keys := make([]string, 1024)
	for i := range keys {
		keys[i] = fmt.Sprintf("test_key_%d", i)
	}
	b.Run("table", func(b *testing.B) {
		for b.Loop() {
			if RepeatedKeys(keys) != nil {
				b.Fatal("repeats")
			}
		}
	})
	b.Run("map", func(b *testing.B) {
		for b.Loop() {
			seen := make(map[string]struct{}, len(keys))
			for _, k := range keys {
				seen[k] = struct{}{}
			}
		}
	})
}

// duplicates names each repeated value once, in order of its second
// appearance, whether it compares pairwise (few values) or counts in a map.
func TestDuplicates(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	for trial := range 300 {
		n := r.IntN(40)
		s := make([]string, n)
		for i := range s {
			s[i] = fmt.Sprintf("v%d", r.IntN(max(1, n/(1+trial%3))))
		}
		var want []string
		count := map[string]int{}
		for _, v := range s {
			if count[v]++; count[v] == 2 {
				want = append(want, v)
			}
		}
		if got := duplicates(s); !slices.Equal(got, want) {
			t.Fatalf("duplicates(%q) = %q, want %q", s, got, want)
		}
	}
}
