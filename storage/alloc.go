package storage

// The allocator hands out blocks of one segment's offset space [0, size).
// It is pure bookkeeping: it never touches the segment's bytes, so it is
// tested on its own against a reference model (alloc_test.go).
//
//	segment  [0 ..................................................... size)
//	         | slab 64K | large block | free | slab 64K | large block | free
//	slab     [64B][64B][64B] ...  one size class per slab, a bitmap of used slots
//
// Large blocks (more than maxSmall = 32 KiB) are rounded up to whole 4 KiB
// pages and placed best-fit from a free list of page-aligned ranges. The
// list is kept in two B-trees: by offset, to merge a freed range with the
// free ranges on either side, and by (length, offset), to find the smallest
// range that fits. So free ranges are always maximal: no two touch.
//
// Small blocks are rounded up to a power-of-two class from 64 B to 32 KiB
// and taken from a slab of that class: a 64 KiB large block cut into equal
// slots. A slot is aligned to its class size up to 4 KiB (slabs start on a
// page). Slabs with a free slot sit on their class's partial list. A slab
// that becomes empty goes back to the free ranges, except one spare per
// class kept to avoid carving and returning a slab on every call; spares are
// given back whenever a large block (or a new slab) does not fit, so freeing
// everything always coalesces back into one range.

import (
	"math/bits"

	"github.com/google/btree"
)

const (
	pageSize   = 4096     // alignment of large blocks and slabs
	minClass   = 64       // smallest small block
	maxSmall   = 32 << 10 // largest small block
	slabSize   = 64 << 10 // one slab of small blocks
	numClasses = 10       // 64 B, 128 B, …, 32 KiB
	slabWords  = slabSize / minClass / 64
	treeDegree = 16
)

// span is the byte range [off, end).
type span struct{ off, end int64 }

func (s span) len() int64 { return s.end - s.off }

// block is one allocation: its offset, its rounded size, and the slab it
// came from (nil for a large block).
type block struct {
	off  int64
	size int64
	slab *slab
}

// slab is a 64 KiB block cut into slots of one class.
type slab struct {
	off        int64
	class      int
	slot       int64 // slot size
	nslot      int
	nfree      int
	used       [slabWords]uint64 // bit i set: slot i in use (bits past nslot are set)
	prev, next *slab             // partial list links
	onList     bool
}

// allocator manages the offsets of one segment. It is not safe for
// concurrent use; the unit guards it with its mutex.
type allocator struct {
	size    int64
	used    int64 // bytes in live blocks (rounded sizes)
	byOff   *btree.BTreeG[span]
	bySize  *btree.BTreeG[span]
	partial [numClasses]*slab // slabs with a free slot, per class
	spare   [numClasses]*slab // one empty slab kept per class
	slabs   int               // slabs carved, spares included
}

func lessOff(a, b span) bool { return a.off < b.off }

func lessSize(a, b span) bool {
	if la, lb := a.len(), b.len(); la != lb {
		return la < lb
	}
	return a.off < b.off
}

// newAllocator returns an allocator over [0, size). size must be a positive
// multiple of pageSize.
func newAllocator(size int64) *allocator {
	a := &allocator{
		size:   size,
		byOff:  btree.NewG(treeDegree, lessOff),
		bySize: btree.NewG(treeDegree, lessSize),
	}
	a.insertFree(span{0, size})
	return a
}

// classOf returns the size class of a small request n (1 ≤ n ≤ maxSmall).
func classOf(n int64) int {
	if n <= minClass {
		return 0
	}
	return bits.Len64(uint64(n-1)) - 6
}

func classSize(c int) int64 { return minClass << c }

func roundUp(n, to int64) int64 { return (n + to - 1) / to * to }

func roundDown(n, to int64) int64 { return n / to * to }

// blockSize returns the bytes a request of n > 0 bytes occupies.
func blockSize(n int64) int64 {
	if n <= maxSmall {
		return classSize(classOf(n))
	}
	return roundUp(n, pageSize)
}

// footprint returns the smallest segment in which a request of n > 0 bytes
// fits: a slab for a small one, its page-rounded size for a large one.
func footprint(n int64) int64 {
	if n <= maxSmall {
		return slabSize
	}
	return roundUp(n, pageSize)
}

// alloc returns a block of at least n > 0 bytes, or false when none fits.
func (a *allocator) alloc(n int64) (block, bool) {
	if n <= 0 || n > a.size {
		return block{}, false
	}
	if n <= maxSmall {
		return a.allocSmall(classOf(n))
	}
	size := roundUp(n, pageSize)
	off, ok := a.takeRange(size)
	if !ok {
		return block{}, false
	}
	a.used += size
	return block{off: off, size: size}, true
}

// free returns b to the pool. b must come from alloc on this allocator and
// not have been freed already.
func (a *allocator) free(b block) {
	a.used -= b.size
	s := b.slab
	if s == nil {
		a.freeRange(span{b.off, b.off + b.size})
		return
	}
	i := int((b.off - s.off) / s.slot)
	w, bit := i/64, uint64(1)<<(i%64)
	if s.used[w]&bit == 0 {
		panic("storage: allocator: slot freed twice")
	}
	s.used[w] &^= bit
	s.nfree++
	if s.nfree == 1 {
		a.pushPartial(s)
	}
	if s.nfree < s.nslot {
		return
	}
	a.removePartial(s)
	if a.spare[s.class] == nil {
		a.spare[s.class] = s
		return
	}
	a.slabs--
	a.freeRange(span{s.off, s.off + slabSize})
}

// free reports the bytes that can still be handed out: free ranges plus the
// free slots of every slab.
func (a *allocator) freeBytes() int64 {
	var n int64
	a.byOff.Ascend(func(s span) bool {
		n += s.len()
		return true
	})
	for c := range numClasses {
		for s := a.partial[c]; s != nil; s = s.next {
			n += int64(s.nfree) * s.slot
		}
		if s := a.spare[c]; s != nil {
			n += slabSize
		}
	}
	return n
}

func (a *allocator) allocSmall(c int) (block, bool) {
	s := a.partial[c]
	if s == nil {
		if s = a.spare[c]; s != nil {
			a.spare[c] = nil
		} else {
			off, ok := a.takeRange(slabSize)
			if !ok {
				return block{}, false
			}
			s = newSlab(off, c)
			a.slabs++
		}
		a.pushPartial(s)
	}
	i := s.take()
	if s.nfree == 0 {
		a.removePartial(s)
	}
	a.used += s.slot
	return block{off: s.off + int64(i)*s.slot, size: s.slot, slab: s}, true
}

func newSlab(off int64, c int) *slab {
	s := &slab{off: off, class: c, slot: classSize(c)}
	s.nslot = int(slabSize / s.slot)
	s.nfree = s.nslot
	for i := s.nslot; i < slabWords*64; i++ {
		s.used[i/64] |= 1 << (i % 64)
	}
	return s
}

// take marks the lowest free slot used and returns its index. The slab must
// have a free slot.
func (s *slab) take() int {
	for w, word := range s.used {
		if word != ^uint64(0) {
			bit := bits.TrailingZeros64(^word)
			s.used[w] |= 1 << bit
			s.nfree--
			return w*64 + bit
		}
	}
	panic("storage: allocator: take from a full slab")
}

func (a *allocator) pushPartial(s *slab) {
	head := a.partial[s.class]
	s.prev, s.next, s.onList = nil, head, true
	if head != nil {
		head.prev = s
	}
	a.partial[s.class] = s
}

func (a *allocator) removePartial(s *slab) {
	if !s.onList {
		return
	}
	if s.prev != nil {
		s.prev.next = s.next
	} else {
		a.partial[s.class] = s.next
	}
	if s.next != nil {
		s.next.prev = s.prev
	}
	s.prev, s.next, s.onList = nil, nil, false
}

// takeRange removes size bytes from the smallest free range that holds
// them, giving back spare slabs first if nothing fits.
func (a *allocator) takeRange(size int64) (int64, bool) {
	r, ok := a.bestFit(size)
	if !ok {
		if !a.releaseSpares() {
			return 0, false
		}
		if r, ok = a.bestFit(size); !ok {
			return 0, false
		}
	}
	a.deleteFree(r)
	if r.len() > size {
		a.insertFree(span{r.off + size, r.end})
	}
	return r.off, true
}

func (a *allocator) bestFit(size int64) (span, bool) {
	var got span
	found := false
	a.bySize.AscendGreaterOrEqual(span{0, size}, func(s span) bool {
		got, found = s, true
		return false
	})
	return got, found
}

// releaseSpares gives every spare slab back to the free ranges and reports
// whether there was one.
func (a *allocator) releaseSpares() bool {
	released := false
	for c, s := range a.spare {
		if s != nil {
			a.spare[c] = nil
			a.slabs--
			a.freeRange(span{s.off, s.off + slabSize})
			released = true
		}
	}
	return released
}

// freeRange adds r to the free ranges, merged with a free range ending at
// r.off and one starting at r.end.
func (a *allocator) freeRange(r span) {
	var prev, next span
	foundPrev, foundNext := false, false
	a.byOff.DescendLessOrEqual(span{off: r.off}, func(s span) bool {
		prev, foundPrev = s, true
		return false
	})
	a.byOff.AscendGreaterOrEqual(span{off: r.off + 1}, func(s span) bool {
		next, foundNext = s, true
		return false
	})
	if foundPrev && prev.end > r.off || foundNext && next.off < r.end {
		panic("storage: allocator: range freed twice")
	}
	if foundPrev && prev.end == r.off {
		a.deleteFree(prev)
		r.off = prev.off
	}
	if foundNext && next.off == r.end {
		a.deleteFree(next)
		r.end = next.end
	}
	a.insertFree(r)
}

func (a *allocator) insertFree(r span) {
	a.byOff.ReplaceOrInsert(r)
	a.bySize.ReplaceOrInsert(r)
}

func (a *allocator) deleteFree(r span) {
	a.byOff.Delete(r)
	a.bySize.Delete(r)
}
