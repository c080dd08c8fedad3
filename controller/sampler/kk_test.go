package sampler

import (
	"encoding/json"
	"math/rand/v2"
	"os"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/tqgo/tq/engine"
)

func partSums(lengths []int64, parts [][]int) []int64 {
	sums := make([]int64, len(parts))
	for i, p := range parts {
		for _, j := range p {
			sums[i] += lengths[j]
		}
	}
	return sums
}

func spread(sums []int64) int64 {
	return slices.Max(sums) - slices.Min(sums)
}

// checkPartition fails unless parts is k non-empty ascending lists that
// together hold every item exactly once (equal-sized with equalSize).
func checkPartition(t *testing.T, parts [][]int, n, k int, equalSize bool) {
	t.Helper()
	if len(parts) != k {
		t.Fatalf("got %d partitions, want %d", len(parts), k)
	}
	var all []int
	for i, p := range parts {
		if len(p) == 0 {
			t.Errorf("partition %d is empty", i)
		}
		if !slices.IsSorted(p) {
			t.Errorf("partition %d: %v not ascending", i, p)
		}
		if equalSize && len(p) != n/k {
			t.Errorf("partition %d: got %d items, want %d", i, len(p), n/k)
		}
		all = append(all, p...)
	}
	slices.Sort(all)
	want := make([]int, n)
	for i := range want {
		want[i] = i
	}
	if d := cmp.Diff(want, all); d != "" {
		t.Errorf("items over all partitions (-want +got):\n%s", d)
	}
}

func TestKarmarkarKarp(t *testing.T) {
	for _, tc := range []struct {
		name      string
		lengths   []int64
		k         int
		equalSize bool
		want      [][]int // nil: check only the shape and maxSpread
		maxSpread int64
	}{
		{
			name: "equal size basic", lengths: []int64{1, 2, 3, 4}, k: 2, equalSize: true,
			want: [][]int{{0, 3}, {1, 2}}, maxSpread: 0,
		},
		{
			name: "unequal size", lengths: []int64{10, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}, k: 2,
			want: [][]int{{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, {0}}, maxSpread: 0,
		},
		{
			name: "k 1", lengths: []int64{5, 3, 9}, k: 1, equalSize: true,
			want: [][]int{{0, 1, 2}}, maxSpread: 0,
		},
		{
			// Sums 16, 15, 14, as verl gives (the optimum is 15, 15, 15).
			name: "three way", lengths: []int64{1, 2, 3, 4, 5, 6, 7, 8, 9}, k: 3, equalSize: true,
			want: [][]int{{2, 5, 6}, {1, 4, 7}, {0, 3, 8}}, maxSpread: 2,
		},
		{
			name: "identical lengths", lengths: []int64{5, 5, 5, 5, 5, 5}, k: 3, equalSize: true,
			maxSpread: 0,
		},
		{
			name: "zero lengths", lengths: []int64{0, 0, 0, 7}, k: 3,
			maxSpread: 7,
		},
		{
			name: "as many items as partitions", lengths: []int64{4, 1, 3}, k: 3, equalSize: true,
			want: [][]int{{0}, {2}, {1}}, maxSpread: 3,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			parts, err := KarmarkarKarp(tc.lengths, tc.k, tc.equalSize)
			if err != nil {
				t.Fatalf("got error %v, want nil", err)
			}
			checkPartition(t, parts, len(tc.lengths), tc.k, tc.equalSize)
			if tc.want != nil {
				if d := cmp.Diff(tc.want, parts); d != "" {
					t.Errorf("got %v, want %v (-want +got):\n%s", parts, tc.want, d)
				}
			}
			if s := spread(partSums(tc.lengths, parts)); s > tc.maxSpread {
				t.Errorf("spread: got %d (sums %v), want at most %d", s, partSums(tc.lengths, parts), tc.maxSpread)
			}
		})
	}
}

func TestKarmarkarKarpErrors(t *testing.T) {
	for _, tc := range []struct {
		name      string
		lengths   []int64
		k         int
		equalSize bool
	}{
		{"equal size does not divide", []int64{1, 2, 3, 4, 5}, 2, true},
		{"too few items", []int64{1}, 2, false},
		{"no items", nil, 1, false},
		{"zero partitions", []int64{1, 2}, 0, false},
		{"negative partitions", []int64{1, 2}, -1, true},
		{"negative length", []int64{1, -2}, 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := KarmarkarKarp(tc.lengths, tc.k, tc.equalSize)
			wantErr(t, err, engine.ErrInvalid)
		})
	}
}

// TestKarmarkarKarpBalance compares KK with cutting the items into k
// contiguous runs, over random token counts.
func TestKarmarkarKarpBalance(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, tc := range []struct {
		name      string
		n, k      int
		equalSize bool
	}{
		{"n=64/k=4/equal", 64, 4, true},
		{"n=64/k=4/unequal", 64, 4, false},
		{"n=96/k=8/equal", 96, 8, true},
		{"n=17/k=5/unequal", 17, 5, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for range 20 {
				lengths := make([]int64, tc.n)
				for i := range lengths {
					lengths[i] = 100 + r.Int64N(4000)
				}
				parts, err := KarmarkarKarp(lengths, tc.k, tc.equalSize)
				if err != nil {
					t.Fatal(err)
				}
				checkPartition(t, parts, tc.n, tc.k, tc.equalSize)
				naive := make([][]int, tc.k)
				for i := range lengths {
					naive[i*tc.k/tc.n] = append(naive[i*tc.k/tc.n], i)
				}
				got, base := spread(partSums(lengths, parts)), spread(partSums(lengths, naive))
				if got > base || got > slices.Max(lengths) {
					t.Errorf("spread: got %d, want at most the naive %d and the longest item %d",
						got, base, slices.Max(lengths))
				}
			}
		})
	}
}

// TestKarmarkarKarpGolden compares with partitions computed by the
// reference (verl's karmarkar_karp followed by sorting each partition) on
// random inputs, many with tied lengths, so tie-breaking matches too.
func TestKarmarkarKarpGolden(t *testing.T) {
	b, err := os.ReadFile("testdata/kk_golden.json")
	if err != nil {
		t.Fatal(err)
	}
	var cases []struct {
		Lengths []int64 `json:"lengths"`
		K       int     `json:"k"`
		Equal   bool    `json:"equal"`
		Want    [][]int `json:"want"`
	}
	if err := json.Unmarshal(b, &cases); err != nil {
		t.Fatal(err)
	}
	for i, c := range cases {
		got, err := KarmarkarKarp(c.Lengths, c.K, c.Equal)
		if err != nil {
			t.Errorf("case %d: got error %v, want nil", i, err)
			continue
		}
		if d := cmp.Diff(c.Want, got); d != "" {
			t.Errorf("case %d (lengths %v, k %d, equal size %v): got %v, want %v (-want +got):\n%s",
				i, c.Lengths, c.K, c.Equal, got, c.Want, d)
		}
	}
}
