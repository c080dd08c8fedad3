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
	if err := g.Check(req); err != nil {
		return nil, nil, err
	}
	opts := req.Options
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

// Check returns the error [GRPO.Sample] returns for req whatever rows are
// ready (nil when there is none), so that a fetch it refuses fails before
// enough rows are ready.
func (g *GRPO) Check(req engine.SampleRequest) error {
	if err := checkBatch(grpoKind, req.BatchSize, g.n); err != nil {
		return err
	}
	if req.Options.HasRank && req.Options.DPRank < 0 {
		return invalid(grpoKind, "negative dp rank %d", req.Options.DPRank)
	}
	return nil
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

// checkRank validates a request's dp rank against a sampler's dpSize:
// the request must carry one, in [0, dpSize).
func checkRank(kind string, opts engine.SamplingOptions, dpSize int) error {
	switch {
	case !opts.HasRank:
		return invalid(kind, "request has no dp rank and batch index (SamplingOptions.HasRank)")
	case opts.DPRank < 0 || opts.DPRank >= dpSize:
		return invalid(kind, "dp rank %d out of range [0, %d) (the sampler's dp size)", opts.DPRank, dpSize)
	}
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
// in its put's order. Those of puts of n rows or more come in the order a
// walk over the ready set, in global-index order, finds them whole (the
// order they were put, while puts get fresh indexes), and the walk stops
// once it has enough; those of smaller puts come after them, once the
// walk has seen every ready row:
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
	rows := make([]uint64, 0, min(batch, ready.Len()))
	err := eachGroup(kind, ready, origin, n, func(g []uint64) bool {
		rows = append(rows, g...)
		return len(rows) < batch
	})
	if err != nil || len(rows) == 0 || (!partial && len(rows) < batch) {
		return nil, err
	}
	return rows, nil
}

// eachGroup calls yield with each group of n among the ready rows (see
// selectGroups), in turn, until it returns false. The slice is yield's
// only during the call.
func eachGroup(kind string, ready engine.ReadySet, origin func(uint64) engine.RowOrigin, n int, yield func(group []uint64) bool) error {
	if origin == nil || n == 1 {
		return eachRun(kind, ready, n, yield)
	}
	// Walking the ready set in global-index order: a row of a put of n or
	// more rows waits in pending for the rest of its group, which is
	// yielded as soon as it is whole. The rows of smaller puts are kept:
	// their groups are windows over them in the order they were made,
	// which only the whole walk knows (a freed index reused later may be
	// lower), so they come after it, if it got that far.
	const unset = ^uint64(0)
	var (
		pending = map[uint64]*wholeGroup{} // by its first row's Created
		small   []madeRow
		sorted  = true
		more    = true // yield has not said stop
	)
	un := uint64(n)
	err := ascend(kind, ready, func(i uint64) bool {
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
				delete(pending, start)
				more = yield(g.rows)
			}
		default:
			if small == nil {
				small = make([]madeRow, 0, ready.Len()) // they go on to the end
			} else if o.Created <= small[len(small)-1].made {
				sorted = false
			}
			small = append(small, madeRow{index: i, made: o.Created})
		}
		return more
	})
	if err != nil || !more || len(small) < n {
		return err
	}
	if !sorted {
		slices.SortFunc(small, func(a, b madeRow) int { return cmp.Compare(a.made, b.made) })
	}
	group := make([]uint64, n)
	run := 0 // the last run rows up to small[k] were made one after another
	for k := 0; more && k < len(small); k++ {
		if run > 0 && small[k].made != small[k-1].made+1 {
			run = 0 // a gap: the window moves on
		}
		if run++; run == n {
			for j := range group {
				group[j] = small[k+1-n+j].index
			}
			more, run = yield(group), 0
		}
	}
	return nil
}

// wholeGroup is a group of a put of n or more rows, found in part: its
// rows by place (^0 for one not found yet) and how many are found.
type wholeGroup struct {
	rows []uint64
	have int
}

// madeRow is a ready row of a put smaller than n and its creation number.
type madeRow struct {
	index, made uint64
}

// eachRun is eachGroup by global index: it walks ready in ascending order
// and keeps the current run of consecutive indexes (shorter than n). A gap
// restarts the run at the new row; a run that reaches n rows is a group.
// This finds the same groups as the reference's sliding window, which
// moves by one row past a gap and by n rows past a group.
func eachRun(kind string, ready engine.ReadySet, n int, yield func(group []uint64) bool) error {
	run := make([]uint64, 0, n)
	return ascend(kind, ready, func(i uint64) bool {
		if len(run) > 0 && i != run[len(run)-1]+1 {
			run = run[:0]
		}
		if run = append(run, i); len(run) == n {
			more := yield(run)
			run = run[:0]
			return more
		}
		return true
	})
}

// ascend calls fn for the ready rows in turn until it returns false, and
// fails if the set does not ascend.
func ascend(kind string, ready engine.ReadySet, fn func(index uint64) bool) error {
	first, ordered := true, true
	var prev uint64
	ready.Ascend(func(i uint64) bool {
		if !first && i <= prev {
			ordered = false
			return false
		}
		first, prev = false, i
		return fn(i)
	})
	if !ordered {
		return invalid(kind, "ready set is not in ascending order")
	}
	return nil
}
