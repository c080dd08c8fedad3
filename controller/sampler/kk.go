package sampler

// Karmarkar–Karp (the largest differencing method) for k-way partitioning,
// following verl's seqlen_balancing.karmarkar_karp so that the same inputs
// give the same partitions.
//
// Every item starts as a state: k partitions, sorted by sum from largest to
// smallest, with the item in one of them (with equalSize, k items of
// neighbouring length start together, one per partition). The heap pops the
// state with the largest spread (largest sum minus smallest sum) first. Two
// popped states merge by joining the largest partition of one with the
// smallest of the other, the second largest with the second smallest, and
// so on, which cancels as much of both spreads as possible. The last state
// left is the answer.

import (
	"cmp"
	"container/heap"
	"fmt"
	"slices"

	"github.com/tqgo/tq/engine"
)

// KarmarkarKarp splits items with the given lengths into k partitions whose
// length sums are close to each other, using the largest differencing method.
// It returns k lists of item positions (indexes into lengths), each sorted
// ascending and none empty; the partitions are ordered from the largest sum
// to the smallest. With equalSize every partition gets len(lengths)/k items.
//
// It returns an error wrapping [engine.ErrInvalid] when k is not positive,
// when there are fewer items than k, when equalSize is set and the items do
// not divide evenly by k, or when a length is negative.
func KarmarkarKarp(lengths []int64, k int, equalSize bool) ([][]int, error) {
	const kind = "karmarkar-karp"
	switch {
	case k <= 0:
		return nil, invalid(kind, "%d partitions", k)
	case len(lengths) < k:
		return nil, invalid(kind, "%d items for %d partitions", len(lengths), k)
	case equalSize && len(lengths)%k != 0:
		return nil, invalid(kind, "%d items do not split equally into %d partitions", len(lengths), k)
	}
	for i, l := range lengths {
		if l < 0 {
			return nil, invalid(kind, "item %d has negative length %d", i, l)
		}
	}

	order := make([]int, len(lengths))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int {
		return cmp.Or(cmp.Compare(lengths[a], lengths[b]), cmp.Compare(a, b))
	})

	var h kkHeap
	step := 1
	if equalSize {
		step = k
	}
	for off := 0; off < len(order); off += step {
		h = append(h, newKKState(lengths, order[off:off+step], k))
	}
	heap.Init(&h)
	for h.Len() > 1 {
		a := heap.Pop(&h).(*kkState)
		b := heap.Pop(&h).(*kkState)
		a.merge(b)
		heap.Push(&h, a)
	}

	final := h[0]
	parts := make([][]int, k)
	for i, s := range final.sets {
		if len(s.items) == 0 {
			// Unreachable with non-negative lengths and at least k items.
			return nil, fmt.Errorf("%s: partition %d is empty: %w", kind, i, engine.ErrInvalid)
		}
		if equalSize && len(s.items)*k != len(lengths) {
			return nil, fmt.Errorf("%s: partition %d has %d items, want %d: %w",
				kind, i, len(s.items), len(lengths)/k, engine.ErrInvalid)
		}
		parts[i] = slices.Sorted(slices.Values(s.items))
	}
	return parts, nil
}

// kkSet is one partition of a state: item positions and their length sum.
type kkSet struct {
	sum   int64
	items []int
}

// compareSets orders sets by sum, then item count, then item positions, as
// verl's Set.__lt__ does.
func compareSets(a, b *kkSet) int {
	if c := cmp.Compare(a.sum, b.sum); c != 0 {
		return c
	}
	if c := cmp.Compare(len(a.items), len(b.items)); c != 0 {
		return c
	}
	return slices.Compare(a.items, b.items)
}

// kkState is k partitions, kept sorted from largest to smallest.
type kkState struct {
	sets []*kkSet
}

func newKKState(lengths []int64, items []int, k int) *kkState {
	s := &kkState{sets: make([]*kkSet, k)}
	for i := range s.sets {
		s.sets[i] = &kkSet{}
	}
	for i, it := range items {
		s.sets[i].items = append(s.sets[i].items, it)
		s.sets[i].sum += lengths[it]
	}
	s.sort()
	return s
}

func (s *kkState) sort() {
	slices.SortStableFunc(s.sets, func(a, b *kkSet) int { return compareSets(b, a) })
}

func (s *kkState) spread() int64 {
	return s.sets[0].sum - s.sets[len(s.sets)-1].sum
}

// merge joins o into s, pairing s's largest partition with o's smallest.
func (s *kkState) merge(o *kkState) {
	k := len(s.sets)
	for i, set := range s.sets {
		other := o.sets[k-1-i]
		set.items = append(set.items, other.items...)
		set.sum += other.sum
	}
	s.sort()
}

// kkHeap pops the state with the largest spread first; on equal spreads, the
// one with the larger largest partition.
type kkHeap []*kkState

func (h kkHeap) Len() int { return len(h) }
func (h kkHeap) Less(i, j int) bool {
	a, b := h[i], h[j]
	if sa, sb := a.spread(), b.spread(); sa != sb {
		return sa > sb
	}
	return compareSets(a.sets[0], b.sets[0]) > 0
}
func (h kkHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *kkHeap) Push(x any)   { *h = append(*h, x.(*kkState)) }
func (h *kkHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return x
}
