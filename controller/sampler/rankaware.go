package sampler

import (
	"github.com/tqgo/tq/engine"
)

var (
	_ engine.CachingSampler   = (*RankAware)(nil)
	_ engine.JournaledSampler = (*RankAware)(nil)
	_ engine.RowForgetter     = (*RankAware)(nil)
	_ engine.BatchDropper     = (*RankAware)(nil)
	_ engine.TaskForgetter    = (*RankAware)(nil)
)

const rankAwareKind = "rank_aware"

// RankAware gives every rank of a data-replica group the same batches, and
// different groups disjoint ones. SamplingOptions.DPRank names the group
// (all TP/PP/CP peers that must see identical data pass the same DPRank) and
// BatchIndex counts the group's batches in lockstep.
//
// The first call for a (partition, task, DPRank, BatchIndex) takes the first
// BatchSize ready rows, consumes them and caches them; every later call with
// that key returns the cached rows, even when fewer rows are ready by then
// (the peers' own call consumes them again, which is harmless). Other groups
// see those rows consumed, so their batches are disjoint. With fewer than
// BatchSize rows ready and nothing cached it returns no rows and caches
// nothing. Entries stay cached until [RankAware.ClearCache], until
// [RankAware.ForgetTask] (the task's consumption was reset), or until
// [RankAware.DropBatch] (the controller drops a batch its group left
// behind, or one whose meta is beyond a server's reply). A call for a
// dropped key makes a batch afresh, which the group's peers asking after
// it get; a peer that got the dropped batch keeps what it got.
//
// RankAware is safe for concurrent use.
type RankAware struct {
	cache cache[rankKey, []uint64]
}

// NewRankAware returns a [RankAware] sampler.
func NewRankAware() *RankAware { return &RankAware{} }

// Sample implements [engine.Sampler]. It returns an error wrapping
// [engine.ErrInvalid] when the request has no rank
// (SamplingOptions.HasRank is false), when DPRank or BatchSize is negative,
// or when the ready set is not ascending.
func (r *RankAware) Sample(req engine.SampleRequest) (sampled, consumed []uint64, err error) {
	if err := r.Check(req); err != nil {
		return nil, nil, err
	}
	opts := req.Options
	key := rankKey{task: req.Task, rank: opts.DPRank, batch: opts.BatchIndex}
	if rows, ok := r.cache.get(req.Partition, key); ok {
		sampled, consumed = pair(rows)
		return sampled, consumed, nil
	}
	// Groups of one row are the first BatchSize ready rows.
	rows, err := selectFirst(rankAwareKind, req.Ready, req.BatchSize, req.Final)
	if err != nil || rows == nil {
		return nil, nil, err
	}
	rows, added := r.cache.add(req.Partition, key, rows)
	if added {
		if err := journal(rankAwareKind, req, rowsEntry{Partition: req.Partition, Task: req.Task, DPRank: opts.DPRank, BatchIndex: opts.BatchIndex, Rows: rows}); err != nil {
			return nil, nil, err
		}
	}
	sampled, consumed = pair(rows)
	return sampled, consumed, nil
}

// Check returns the error [RankAware.Sample] returns for req whatever rows
// are ready (nil when there is none), so that a fetch it refuses fails
// before enough rows are ready.
func (r *RankAware) Check(req engine.SampleRequest) error {
	switch {
	case !req.Options.HasRank:
		return invalid(rankAwareKind, "request has no dp rank and batch index (SamplingOptions.HasRank)")
	case req.Options.DPRank < 0:
		return invalid(rankAwareKind, "negative dp rank %d", req.Options.DPRank)
	case req.BatchSize < 0:
		return invalid(rankAwareKind, "negative batch size %d", req.BatchSize)
	}
	return nil
}

// Cached implements [engine.CachingSampler]: it reports whether opts carries
// a rank and an answer for (partition, task, DPRank, BatchIndex) is cached.
func (r *RankAware) Cached(partition, task string, opts engine.SamplingOptions) bool {
	return opts.HasRank && r.cache.has(partition, rankKey{task: task, rank: opts.DPRank, batch: opts.BatchIndex})
}

// DropBatch implements [engine.BatchDropper].
func (r *RankAware) DropBatch(partition, task string, opts engine.SamplingOptions, journal func([]byte)) ([]uint64, error) {
	return dropRowsBatch(rankAwareKind, &r.cache, partition, task, opts, journal)
}

// ClearCache implements [engine.CachingSampler].
func (r *RankAware) ClearCache(partition string) { r.cache.clear(partition) }

// ForgetTask implements [engine.TaskForgetter].
func (r *RankAware) ForgetTask(partition, task string) {
	r.cache.forgetTask(partition, task, rankKey.taskOf)
}

// ForgetRows implements [engine.RowForgetter].
func (r *RankAware) ForgetRows(partition string, rows []uint64) {
	forgetRows(&r.cache, partition, rows)
}

// SaveState implements [engine.StatefulSampler].
func (r *RankAware) SaveState() ([]byte, error) { return saveRows(rankAwareKind, 0, &r.cache) }

// LoadState implements [engine.StatefulSampler]. It replaces the cache only
// when the whole document is valid; otherwise it returns an error wrapping
// [engine.ErrCorrupt] and leaves the sampler as it was.
func (r *RankAware) LoadState(state []byte) error {
	m, err := loadRows(rankAwareKind, 0, state)
	if err != nil {
		return err
	}
	r.cache.replace(m)
	return nil
}

// ApplyEntry implements [engine.JournaledSampler].
func (r *RankAware) ApplyEntry(entry []byte) error {
	return applyRowsEntry(rankAwareKind, 0, &r.cache, entry)
}

// selectFirst returns the first batch ready rows, or nil when fewer are
// ready (with partial, those there are). It is selectGroups with groups of
// one row.
func selectFirst(kind string, ready engine.ReadySet, batch int, partial bool) ([]uint64, error) {
	return selectGroups(kind, ready, nil, batch, 1, partial)
}
