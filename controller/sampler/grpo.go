package sampler

import (
	"cmp"
	"slices"

	"github.com/tqgo/tq/engine"
)

var (
	_ engine.CachingSampler   = (*GRPO)(nil)
	_ engine.JournaledSampler = (*GRPO)(nil)
	_ engine.RowForgetter     = (*GRPO)(nil)
	_ engine.BatchDropper     = (*GRPO)(nil)
	_ engine.TaskForgetter    = (*GRPO)(nil)
)

const grpoKind = "grpo"

// GRPO takes whole prompt groups: it returns BatchSize/n groups of n rows
// among the ready rows, and consumes them. A group is n rows a put made
// together (see [selectGroups]): the n responses to a prompt are put
// together, in one put or in one put of whole groups, and they are
// whatever global indexes that put got — indexes that clears released are
// reused, so they need not be consecutive.
//
// When the request carries a rank (SamplingOptions.HasRank), the answer is
// cached per (partition, task, DPRank, BatchIndex) and a later call with the
// same key returns it again, whatever is ready by then, until the task's
// consumption is reset ([GRPO.ForgetTask]) or the partition cleared.
//
// GRPO is safe for concurrent use.
type GRPO struct {
	n     int
	cache cache[rankKey, []uint64]
}

// NewGRPO returns a [GRPO] sampler for groups of n rows. n must be positive;
// otherwise the error wraps [engine.ErrInvalid].
func NewGRPO(n int) (*GRPO, error) {
	if n <= 0 {
		return nil, invalid(grpoKind, "group size %d is not positive", n)
	}
	return &GRPO{n: n}, nil
}

// N returns the group size.
func (g *GRPO) N() int { return g.n }

// Sample implements [engine.Sampler]. It returns an error wrapping
// [engine.ErrInvalid] when BatchSize is negative or not a multiple of the
// group size, when DPRank is negative, or when the ready set is not
// ascending.
func (g *GRPO) Sample(req engine.SampleRequest) (sampled, consumed []uint64, err error) {
	if err := checkBatch(grpoKind, req.BatchSize, g.n); err != nil {
		return nil, nil, err
	}
	opts := req.Options
	if opts.HasRank && opts.DPRank < 0 {
		return nil, nil, invalid(grpoKind, "negative dp rank %d", opts.DPRank)
	}
	key := rankKey{task: req.Task, rank: opts.DPRank, batch: opts.BatchIndex}
	if opts.HasRank {
		if rows, ok := g.cache.get(req.Partition, key); ok {
			sampled, consumed = pair(rows)
			return sampled, consumed, nil
		}
	}
	rows, err := selectGroups(grpoKind, req.Ready, req.Origin, req.BatchSize, g.n, req.Final)
	if err != nil || rows == nil {
		return nil, nil, err
	}
	if opts.HasRank {
		var added bool
		if rows, added = g.cache.add(req.Partition, key, rows); added {
			if err := journal(grpoKind, req, rowsEntry{Partition: req.Partition, Task: req.Task, DPRank: opts.DPRank, BatchIndex: opts.BatchIndex, Rows: rows}); err != nil {
				return nil, nil, err
			}
		}
	}
	sampled, consumed = pair(rows)
	return sampled, consumed, nil
}

// Cached implements [engine.CachingSampler]: it reports whether opts carries
// a rank and an answer for (partition, task, DPRank, BatchIndex) is cached.
func (g *GRPO) Cached(partition, task string, opts engine.SamplingOptions) bool {
	return opts.HasRank && g.cache.has(partition, rankKey{task: task, rank: opts.DPRank, batch: opts.BatchIndex})
}

// DropBatch implements [engine.BatchDropper].
func (g *GRPO) DropBatch(partition, task string, opts engine.SamplingOptions, journal func([]byte)) ([]uint64, error) {
	return dropRowsBatch(grpoKind, &g.cache, partition, task, opts, journal)
}

// ClearCache implements [engine.CachingSampler].
func (g *GRPO) ClearCache(partition string) { g.cache.clear(partition) }

// ForgetTask implements [engine.TaskForgetter].
func (g *GRPO) ForgetTask(partition, task string) {
	g.cache.forgetTask(partition, task, rankKey.taskOf)
}

// ForgetRows implements [engine.RowForgetter].
func (g *GRPO) ForgetRows(partition string, rows []uint64) { forgetRows(&g.cache, partition, rows) }

// ApplyEntry implements [engine.JournaledSampler].
func (g *GRPO) ApplyEntry(entry []byte) error { return applyRowsEntry(grpoKind, g.n, &g.cache, entry) }

// SaveState implements [engine.StatefulSampler].
func (g *GRPO) SaveState() ([]byte, error) { return saveRows(grpoKind, g.n, &g.cache) }

// LoadState implements [engine.StatefulSampler]. It replaces the cache only
// when the whole document is valid; otherwise it returns an error wrapping
// [engine.ErrCorrupt] and leaves the sampler as it was. A state saved with a
// different group size is corrupt.
func (g *GRPO) LoadState(state []byte) error {
	m, err := loadRows(grpoKind, g.n, state)
	if err != nil {
		return err
	}
	g.cache.replace(m)
	return nil
}

// checkBatch validates a batch size against the group size n.
func checkBatch(kind string, batch, n int) error {
	if batch < 0 {
		return invalid(kind, "negative batch size %d", batch)
	}
	if batch%n != 0 {
		return invalid(kind, "batch size %d is not a multiple of group size %d", batch, n)
	}
	return nil
}

// selectGroups returns the rows of the first batch/n groups of n among
// the ready rows, or nil when there are not that many; with partial (the
// request is final: no more rows will come), the whole groups there are
// when there are fewer. batch must be a non-negative multiple of n.
//
// Groups are n rows put together (origin; see [engine.RowOrigin]), each
// in its put's order; they come in the order a walk over the ready set, in
// global-index order, finds them whole (the order they were put, while
// puts get fresh indexes), those of puts of n or more rows first:
//
//   - A put of at least n rows is cut into groups at its rows 0, n, 2n, …
//     (a put of whole groups, each prompt's responses together, as
//     repeat-interleaving gives); its last rows, fewer than n, form none.
//   - Rows put fewer than n at a time (one response per put) are grouped as
//     the reference groups indexes: a window over them in the order they
//     were made takes n rows made one after another and moves past them,
//     or moves on by one past a gap. With n=3 and rows made 0 1 3 4 5 6 7
//     9 10 11 ready, a batch of 6 is 3 4 5 9 10 11.
//
// A group never holds rows of two puts of n or more rows, nor rows of such
// a put and another. Without origin (nil), or with n=1, the global index
// stands for the order rows were made, each row a put of its own, as in
// the reference. Rows whose origin is not known (Created 0) form no group.
func selectGroups(kind string, ready engine.ReadySet, origin func(uint64) engine.RowOrigin, batch, n int, partial bool) ([]uint64, error) {
	if batch == 0 || ready == nil || (!partial && ready.Len() < batch) || ready.Len() == 0 {
		return nil, nil
	}
	rows, err := findGroups(kind, ready, origin, n, batch)
	if err != nil || len(rows) == 0 || (!partial && len(rows) < batch) {
		return nil, err
	}
	return rows, nil
}

// findGroups returns the rows of the first groups of n among the ready
// rows (see selectGroups), at most limit rows (a multiple of n), group
// after group.
func findGroups(kind string, ready engine.ReadySet, origin func(uint64) engine.RowOrigin, n, limit int) ([]uint64, error) {
	if origin == nil || n == 1 {
		return findRuns(kind, ready, n, limit)
	}
	// Walking the ready set in global-index order: a row of a put of n or
	// more rows waits in pending for the rest of its group, which is
	// taken as soon as it is whole; the rows of smaller puts are grouped
	// by windows over them in the order they were made, as the walk goes
	// while that is the order it meets them in, else once it ends.
	const unset = ^uint64(0)
	var (
		out     = make([]uint64, 0, min(limit, ready.Len()))
		pending = map[uint64]*wholeGroup{} // by its first row's Created
		small   []madeRow
		smallG  []uint64 // groups of small puts' rows
		inOrder = true
		k       int // small[k:] not looked at yet
	)
	windows := func(k int) int {
		for ; k+n <= len(small) && len(out)+len(smallG) < limit; k++ {
			if isGroup(small[k:k+n], n) {
				for _, r := range small[k : k+n] {
					smallG = append(smallG, r.index)
				}
				k += n - 1
			}
		}
		return k
	}
	first, ordered := true, true
	var prev uint64
	un := uint64(n)
	ready.Ascend(func(i uint64) bool {
		if !first && i <= prev {
			ordered = false
			return false
		}
		first, prev = false, i
		o := origin(i)
		switch pos, size := uint64(o.Pos), uint64(o.Size); {
		case o.Created == 0:
		case size >= un:
			at := pos % un
			if pos-at+un > size { // the put's last rows, fewer than n
				break
			}
			start := o.Created - at
			g := pending[start]
			if g == nil {
				g = &wholeGroup{rows: make([]uint64, n)}
				for j := range g.rows {
					g.rows[j] = unset
				}
				pending[start] = g
			}
			if g.rows[at] != unset { // two rows claim one place
				break
			}
			g.rows[at] = i
			if g.have++; g.have == n {
				out = append(out, g.rows...)
				delete(pending, start)
			}
		default:
			if l := len(small); inOrder && l > 0 && o.Created <= small[l-1].Created {
				inOrder, smallG, k = false, smallG[:0], 0
				small = slices.Grow(small, ready.Len()-l) // all of them, to sort
			}
			small = append(small, madeRow{index: i, RowOrigin: o})
			if inOrder {
				k = windows(k)
			}
		}
		return len(out)+len(smallG) < limit
	})
	if !ordered {
		return nil, invalid(kind, "ready set is not in ascending order")
	}
	if !inOrder && len(out) < limit {
		slices.SortFunc(small, func(a, b madeRow) int { return cmp.Compare(a.Created, b.Created) })
		windows(0)
	}
	return append(out, smallG[:min(len(smallG), max(limit-len(out), 0))]...), nil
}

// wholeGroup is a group of a put of n or more rows, found in part: its
// rows by place (^0 for one not found yet) and how many are found.
type wholeGroup struct {
	rows []uint64
	have int
}

// madeRow is a ready row and where it came from.
type madeRow struct {
	index uint64
	engine.RowOrigin
}

// isGroup reports whether w, n rows in the order they were made, is a
// group (see selectGroups).
func isGroup(w []madeRow, n int) bool {
	h := w[0].RowOrigin
	whole := uint64(h.Size) >= uint64(n) // h's put holds whole groups
	if whole && (uint64(h.Pos)%uint64(n) != 0 || uint64(h.Pos)+uint64(n) > uint64(h.Size)) {
		return false
	}
	for j := 1; j < n; j++ {
		// Made one after another from a group's first row of a put of
		// whole groups, they are that group; otherwise each must come
		// from a put smaller than n.
		if w[j].Created != h.Created+uint64(j) || !whole && uint64(w[j].Size) >= uint64(n) {
			return false
		}
	}
	return true
}

// findRuns is findGroups by global index: it walks ready in ascending
// order and keeps the current run of consecutive indexes (shorter than
// n). A gap restarts the run at the new row; a run that reaches n rows is
// a group. This finds the same groups as the reference's sliding window,
// which moves by one row past a gap and by n rows past a group.
func findRuns(kind string, ready engine.ReadySet, n, limit int) ([]uint64, error) {
	rows := make([]uint64, 0, min(limit, ready.Len()))
	run := 0 // rows at the end of rows that form the current partial run
	var prev uint64
	first, ordered := true, true
	ready.Ascend(func(i uint64) bool {
		if !first && i <= prev {
			ordered = false
			return false
		}
		if run > 0 && i != prev+1 {
			rows = rows[:len(rows)-run]
			run = 0
		}
		rows = append(rows, i)
		run++
		if run == n {
			run = 0
		}
		first, prev = false, i
		return len(rows) < limit // a partial run means len(rows) < limit
	})
	if !ordered {
		return nil, invalid(kind, "ready set is not in ascending order")
	}
	return rows[:len(rows)-run], nil
}
