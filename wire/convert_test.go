package wire

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire/wirepb"
)

// randomLocs makes n cells in stretches that lie back to back (one put's
// column slice), jump elsewhere, change unit or extent, or are not
// produced.
func randomLocs(r *rand.Rand, n int, uniform bool) []engine.CellLoc {
	out := make([]engine.CellLoc, n)
	cur := engine.CellLoc{Unit: 1, Addr: engine.RemoteAddr{Segment: 1, Gen: 1, Offset: 4096}}
	size := uint64(r.IntN(64) + 1)
	for i := range out {
		switch r.IntN(12) {
		case 0:
			cur.Unit = engine.UnitID(r.IntN(3))
		case 1:
			cur.Addr.Segment, cur.Addr.Gen = uint32(r.IntN(4)), uint32(r.IntN(4)+1)
		case 2:
			cur.Addr.Offset = uint64(r.IntN(1 << 30))
		}
		l := size
		if !uniform {
			l = uint64(r.IntN(64))
		}
		if cur.Unit == 0 {
			out[i] = engine.CellLoc{}
			continue
		}
		out[i] = engine.CellLoc{Unit: cur.Unit, Addr: engine.RemoteAddr{Segment: cur.Addr.Segment, Gen: cur.Addr.Gen, Offset: cur.Addr.Offset, Len: l}}
		cur.Addr.Offset += l
	}
	return out
}

func TestAddrsRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for trial := range 500 {
		n := r.IntN(300)
		locs := randomLocs(r, n, trial%2 == 0)
		// Through the encoded bytes, as a peer sees them.
		raw, err := proto.Marshal(AddrsToPB(locs))
		if err != nil {
			t.Fatal(err)
		}
		var pb wirepb.Addrs
		if err := proto.Unmarshal(raw, &pb); err != nil {
			t.Fatal(err)
		}
		got, err := AddrsFromPB(&pb)
		if err != nil {
			t.Fatalf("trial %d: %v", trial, err)
		}
		// slices.Equal first: cmp's reflection on every trial was most of
		// the test's time under -race. (Both take nil and empty as equal.)
		if !slices.Equal(locs, got) {
			t.Fatalf("trial %d (-sent +got):\n%s", trial, cmp.Diff(locs, got))
		}
		ranges := make([]engine.RemoteAddr, n)
		for i, l := range locs {
			ranges[i] = l.Addr
		}
		back, err := RangesFromPB(RangesToPB(ranges))
		if err != nil || !slices.Equal(ranges, back) {
			t.Fatalf("trial %d: ranges %v", trial, err)
		}
	}
}

// A dense column written by one put travels as one run: a few bytes, not
// five varints per cell.
func TestAddrsRunsAreCompact(t *testing.T) {
	locs := make([]engine.CellLoc, 1024)
	for i := range locs {
		locs[i] = engine.CellLoc{Unit: 3, Addr: engine.RemoteAddr{Segment: 7, Gen: 2, Offset: 1<<30 + uint64(i)*32768, Len: 32768}}
	}
	pb := AddrsToPB(locs)
	if len(pb.RunCount) != 1 || len(pb.RunLen) != 1 || len(pb.Offset) != 0 {
		t.Fatalf("not one uniform run: %v", pb)
	}
	if n := proto.Size(pb); n > 32 {
		t.Fatalf("1024 contiguous cells encode in %d bytes", n)
	}
}

func TestAddrsMalformed(t *testing.T) {
	for name, a := range map[string]*wirepb.Addrs{
		"ragged per cell":  {Offset: []uint64{1, 2}, Segment: []uint32{1}, Gen: []uint32{1, 1}, Len: []uint64{1, 1}, Unit: []uint32{1, 1}},
		"both forms":       {Offset: []uint64{1}, Segment: []uint32{1}, Gen: []uint32{1}, Len: []uint64{1}, Unit: []uint32{1}, RunCount: []uint32{1}, RunUnit: []uint32{1}, RunSegment: []uint32{1}, RunGen: []uint32{1}, RunOffset: []uint64{0}, RunLen: []uint64{1}},
		"runs no counts":   {RunOffset: []uint64{1}},
		"run arrays":       {RunCount: []uint32{1, 1}, RunUnit: []uint32{1, 1}, RunSegment: []uint32{1}, RunGen: []uint32{1, 1}, RunOffset: []uint64{0, 0}, RunLen: []uint64{1}},
		"empty run":        {RunCount: []uint32{0}, RunUnit: []uint32{1}, RunSegment: []uint32{1}, RunGen: []uint32{1}, RunOffset: []uint64{0}, RunLen: []uint64{1}},
		"lens":             {RunCount: []uint32{3}, RunUnit: []uint32{1}, RunSegment: []uint32{1}, RunGen: []uint32{1}, RunOffset: []uint64{0}, RunLen: []uint64{1, 2}},
		"too many":         {RunCount: []uint32{math.MaxUint32, math.MaxUint32}, RunUnit: []uint32{1, 1}, RunSegment: []uint32{1, 1}, RunGen: []uint32{1, 1}, RunOffset: []uint64{0, 0}, RunLen: []uint64{1}},
		"offset overflows": {RunCount: []uint32{2}, RunUnit: []uint32{1}, RunSegment: []uint32{1}, RunGen: []uint32{1}, RunOffset: []uint64{math.MaxUint64 - 1}, RunLen: []uint64{4}},
		"unit missing":     {RunCount: []uint32{1}, RunSegment: []uint32{1}, RunGen: []uint32{1}, RunOffset: []uint64{0}, RunLen: []uint64{1}},
	} {
		if _, err := AddrsFromPB(a); !errors.Is(err, engine.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
}

// Runs decode without expanding and mean the same cells as AddrsFromPB
// gives; RunsToPB encodes what AddrsToPB would.
func TestRunsMatchAddrs(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	expand := func(runs []engine.CellRun) []engine.CellLoc {
		var out []engine.CellLoc
		for _, run := range runs {
			for k := range run.Count {
				out = append(out, run.Cell(k))
			}
		}
		return out
	}
	for trial := range 500 {
		locs := randomLocs(r, r.IntN(300)+1, trial%2 == 0)
		pb := AddrsToPB(locs)
		runs, ok, err := RunsFromPB(pb)
		if err != nil {
			t.Fatalf("trial %d: %v", trial, err)
		}
		if want := len(pb.RunCount) > 0 && len(pb.RunLen) == 1; ok != want {
			t.Fatalf("trial %d: runs %v, want %v", trial, ok, want)
		}
		if !ok {
			continue
		}
		if diff := cmp.Diff(locs, expand(runs)); diff != "" {
			t.Fatalf("trial %d: runs expand to other cells (-sent +got):\n%s", trial, diff)
		}
		back, err := AddrsFromPB(RunsToPB(runs))
		if err != nil || !cmp.Equal(locs, back) {
			t.Fatalf("trial %d: RunsToPB decodes to other cells: %v", trial, err)
		}
	}
	// Runs of different lengths encode one length per cell.
	runs := []engine.CellRun{
		{Unit: 1, First: engine.RemoteAddr{Segment: 1, Gen: 1, Offset: 0, Len: 8}, Count: 3},
		{Unit: 2, First: engine.RemoteAddr{Segment: 4, Gen: 2, Offset: 64, Len: 16}, Count: 2},
	}
	back, err := AddrsFromPB(RunsToPB(runs))
	if err != nil || !cmp.Equal(expand(runs), back) {
		t.Fatalf("mixed runs: %v, %v", back, err)
	}
	if _, ok, _ := RunsFromPB(RunsToPB(runs)); ok {
		t.Fatal("runs of different lengths decoded as runs")
	}
	for name, a := range map[string]*wirepb.Addrs{
		"empty run":        {RunCount: []uint32{0}, RunUnit: []uint32{1}, RunSegment: []uint32{1}, RunGen: []uint32{1}, RunOffset: []uint64{0}, RunLen: []uint64{1}},
		"run arrays":       {RunCount: []uint32{1, 1}, RunUnit: []uint32{1, 1}, RunSegment: []uint32{1}, RunGen: []uint32{1, 1}, RunOffset: []uint64{0, 0}, RunLen: []uint64{1}},
		"too many":         {RunCount: []uint32{math.MaxUint32, math.MaxUint32}, RunUnit: []uint32{1, 1}, RunSegment: []uint32{1, 1}, RunGen: []uint32{1, 1}, RunOffset: []uint64{0, 0}, RunLen: []uint64{1}},
		"offset overflows": {RunCount: []uint32{2}, RunUnit: []uint32{1}, RunSegment: []uint32{1}, RunGen: []uint32{1}, RunOffset: []uint64{math.MaxUint64 - 1}, RunLen: []uint64{4}},
		"unit missing":     {RunCount: []uint32{1}, RunSegment: []uint32{1}, RunGen: []uint32{1}, RunOffset: []uint64{0}, RunLen: []uint64{1}},
		"both forms":       {Offset: []uint64{1}, RunCount: []uint32{1}, RunUnit: []uint32{1}, RunSegment: []uint32{1}, RunGen: []uint32{1}, RunOffset: []uint64{0}, RunLen: []uint64{1}},
	} {
		if _, _, err := RunsFromPB(a); !errors.Is(err, engine.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
}

// An address whose end overflows is refused in the flat form as in the
// run form: its end past 2^64 would read as a small offset (a unit given
// such a keep range in a reconcile answer freed the bytes it named).
func TestFlatAddressOverflowRefused(t *testing.T) {
	a := &wirepb.Addrs{Segment: []uint32{1, 1}, Gen: []uint32{1, 1}, Offset: []uint64{0, 2048}, Len: []uint64{16, math.MaxUint64 - 1023}}
	_, err := RangesFromPB(a)
	require.ErrorIs(t, err, engine.ErrInvalid)
	require.ErrorContains(t, err, "address 1 overflows")
	a.Len[1] = math.MaxUint64 - 2048 // ends at 2^64-1 exactly: fits
	_, err = RangesFromPB(a)
	require.NoError(t, err)
}

// A WRITE reply's extents are counted before they are decoded: 20 bytes
// of run form claim MaxSegments extents, and decoding them allocated
// 96 MiB before the count was found wrong. It is refused as corrupt,
// naming both counts, having allocated next to nothing.
func TestWrittenExtentsRefusesClaimedCountBeforeDecoding(t *testing.T) {
	reply := &wirepb.WriteReply{Extents: &wirepb.Addrs{RunCount: []uint32{MaxSegments}, RunSegment: []uint32{1}, RunGen: []uint32{1}, RunOffset: []uint64{0}, RunLen: []uint64{0}}}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := WrittenExtents(reply, []uint64{0})
	runtime.ReadMemStats(&after)
	require.ErrorIs(t, err, engine.ErrCorrupt)
	require.ErrorContains(t, err, fmt.Sprintf("unit stored %d extents, asked for 1", MaxSegments))
	require.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(1<<20), "bytes allocated to refuse a 20-byte reply")
}
