package sampler

// The caching samplers keep their answers in a cache keyed first by
// partition (so ClearCache drops a partition in O(1)) and then by a
// sampler-specific key. Stored values are never modified after they are
// added; callers copy them before handing them out.
//
// A sampler computes a fresh answer without holding the cache lock (walking
// the ready set and reading tags can take a while) and then stores it with
// add, which keeps the first answer stored for a key. Two peers that race on
// the same key therefore both return the winner's answer.
//
// Saved state is a JSON document:
//
//	{"version": 1, "sampler": "rank_aware", "entries": [
//	  {"partition": "p", "task": "t", "dp_rank": 0, "batch_index": 0, "rows": [0, 1, 2]}]}
//
// GRPO adds "n"; SeqlenBalanced adds "n" and "dp_size" and stores "parts"
// (one row list per DP rank) per (partition, task, batch_index).

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"slices"
	"sync"

	"github.com/tqgo/tq/engine"
)

// stateVersion is the version of the JSON state documents.
const stateVersion = 1

// cache maps partition → key → value. It is safe for concurrent use.
type cache[K comparable, V any] struct {
	mu sync.Mutex
	m  map[string]map[K]V
}

func (c *cache[K, V]) get(partition string, k K) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.m[partition][k]
	return v, ok
}

func (c *cache[K, V]) has(partition string, k K) bool {
	_, ok := c.get(partition, k)
	return ok
}

// add stores v under (partition, k) unless a value is already there, and
// returns the value now stored and whether it is v.
func (c *cache[K, V]) add(partition string, k K, v V) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.m[partition][k]; ok {
		return old, false
	}
	if c.m == nil {
		c.m = make(map[string]map[K]V)
	}
	p := c.m[partition]
	if p == nil {
		p = make(map[K]V)
		c.m[partition] = p
	}
	p[k] = v
	return v, true
}

// update calls fn with the value under (partition, k), if there is one,
// and stores what fn returns when it reports a change; it returns the
// value now stored and whether fn changed it.
func (c *cache[K, V]) update(partition string, k K, fn func(V) (V, bool)) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	old, ok := c.m[partition][k]
	if !ok {
		return old, false
	}
	v, changed := fn(old)
	if !changed {
		return old, false
	}
	c.m[partition][k] = v
	return v, true
}

// del removes the value under (partition, k) and returns it.
func (c *cache[K, V]) del(partition string, k K) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.m[partition][k]
	if ok {
		delete(c.m[partition], k)
		if len(c.m[partition]) == 0 {
			delete(c.m, partition)
		}
	}
	return v, ok
}

func (c *cache[K, V]) clear(partition string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, partition)
}

// rewrite calls fn for every entry of a partition under the lock and
// stores what it returns; an entry fn reports not kept is deleted.
func (c *cache[K, V]) rewrite(partition string, fn func(V) (V, bool)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.m[partition]
	for k, v := range m {
		if nv, keep := fn(v); keep {
			m[k] = nv
		} else {
			delete(m, k)
		}
	}
	if len(m) == 0 {
		delete(c.m, partition)
	}
}

// forgetTask drops the entries of task ("": every task) of a partition
// (see engine.TaskForgetter); taskOf names an entry's task.
func (c *cache[K, V]) forgetTask(partition, task string, taskOf func(K) string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.m[partition]
	for k := range m {
		if task == "" || taskOf(k) == task {
			delete(m, k)
		}
	}
	if len(m) == 0 {
		delete(c.m, partition)
	}
}

// rowSet returns rows as a set.
func rowSet(rows []uint64) map[uint64]struct{} {
	m := make(map[uint64]struct{}, len(rows))
	for _, r := range rows {
		m[r] = struct{}{}
	}
	return m
}

// dropRows returns rows without those in gone: rows itself when none is
// (stored values are never modified), a new slice otherwise.
func dropRows(rows []uint64, gone map[uint64]struct{}) []uint64 {
	n := 0
	for _, r := range rows {
		if _, ok := gone[r]; ok {
			n++
		}
	}
	if n == 0 {
		return rows
	}
	out := make([]uint64, 0, len(rows)-n)
	for _, r := range rows {
		if _, ok := gone[r]; !ok {
			out = append(out, r)
		}
	}
	return out
}

// forgetRows drops cleared rows from a rank cache (see
// engine.RowForgetter).
func forgetRows(c *cache[rankKey, []uint64], partition string, rows []uint64) {
	gone := rowSet(rows)
	c.rewrite(partition, func(v []uint64) ([]uint64, bool) {
		v = dropRows(v, gone)
		return v, len(v) > 0
	})
}

// each calls fn for every entry while holding the lock.
func (c *cache[K, V]) each(fn func(partition string, k K, v V)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for p, m := range c.m {
		for k, v := range m {
			fn(p, k, v)
		}
	}
}

// replace swaps in a whole new map.
func (c *cache[K, V]) replace(m map[string]map[K]V) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m = m
}

// rankKey identifies one batch of one data-replica group.
type rankKey struct {
	task  string
	rank  int
	batch int
}

func (k rankKey) taskOf() string { return k.task }

// rowsEntry is one cached answer of GRPO or RankAware in saved state, or
// in the journal; a journal entry with Dropped (and no rows) drops the
// answer (DropBatch).
type rowsEntry struct {
	Partition  string   `json:"partition"`
	Task       string   `json:"task"`
	DPRank     int      `json:"dp_rank"`
	BatchIndex int      `json:"batch_index"`
	Rows       []uint64 `json:"rows"`
	Dropped    bool     `json:"dropped,omitempty"`
}

// rowsState is the saved state of GRPO and RankAware.
type rowsState struct {
	Version int         `json:"version"`
	Sampler string      `json:"sampler"`
	N       int         `json:"n,omitempty"`
	Entries []rowsEntry `json:"entries"`
}

// journal hands a new entry to the request's journal (see
// engine.SampleRequest.Journal), if it has one.
func journal(kind string, req engine.SampleRequest, entry any) error {
	if req.Journal == nil {
		return nil
	}
	b, err := json.Marshal(entry)
	if err != nil {
		return fmt.Errorf("%s: journal entry: %w", kind, err)
	}
	req.Journal(b)
	return nil
}

// decodeEntry decodes one journaled entry strictly.
func decodeEntry(kind string, data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%s: journal entry: %w: %w", kind, engine.ErrCorrupt, err)
	}
	return nil
}

// applyRowsEntry adds a journaled GRPO or RankAware entry to c.
func applyRowsEntry(kind string, n int, c *cache[rankKey, []uint64], data []byte) error {
	var e rowsEntry
	if err := decodeEntry(kind, data, &e); err != nil {
		return err
	}
	if e.DPRank < 0 {
		return corrupt(kind, "journal entry: negative dp_rank %d", e.DPRank)
	}
	k := rankKey{task: e.Task, rank: e.DPRank, batch: e.BatchIndex}
	if e.Dropped {
		if len(e.Rows) > 0 {
			return corrupt(kind, "journal entry: a dropped batch with rows")
		}
		c.del(e.Partition, k)
		return nil
	}
	// Not necessarily whole groups of n: cleared rows leave cached
	// batches (ForgetRows).
	if err := checkRows(kind, 0, e.Rows); err != nil {
		return err
	}
	c.add(e.Partition, k, e.Rows)
	return nil
}

// dropRowsBatch drops a cached GRPO or RankAware batch (see
// engine.BatchDropper) and journals the drop.
func dropRowsBatch(kind string, c *cache[rankKey, []uint64], partition, task string, opts engine.SamplingOptions, j func([]byte)) ([]uint64, error) {
	if !opts.HasRank {
		return nil, nil
	}
	rows, ok := c.del(partition, rankKey{task: task, rank: opts.DPRank, batch: opts.BatchIndex})
	if !ok {
		return nil, nil
	}
	if j != nil {
		b, err := json.Marshal(rowsEntry{Partition: partition, Task: task, DPRank: opts.DPRank, BatchIndex: opts.BatchIndex, Dropped: true})
		if err != nil {
			return nil, fmt.Errorf("%s: journal entry: %w", kind, err)
		}
		j(b)
	}
	return slices.Clone(rows), nil
}

// saveRows encodes a rank cache.
func saveRows(kind string, n int, c *cache[rankKey, []uint64]) ([]byte, error) {
	st := rowsState{Version: stateVersion, Sampler: kind, N: n, Entries: []rowsEntry{}}
	c.each(func(p string, k rankKey, rows []uint64) {
		st.Entries = append(st.Entries, rowsEntry{
			Partition: p, Task: k.task, DPRank: k.rank, BatchIndex: k.batch, Rows: rows,
		})
	})
	slices.SortFunc(st.Entries, func(a, b rowsEntry) int {
		return cmp.Or(
			cmp.Compare(a.Partition, b.Partition),
			cmp.Compare(a.Task, b.Task),
			cmp.Compare(a.DPRank, b.DPRank),
			cmp.Compare(a.BatchIndex, b.BatchIndex),
		)
	})
	return marshalState(kind, st)
}

func marshalState(kind string, st any) ([]byte, error) {
	b, err := json.Marshal(st)
	if err != nil {
		return nil, fmt.Errorf("%s: save state: %w", kind, err)
	}
	return b, nil
}

// loadRows decodes and validates a rank cache document. It returns the new
// map without touching any sampler.
func loadRows(kind string, n int, data []byte) (map[string]map[rankKey][]uint64, error) {
	var st rowsState
	if err := decodeState(kind, data, &st); err != nil {
		return nil, err
	}
	if st.N != n {
		return nil, corrupt(kind, "state has n %d, sampler has %d", st.N, n)
	}
	m := make(map[string]map[rankKey][]uint64)
	for i, e := range st.Entries {
		if e.DPRank < 0 {
			return nil, corrupt(kind, "entry %d: negative dp_rank %d", i, e.DPRank)
		}
		if err := checkRows(kind, i, e.Rows); err != nil {
			return nil, err
		}
		p := m[e.Partition]
		if p == nil {
			p = make(map[rankKey][]uint64)
			m[e.Partition] = p
		}
		k := rankKey{task: e.Task, rank: e.DPRank, batch: e.BatchIndex}
		if _, dup := p[k]; dup {
			return nil, corrupt(kind, "entry %d: duplicate key", i)
		}
		p[k] = e.Rows
	}
	return m, nil
}

// decodeState checks the version and sampler kind, then decodes data into v
// strictly (unknown fields are corrupt).
func decodeState(kind string, data []byte, v any) error {
	var head struct {
		Version int    `json:"version"`
		Sampler string `json:"sampler"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return fmt.Errorf("%s: load state: %w: %w", kind, engine.ErrCorrupt, err)
	}
	if head.Version != stateVersion {
		return corrupt(kind, "state version %d, want %d", head.Version, stateVersion)
	}
	if head.Sampler != kind {
		return corrupt(kind, "state is for sampler %q", head.Sampler)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%s: load state: %w: %w", kind, engine.ErrCorrupt, err)
	}
	return nil
}

// checkRows reports a row list of saved entry i that is empty or names a
// row twice; the samplers never cache such lists. (They need not be
// ascending: a batch of prompt groups is in the order the groups were put.)
func checkRows(kind string, entry int, rows []uint64) error {
	if len(rows) == 0 {
		return corrupt(kind, "entry %d: no rows", entry)
	}
	seen := make(map[uint64]struct{}, len(rows))
	for j, r := range rows {
		if _, dup := seen[r]; dup {
			return corrupt(kind, "entry %d: row %d again at %d", entry, r, j)
		}
		seen[r] = struct{}{}
	}
	return nil
}

func corrupt(kind, format string, args ...any) error {
	return fmt.Errorf("%s: load state: %s: %w", kind, fmt.Sprintf(format, args...), engine.ErrCorrupt)
}

// invalid wraps [engine.ErrInvalid] with the sampler's name and a reason.
func invalid(kind, format string, args ...any) error {
	return fmt.Errorf("%s: %s: %w", kind, fmt.Sprintf(format, args...), engine.ErrInvalid)
}

// pair returns two independent copies of rows that share one allocation, so
// that sampled and consumed never alias. It returns nil, nil for no rows.
func pair(rows []uint64) (sampled, consumed []uint64) {
	if len(rows) == 0 {
		return nil, nil
	}
	n := len(rows)
	buf := make([]uint64, 2*n)
	copy(buf, rows)
	copy(buf[n:], rows)
	return buf[:n:n], buf[n:]
}
