package engine

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
