package sampler

import (
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

// GRPO takes whole prompt groups: it returns BatchSize/n groups of n
// consecutive global indexes among the ready rows, and consumes them. It
// assumes the n responses to a prompt were inserted at consecutive indexes.
//
// Groups are found with a window over the ascending ready rows: when the n
// rows under the window are consecutive integers they form a group and the
// window jumps past them, otherwise it moves on by one row. Groups are not
// aligned to multiples of n: with n=3 and rows 0 1 3 4 5 6 7 9 10 11 ready,
// a batch of 6 is 3 4 5 9 10 11. The walk stops as soon as enough groups are
// found. With too few groups GRPO returns no rows ("not enough yet").
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
	rows, err := selectGroups(grpoKind, req.Ready, req.BatchSize, g.n, req.Final)
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

// selectGroups walks ready in ascending order and returns the rows of the
// first batch/n groups of n consecutive indexes, or nil when there are not
// that many; with partial (the request is final: no more rows will come),
// the whole groups there are when there are fewer. batch must be a
// non-negative multiple of n.
//
// The walk keeps the current run of consecutive rows (shorter than n). A gap
// restarts the run at the new row; a run that reaches n rows is a group.
// This finds the same groups as the reference's sliding window, which moves
// by one row past a gap and by n rows past a group.
func selectGroups(kind string, ready engine.ReadySet, batch, n int, partial bool) ([]uint64, error) {
	if batch == 0 || ready == nil || (!partial && ready.Len() < batch) || ready.Len() == 0 {
		return nil, nil
	}
	rows := make([]uint64, 0, min(batch, ready.Len()))
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
		return len(rows) < batch // a partial run means len(rows) < batch
	})
	if !ordered {
		return nil, invalid(kind, "ready set is not in ascending order")
	}
	rows = rows[:len(rows)-run]
	if len(rows) == 0 || (!partial && len(rows) < batch) {
		return nil, nil
	}
	return rows, nil
}
