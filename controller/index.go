package controller

import (
	"fmt"
	"sync"

	"github.com/tqgo/tq/engine"
)

// indexAllocator hands out global row indexes shared by all partitions.
// Released indexes are reused first, oldest release first (FIFO); new ones
// are minted from a counter. It is safe for concurrent use.
type indexAllocator struct {
	mu       sync.Mutex
	next     uint64   // next never-used index
	reusable []uint64 // FIFO queue of released indexes; head at reusable[head]
	head     int
	inUse    bitset // indexes handed out and not released
	used     int    // how many
}

func newIndexAllocator() *indexAllocator { return &indexAllocator{} }

// maxIndexes bounds the index space a checkpoint may claim (its bitset
// takes one bit per index up to the highest in use).
const maxIndexes = 1 << 32

// bitset is a set of indexes below a few billion: indexes are minted from
// a counter and reused, so they stay dense and a bit each is the cheapest
// way to know which are taken.
type bitset []uint64

func (b bitset) has(i uint64) bool { return i/64 < uint64(len(b)) && b[i/64]&(1<<(i%64)) != 0 }

func (b *bitset) set(i uint64) {
	w := i / 64
	if w >= uint64(len(*b)) {
		*b = append(*b, make([]uint64, int(w)+1-len(*b))...)
	}
	(*b)[w] |= 1 << (i % 64)
}

func (b bitset) clear(i uint64) { b[i/64] &^= 1 << (i % 64) }

// alloc returns n indexes: reused ones first, then fresh ones.
func (a *indexAllocator) alloc(n int) ([]uint64, error) {
	if n <= 0 {
		return nil, fmt.Errorf("allocate %d rows: count must be positive: %w", n, engine.ErrInvalid)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]uint64, 0, n)
	for len(out) < n && a.head < len(a.reusable) {
		out = append(out, a.reusable[a.head])
		a.head++
	}
	if a.head == len(a.reusable) {
		a.reusable, a.head = a.reusable[:0], 0
	} else if a.head > 1024 && a.head > len(a.reusable)/2 {
		a.reusable = append(a.reusable[:0], a.reusable[a.head:]...)
		a.head = 0
	}
	for len(out) < n {
		out = append(out, a.next)
		a.next++
	}
	for _, i := range out {
		a.inUse.set(i)
	}
	a.used += len(out)
	return out, nil
}

// release returns indexes to the tail of the reuse queue, in the given
// order. Indexes not in use are ignored (clears are idempotent).
func (a *indexAllocator) release(idx []uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, i := range idx {
		if !a.inUse.has(i) {
			continue
		}
		a.inUse.clear(i)
		a.used--
		a.reusable = append(a.reusable, i)
	}
}

type indexState struct {
	Next     uint64   `json:"next"`
	Reusable []uint64 `json:"reusable"`
}

func (a *indexAllocator) snapshot() indexState {
	a.mu.Lock()
	defer a.mu.Unlock()
	return indexState{Next: a.next, Reusable: append([]uint64{}, a.reusable[a.head:]...)}
}

func (a *indexAllocator) stats() (allocated, reusable int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.used, len(a.reusable) - a.head
}
