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
	inUse    map[uint64]struct{}
}

func newIndexAllocator() *indexAllocator {
	return &indexAllocator{inUse: make(map[uint64]struct{})}
}

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
		a.inUse[i] = struct{}{}
	}
	return out, nil
}

// release returns indexes to the tail of the reuse queue, in the given
// order. Indexes not in use are ignored (clears are idempotent).
func (a *indexAllocator) release(idx []uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, i := range idx {
		if _, ok := a.inUse[i]; !ok {
			continue
		}
		delete(a.inUse, i)
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
	return len(a.inUse), len(a.reusable) - a.head
}
