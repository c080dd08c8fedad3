package engine

import "fmt"

// ReadySet is the set of rows a sampler may choose from: produced for every
// requested field and not yet consumed by the task. It is a view owned by
// the controller and valid only during the [Sampler.Sample] call.
type ReadySet interface {
	// Len returns the number of ready rows.
	Len() int
	// Ascend calls fn for ready rows in ascending global-index order until
	// fn returns false.
	Ascend(fn func(index uint64) bool)
}

// ReadySlice is a [ReadySet] over an ascending slice of indexes.
type ReadySlice []uint64

// Len implements [ReadySet].
func (r ReadySlice) Len() int { return len(r) }

// Ascend implements [ReadySet].
func (r ReadySlice) Ascend(fn func(uint64) bool) {
	for _, i := range r {
		if !fn(i) {
			return
		}
	}
}

// RowOrigin says where a row came from: the insert that made it (a put of
// new rows or keys, an insert-mode fetch of metadata, or a commit straight
// to pre-allocated rows) and its place in it. Samplers that take whole prompt groups use it: a prompt's n
// responses are put together, and they are whatever indexes the put got.
type RowOrigin struct {
	// Created numbers the partition's rows in the order they were made:
	// the rows of one insert have consecutive numbers, in the insert's
	// order, and a later insert has higher ones. 0: not known.
	Created uint64
	// Pos is the row's place in its insert (0 for its first row), and Size
	// the number of rows the insert made.
	Pos, Size uint32
}

// SamplingOptions carries what a consumer says about itself to the sampler.
type SamplingOptions struct {
	// HasRank says DPRank and BatchIndex are set.
	HasRank bool `json:"has_rank,omitempty"`
	// DPRank is the data-replica group: every rank that must see identical
	// batches passes the same DPRank.
	DPRank int `json:"dp_rank,omitempty"`
	// BatchIndex counts the batches this group has taken, in lockstep.
	BatchIndex int `json:"batch_index,omitempty"`
	// Params passes anything else through to a user's sampler.
	Params map[string]any `json:"params,omitempty"`
}

// SampleRequest is one call into a sampler.
type SampleRequest struct {
	Partition string
	Task      string
	BatchSize int
	Ready     ReadySet
	Options   SamplingOptions
	// Tags returns a row's tags (read-only), for samplers that balance on
	// them (e.g. "total_lengths"). It is valid during the call only.
	Tags func(index uint64) Tags
	// Origin returns a row's [RowOrigin]; nil when the caller does not
	// know it (samplers then take global-index order for insert order). It
	// is valid during the call only.
	Origin func(index uint64) RowOrigin
	// TokenBudget is the fetch's token budget (0: none); see
	// [FetchRequest.TokenBudget].
	TokenBudget int64
	// Final says no more rows will become ready for this request: the
	// partition is marked done and every row not consumed is ready. A
	// sampler then returns what it can (a short last batch) instead of
	// waiting for BatchSize rows; returning nothing ends the task's
	// stream ([ErrDone]).
	Final bool
	// Journal, when not nil, takes each entry a [JournaledSampler] adds to
	// its state during the call, so the controller's log can record the
	// change with the fetch and replay it after a restart. It is valid
	// during the call only.
	Journal func(entry []byte)
}

// Sampler chooses which ready rows a fetch returns (sampled) and which the
// task has now consumed (consumed; usually the same rows). The controller
// calls it only when at least BatchSize rows are ready, or when a
// [CachingSampler] reports a cached answer. Returning no rows means "not
// enough data yet". Implementations must be safe for concurrent use: calls
// for different partitions run in parallel.
type Sampler interface {
	Sample(req SampleRequest) (sampled, consumed []uint64, err error)
}

// CachingSampler is a sampler that remembers answers per (partition, task,
// rank, batch index) so that peers of a data-replica group get identical
// batches.
type CachingSampler interface {
	Sampler
	// Cached reports whether a call with these options would be answered
	// from the cache (so the controller calls the sampler even when fewer
	// than BatchSize rows are ready).
	Cached(partition, task string, opts SamplingOptions) bool
	// ClearCache forgets everything cached for a partition.
	ClearCache(partition string)
}

// RowForgetter is a [CachingSampler] that can drop cleared rows from its
// cache: the controller calls ForgetRows with the indexes of rows cleared
// from a partition (not only on a whole-partition clear), so that no
// cached batch names a row that is gone or an index reused by a new row.
// A cached batch left with no rows is dropped.
type RowForgetter interface {
	ForgetRows(partition string, rows []uint64)
}

// TaskForgetter is a [CachingSampler] that can drop what it caches for one
// task of a partition: the controller calls ForgetTask when the task's
// consumption is reset (task "" for every task), so that every batch of
// the new round is made from the rows ready in it. A batch cached from
// the round before would give a group its old rows while another group,
// whose batch was not cached, takes some of the same rows fresh. For a
// reset of every task, a CachingSampler without ForgetTask has its
// ClearCache called instead.
type TaskForgetter interface {
	ForgetTask(partition, task string)
}

// BatchDropper is a [CachingSampler] that can drop one cached batch of a
// data-replica group: the controller drops a batch its group left behind
// (see controller.Config.KeptBatchTTL) and gives the rows back to the
// task. DropBatch returns the rows of the batch cached for (partition,
// task, opts.DPRank, opts.BatchIndex), nil when there is none, and hands
// the change to journal (when not nil) as Sample hands its entries to
// [SampleRequest.Journal], so that a replay of the log drops it too.
type BatchDropper interface {
	DropBatch(partition, task string, opts SamplingOptions, journal func(entry []byte)) ([]uint64, error)
}

// SplitBatchDropper is a [BatchDropper] whose batches of one batch index
// are the parts of one batch split between the groups (the DP ranks of a
// batch balanced across ranks): the call that makes the batch makes every
// group's part and consumes all their rows, though no fetch of the other
// groups took them. Parts returns the DP ranks whose part of batch
// (partition, task, batchIndex) holds rows, so that the controller follows
// the parts a call made for the other groups as it follows a batch a
// fetch took, and gives back the part of a group that never fetches it.
// DropBatch drops one group's part; the others stay.
//
// MovePart moves the part of DP rank rank from batch index from to batch
// index to, whose part for the rank is empty (the batch is made, with no
// other part, when it is not cached), and returns its rows: nil, and
// nothing changed, when the part of from is empty or that of to is not.
// The controller moves a later part a rank never fetched into the batch
// it asks for when its own part there is empty (cleared) and the done
// partition has no rows ready to refill it: without it the rank was told
// the partition is done while its peers' later batches held parts for it.
// The change goes to journal as DropBatch's does. The rows stay consumed.
type SplitBatchDropper interface {
	CachingSampler
	BatchDropper
	Parts(partition, task string, batchIndex int) []int
	MovePart(partition, task string, rank, from, to int, journal func(entry []byte)) ([]uint64, error)
}

// StatefulSampler is a sampler whose state goes into controller
// checkpoints. The state is an opaque, self-describing document (JSON for
// the built-in samplers).
type StatefulSampler interface {
	SaveState() ([]byte, error)
	LoadState(state []byte) error
}

// JournaledSampler is a [StatefulSampler] whose state grows by entries
// that it reports through [SampleRequest.Journal] as it adds them, and
// that ApplyEntry adds back when the controller replays its log: peers of
// a data-replica group still get identical batches after a controller
// restart. Entries are opaque to the controller (JSON for the built-in
// samplers); ClearCache(partition) drops a partition's entries as before.
type JournaledSampler interface {
	StatefulSampler
	ApplyEntry(entry []byte) error
}

// Built-in sampler names (see [SamplerSpec]).
const (
	SamplerSequential     = "sequential"
	SamplerGRPO           = "grpo"
	SamplerRankAware      = "rank_aware"
	SamplerSeqlenBalanced = "seqlen_balanced"
	SamplerTokenBudget    = "token_budget"
)

// SamplerSpec names one of the built-in samplers and its parameters, so
// that a fetch can choose its sampler ([FetchRequest.Sampler]) rather than
// take the controller's. The zero value means "the controller's sampler".
//
//	{Name: "sequential"}
//	{Name: "grpo", N: 4}                      // groups of 4 rows put together
//	{Name: "rank_aware"}
//	{Name: "seqlen_balanced", N: 4, DPSize: 2}
//	{Name: "token_budget", N: 4, DPSize: 2}   // with FetchRequest.TokenBudget
//
// Its text form (String, and the sampler package's ParseSpec) is
// "grpo:4", "seqlen_balanced:4:2" and so on.
type SamplerSpec struct {
	Name   string
	N      int // group size: grpo, seqlen_balanced, token_budget (0: 1)
	DPSize int // data-parallel ranks: seqlen_balanced, token_budget (0: 1)
}

// IsZero reports the zero spec: the controller's own sampler.
func (s SamplerSpec) IsZero() bool { return s == SamplerSpec{} }

// String returns the spec's canonical text: the name, then the
// parameters the sampler takes, colon-separated.
func (s SamplerSpec) String() string {
	n, dp := max(s.N, 1), max(s.DPSize, 1)
	switch s.Name {
	case SamplerGRPO:
		return fmt.Sprintf("%s:%d", s.Name, n)
	case SamplerSeqlenBalanced, SamplerTokenBudget:
		return fmt.Sprintf("%s:%d:%d", s.Name, n, dp)
	}
	return s.Name
}
