package client

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/tqgo/tq/engine"
)

func TestCoalesce(t *testing.T) {
	a := func(seg, gen uint32, off, n uint64) engine.RemoteAddr {
		return engine.RemoteAddr{Segment: seg, Gen: gen, Offset: off, Len: n}
	}
	for _, tc := range []struct {
		name     string
		in, want []engine.RemoteAddr
	}{
		{"two fields interleaved, rows in order", // row-major, as a clear returns them
			[]engine.RemoteAddr{a(1, 1, 0, 8), a(1, 2, 100, 4), a(1, 1, 8, 8), a(1, 2, 104, 4), a(1, 1, 16, 8)},
			[]engine.RemoteAddr{a(1, 1, 0, 24), a(1, 2, 100, 8)}},
		{"other extent at the seam", []engine.RemoteAddr{a(1, 1, 0, 8), a(1, 2, 8, 8)}, []engine.RemoteAddr{a(1, 1, 0, 8), a(1, 2, 8, 8)}},
		{"other segment", []engine.RemoteAddr{a(1, 1, 0, 8), a(2, 1, 8, 8)}, []engine.RemoteAddr{a(1, 1, 0, 8), a(2, 1, 8, 8)}},
		{"gap", []engine.RemoteAddr{a(1, 1, 0, 8), a(1, 1, 9, 8)}, []engine.RemoteAddr{a(1, 1, 0, 8), a(1, 1, 9, 8)}},
		{"a cell twice stays twice", []engine.RemoteAddr{a(1, 1, 0, 8), a(1, 1, 0, 8)}, []engine.RemoteAddr{a(1, 1, 0, 8), a(1, 1, 0, 8)}},
		{"empty cells kept apart", []engine.RemoteAddr{a(1, 1, 8, 0), a(1, 1, 0, 8), a(1, 1, 8, 0)}, []engine.RemoteAddr{a(1, 1, 8, 0), a(1, 1, 0, 8), a(1, 1, 8, 0)}},
	} {
		if diff := cmp.Diff(tc.want, coalesce(tc.in)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tc.name, diff)
		}
	}
}
