package sampler

// A property test of the caching samplers: a small model of a partition
// (puts of whole groups and of single rows, rows produced late, clears
// that free indexes for reuse, resets of the task's consumption, batches
// dropped, the partition marked done) drives each sampler the way the
// controller does, and checks what a trainer relies on after every
// answer and at the end, when every rank drains the done partition (with
// the balanced samplers, but for a group that stopped, whose parts are
// given back).

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/tqgo/tq/engine"
)

// propSampler is what the controller sees of a caching sampler.
type propSampler interface {
	engine.CachingSampler
	engine.JournaledSampler
	engine.RowForgetter
	engine.TaskForgetter
}

type propKind struct {
	name   string
	n      int  // group size
	parts  bool // one batch index for all DP ranks (SeqlenBalanced, TokenBudget)
	budget bool // TokenBudget
	make   func(n, dp int) propSampler
}

var propKinds = []propKind{
	{name: "rank_aware", n: 1, make: func(int, int) propSampler { return NewRankAware() }},
	{name: "grpo", n: 3, make: func(n, _ int) propSampler { s, _ := NewGRPO(n); return s }},
	{name: "seqlen", n: 2, parts: true, make: func(n, dp int) propSampler { s, _ := NewSeqlenBalanced(n, dp); return s }},
	{name: "token_budget", n: 2, parts: true, budget: true, make: func(n, dp int) propSampler { s, _ := NewTokenBudget(n, dp); return s }},
}

type propRow struct {
	id       int // never reused, unlike the index
	origin   engine.RowOrigin
	length   int64
	tagged   bool
	ready    bool
	consumed bool
}

type batchID struct{ group, batch int }

type propSim struct {
	t      *testing.T
	rng    *rand.Rand
	seed   uint64
	kind   propKind
	groups int // DP groups (the dp size of the balanced samplers)
	peers  int // ranks per group
	s      propSampler

	rows    map[uint64]*propRow
	free    []uint64
	nextIdx uint64
	made    uint64
	nextID  int
	done    bool

	next     [][]int  // next[g][r]: the batch index rank r of group g asks for
	finished [][]bool // the rank got nothing from the done partition
	sizes    map[int]int
	budgets  map[int]int64
	first    map[batchID][]int // the ids the group's first answer had
	owner    map[int]int       // row id → the group it went to
	moved    map[batchID]bool  // the group's batch is a later batch's part (movePart)
	log      []func(propSampler) error
}

func newPropSim(t *testing.T, seed uint64, kind propKind) *propSim {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	s := &propSim{
		t: t, rng: rng, seed: seed, kind: kind,
		groups: 1 + rng.IntN(3), peers: 1 + rng.IntN(3),
		rows: map[uint64]*propRow{}, sizes: map[int]int{}, budgets: map[int]int64{},
		first: map[batchID][]int{}, owner: map[int]int{}, moved: map[batchID]bool{},
	}
	s.s = kind.make(kind.n, s.groups)
	s.next = make([][]int, s.groups)
	s.finished = make([][]bool, s.groups)
	for g := range s.groups {
		s.next[g] = make([]int, s.peers)
		s.finished[g] = make([]bool, s.peers)
	}
	return s
}

func (s *propSim) fatalf(format string, args ...any) {
	s.t.Helper()
	s.t.Fatalf("%s seed %d (groups %d, peers %d): %s", s.kind.name, s.seed, s.groups, s.peers, fmt.Sprintf(format, args...))
}

// put adds a put of size rows (indexes freed by clears first).
func (s *propSim) put(size int) {
	if s.done {
		return
	}
	for pos := range size {
		var idx uint64
		if len(s.free) > 0 && s.rng.IntN(2) == 0 {
			k := s.rng.IntN(len(s.free))
			idx = s.free[k]
			s.free = slices.Delete(s.free, k, k+1)
		} else {
			idx = s.nextIdx
			s.nextIdx++
		}
		s.made++
		r := &propRow{
			id:     s.nextID,
			origin: engine.RowOrigin{Created: s.made, Pos: uint32(pos), Size: uint32(size)},
			length: int64(s.rng.IntN(12)),
			tagged: s.rng.IntN(8) != 0,
			ready:  s.rng.IntN(3) != 0,
		}
		if !r.tagged {
			r.length = 1
		}
		s.nextID++
		s.rows[idx] = r
	}
}

func (s *propSim) sortedIdx() []uint64 {
	var out []uint64
	for i := range s.rows {
		out = append(out, i)
	}
	slices.Sort(out)
	return out
}

func (s *propSim) ready() engine.ReadySlice {
	var out engine.ReadySlice
	for _, i := range s.sortedIdx() {
		if r := s.rows[i]; r.ready && !r.consumed {
			out = append(out, i)
		}
	}
	return out
}

func (s *propSim) final() bool {
	if !s.done {
		return false
	}
	for _, r := range s.rows {
		if !r.consumed && !r.ready {
			return false
		}
	}
	return true
}

func (s *propSim) tags(i uint64) engine.Tags {
	if r, ok := s.rows[i]; ok && r.tagged {
		return engine.Tags{LengthTag: r.length}
	}
	return nil
}

func (s *propSim) origin(i uint64) engine.RowOrigin { return s.rows[i].origin }

func (s *propSim) batchSize(b int) int {
	if _, ok := s.sizes[b]; !ok {
		s.sizes[b] = s.kind.n * (1 + s.rng.IntN(3))
		if s.kind.budget && s.rng.IntN(2) == 0 {
			s.sizes[b] = 0 // no row cap
		}
		s.budgets[b] = int64(4 + s.rng.IntN(30))
	}
	return s.sizes[b]
}

func (s *propSim) logEntries(entries [][]byte) {
	for _, e := range entries {
		s.log = append(s.log, func(f propSampler) error { return f.ApplyEntry(e) })
	}
}

// fetch is one rank's fetch, as the controller's tryFetch makes it.
func (s *propSim) fetch(g, r int) {
	if s.finished[g][r] {
		return
	}
	b := s.next[g][r]
	size := s.batchSize(b)
	var budget int64
	if s.kind.budget {
		budget = s.budgets[b]
	}
	ready, final := s.ready(), s.final()
	opts := engine.SamplingOptions{HasRank: true, DPRank: g, BatchIndex: b}
	if len(ready) < size && !final && budget == 0 && !s.s.Cached("p", "t", opts) {
		return
	}
	var entries [][]byte
	req := engine.SampleRequest{
		Partition: "p", Task: "t", BatchSize: size, TokenBudget: budget, Final: final,
		Ready: ready, Options: opts, Tags: s.tags, Origin: s.origin,
		Journal: func(e []byte) { entries = append(entries, e) },
	}
	sampled, consumed, err := s.s.Sample(req)
	if err != nil {
		s.fatalf("group %d rank %d batch %d: Sample: %v", g, r, b, err)
	}
	s.logEntries(entries)
	if len(sampled) == 0 && final && s.kind.parts {
		sampled = s.movePart(g, b)
		consumed = append(consumed, sampled...)
		s.moved[batchID{g, b}] = s.moved[batchID{g, b}] || len(sampled) > 0
	}
	// A later batch's part: its size and budget are that batch's.
	moved := s.moved[batchID{g, b}]
	fresh := false // the answer was made now, not cached
	for _, i := range consumed {
		row, ok := s.rows[i]
		if !ok {
			s.fatalf("group %d rank %d batch %d: consumed row %d, which is not there", g, r, b, i)
		}
		fresh = fresh || !row.consumed
		row.consumed = true
	}
	if len(sampled) == 0 {
		if final {
			s.finished[g][r] = true
		}
		return
	}
	ids := make([]int, len(sampled))
	seen := map[uint64]bool{}
	for k, i := range sampled {
		row, ok := s.rows[i]
		switch {
		case !ok:
			s.fatalf("group %d rank %d batch %d: sampled row %d, which is not there", g, r, b, i)
		case seen[i]:
			s.fatalf("group %d rank %d batch %d: sampled row %d twice: %v", g, r, b, i, sampled)
		case !row.consumed:
			s.fatalf("group %d rank %d batch %d: sampled row %d is not consumed: another group may take it", g, r, b, i)
		}
		seen[i] = true
		ids[k] = row.id
		if o, ok := s.owner[row.id]; ok && o != g {
			s.fatalf("batch %d: row %d (index %d) went to group %d and to group %d", b, row.id, i, o, g)
		}
		s.owner[row.id] = g
	}
	if fresh { // a cached batch may have lost cleared rows
		s.checkGroups(g, r, b, sampled)
	}
	// A final short batch of SeqlenBalanced is split into parts of any
	// size (as the reference's is): one may be over the batch size.
	if size > 0 && len(sampled) > size && !(s.kind.parts && !s.kind.budget && final) && !moved {
		s.fatalf("group %d rank %d batch %d: %d rows for a batch of %d", g, r, b, len(sampled), size)
	}
	if s.kind.budget && !moved {
		var tokens int64
		for _, i := range sampled {
			tokens += s.rows[i].length
		}
		if tokens > budget && len(sampled) > s.kind.n { // one group, or what a clear left of it
			s.fatalf("group %d rank %d batch %d: %d tokens over the budget %d in %d rows", g, r, b, tokens, budget, len(sampled))
		}
	}
	key := batchID{g, b}
	if want, ok := s.first[key]; ok {
		want = s.liveIDs(want)
		if len(want) > 0 && !slices.Equal(want, ids) {
			s.fatalf("group %d rank %d batch %d: got rows %v, a peer got %v", g, r, b, ids, want)
		}
	}
	if len(s.liveIDs(s.first[key])) == 0 {
		s.first[key] = ids
	}
	s.next[g][r]++
}

// movePart is the controller's answer to a final fetch of a balanced
// sampler that got nothing (the group's part was cleared, and no rows are
// ready to refill it): the group's part of the first later batch it never
// fetched, moved into batch b (engine.SplitBatchDropper.MovePart).
func (s *propSim) movePart(g, b int) []uint64 {
	split := s.s.(engine.SplitBatchDropper)
	last := 0
	for h := range s.groups {
		last = max(last, slices.Max(s.next[h]))
	}
	for from := b + 1; from <= last; from++ {
		if _, fetched := s.first[batchID{g, from}]; fetched {
			continue
		}
		var entries [][]byte
		rows, err := split.MovePart("p", "t", g, from, b, func(e []byte) { entries = append(entries, e) })
		if err != nil {
			s.fatalf("group %d batch %d: MovePart from %d: %v", g, b, from, err)
		}
		s.logEntries(entries)
		if len(rows) > 0 {
			return rows
		}
	}
	return nil
}

// liveIDs returns the ids of rows still in the partition.
func (s *propSim) liveIDs(ids []int) []int {
	live := map[int]bool{}
	for _, r := range s.rows {
		live[r.id] = true
	}
	var out []int
	for _, id := range ids {
		if live[id] {
			out = append(out, id)
		}
	}
	return out
}

// checkGroups checks that a batch is whole groups of n, each n rows of
// one put at its places k·n … k·n+n-1, or n rows put one at a time one
// after another.
func (s *propSim) checkGroups(g, r, b int, sampled []uint64) {
	n := s.kind.n
	if n == 1 {
		return
	}
	if len(sampled)%n != 0 {
		s.fatalf("group %d rank %d batch %d: %d rows is not whole groups of %d", g, r, b, len(sampled), n)
	}
	for k := 0; k < len(sampled); k += n {
		first := s.rows[sampled[k]].origin
		whole := first.Size >= uint32(n)
		ok := !whole || first.Pos%uint32(n) == 0
		for j := 1; j < n; j++ {
			o := s.rows[sampled[k+j]].origin
			ok = ok && o.Created == first.Created+uint64(j) && (o.Size >= uint32(n)) == whole
		}
		if !ok {
			s.fatalf("group %d rank %d batch %d: rows %v are not a prompt group", g, r, b, sampled[k:k+n])
		}
	}
}

// clear removes some rows, as a clear of the partition does; with the
// balanced samplers, rows consumed for a rank that has not fetched them
// yet too: the rank takes a part of its own from the rows ready then
// (TestClearedPartRefills), and at the end of a done partition, with none
// ready, its part of a later batch (movePart).
func (s *propSim) clear() {
	var gone []uint64
	for _, i := range s.sortedIdx() {
		r := s.rows[i]
		if (r.consumed && s.rng.IntN(3) == 0) || s.rng.IntN(20) == 0 {
			gone = append(gone, i)
		}
	}
	if len(gone) == 0 {
		return
	}
	for _, i := range gone {
		delete(s.rows, i)
		s.free = append(s.free, i)
	}
	s.s.ForgetRows("p", gone)
	s.log = append(s.log, func(f propSampler) error { f.ForgetRows("p", gone); return nil })
}

// reset resets the task's consumption: a new round.
func (s *propSim) reset() {
	for _, r := range s.rows {
		r.consumed = false
	}
	s.s.ForgetTask("p", "t")
	s.log = append(s.log, func(f propSampler) error { f.ForgetTask("p", "t"); return nil })
	clear(s.owner)
	clear(s.first)
	clear(s.moved)
	for g := range s.groups {
		clear(s.next[g])
		clear(s.finished[g])
	}
}

// drop drops a batch a group left behind, as the controller does after
// Config.KeptBatchTTL: its rows are no longer consumed, and the group
// starts over at that batch.
func (s *propSim) drop() {
	_, ok := s.s.(engine.BatchDropper)
	if !ok {
		return
	}
	g := s.rng.IntN(s.groups)
	b := slices.Max(s.next[g])
	if b > 0 && s.rng.IntN(2) == 0 {
		b--
	}
	s.dropBatch(g, b, true)
}

// dropBatch drops group g's batch b (see drop) and reports whether it
// gave rows back. A balanced sampler's part that the group never fetched
// (another rank's fetch made it) gives back rows consumed for it that no
// group got.
// With rewind the group starts over at b; without, it stays where it is
// (a part it never fetched, given back after it went past it).
func (s *propSim) dropBatch(g, b int, rewind bool) bool {
	d := s.s.(engine.BatchDropper)
	var entries [][]byte
	got, err := d.DropBatch("p", "t", engine.SamplingOptions{HasRank: true, DPRank: g, BatchIndex: b},
		func(e []byte) { entries = append(entries, e) })
	if err != nil {
		s.fatalf("DropBatch: %v", err)
	}
	s.logEntries(entries)
	var ids []int
	want := s.liveIDs(s.first[batchID{g, b}])
	for _, i := range got {
		row, ok := s.rows[i]
		if !ok {
			s.fatalf("group %d batch %d: DropBatch gave back row %d, which is not there", g, b, i)
		}
		if _, handed := s.owner[row.id]; s.kind.parts && len(want) == 0 && (handed || !row.consumed) {
			s.fatalf("group %d batch %d: DropBatch gave back row %d of a part nobody fetched, which was handed out or not consumed", g, b, i)
		}
		row.consumed = false
		ids = append(ids, row.id)
		delete(s.owner, row.id)
	}
	if !slices.Equal(want, ids) && !(s.kind.parts && len(want) == 0) {
		s.fatalf("group %d batch %d: DropBatch gave back %v, the group got %v", g, b, ids, want)
	}
	delete(s.first, batchID{g, b})
	delete(s.moved, batchID{g, b})
	for r := range s.peers {
		if rewind {
			s.next[g][r] = min(s.next[g][r], b)
			s.finished[g][r] = false
		}
	}
	return len(got) > 0
}

// checkReplay checks that the journal, replayed into a fresh sampler,
// and the saved state, loaded into one, make the live sampler's state.
func (s *propSim) checkReplay() {
	want, err := s.s.SaveState()
	if err != nil {
		s.fatalf("SaveState: %v", err)
	}
	fresh := s.kind.make(s.kind.n, s.groups)
	for k, op := range s.log {
		if err := op(fresh); err != nil {
			s.fatalf("replay of op %d: %v", k, err)
		}
	}
	got, err := fresh.SaveState()
	if err != nil {
		s.fatalf("SaveState: %v", err)
	}
	if !bytes.Equal(got, want) {
		s.fatalf("replayed journal:\n got %s\nwant %s", got, want)
	}
	loaded := s.kind.make(s.kind.n, s.groups)
	if err := loaded.LoadState(want); err != nil {
		s.fatalf("LoadState: %v", err)
	}
	if got, _ = loaded.SaveState(); !bytes.Equal(got, want) {
		s.fatalf("loaded state:\n got %s\nwant %s", got, want)
	}
}

func (s *propSim) step() {
	switch p := s.rng.IntN(100); {
	case p < 20:
		if s.rng.IntN(3) == 0 {
			s.put(1)
		} else {
			s.put(s.kind.n * (1 + s.rng.IntN(3)))
		}
	case p < 35:
		for _, i := range s.sortedIdx() {
			if s.rng.IntN(2) == 0 {
				s.rows[i].ready = true
			}
		}
	case p < 80:
		s.fetch(s.rng.IntN(s.groups), s.rng.IntN(s.peers))
	case p < 88:
		s.clear()
	case p < 91:
		s.reset()
	case p < 95:
		s.drop()
	case p < 97:
		s.done = true
	default:
		s.checkReplay()
	}
}

// drain has every rank fetch from the done partition until it gets
// nothing, and checks that no row was lost. With the balanced samplers a
// group may have stopped: it fetches nothing more, and the controller
// drops the parts other ranks made for it (its kept batches left behind),
// whose rows the others then get.
func (s *propSim) drain() {
	s.done = true
	for _, r := range s.rows {
		r.ready = true
	}
	stopped, handed := -1, -1
	if s.kind.parts && s.groups > 1 && s.rng.IntN(2) == 0 {
		stopped = s.rng.IntN(s.groups)
	}
	for round := 0; ; round++ {
		if round > 10000 {
			s.fatalf("ranks still fetching after %d rounds", round)
		}
		busy := false
		for g := range s.groups {
			for r := range s.peers {
				if g != stopped && !s.finished[g][r] {
					busy = true
					s.fetch(g, r)
				}
			}
		}
		if busy {
			continue
		}
		if !s.kind.parts {
			break
		}
		if stopped < 0 && handed < 0 {
			s.checkNoPartLeft()
		}
		// The controller gives back the parts no rank of their group
		// fetched (made by another group's fetch), a TTL after: those
		// of the stopped group, and those of a batch a late peer made
		// again after a clear took all its rows, for a group that had
		// gone past it. Done when none is left, or when the others got
		// no row since the last give-back: what is left then (a last
		// group that went to the stopped group's part, the others'
		// parts empty) is not consumed, for whoever fetches next.
		last := 0
		for g := range s.groups {
			last = max(last, slices.Max(s.next[g]))
		}
		gave := false
		for g := range s.groups {
			for b := 0; b <= last; b++ {
				if len(s.liveIDs(s.first[batchID{g, b}])) == 0 || g == stopped && b >= slices.Max(s.next[g]) {
					gave = s.dropBatch(g, b, false) || gave
				}
			}
		}
		if !gave || len(s.owner) == handed {
			break
		}
		handed = len(s.owner)
		for g := range s.groups { // the rows it left are ready again
			if g != stopped {
				clear(s.finished[g])
			}
		}
	}
	for i, r := range s.rows {
		if r.consumed {
			if _, ok := s.owner[r.id]; !ok {
				s.fatalf("row %d (index %d) was consumed and given to no group", r.id, i)
			}
		}
	}
	if stopped >= 0 {
		s.checkReplay()
		return
	}
	// What is left is no group: rows of a put of n or more not all
	// there, or fewer than n rows put one at a time one after another.
	left := map[uint64]*propRow{}
	for _, r := range s.rows {
		if !r.consumed {
			left[r.origin.Created] = r
		}
	}
	n := uint64(s.kind.n)
	for c, r := range left {
		o := r.origin
		if o.Size >= uint32(n) {
			at := uint64(o.Pos) % n
			if uint64(o.Pos)-at+n > uint64(o.Size) || at != 0 {
				continue
			}
		} else if p, ok := left[c-1]; ok && p.origin.Size < uint32(n) {
			continue // not the start of a run
		}
		k := uint64(1)
		for ; k < n; k++ {
			q, ok := left[c+k]
			if !ok || (q.origin.Size >= uint32(n)) != (o.Size >= uint32(n)) {
				break
			}
		}
		if k == n {
			s.fatalf("rows made %d to %d are a group nobody got", c, c+n-1)
		}
	}
	s.checkReplay()
}

// checkNoPartLeft checks, once every rank got nothing from the done
// partition, that no group was told so while a part made for it at or
// after the batch it asked for last, which it never fetched, held rows:
// those rows were consumed and reached no rank (but after a TTL, given
// back). The parts of batches a group went past (made again by a late
// peer after a clear took all their rows) are the TTL's to give back.
func (s *propSim) checkNoPartLeft() {
	split := s.s.(engine.SplitBatchDropper)
	last := 0
	for g := range s.groups {
		last = max(last, slices.Max(s.next[g]))
	}
	for g := range s.groups {
		for b := slices.Min(s.next[g]); b <= last; b++ {
			if _, fetched := s.first[batchID{g, b}]; !fetched && slices.Contains(split.Parts("p", "t", b), g) {
				s.fatalf("group %d got nothing from the done partition at batch %d, though its part of batch %d holds rows", g, slices.Min(s.next[g]), b)
			}
		}
	}
}

// TestSamplerProperties drives every caching sampler through random
// partitions (see the file comment).
func TestSamplerProperties(t *testing.T) {
	for _, kind := range propKinds {
		t.Run(kind.name, func(t *testing.T) {
			for seed := range uint64(150) {
				s := newPropSim(t, seed, kind)
				for range 150 {
					s.step()
				}
				s.drain()
			}
		})
	}
}
