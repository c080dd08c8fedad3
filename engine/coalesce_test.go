package engine

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestCoalesceRanges(t *testing.T) {
	a := func(seg, gen uint32, off, n uint64) RemoteAddr {
		return RemoteAddr{Segment: seg, Gen: gen, Offset: off, Len: n}
	}
	for _, tc := range []struct {
		name     string
		in, want []RemoteAddr
	}{
		{"two fields interleaved, rows in order", // row-major, as a clear returns them
			[]RemoteAddr{a(1, 1, 0, 8), a(1, 2, 100, 4), a(1, 1, 8, 8), a(1, 2, 104, 4), a(1, 1, 16, 8)},
			[]RemoteAddr{a(1, 1, 0, 24), a(1, 2, 100, 8)}},
		{"other extent at the seam", []RemoteAddr{a(1, 1, 0, 8), a(1, 2, 8, 8)}, []RemoteAddr{a(1, 1, 0, 8), a(1, 2, 8, 8)}},
		{"other segment", []RemoteAddr{a(1, 1, 0, 8), a(2, 1, 8, 8)}, []RemoteAddr{a(1, 1, 0, 8), a(2, 1, 8, 8)}},
		{"gap", []RemoteAddr{a(1, 1, 0, 8), a(1, 1, 9, 8)}, []RemoteAddr{a(1, 1, 0, 8), a(1, 1, 9, 8)}},
		{"a cell twice stays twice", []RemoteAddr{a(1, 1, 0, 8), a(1, 1, 0, 8)}, []RemoteAddr{a(1, 1, 0, 8), a(1, 1, 0, 8)}},
		{"empty cells kept apart", []RemoteAddr{a(1, 1, 8, 0), a(1, 1, 0, 8), a(1, 1, 8, 0)}, []RemoteAddr{a(1, 1, 8, 0), a(1, 1, 0, 8), a(1, 1, 8, 0)}},
	} {
		if diff := cmp.Diff(tc.want, CoalesceRanges(tc.in)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tc.name, diff)
		}
	}
}
