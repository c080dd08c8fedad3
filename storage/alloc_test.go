package storage

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// check verifies the allocator's internal structure: free ranges sorted,
// page-aligned, inside the segment and maximal (no two touching), the two
// trees holding the same ranges, slab bitmaps matching their counts, and
// free + used == size.
func (a *allocator) check() error {
	var prev span
	first := true
	var err error
	a.byOff.Ascend(func(s span) bool {
		switch {
		case s.len() <= 0 || s.off < 0 || s.end > a.size:
			err = fmt.Errorf("free range %v outside [0, %d)", s, a.size)
		case s.off%pageSize != 0 || s.end%pageSize != 0:
			err = fmt.Errorf("free range %v not page-aligned", s)
		case !first && prev.end >= s.off:
			err = fmt.Errorf("free ranges %v and %v touch or overlap (not merged)", prev, s)
		case !a.bySize.Has(s):
			err = fmt.Errorf("free range %v missing from the size tree", s)
		}
		prev, first = s, false
		return err == nil
	})
	if err != nil {
		return err
	}
	if a.byOff.Len() != a.bySize.Len() {
		return fmt.Errorf("offset tree has %d ranges, size tree %d", a.byOff.Len(), a.bySize.Len())
	}
	for c := range numClasses {
		for s := a.partial[c]; s != nil; s = s.next {
			if err := s.check(c); err != nil {
				return err
			}
			if !s.onList || s.nfree == 0 || s.nfree == s.nslot {
				return fmt.Errorf("slab at %d on the partial list with %d of %d slots free", s.off, s.nfree, s.nslot)
			}
		}
		if s := a.spare[c]; s != nil {
			if err := s.check(c); err != nil {
				return err
			}
			if s.onList || s.nfree != s.nslot {
				return fmt.Errorf("spare slab at %d has %d of %d slots free", s.off, s.nfree, s.nslot)
			}
		}
	}
	if got := a.freeBytes() + a.used; got != a.size {
		return fmt.Errorf("free %d + used %d = %d, want size %d", a.freeBytes(), a.used, got, a.size)
	}
	return nil
}

func (s *slab) check(c int) error {
	if s.class != c || s.slot != classSize(c) || s.off%pageSize != 0 {
		return fmt.Errorf("slab at %d: class %d slot %d on list of class %d", s.off, s.class, s.slot, c)
	}
	free := 0
	for i := range slabWords * 64 {
		inUse := s.used[i/64]&(1<<(i%64)) != 0
		if i >= s.nslot && !inUse {
			return fmt.Errorf("slab at %d: slot %d past the end is free", s.off, i)
		}
		if i < s.nslot && !inUse {
			free++
		}
	}
	if free != s.nfree {
		return fmt.Errorf("slab at %d: bitmap has %d free slots, count says %d", s.off, free, s.nfree)
	}
	return nil
}

func TestClassOf(t *testing.T) {
	tests := []struct {
		n     int64
		class int
		size  int64
	}{
		{1, 0, 64}, {64, 0, 64}, {65, 1, 128}, {128, 1, 128}, {1000, 4, 1024},
		{4096, 6, 4096}, {4097, 7, 8192}, {32 << 10, 9, 32 << 10},
	}
	for _, tt := range tests {
		if got := classOf(tt.n); got != tt.class {
			t.Errorf("classOf(%d) = %d, want %d", tt.n, got, tt.class)
		}
		if got := blockSize(tt.n); got != tt.size {
			t.Errorf("blockSize(%d) = %d, want %d", tt.n, got, tt.size)
		}
	}
	if got, want := blockSize(maxSmall+1), int64(36<<10); got != want {
		t.Errorf("blockSize(32 KiB + 1) = %d, want %d", got, want)
	}
}

// TestAllocatorFillSmall fills a segment with blocks of one class: slabs
// tile it exactly, and freeing everything gives back one range.
func TestAllocatorFillSmall(t *testing.T) {
	const size = 1 << 20
	for _, n := range []int64{1, 64, 100, 4096, 20000, maxSmall} {
		t.Run(fmt.Sprintf("size=%d", n), func(t *testing.T) {
			a := newAllocator(size)
			var blocks []block
			for {
				b, ok := a.alloc(n)
				if !ok {
					break
				}
				blocks = append(blocks, b)
			}
			if got, want := len(blocks), int(size/blockSize(n)); got != want {
				t.Fatalf("got %d blocks, want %d", got, want)
			}
			if err := a.check(); err != nil {
				t.Fatal(err)
			}
			for _, b := range blocks {
				a.free(b)
			}
			if err := a.check(); err != nil {
				t.Fatal(err)
			}
			if b, ok := a.alloc(size); !ok || b.off != 0 {
				t.Fatalf("alloc(whole segment) after freeing all = %+v, %v; want offset 0", b, ok)
			}
		})
	}
}

func TestAllocatorCoalesce(t *testing.T) {
	a := newAllocator(16 * pageSize * 4)
	var bs []block
	for range 4 {
		b, ok := a.alloc(16 * pageSize)
		if !ok {
			t.Fatal("alloc failed")
		}
		bs = append(bs, b)
	}
	// Free 1 and 3, then 2: the three merge with each other.
	for _, i := range []int{1, 3, 2} {
		a.free(bs[i])
		if err := a.check(); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := a.byOff.Len(), 1; got != want {
		t.Errorf("got %d free ranges, want %d", got, want)
	}
	if b, ok := a.alloc(48 * pageSize); !ok || b.off != bs[1].off {
		t.Errorf("alloc(48 pages) = %+v, %v; want offset %d", b, ok, bs[1].off)
	}
}

func TestAllocatorBestFit(t *testing.T) {
	a := newAllocator(64 * pageSize)
	var bs []block
	for _, pages := range []int64{10, 1, 20, 1, 5, 1} {
		b, ok := a.alloc(pages * pageSize)
		if !ok {
			t.Fatal("alloc failed")
		}
		bs = append(bs, b)
	}
	a.free(bs[0]) // hole of 10 pages
	a.free(bs[2]) // hole of 20 pages
	a.free(bs[4]) // hole of 5 pages; 26 pages free at the end
	if b, ok := a.alloc(9 * pageSize); !ok || b.off != bs[0].off {
		t.Errorf("alloc(9 pages) = %+v, %v; want the 10-page hole at %d", b, ok, bs[0].off)
	}
	if b, ok := a.alloc(5 * pageSize); !ok || b.off != bs[4].off {
		t.Errorf("alloc(5 pages) = %+v, %v; want the 5-page hole at %d", b, ok, bs[4].off)
	}
	if err := a.check(); err != nil {
		t.Fatal(err)
	}
}

// TestAllocatorSpareSlabs checks that the kept empty slabs are given back
// when a large block needs their space.
func TestAllocatorSpareSlabs(t *testing.T) {
	a := newAllocator(4 * slabSize)
	var small []block
	for c := range 4 {
		b, ok := a.alloc(classSize(c))
		if !ok {
			t.Fatal("alloc failed")
		}
		small = append(small, b)
	}
	for _, b := range small {
		a.free(b) // each slab becomes its class's spare
	}
	if a.slabs != 4 {
		t.Fatalf("got %d slabs, want 4 spares", a.slabs)
	}
	if _, ok := a.alloc(4 * slabSize); !ok {
		t.Fatal("alloc(whole segment) failed with only spare slabs left")
	}
	if a.slabs != 0 {
		t.Errorf("got %d slabs after the spares were needed, want 0", a.slabs)
	}
}

// TestAllocatorProperty runs random alloc/free sequences against a naive
// list of live blocks: no two live blocks overlap, every block is inside
// the segment and aligned, free + used == size, and after freeing
// everything the whole segment can be allocated again.
func TestAllocatorProperty(t *testing.T) {
	const size = 8 << 20
	for _, seed := range []uint64{1, 2, 3, 42} {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
			a := newAllocator(size)
			var live []block
			var used int64
			randSize := func() int64 {
				switch rng.IntN(10) {
				case 0, 1, 2, 3, 4: // small, log-uniform
					return 1 + rng.Int64N(int64(1)<<(6+rng.IntN(10)))
				case 5, 6, 7, 8:
					return maxSmall + 1 + rng.Int64N(256<<10)
				default:
					return 1 + rng.Int64N(2<<20)
				}
			}
			for op := range 6000 {
				if len(live) == 0 || rng.IntN(100) < 55 {
					n := randSize()
					b, ok := a.alloc(n)
					if !ok {
						continue
					}
					if err := validBlock(b, n, size); err != nil {
						t.Fatalf("op %d: alloc(%d): %v", op, n, err)
					}
					for _, o := range live {
						if b.off < o.off+o.size && o.off < b.off+b.size {
							t.Fatalf("op %d: alloc(%d) = [%d,%d) overlaps live [%d,%d)",
								op, n, b.off, b.off+b.size, o.off, o.off+o.size)
						}
					}
					live = append(live, b)
					used += b.size
				} else {
					i := rng.IntN(len(live))
					a.free(live[i])
					used -= live[i].size
					live[i] = live[len(live)-1]
					live = live[:len(live)-1]
				}
				if a.used != used {
					t.Fatalf("op %d: allocator counts %d bytes used, model %d", op, a.used, used)
				}
				if op%50 == 0 {
					if err := a.check(); err != nil {
						t.Fatalf("op %d: %v", op, err)
					}
				}
			}
			rng.Shuffle(len(live), func(i, j int) { live[i], live[j] = live[j], live[i] })
			for _, b := range live {
				a.free(b)
			}
			if err := a.check(); err != nil {
				t.Fatal(err)
			}
			if a.used != 0 {
				t.Fatalf("got %d bytes used after freeing everything, want 0", a.used)
			}
			if b, ok := a.alloc(size); !ok || b.off != 0 {
				t.Fatalf("alloc(whole segment) after freeing everything = %+v, %v", b, ok)
			}
		})
	}
}

func validBlock(b block, n, segSize int64) error {
	switch {
	case b.off < 0 || b.off+b.size > segSize:
		return fmt.Errorf("block [%d,%d) outside [0,%d)", b.off, b.off+b.size, segSize)
	case b.size < n || b.size != blockSize(n):
		return fmt.Errorf("block of %d bytes, want %d", b.size, blockSize(n))
	case n > maxSmall && (b.off%pageSize != 0 || b.slab != nil):
		return fmt.Errorf("large block at %d not page-aligned", b.off)
	case n <= maxSmall && b.off%min(b.size, pageSize) != 0:
		return fmt.Errorf("small block of %d at %d not aligned", b.size, b.off)
	}
	return nil
}
