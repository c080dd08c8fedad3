package controller

import (
	"fmt"
	"math/bits"
	"slices"
	"sync"

	"github.com/tqgo/tq/engine"
)

// indexAllocator hands out global row indexes shared by all partitions.
// Released indexes are reused first, oldest release first (FIFO); then
// loose ones (free below next without a release: see unalloc), lowest
// first; new ones are minted from a counter. It is safe for concurrent
// use.
//
// A replay of the log must leave the allocator as the live one left it
// (the next inserts get the same indexes), though the log records only
// the indexes partitions took and released: so every free index below
// next is in the queue where a release put it, or loose, which a replay
// works out as what is neither in use nor queued (rebuild, restore); and
// the index below next is in use or queued, never loose, as a replay's
// next is one past the highest index it saw taken: a given-back
// pre-allocation takes next back past the loose ones at the top
// (unalloc).
type indexAllocator struct {
	mu       sync.Mutex
	next     uint64   // next never-used index
	reusable []uint64 // FIFO queue of released indexes; head at reusable[head] (stale entries too during replay: see markUsed)
	head     int
	// released counts the indexes release queued, and so numbers its
	// releases: reusable[k] is release number released-(len(reusable)-k),
	// but for the first len(backSeqs) from head on, which unalloc put
	// back at the queue's head and whose numbers backSeqs holds (lower
	// than the rest's: see unalloc).
	released int
	backSeqs []int
	// loose holds the free indexes below next that no release queued,
	// as ascending runs, head at loose[looseHead]: a state file may set
	// next to billions with few indexes in use, and the runs cost what
	// is in use or queued, not next.
	loose     []span
	looseHead int
	inUse     bitset // indexes handed out and not released
	used      int    // how many
	// work counts the queue entries replay walks to drop stale ones
	// (standing): a test reads it to see that a replay costs the indexes
	// it marks, not indexes × the queue.
	work int
}

func newIndexAllocator() *indexAllocator { return &indexAllocator{} }

// span is the indexes [lo, hi).
type span struct{ lo, hi uint64 }

// maxIndexes bounds the index space a checkpoint or the log may claim.
const maxIndexes = 1 << 32

// bitset is a set of indexes: indexes are minted from a counter and
// reused, so they stay dense and a bit each is the cheapest way to know
// which are taken. The bits are in pages of 64 Ki indexes, made as
// indexes arrive, so that a lone high index (a state file's or a log's)
// costs a page and a directory entry per page below it, not a bit per
// index. One slice holds it all, so copying the slice copies the set:
// b[0] is the directory's length d, b[1+p] where page p's words start
// in b (0: no page), and the pages follow the directory.
type bitset []uint64

const (
	pageShift = 16
	pageWords = 1 << (pageShift - 6)
)

// page returns page p's words, nil where it has none.
func (b bitset) page(p uint64) []uint64 {
	if len(b) == 0 || p >= b[0] || b[1+p] == 0 {
		return nil
	}
	return b[b[1+p]:][:pageWords]
}

func (b bitset) has(i uint64) bool {
	if p := i >> pageShift; len(b) > 0 && p < b[0] {
		if at := b[1+p]; at != 0 {
			return b[at+i>>6&(pageWords-1)]&(1<<(i&63)) != 0
		}
	}
	return false
}

// setAll sets each of idx: alloc's hot path, its pages mostly made.
func (b *bitset) setAll(idx []uint64) {
	s := *b
	for _, i := range idx {
		if len(s) > 0 && i>>pageShift < s[0] {
			if at := s[1+i>>pageShift]; at != 0 {
				s[at+i>>6&(pageWords-1)] |= 1 << (i & 63)
				continue
			}
		}
		b.set(i)
		s = *b
	}
}

func (b *bitset) set(i uint64) {
	p := i >> pageShift
	if len(*b) == 0 || p >= (*b)[0] {
		b.grow(p + 1)
	}
	s := *b
	at := s[1+p]
	if at == 0 {
		at = uint64(len(s))
		s[1+p] = at
		s = append(s, make([]uint64, pageWords)...)
		*b = s
	}
	s[at+i>>6&(pageWords-1)] |= 1 << (i & 63)
}

// clear removes i and reports whether it was there.
func (b bitset) clear(i uint64) bool {
	if p := i >> pageShift; len(b) > 0 && p < b[0] {
		if at := b[1+p]; at != 0 {
			w, bit := &b[at+i>>6&(pageWords-1)], uint64(1)<<(i&63)
			had := *w&bit != 0
			*w &^= bit
			return had
		}
	}
	return false
}

// grow makes the directory at least d long, doubling it up to the
// pages of maxIndexes (so that pages move a bounded number of times as
// indexes grow).
func (b *bitset) grow(d uint64) {
	old := uint64(0)
	if len(*b) > 0 {
		old = (*b)[0]
	}
	d = max(d, min(2*old, maxIndexes>>pageShift))
	nb := make(bitset, 1+d, 1+d+uint64(len(*b))-min(1+old, uint64(len(*b))))
	nb[0] = d
	for p := uint64(0); p < old; p++ {
		if at := (*b)[1+p]; at != 0 {
			nb[1+p] = at + d - old
		}
	}
	if old > 0 {
		nb = append(nb, (*b)[1+old:]...)
	}
	*b = nb
}

// alloc returns n indexes: reused ones first, then fresh ones.
func (a *indexAllocator) alloc(n int) ([]uint64, error) {
	out, _, err := a.allocFrom(n, false)
	return out, err
}

// taken says where the indexes an alloc returned came from: the first
// queued from the reuse queue (seqs: their release counts, for unalloc to
// put them back in the queue's order), the next loose from the loose
// ones, the rest minted.
type taken struct {
	queued, loose int
	seqs          []int
}

// allocReused is alloc, and tells where the indexes came from (for
// unalloc).
func (a *indexAllocator) allocReused(n int) ([]uint64, taken, error) {
	return a.allocFrom(n, true)
}

// allocFrom is alloc; with seqs, the release numbers of the queued ones
// too (taken.seqs).
func (a *indexAllocator) allocFrom(n int, withSeqs bool) ([]uint64, taken, error) {
	if n <= 0 {
		return nil, taken{}, fmt.Errorf("allocate %d rows: count must be positive: %w", n, engine.ErrInvalid)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	// Minting stops at maxIndexes, past which no state file or log would
	// load.
	if a.next+uint64(n) > maxIndexes {
		free := uint64(len(a.reusable)-a.head) + maxIndexes - a.next
		for _, s := range a.loose[a.looseHead:] {
			free += s.hi - s.lo
		}
		if uint64(n) > free {
			return nil, taken{}, fmt.Errorf("allocate %d rows: %d of the %d indexes are free: %w", n, free, uint64(maxIndexes), engine.ErrCapacity)
		}
	}
	out := make([]uint64, 0, n)
	var seqs []int
	for k := a.head; withSeqs && k < len(a.reusable) && len(seqs) < n; k++ {
		if j := k - a.head; j < len(a.backSeqs) {
			seqs = append(seqs, a.backSeqs[j])
		} else {
			seqs = append(seqs, a.released-(len(a.reusable)-k))
		}
	}
	a.backSeqs = a.backSeqs[min(n, len(a.reusable)-a.head, len(a.backSeqs)):]
	a.reusable, a.head = takeFIFO(&out, n, a.reusable, a.head)
	queued := len(out)
	a.takeLoose(&out, n)
	t := taken{queued: queued, loose: len(out) - queued, seqs: seqs}
	for len(out) < n {
		out = append(out, a.next)
		a.next++
	}
	a.inUse.setAll(out)
	a.used += len(out)
	return out, t, nil
}

// takeFIFO moves entries of q from head on to *out until it holds n, and
// returns q and its head, compacted once most of q is taken.
func takeFIFO(out *[]uint64, n int, q []uint64, head int) ([]uint64, int) {
	for len(*out) < n && head < len(q) {
		*out = append(*out, q[head])
		head++
	}
	if head == len(q) {
		return q[:0], 0
	}
	if head > 1024 && head > len(q)/2 {
		return append(q[:0], q[head:]...), 0
	}
	return q, head
}

// takeLoose moves loose indexes, lowest first, to *out until it holds n.
func (a *indexAllocator) takeLoose(out *[]uint64, n int) {
	for len(*out) < n && a.looseHead < len(a.loose) {
		s := &a.loose[a.looseHead]
		for len(*out) < n && s.lo < s.hi {
			*out = append(*out, s.lo)
			s.lo++
		}
		if s.lo == s.hi {
			a.looseHead++
		}
	}
	switch h := a.looseHead; {
	case h == len(a.loose):
		a.loose, a.looseHead = a.loose[:0], 0
	case h > 1024 && h > len(a.loose)/2:
		a.loose, a.looseHead = append(a.loose[:0], a.loose[h:]...), 0
	}
}

// release returns indexes to the tail of the reuse queue, in the given
// order. Indexes not in use are ignored (clears are idempotent).
func (a *indexAllocator) release(idx []uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, i := range idx {
		if !a.inUse.clear(i) {
			continue
		}
		a.used--
		a.reusable = append(a.reusable, i)
		a.released++
	}
}

// mergeLoose returns the runs of runs and idx (ascending, none in both)
// together, adjacent ones joined.
func mergeLoose(runs []span, idx []uint64) []span {
	out := make([]span, 0, len(runs)+len(idx))
	add := func(s span) {
		if n := len(out); n > 0 && out[n-1].hi == s.lo {
			out[n-1].hi = s.hi
		} else {
			out = append(out, s)
		}
	}
	for len(runs) > 0 || len(idx) > 0 {
		if len(idx) == 0 || len(runs) > 0 && runs[0].lo < idx[0] {
			add(runs[0])
			runs = runs[1:]
		} else {
			add(span{idx[0], idx[0] + 1})
			idx = idx[1:]
		}
	}
	return out
}

// unalloc undoes an alloc that returned idx, taken from where t says,
// for a new partition whose first request was refused (its
// pre-allocation), as a replay of the log, which never sees them, leaves
// the allocator: the queued ones go back into the queue in the order of
// their releases, among the ones other given-back pre-allocations put
// back at its head (every index queued since was released after them,
// so behind them); the loose and minted ones are loose, and next goes
// back past the loose ones just below it (a replay's next is past the
// indexes it saw taken, and no other). Indexes not in use are ignored.
func (a *indexAllocator) unalloc(idx []uint64, t taken) {
	a.mu.Lock()
	defer a.mu.Unlock()
	free := func(i uint64) bool {
		if !a.inUse.clear(i) {
			return false
		}
		a.used--
		return true
	}
	var loose []uint64
	for _, i := range idx[t.queued:] {
		if free(i) {
			loose = append(loose, i)
		}
	}
	if len(loose) > 0 {
		slices.Sort(loose)
		a.loose, a.looseHead = mergeLoose(a.loose[a.looseHead:], loose), 0
		for len(a.loose) > 0 && a.loose[len(a.loose)-1].hi == a.next {
			a.next = a.loose[len(a.loose)-1].lo
			a.loose = a.loose[:len(a.loose)-1]
		}
	}
	// The given-back ones at the head (backSeqs) and these, merged by
	// release count; the rest of the queue follows.
	nb := len(a.backSeqs)
	var back []uint64
	var seqs []int
	k := 0
	for j, i := range idx[:t.queued] {
		if !free(i) {
			continue
		}
		for ; k < nb && a.backSeqs[k] < t.seqs[j]; k++ {
			back, seqs = append(back, a.reusable[a.head+k]), append(seqs, a.backSeqs[k])
		}
		back, seqs = append(back, i), append(seqs, t.seqs[j])
	}
	if len(back) > 0 {
		for ; k < nb; k++ {
			back, seqs = append(back, a.reusable[a.head+k]), append(seqs, a.backSeqs[k])
		}
		a.reusable = append(back, a.reusable[a.head+nb:]...)
		a.head, a.backSeqs = 0, seqs
	}
}

type indexState struct {
	Next     uint64   `json:"next"`
	Reusable []uint64 `json:"reusable"`
}

// snapshot returns next and the reuse queue, what a state file keeps:
// the loose indexes are the others below next not in use, which restore
// works out.
func (a *indexAllocator) snapshot() indexState {
	a.mu.Lock()
	defer a.mu.Unlock()
	return indexState{Next: a.next, Reusable: append([]uint64{}, a.reusable[a.head:]...)}
}

func (a *indexAllocator) stats() (allocated, reusable int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	reusable = len(a.reusable) - a.head
	for _, s := range a.loose[a.looseHead:] {
		reusable += int(s.hi - s.lo)
	}
	return a.used, reusable
}

// markUsed records indexes as handed out (replaying the durable state):
// next moves past them. It leaves them in the reuse queue: release puts an
// index it frees again at the queue's tail, so an entry stands only where
// it is its index's last and the index is free (standing), and rebuild
// drops the rest once replay ends. Searching the queue for each index
// instead cost the queue's length per index: a replay whose log took
// reused indexes in another order than the queue's (a pre-allocation
// logged after later inserts) was quadratic. When stale entries could
// outnumber the standing ones (the queue is longer than twice next), they
// go at once, so the queue stays bounded by the indexes.
//
// An index at or beyond maxIndexes is the log's damage: refused before
// anything changes, as a state file's is.
func (a *indexAllocator) markUsed(idx []uint64) error {
	for _, i := range idx {
		if i >= maxIndexes {
			return corrupt("index %d is not below %d", i, uint64(maxIndexes))
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, i := range idx {
		if a.inUse.has(i) {
			continue
		}
		a.inUse.set(i)
		a.used++
		a.next = max(a.next, i+1)
	}
	if len(a.reusable)-a.head > 2*int(a.next)+1024 {
		a.reusable, _ = a.standing(nil)
		a.head = 0
	}
	return nil
}

// standing returns the entries of the reuse queue that stand, in order,
// and the set of their indexes: an index's last entry, where it is below
// next, free and not in held (see markUsed).
func (a *indexAllocator) standing(held bitset) ([]uint64, bitset) {
	var queued bitset
	q := make([]uint64, 0, min(len(a.reusable)-a.head, int(a.next)))
	for k := len(a.reusable) - 1; k >= a.head; k-- {
		i := a.reusable[k]
		if i < a.next && !a.inUse.has(i) && !held.has(i) && !queued.has(i) {
			queued.set(i)
			q = append(q, i)
		}
	}
	a.work += len(a.reusable) - a.head
	slices.Reverse(q)
	return q, queued
}

// restore starts from a state file's allocator: next, the reuse queue,
// and the indexes its partitions hold; the other indexes below next are
// loose. (A state file from before loose indexes has them in its queue.)
func (a *indexAllocator) restore(next uint64, reusable, used []uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.next, a.reusable, a.head = next, slices.Clone(reusable), 0
	a.released, a.backSeqs = len(a.reusable), nil
	a.inUse, a.used = nil, len(used)
	for _, i := range used {
		a.inUse.set(i)
		a.next = max(a.next, i+1)
	}
	var queued bitset
	for _, i := range a.reusable {
		queued.set(i)
	}
	a.loose, a.looseHead = a.looseBelowNext(a.inUse, queued), 0
}

// rebuild makes the allocator agree with the indexes the partitions hold
// (used) once the durable state is replayed: in use are exactly those;
// the reuse queue keeps its standing entries (see markUsed) in order; the
// other free indexes below next are loose.
func (a *indexAllocator) rebuild(used []uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var inUse bitset
	for _, i := range used {
		inUse.set(i)
		a.next = max(a.next, i+1)
	}
	q, queued := a.standing(inUse)
	a.loose, a.looseHead = a.looseBelowNext(inUse, queued), 0
	a.inUse, a.used, a.reusable, a.head = inUse, len(used), q, 0
	a.released, a.backSeqs = len(q), nil
}

// looseBelowNext returns the indexes below next neither in use nor
// queued, as ascending runs: it walks the pages the sets hold, and the
// rest up to next is one run.
func (a *indexAllocator) looseBelowNext(inUse, queued bitset) []span {
	var out []span
	add := func(lo, hi uint64) {
		lo, hi = min(lo, a.next), min(hi, a.next)
		if n := len(out); n > 0 && out[n-1].hi == lo {
			out[n-1].hi = hi
		} else if lo < hi {
			out = append(out, span{lo, hi})
		}
	}
	pages := uint64(0)
	for _, b := range []bitset{inUse, queued} {
		if len(b) > 0 {
			pages = max(pages, b[0])
		}
	}
	i := uint64(0)
	for p := uint64(0); p < pages && i < a.next; p++ {
		u, q := inUse.page(p), queued.page(p)
		if u == nil && q == nil {
			add(i, i+1<<pageShift)
			i += 1 << pageShift
			continue
		}
		for w := range pageWords {
			var taken uint64
			if u != nil {
				taken = u[w]
			}
			if q != nil {
				taken |= q[w]
			}
			for free := ^taken; free != 0; {
				lo := bits.TrailingZeros64(free)
				n := bits.TrailingZeros64(^(free >> lo))
				add(i+uint64(lo), i+uint64(lo+n))
				free &^= (1<<n - 1) << lo
			}
			i += 64
		}
	}
	add(i, a.next)
	return out
}

// indexSet is a set of global indexes as a bitmap in 64 Ki-index pages,
// made as indexes arrive: checking a million rows of a state file for
// repeats costs a few pages, not a million map entries.
type indexSet struct {
	pages map[uint64]*[1024]uint64
}

// add adds gi and reports whether it was new.
func (s *indexSet) add(gi uint64) bool {
	if s.pages == nil {
		s.pages = make(map[uint64]*[1024]uint64)
	}
	pg := s.pages[gi>>16]
	if pg == nil {
		pg = new([1024]uint64)
		s.pages[gi>>16] = pg
	}
	w, bit := &pg[gi>>6&1023], uint64(1)<<(gi&63)
	if *w&bit != 0 {
		return false
	}
	*w |= bit
	return true
}

func (s *indexSet) has(gi uint64) bool {
	pg := s.pages[gi>>16]
	return pg != nil && pg[gi>>6&1023]&(1<<(gi&63)) != 0
}
