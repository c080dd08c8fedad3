package sampler

import (
	"cmp"
	"encoding/json"
	"fmt"
	"math"
	"slices"

	"github.com/tqgo/tq/engine"
)

var (
	_ engine.CachingSampler    = (*SeqlenBalanced)(nil)
	_ engine.JournaledSampler  = (*SeqlenBalanced)(nil)
	_ engine.RowForgetter      = (*SeqlenBalanced)(nil)
	_ engine.TaskForgetter     = (*SeqlenBalanced)(nil)
	_ engine.SplitBatchDropper = (*SeqlenBalanced)(nil)
)

const seqlenKind = "seqlen_balanced"

// LengthTag is the row tag [SeqlenBalanced] balances on: the row's token
// count. Rows without it (or with it null) count as length 1; one that
// is not an integer, a negative one, or one above [MaxLength] is an error
// naming the row.
const LengthTag = "total_lengths"

// MaxLength bounds a row's [LengthTag]: a longer one is an error. The
// samplers add lengths up (a group's, a rank's, a batch's), and a sum of
// rows this long overflows only past 2^23 rows in one batch.
const MaxLength = 1 << 40

// SeqlenBalanced takes whole prompt groups for all DP ranks at once and
// splits them between the ranks so that each gets about the same number of
// tokens. BatchSize is per DP rank.
//
// The first call for a (partition, task, BatchIndex) selects
// BatchSize × dpSize rows the way [GRPO] does (returning no rows when there
// are not enough groups), reads each row's [LengthTag] through
// SampleRequest.Tags, and partitions the prompt groups (group length = sum
// of its rows' lengths) with [KarmarkarKarp] into dpSize equal-size parts,
// so every rank gets whole groups. Every part holds its groups in the order
// they were put, each whole, and is cached; the call returns the part for
// its DPRank and [SeqlenBalanced.Cached] now reports true for every rank
// of that batch, so peers that poll after the first rank consumed its rows
// still get theirs.
// A rank whose part was cleared before it fetched it ([SeqlenBalanced.ForgetRows])
// gets a part of its own, BatchSize rows taken the way [GRPO] takes them
// from the rows ready then, and its peers the same, as a group whose
// cached batch was cleared does with [GRPO].
// A rank's part that the controller drops ([SeqlenBalanced.DropBatch]: the
// rank never fetched it, or its meta was beyond a server's reply) is empty
// from then on, the other ranks' parts stay theirs, and the rank, asking for
// it after all, gets a part of its own the same way. At the end of a done
// partition, with no rows ready for such a part, the controller moves the
// rank's part of a later batch that it never fetched into the batch it
// asks for ([SeqlenBalanced.MovePart]).
// A DPRank of dpSize or more is an error: the reference's sampler gave it
// nothing, and a waiting fetch then waited for ever. All returned rows
// are consumed.
//
// SeqlenBalanced is safe for concurrent use.
type SeqlenBalanced struct {
	partsCache
}

// batchKey identifies one global batch of a task.
type batchKey struct {
	task  string
	batch int
}

func (k batchKey) taskOf() string { return k.task }

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
	return &SeqlenBalanced{partsCache{kind: seqlenKind, n: n, dpSize: dpSize}}, nil
}

// N returns the group size.
func (s *SeqlenBalanced) N() int { return s.n }

// DPSize returns the number of data-parallel ranks.
func (s *SeqlenBalanced) DPSize() int { return s.dpSize }

// Sample implements [engine.Sampler]. It returns an error wrapping
// [engine.ErrInvalid] when the request has no rank (SamplingOptions.HasRank
// is false), when DPRank is negative or not below the dp size, when
// BatchSize is negative, when BatchSize is not a
// multiple of the group size, when a row's length is negative, or when the
// ready set is not ascending.
func (s *SeqlenBalanced) Sample(req engine.SampleRequest) (sampled, consumed []uint64, err error) {
	if err := s.Check(req); err != nil {
		return nil, nil, err
	}
	opts := req.Options
	key := batchKey{task: req.Task, batch: opts.BatchIndex}
	parts, ok := s.cache.get(req.Partition, key)
	fresh := !ok
	if !ok {
		rows, err := selectGroups(seqlenKind, req.Ready, req.Origin, req.BatchSize*s.dpSize, s.n, req.Final)
		if err != nil || rows == nil {
			return nil, nil, err
		}
		parts, err = s.balance(rows, req.Tags)
		if err != nil {
			return nil, nil, err
		}
		if parts, fresh, err = s.add(req, parts); err != nil {
			return nil, nil, err
		}
	} else if len(parts[opts.DPRank]) == 0 {
		rows, err := selectGroups(seqlenKind, req.Ready, req.Origin, req.BatchSize, s.n, req.Final)
		if err != nil {
			return nil, nil, err
		}
		if parts, err = s.refill(req, parts, rows); err != nil {
			return nil, nil, err
		}
	}
	sampled, consumed = answer(parts, opts.DPRank, fresh)
	return sampled, consumed, nil
}

// Check returns the error [SeqlenBalanced.Sample] returns for req whatever
// rows are ready (nil when there is none), so that a fetch it refuses
// fails before enough rows are ready.
func (s *SeqlenBalanced) Check(req engine.SampleRequest) error {
	if err := checkRank(seqlenKind, req.Options, s.dpSize); err != nil {
		return err
	}
	if err := checkBatch(seqlenKind, req.BatchSize, s.n); err != nil {
		return err
	}
	if req.BatchSize > math.MaxInt/s.dpSize {
		return invalid(seqlenKind, "batch size %d × dp size %d overflows", req.BatchSize, s.dpSize)
	}
	return nil
}

// answer returns rank's part of a balanced batch, and what the call
// consumes: the whole batch when the call made it (the other ranks' rows
// are theirs, not for the next batch index to take), else the part.
// A rank with no part (an empty part of a final batch) samples nothing.
func answer(parts [][]uint64, rank int, fresh bool) (sampled, consumed []uint64) {
	if rank < len(parts) && len(parts[rank]) > 0 {
		sampled = slices.Clone(parts[rank])
	}
	if !fresh {
		return sampled, slices.Clone(sampled)
	}
	for _, p := range parts {
		consumed = append(consumed, p...)
	}
	slices.Sort(consumed)
	return sampled, consumed
}

// balance splits the selected rows (whole groups of n, in the order they
// were put) into dpSize parts of about equal total length, keeping groups
// whole: with a number of groups that divides evenly between the ranks,
// parts of equal size (the reference's equal_size); otherwise (a final,
// short batch) parts of any size, and with fewer groups than ranks one
// group per rank and empty parts for the rest.
func (s *SeqlenBalanced) balance(rows []uint64, tags func(uint64) engine.Tags) ([][]uint64, error) {
	lengths, err := rowLengths(seqlenKind, rows, tags)
	if err != nil {
		return nil, err
	}
	groups := len(rows) / s.n
	groupLengths := make([]int64, groups)
	for i, l := range lengths[:groups*s.n] {
		groupLengths[i/s.n] += l
	}
	var byGroup [][]int
	switch {
	case groups > 0 && groups%s.dpSize == 0:
		byGroup, err = KarmarkarKarp(groupLengths, s.dpSize, true)
	case groups >= s.dpSize:
		byGroup, err = KarmarkarKarp(groupLengths, s.dpSize, false)
	default:
		byGroup = make([][]int, s.dpSize)
		for g := range groups {
			byGroup[g] = []int{g}
		}
	}
	if err != nil {
		return nil, err
	}
	parts := make([][]uint64, len(byGroup))
	for p, gs := range byGroup {
		part := make([]uint64, 0, len(gs)*s.n)
		slices.Sort(gs) // the groups in the order they were put
		for _, g := range gs {
			part = append(part, rows[g*s.n:(g+1)*s.n]...)
		}
		parts[p] = part
	}
	return parts, nil
}

// rowLengths reads each row's [LengthTag] (1 when absent or null); one
// that is not an integer, a negative one, or one above [MaxLength] is an
// error naming the row.
func rowLengths(kind string, rows []uint64, tags func(uint64) engine.Tags) ([]int64, error) {
	lengths := make([]int64, len(rows))
	for i, r := range rows {
		lengths[i] = 1
		if tags == nil {
			continue
		}
		t := tags(r)
		v, there := t[LengthTag]
		if !there || v == nil {
			continue
		}
		l, ok := t.Int(LengthTag)
		switch {
		case !ok:
			return nil, invalid(kind, "row %d has %s %v (%T), not an integer", r, LengthTag, v, v)
		case l < 0:
			return nil, invalid(kind, "row %d has negative %s %d", r, LengthTag, l)
		case l > MaxLength:
			return nil, invalid(kind, "row %d has %s %d, above %d", r, LengthTag, l, MaxLength)
		}
		lengths[i] = l
	}
	return lengths, nil
}

// Cached implements [engine.CachingSampler]: it reports whether opts carries
// a rank below dpSize and the batch (partition, task, BatchIndex) has been
// balanced already.
func (s *SeqlenBalanced) Cached(partition, task string, opts engine.SamplingOptions) bool {
	return opts.HasRank && opts.DPRank >= 0 && opts.DPRank < s.dpSize &&
		s.cache.has(partition, batchKey{task: task, batch: opts.BatchIndex})
}

// partsCache is the cache and saved state shared by [SeqlenBalanced] and
// [TokenBudget]: one balanced global batch (a row list per DP rank) per
// (partition, task, batch index).
type partsCache struct {
	kind      string
	n, dpSize int
	cache     cache[batchKey, [][]uint64]
}

// add stores a freshly balanced batch (or finds the one a peer stored
// first: added is false) and journals it.
func (s *partsCache) add(req engine.SampleRequest, parts [][]uint64) (_ [][]uint64, added bool, _ error) {
	parts, added = s.cache.add(req.Partition, batchKey{task: req.Task, batch: req.Options.BatchIndex}, parts)
	if added {
		if err := journal(s.kind, req, partsEntry{Partition: req.Partition, Task: req.Task, BatchIndex: req.Options.BatchIndex, Parts: parts}); err != nil {
			return nil, false, err
		}
	}
	return parts, added, nil
}

// refill stores part (nil: none) as the rank's part of the cached batch
// parts, whose part for the rank is empty (cleared, or an empty part of a
// final batch), unless a peer did so first, and journals it. It returns
// the batch now cached.
func (s *partsCache) refill(req engine.SampleRequest, parts [][]uint64, part []uint64) ([][]uint64, error) {
	if len(part) == 0 {
		return parts, nil
	}
	fill := make([][]uint64, s.dpSize)
	fill[req.Options.DPRank] = part
	key := batchKey{task: req.Task, batch: req.Options.BatchIndex}
	now, filled := s.cache.update(req.Partition, key, func(old [][]uint64) ([][]uint64, bool) {
		return fillParts(old, fill)
	})
	if !filled {
		return now, nil
	}
	if err := journal(s.kind, req, partsEntry{Partition: req.Partition, Task: req.Task, BatchIndex: req.Options.BatchIndex, Parts: fill}); err != nil {
		return nil, err
	}
	return now, nil
}

// fillParts returns parts with each empty part replaced by fill's, and
// whether any was.
func fillParts(parts, fill [][]uint64) ([][]uint64, bool) {
	var out [][]uint64
	for r, p := range fill {
		if len(p) > 0 && r < len(parts) && len(parts[r]) == 0 {
			if out == nil {
				out = slices.Clone(parts)
			}
			out[r] = p
		}
	}
	return out, out != nil
}

// ClearCache implements [engine.CachingSampler].
func (s *partsCache) ClearCache(partition string) { s.cache.clear(partition) }

// ForgetTask implements [engine.TaskForgetter].
func (s *partsCache) ForgetTask(partition, task string) {
	s.cache.forgetTask(partition, task, batchKey.taskOf)
}

// ForgetRows implements [engine.RowForgetter]: cleared rows leave every
// cached batch; a batch left with no rows is dropped. A rank whose part
// is left empty gets a part of its own when it asks (refill).
func (s *partsCache) ForgetRows(partition string, rows []uint64) {
	gone := rowSet(rows)
	s.cache.rewrite(partition, func(parts [][]uint64) ([][]uint64, bool) {
		changed, left := false, 0
		out := make([][]uint64, len(parts))
		for i, part := range parts {
			out[i] = dropRows(part, gone)
			changed = changed || len(out[i]) != len(part)
			left += len(out[i])
		}
		if !changed {
			return parts, true
		}
		return out, left > 0
	})
}

// Parts implements [engine.SplitBatchDropper]: the ranks whose part of the
// cached batch holds rows.
func (s *partsCache) Parts(partition, task string, batchIndex int) []int {
	parts, _ := s.cache.get(partition, batchKey{task: task, batch: batchIndex})
	var ranks []int
	for r, p := range parts {
		if len(p) > 0 {
			ranks = append(ranks, r)
		}
	}
	return ranks
}

// DropBatch implements [engine.BatchDropper]: it empties the part of
// opts.DPRank of the cached batch (opts.BatchIndex) and returns its rows,
// nil when it has none; a batch left with no rows is dropped. The other
// ranks' parts stay. The journal entry names the batch and the rank, with
// "dropped" set and no parts.
func (s *partsCache) DropBatch(partition, task string, opts engine.SamplingOptions, j func([]byte)) ([]uint64, error) {
	if !opts.HasRank || opts.DPRank < 0 || opts.DPRank >= s.dpSize {
		return nil, nil
	}
	rows := s.dropPart(partition, batchKey{task: task, batch: opts.BatchIndex}, opts.DPRank)
	if len(rows) == 0 {
		return nil, nil
	}
	if j != nil {
		b, err := json.Marshal(partsEntry{Partition: partition, Task: task, BatchIndex: opts.BatchIndex, DPRank: opts.DPRank, Dropped: true})
		if err != nil {
			return nil, fmt.Errorf("%s: journal entry: %w", s.kind, err)
		}
		j(b)
	}
	return slices.Clone(rows), nil
}

// MovePart implements [engine.SplitBatchDropper]: it moves rank's part
// of the cached batch from into the batch to, whose part for the rank is
// empty (to is made, with rank's part alone, when it is not cached), and
// returns its rows; a batch from left with no rows is dropped. It does
// nothing and returns nil when rank's part of from is empty or that of to
// is not. Two journal entries record it: to's part (as a refill's does)
// and from's part dropped (as DropBatch's does).
func (s *partsCache) MovePart(partition, task string, rank, from, to int, j func([]byte)) ([]uint64, error) {
	if rank < 0 || rank >= s.dpSize || from == to {
		return nil, nil
	}
	fill := make([][]uint64, s.dpSize)
	var rows []uint64
	c := &s.cache
	c.mu.Lock()
	fk, tk := batchKey{task: task, batch: from}, batchKey{task: task, batch: to}
	src := c.m[partition][fk]
	dst, cached := c.m[partition][tk]
	if len(src) > rank && len(src[rank]) > 0 && (!cached || len(dst[rank]) == 0) {
		rows = src[rank]
		fill[rank] = rows
		if cached {
			c.m[partition][tk], _ = fillParts(dst, fill)
		} else {
			c.m[partition][tk] = fill
		}
		s.dropPartLocked(partition, fk, rank)
	}
	c.mu.Unlock()
	if rows == nil {
		return nil, nil
	}
	if j != nil {
		for _, e := range []partsEntry{
			{Partition: partition, Task: task, BatchIndex: to, Parts: fill},
			{Partition: partition, Task: task, BatchIndex: from, DPRank: rank, Dropped: true},
		} {
			b, err := json.Marshal(e)
			if err != nil {
				return nil, fmt.Errorf("%s: journal entry: %w", s.kind, err)
			}
			j(b)
		}
	}
	return slices.Clone(rows), nil
}

// dropPart empties rank's part of the batch cached under k and returns
// what it held; a batch left with no rows is deleted.
func (s *partsCache) dropPart(partition string, k batchKey, rank int) []uint64 {
	s.cache.mu.Lock()
	defer s.cache.mu.Unlock()
	return s.dropPartLocked(partition, k, rank)
}

// dropPartLocked is dropPart with the cache locked.
func (s *partsCache) dropPartLocked(partition string, k batchKey, rank int) []uint64 {
	c := &s.cache
	parts, ok := c.m[partition][k]
	if !ok || rank >= len(parts) || len(parts[rank]) == 0 {
		return nil
	}
	rows := parts[rank]
	out := slices.Clone(parts) // stored values are never modified
	out[rank] = nil
	left := 0
	for _, p := range out {
		left += len(p)
	}
	if left > 0 {
		c.m[partition][k] = out
		return rows
	}
	delete(c.m[partition], k)
	if len(c.m[partition]) == 0 {
		delete(c.m, partition)
	}
	return rows
}

// partsEntry is one balanced batch in saved state, or in the journal; a
// journal entry with Dropped (and no parts) empties DPRank's part
// (DropBatch).
type partsEntry struct {
	Partition  string     `json:"partition"`
	Task       string     `json:"task"`
	BatchIndex int        `json:"batch_index"`
	Parts      [][]uint64 `json:"parts"`
	DPRank     int        `json:"dp_rank,omitempty"`
	Dropped    bool       `json:"dropped,omitempty"`
}

// partsState is the saved state of SeqlenBalanced and TokenBudget.
type partsState struct {
	Version int          `json:"version"`
	Sampler string       `json:"sampler"`
	N       int          `json:"n"`
	DPSize  int          `json:"dp_size"`
	Entries []partsEntry `json:"entries"`
}

// SaveState implements [engine.StatefulSampler].
func (s *partsCache) SaveState() ([]byte, error) {
	st := partsState{Version: stateVersion, Sampler: s.kind, N: s.n, DPSize: s.dpSize, Entries: []partsEntry{}}
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
	return marshalState(s.kind, st)
}

// LoadState implements [engine.StatefulSampler]. It replaces the cache only
// when the whole document is valid; otherwise it returns an error wrapping
// [engine.ErrCorrupt] and leaves the sampler as it was. A state saved with a
// different group size or dp size is corrupt.
func (s *partsCache) LoadState(state []byte) error {
	var st partsState
	if err := decodeState(s.kind, state, &st); err != nil {
		return err
	}
	if st.N != s.n || st.DPSize != s.dpSize {
		return corrupt(s.kind, "state has n %d and dp size %d, sampler has %d and %d",
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
			return corrupt(s.kind, "entry %d: duplicate key", i)
		}
		p[k] = e.Parts
	}
	s.cache.replace(m)
	return nil
}

// checkEntry validates saved or journaled entry i: dpSize parts (a final
// batch may leave some empty), no row twice, and some rows.
func (s *partsCache) checkEntry(i int, e *partsEntry) error {
	if e.Dropped || e.DPRank != 0 {
		return corrupt(s.kind, "entry %d: a dropped part where a batch belongs", i)
	}
	if len(e.Parts) != s.dpSize {
		return corrupt(s.kind, "entry %d: %d parts, want %d", i, len(e.Parts), s.dpSize)
	}
	seen := make(map[uint64]bool)
	for _, part := range e.Parts {
		for _, r := range part {
			if seen[r] {
				return corrupt(s.kind, "entry %d: row %d twice", i, r)
			}
			seen[r] = true
		}
	}
	if len(seen) == 0 {
		return corrupt(s.kind, "entry %d: no rows", i)
	}
	return nil
}

// ApplyEntry implements [engine.JournaledSampler].
func (s *partsCache) ApplyEntry(entry []byte) error {
	var e partsEntry
	if err := decodeEntry(s.kind, entry, &e); err != nil {
		return err
	}
	if e.Dropped {
		if len(e.Parts) > 0 || e.DPRank < 0 || e.DPRank >= s.dpSize {
			return corrupt(s.kind, "journal entry: a dropped part of dp rank %d with %d parts", e.DPRank, len(e.Parts))
		}
		s.dropPart(e.Partition, batchKey{task: e.Task, batch: e.BatchIndex}, e.DPRank)
		return nil
	}
	if err := s.checkEntry(0, &e); err != nil {
		return err
	}
	k := batchKey{task: e.Task, batch: e.BatchIndex}
	if _, added := s.cache.add(e.Partition, k, e.Parts); !added {
		// A part a rank took for itself (refill).
		s.cache.update(e.Partition, k, func(old [][]uint64) ([][]uint64, bool) { return fillParts(old, e.Parts) })
	}
	return nil
}
