package storage

// These measure the unit's bookkeeping (allocator, index, commit, leases),
// not bytes moved: nothing is copied, so they report ns/op and allocations
// without b.SetBytes.

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/tqgo/tq/engine"
)

func benchUnit(b *testing.B) *Unit {
	b.Helper()
	cfg := DefaultConfig()
	cfg.Capacity = 64 << 20
	cfg.SegmentSize = 16 << 20
	u, err := NewUnit(1, cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := u.Close(); err != nil {
			b.Error(err)
		}
	})
	return u
}

var benchSizes = []struct {
	name string
	n    int64
}{{"64B", 64}, {"4KiB", 4 << 10}, {"1MiB", 1 << 20}}

func BenchmarkReserveCommitFree(b *testing.B) {
	for _, size := range benchSizes {
		b.Run("size="+size.name, func(b *testing.B) {
			u := benchUnit(b)
			ctx := b.Context()
			sizes := []int64{size.n}
			cells := make([]engine.RemoteAddr, 1)
			b.ReportAllocs()
			for b.Loop() {
				r, err := u.Reserve(ctx, sizes)
				if err != nil {
					b.Fatal(err)
				}
				if err := r.Commit(); err != nil {
					b.Fatal(err)
				}
				cells[0] = r.Addr(0)
				if err := u.Free(cells); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkReplaceAmong does what a SET that overwrites a random one of
// 16384 keys of 1 KiB does to a unit: reserve, commit, lease the new cell
// once (a GET) and free the old one, with the index holding every
// other key's extent (the index's searches then leave the CPU's caches).
func BenchmarkReplaceAmong(b *testing.B) {
	const keys = 16384
	u := benchUnit(b)
	ctx := b.Context()
	sizes := []int64{1 << 10}
	live := make([]engine.RemoteAddr, keys)
	put := func() engine.RemoteAddr {
		r, err := u.Reserve(ctx, sizes)
		if err != nil {
			b.Fatal(err)
		}
		if err := r.Commit(); err != nil {
			b.Fatal(err)
		}
		return r.Addr(0)
	}
	for i := range live {
		live[i] = put()
	}
	rng := uint64(1)
	b.ReportAllocs()
	for b.Loop() {
		rng = rng*6364136223846793005 + 1442695040888963407
		i := rng >> 33 % keys
		a := put()
		l, err := u.Acquire([]engine.RemoteAddr{a})
		if err != nil {
			b.Fatal(err)
		}
		l.Release()
		if err := u.Free(live[i : i+1]); err != nil {
			b.Fatal(err)
		}
		live[i] = a
	}
}

func BenchmarkAcquireRelease(b *testing.B) {
	for _, ranges := range []int{1, 64} {
		b.Run(fmt.Sprintf("ranges=%d", ranges), func(b *testing.B) {
			u := benchUnit(b)
			sizes := make([]int64, ranges)
			for i := range sizes {
				sizes[i] = 4 << 10
			}
			r, err := u.Reserve(b.Context(), sizes)
			if err != nil {
				b.Fatal(err)
			}
			if err := r.Commit(); err != nil {
				b.Fatal(err)
			}
			addrs := make([]engine.RemoteAddr, ranges)
			for i := range addrs {
				addrs[i] = r.Addr(i)
			}
			b.ReportAllocs()
			for b.Loop() {
				l, err := u.Acquire(addrs)
				if err != nil {
					b.Fatal(err)
				}
				l.Release()
			}
		})
	}
}

// BenchmarkFreeCells frees an extent of 1024 rows cell by cell, in order,
// as a partition clear does; ns/op is per extent.
func BenchmarkFreeCells(b *testing.B) {
	const rows, rowSize = 1024, 256
	u := benchUnit(b)
	ctx := b.Context()
	sizes := []int64{rows * rowSize}
	cells := make([]engine.RemoteAddr, rows)
	b.ReportAllocs()
	for b.Loop() {
		r, err := u.Reserve(ctx, sizes)
		if err != nil {
			b.Fatal(err)
		}
		if err := r.Commit(); err != nil {
			b.Fatal(err)
		}
		a := r.Addr(0)
		for i := range cells {
			cells[i] = engine.RemoteAddr{Segment: a.Segment, Gen: a.Gen, Offset: a.Offset + uint64(i*rowSize), Len: rowSize}
		}
		if err := u.Free(cells); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReconcileScan measures the scans of a reconcile over a unit
// holding 16384 committed extents: a periodic one that finds nothing old
// enough to report (fences computed, nothing listed), and one full page
// of every extent.
func BenchmarkReconcileScan(b *testing.B) {
	u := benchUnit(b)
	sizes := make([]int64, 16384)
	for i := range sizes {
		sizes[i] = 1 << 10
	}
	r, err := u.Reserve(b.Context(), sizes)
	if err != nil {
		b.Fatal(err)
	}
	if err := r.Commit(); err != nil {
		b.Fatal(err)
	}
	b.Run("kind=periodic", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if rep, err := u.ReconcilePeriodic(time.Hour, 0); err != nil || len(rep.Extents) != 0 {
				b.Fatal(len(rep.Extents), err)
			}
		}
	})
	b.Run("kind=full", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if rep, _, err := u.ReconcileFull(0, time.Hour, len(sizes)); err != nil || len(rep.Extents) != len(sizes) {
				b.Fatal(len(rep.Extents), err)
			}
		}
	})
}

// BenchmarkFirstReserve is the reservation that maps a unit's first
// segment (64 MiB, Prefault on, as tq serve runs units): what a put that
// makes a unit grow waits. The segment is faulted in behind it.
func BenchmarkFirstReserve(b *testing.B) {
	cfg := DefaultConfig()
	cfg.Capacity = 64 << 20
	for b.Loop() {
		b.StopTimer()
		u, err := NewUnit(1, cfg)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		r, err := u.Reserve(context.Background(), []int64{1 << 10})
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		r.Abort()
		if err := u.Close(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}
