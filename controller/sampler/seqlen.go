package sampler

import (
	"cmp"
	"math"
	"slices"

	"github.com/tqgo/tq/engine"
)

var (
	_ engine.CachingSampler   = (*SeqlenBalanced)(nil)
	_ engine.JournaledSampler = (*SeqlenBalanced)(nil)
)

const seqlenKind = "seqlen_balanced"

// LengthTag is the row tag [SeqlenBalanced] balances on: the row's token
// count. Rows without it (or with a non-numeric value) count as length 1.
const LengthTag = "total_lengths"

// SeqlenBalanced takes whole prompt groups for all DP ranks at once and
// splits them between the ranks so that each gets about the same number of
// tokens. BatchSize is per DP rank.
//
// The first call for a (partition, task, BatchIndex) selects
// BatchSize × dpSize rows the way [GRPO] does (returning no rows when there
// are not enough groups), reads each row's [LengthTag] through
// SampleRequest.Tags, and partitions the prompt groups (group length = sum
// of its rows' lengths) with [KarmarkarKarp] into dpSize equal-size parts,
// so every rank gets whole groups. Every part is sorted
// ascending and cached; the call returns the part for its DPRank and
// [SeqlenBalanced.Cached] now reports true for every rank of that batch, so
// peers that poll after the first rank consumed its rows still get theirs.
// A DPRank of dpSize or more gets no rows and no error. All returned rows
// are consumed.
//
// SeqlenBalanced is safe for concurrent use.
type SeqlenBalanced struct {
	n, dpSize int
	cache     cache[batchKey, [][]uint64]
}

// batchKey identifies one global batch of a task.
type batchKey struct {
	task  string
	batch int
}

// NewSeqlenBalanced returns a [SeqlenBalanced] sampler for prompt groups of
// n rows and dpSize data-parallel ranks. Both must be positive; otherwise
// the error wraps [engine.ErrInvalid].
func NewSeqlenBalanced(n, dpSize int) (*SeqlenBalanced, error) {
	if n <= 0 {
		return nil, invalid(seqlenKind, "group size %d is not positive", n)
	}
	if dpSize <= 0 {
		return nil, invalid(seqlenKind, "dp size %d is not positive", dpSize)
	}
	return &SeqlenBalanced{n: n, dpSize: dpSize}, nil
}

// N returns the group size.
func (s *SeqlenBalanced) N() int { return s.n }

// DPSize returns the number of data-parallel ranks.
func (s *SeqlenBalanced) DPSize() int { return s.dpSize }

// Sample implements [engine.Sampler]. It returns an error wrapping
// [engine.ErrInvalid] when the request has no rank (SamplingOptions.HasRank
// is false), when DPRank or BatchSize is negative, when BatchSize is not a
// multiple of the group size, when a row's length is negative, or when the
// ready set is not ascending.
func (s *SeqlenBalanced) Sample(req engine.SampleRequest) (sampled, consumed []uint64, err error) {
	opts := req.Options
	if !opts.HasRank {
		return nil, nil, invalid(seqlenKind, "request has no dp rank and batch index (SamplingOptions.HasRank)")
	}
	if opts.DPRank < 0 {
		return nil, nil, invalid(seqlenKind, "negative dp rank %d", opts.DPRank)
	}
	if err := checkBatch(seqlenKind, req.BatchSize, s.n); err != nil {
		return nil, nil, err
	}
	if req.BatchSize > math.MaxInt/s.dpSize {
		return nil, nil, invalid(seqlenKind, "batch size %d × dp size %d overflows", req.BatchSize, s.dpSize)
	}
	key := batchKey{task: req.Task, batch: opts.BatchIndex}
	parts, ok := s.cache.get(req.Partition, key)
	if !ok {
		rows, err := selectGroups(seqlenKind, req.Ready, req.BatchSize*s.dpSize, s.n)
		if err != nil || rows == nil {
			return nil, nil, err
		}
		parts, err = s.balance(rows, req.Tags)
		if err != nil {
			return nil, nil, err
		}
		var added bool
		if parts, added = s.cache.add(req.Partition, key, parts); added {
			if err := journal(seqlenKind, req, partsEntry{Partition: req.Partition, Task: req.Task, BatchIndex: opts.BatchIndex, Parts: parts}); err != nil {
				return nil, nil, err
			}
		}
	}
	if opts.DPRank >= len(parts) {
		return nil, nil, nil
	}
	sampled, consumed = pair(parts[opts.DPRank])
	return sampled, consumed, nil
}

// balance splits the selected rows (whole groups of n, ascending) into
// dpSize parts of about equal total length. Like the reference it falls
// back to balancing single rows when the groups do not divide evenly
// between the ranks; Sample's checks (BatchSize a multiple of n) make that
// branch unreachable today.
func (s *SeqlenBalanced) balance(rows []uint64, tags func(uint64) engine.Tags) ([][]uint64, error) {
	lengths := make([]int64, len(rows))
	for i, r := range rows {
		lengths[i] = 1
		if tags == nil {
			continue
		}
		if l, ok := tags(r).Int(LengthTag); ok {
			if l < 0 {
				return nil, invalid(seqlenKind, "row %d has negative %s %d", r, LengthTag, l)
			}
			lengths[i] = l
		}
	}

	groups := len(rows) / s.n
	var parts [][]uint64
	if len(rows)%s.n == 0 && groups > 0 && groups%s.dpSize == 0 {
		groupLengths := make([]int64, groups)
		for i, l := range lengths {
			groupLengths[i/s.n] += l
		}
		byGroup, err := KarmarkarKarp(groupLengths, s.dpSize, true)
		if err != nil {
			return nil, err
		}
		parts = make([][]uint64, len(byGroup))
		for p, gs := range byGroup {
			part := make([]uint64, 0, len(gs)*s.n)
			for _, g := range gs {
				part = append(part, rows[g*s.n:(g+1)*s.n]...)
			}
			parts[p] = part
		}
	} else {
		byRow, err := KarmarkarKarp(lengths, s.dpSize, false)
		if err != nil {
			return nil, err
		}
		parts = make([][]uint64, len(byRow))
		for p, rs := range byRow {
			part := make([]uint64, len(rs))
			for i, r := range rs {
				part[i] = rows[r]
			}
			parts[p] = part
		}
	}
	for _, p := range parts {
		slices.Sort(p)
	}
	return parts, nil
}

// Cached implements [engine.CachingSampler]: it reports whether opts carries
// a rank below dpSize and the batch (partition, task, BatchIndex) has been
// balanced already.
func (s *SeqlenBalanced) Cached(partition, task string, opts engine.SamplingOptions) bool {
	return opts.HasRank && opts.DPRank >= 0 && opts.DPRank < s.dpSize &&
		s.cache.has(partition, batchKey{task: task, batch: opts.BatchIndex})
}

// ClearCache implements [engine.CachingSampler].
func (s *SeqlenBalanced) ClearCache(partition string) { s.cache.clear(partition) }

// partsEntry is one balanced batch in saved state.
type partsEntry struct {
	Partition  string     `json:"partition"`
	Task       string     `json:"task"`
	BatchIndex int        `json:"batch_index"`
	Parts      [][]uint64 `json:"parts"`
}

// partsState is the saved state of SeqlenBalanced.
type partsState struct {
	Version int          `json:"version"`
	Sampler string       `json:"sampler"`
	N       int          `json:"n"`
	DPSize  int          `json:"dp_size"`
	Entries []partsEntry `json:"entries"`
}

// SaveState implements [engine.StatefulSampler].
func (s *SeqlenBalanced) SaveState() ([]byte, error) {
	st := partsState{Version: stateVersion, Sampler: seqlenKind, N: s.n, DPSize: s.dpSize, Entries: []partsEntry{}}
	s.cache.each(func(p string, k batchKey, parts [][]uint64) {
		st.Entries = append(st.Entries, partsEntry{Partition: p, Task: k.task, BatchIndex: k.batch, Parts: parts})
	})
	slices.SortFunc(st.Entries, func(a, b partsEntry) int {
		return cmp.Or(
			cmp.Compare(a.Partition, b.Partition),
			cmp.Compare(a.Task, b.Task),
			cmp.Compare(a.BatchIndex, b.BatchIndex),
		)
	})
	return marshalState(seqlenKind, st)
}

// LoadState implements [engine.StatefulSampler]. It replaces the cache only
// when the whole document is valid; otherwise it returns an error wrapping
// [engine.ErrCorrupt] and leaves the sampler as it was. A state saved with a
// different group size or dp size is corrupt.
func (s *SeqlenBalanced) LoadState(state []byte) error {
	var st partsState
	if err := decodeState(seqlenKind, state, &st); err != nil {
		return err
	}
	if st.N != s.n || st.DPSize != s.dpSize {
		return corrupt(seqlenKind, "state has n %d and dp size %d, sampler has %d and %d",
			st.N, st.DPSize, s.n, s.dpSize)
	}
	m := make(map[string]map[batchKey][][]uint64)
	for i, e := range st.Entries {
		if err := s.checkEntry(i, &e); err != nil {
			return err
		}
		p := m[e.Partition]
		if p == nil {
			p = make(map[batchKey][][]uint64)
			m[e.Partition] = p
		}
		k := batchKey{task: e.Task, batch: e.BatchIndex}
		if _, dup := p[k]; dup {
			return corrupt(seqlenKind, "entry %d: duplicate key", i)
		}
		p[k] = e.Parts
	}
	s.cache.replace(m)
	return nil
}

// checkEntry validates saved or journaled entry i.
func (s *SeqlenBalanced) checkEntry(i int, e *partsEntry) error {
	if len(e.Parts) != s.dpSize {
		return corrupt(seqlenKind, "entry %d: %d parts, want %d", i, len(e.Parts), s.dpSize)
	}
	seen := make(map[uint64]bool)
	for _, part := range e.Parts {
		if err := checkRows(seqlenKind, i, part); err != nil {
			return err
		}
		for _, r := range part {
			if seen[r] {
				return corrupt(seqlenKind, "entry %d: row %d in two parts", i, r)
			}
			seen[r] = true
		}
	}
	if len(seen)%s.n != 0 {
		return corrupt(seqlenKind, "entry %d: %d rows is not whole groups of %d", i, len(seen), s.n)
	}
	return nil
}

// ApplyEntry implements [engine.JournaledSampler].
func (s *SeqlenBalanced) ApplyEntry(entry []byte) error {
	var e partsEntry
	if err := decodeEntry(seqlenKind, entry, &e); err != nil {
		return err
	}
	if err := s.checkEntry(0, &e); err != nil {
		return err
	}
	s.cache.add(e.Partition, batchKey{task: e.Task, batch: e.BatchIndex}, e.Parts)
	return nil
}
