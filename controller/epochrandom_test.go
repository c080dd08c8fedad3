package controller

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

var (
	epochSeeds = flag.Int("epoch.seeds", 3, "TestEpochExactlyOnce: seeds per sampler")
	epochOps   = flag.Int("epoch.ops", 300, "TestEpochExactlyOnce: random ops per seed before the drain")
)

// TestEpochExactlyOnce drives a controller with every built-in sampler
// the way trainers do: puts of random sizes (whole groups of n and a
// remainder for the group samplers), their fields committed in random
// order (a row is ready once both are), total_lengths tags, and fetches by
// two independent tasks from random ranks of several DP groups of several
// peers, each rank stepping its own batch index and now and then asking
// its last batch again; the partition is marked done at a random point
// (puts go on) and then every rank fetches until ErrDone. Over the epoch
// every row that is in a group of its put is delivered to each task
// exactly once — a batch shared by the ranks of a DP group counts once,
// and every peer must get the same one —, a row of no group (a put's last
// rows, fewer than n) never, and each answer of a group sampler is whole
// groups of one put, side by side in its order. Seeded; -epoch.seeds and
// -epoch.ops run it longer.
func TestEpochExactlyOnce(t *testing.T) {
	cases := [][]engine.SamplerSpec{
		{{Name: engine.SamplerSequential}},
		{{Name: engine.SamplerRankAware}},
		{{Name: engine.SamplerGRPO, N: 3}},
		{{Name: engine.SamplerGRPO, N: 2, DPSize: -1}}, // without ranks (DPSize -1: the test's mark)
		{{Name: engine.SamplerSeqlenBalanced, N: 2, DPSize: 2}},
		{{Name: engine.SamplerSeqlenBalanced, N: 1, DPSize: 3}},
		{{Name: engine.SamplerTokenBudget, N: 2, DPSize: 2}},
		// One task's trainer comes back with another dp size: a sampler
		// of its own, whose cache knows nothing of the other's batches.
		{{Name: engine.SamplerSeqlenBalanced, N: 2, DPSize: 2}, {Name: engine.SamplerSeqlenBalanced, N: 2, DPSize: 3}},
		{{Name: engine.SamplerTokenBudget, N: 1, DPSize: 3}, {Name: engine.SamplerTokenBudget, N: 1, DPSize: 1}},
		{{Name: engine.SamplerGRPO, N: 2}, {Name: engine.SamplerSeqlenBalanced, N: 2, DPSize: 2}, {Name: engine.SamplerTokenBudget, N: 2, DPSize: 3}},
	}
	for _, specs := range cases {
		names := make([]string, len(specs))
		for i, spec := range specs {
			names[i] = spec.String()
			if spec.DPSize < 0 {
				names[i] += "-norank"
			}
		}
		for seed := range uint64(*epochSeeds) {
			t.Run(fmt.Sprintf("%s/seed=%d", strings.Join(names, "+"), seed), func(t *testing.T) {
				newEpochSim(t, specs, seed).run(*epochOps)
			})
		}
	}
}

// epochRow is what the test knows of a row: its put and place in it.
type epochRow struct {
	put, pos, size int
	grouped        bool // in a whole group of n of its put
}

// epochLayout is one way a task's trainer fetches: a sampler and its DP
// groups of peers.
type epochLayout struct {
	spec   engine.SamplerSpec
	noRank bool // fetches carry no rank
	shared bool // peers of a DP group share a batch
	split  bool // one batch index split between the DP groups
	groups int
	peers  int
}

// epochKey names a delivery: a DP group's batch of a task in a layout
// (shared by the group's peers), or for sequential one fetch.
type epochKey struct {
	task                 string
	layout, group, batch int
}

// epochRank is one rank of a task's layout.
type epochRank struct {
	task             string
	layout, group, p int
}

type epochSim struct {
	t       *testing.T
	rng     *rand.Rand
	seed    uint64
	name    string
	c       *Controller
	n       int
	layouts []epochLayout
	tasks   []string

	rows    map[uint64]*epochRow
	pending []epochCell // cells not committed yet
	puts    int
	done    bool

	next     map[epochRank]int // the batch index the rank asks for
	finished map[epochRank]bool
	sizes    map[epochKey]int // batch size by (task, layout, -, batch)
	budgets  map[epochKey]int64
	answers  map[epochKey][]uint64
	got      map[string]map[uint64]epochKey // task → row → the delivery it went to
	fetches  int
}

type epochCell struct {
	row   uint64
	field string
}

func newEpochSim(t *testing.T, specs []engine.SamplerSpec, seed uint64) *epochSim {
	rng := rand.New(rand.NewPCG(seed, 0xe90c))
	s := &epochSim{
		t: t, rng: rng, seed: seed, c: newController(t, DefaultConfig()),
		n:     max(specs[0].N, 1),
		tasks: []string{"t", "u"},
		rows:  map[uint64]*epochRow{}, next: map[epochRank]int{}, finished: map[epochRank]bool{},
		sizes: map[epochKey]int{}, budgets: map[epochKey]int64{}, answers: map[epochKey][]uint64{},
		got: map[string]map[uint64]epochKey{},
	}
	var desc []string
	for _, spec := range specs {
		noRank := spec.DPSize < 0
		spec.DPSize = max(spec.DPSize, 0)
		l := epochLayout{
			spec:   spec,
			noRank: noRank,
			shared: spec.Name != engine.SamplerSequential && !noRank,
			split:  spec.Name == engine.SamplerSeqlenBalanced || spec.Name == engine.SamplerTokenBudget,
			groups: 1 + rng.IntN(3), peers: 1 + rng.IntN(3),
		}
		if l.split {
			l.groups = max(spec.DPSize, 1)
		}
		s.layouts = append(s.layouts, l)
		desc = append(desc, fmt.Sprintf("%s (no rank %t): %d groups of %d peers", spec, noRank, l.groups, l.peers))
	}
	s.name = strings.Join(desc, ", ")
	for _, task := range s.tasks {
		s.got[task] = map[uint64]epochKey{}
	}
	return s
}

func (s *epochSim) fatalf(format string, args ...any) {
	s.t.Helper()
	s.t.Fatalf("seed %d (%s): %s", s.seed, s.name, fmt.Sprintf(format, args...))
}

// put inserts k·n rows and a remainder, tags them and leaves their cells
// to commit.
func (s *epochSim) put() {
	size := s.n*(1+s.rng.IntN(3)) + s.rng.IntN(s.n)
	m, err := s.c.Insert("p", size, []string{"a", "b"})
	require.NoError(s.t, err)
	tags := make([]engine.Tags, size)
	for pos, i := range m.Indexes {
		s.rows[i] = &epochRow{put: s.puts, pos: pos, size: size, grouped: pos-pos%s.n+s.n <= size}
		s.pending = append(s.pending, epochCell{i, "a"}, epochCell{i, "b"})
		tags[pos] = engine.Tags{"total_lengths": 1 + s.rng.IntN(8)}
	}
	require.NoError(s.t, s.c.SetTags("p", m.Indexes, tags))
	s.puts++
}

// commit produces a random share of the cells not produced yet (all with
// every), one field at a time.
func (s *epochSim) commit(every bool) {
	s.rng.Shuffle(len(s.pending), func(i, j int) { s.pending[i], s.pending[j] = s.pending[j], s.pending[i] })
	k := len(s.pending)
	if !every {
		k = s.rng.IntN(len(s.pending) + 1)
	}
	byField := map[string][]uint64{}
	for _, cell := range s.pending[:k] {
		byField[cell.field] = append(byField[cell.field], cell.row)
	}
	s.pending = s.pending[k:]
	for _, f := range []string{"a", "b"} {
		if len(byField[f]) > 0 {
			commitDense(s.t, s.c, "p", byField[f], f)
		}
	}
}

// batchSize returns the batch size and token budget every rank of a
// task's layout asks for at batch index b.
func (s *epochSim) batchSize(task string, layout, b int) (int, int64) {
	k := epochKey{task: task, layout: layout, batch: b}
	if _, ok := s.sizes[k]; !ok {
		s.sizes[k] = s.n * (1 + s.rng.IntN(3))
		if s.layouts[layout].spec.Name == engine.SamplerTokenBudget {
			s.budgets[k] = int64(4 + s.rng.IntN(30))
			if s.rng.IntN(3) == 0 {
				s.sizes[k] = 0 // no row cap
			}
		}
	}
	return s.sizes[k], s.budgets[k]
}

// fetch is rank r asking for its next batch (with again, the one it got
// last). It reports whether the rank is done: the partition has nothing
// left for it.
func (s *epochSim) fetch(r epochRank, again bool) bool {
	l := s.layouts[r.layout]
	b := s.next[r]
	if again {
		if b == 0 || !l.shared {
			return false
		}
		b--
	}
	size, budget := s.batchSize(r.task, r.layout, b)
	req := engine.FetchRequest{
		Partition: "p", Task: r.task, Fields: []string{"a", "b"}, BatchSize: size, TokenBudget: budget, Sampler: l.spec,
		Options: engine.SamplingOptions{HasRank: !l.noRank, DPRank: r.group, BatchIndex: b},
	}
	if l.noRank {
		req.Options = engine.SamplingOptions{}
	}
	m, err := s.c.Fetch(context.Background(), req)
	step := fmt.Sprintf("task %s %s group %d rank %d batch %d (size %d, budget %d, fetch %d)", r.task, l.spec, r.group, r.p, b, size, budget, s.fetches)
	s.fetches++
	if errors.Is(err, engine.ErrDone) && s.done {
		if again {
			s.fatalf("%s: ErrDone for a batch the group took", step)
		}
		return true
	}
	if err != nil {
		s.fatalf("%s: %v", step, err)
	}
	if m.Len() == 0 {
		if again {
			s.fatalf("%s: nothing for a batch the group took: %v", step, s.answers[epochKey{r.task, r.layout, r.group, b}])
		}
		return false
	}
	key := epochKey{r.task, r.layout, r.group, b}
	if !l.shared {
		key = epochKey{task: r.task, layout: r.layout, group: -1, batch: s.fetches}
	}
	if want, ok := s.answers[key]; ok {
		if !slices.Equal(want, m.Indexes) {
			s.fatalf("%s: got %v, a peer of the group got %v", step, m.Indexes, want)
		}
	} else {
		s.checkAnswer(step, l, m.Indexes, size)
		s.answers[key] = slices.Clone(m.Indexes)
		for _, i := range m.Indexes {
			if o, ok := s.got[r.task][i]; ok {
				s.fatalf("%s: row %d was delivered already, to %s group %d batch %d", step, i, s.layouts[o.layout].spec, o.group, o.batch)
			}
			s.got[r.task][i] = key
		}
	}
	if !again {
		s.next[r]++
	}
	return false
}

// checkAnswer checks a fresh answer: every row in a group, as many as
// asked for (short only from a done partition; the balanced samplers may
// split a short last batch unevenly), and with n > 1 whole groups of one
// put, side by side in its order.
func (s *epochSim) checkAnswer(step string, l epochLayout, rows []uint64, size int) {
	seen := map[uint64]bool{}
	for _, i := range rows {
		r, ok := s.rows[i]
		switch {
		case !ok:
			s.fatalf("%s: row %d was never put", step, i)
		case !r.grouped:
			s.fatalf("%s: row %d (place %d of a put of %d) is in no group of %d", step, i, r.pos, r.size, s.n)
		case seen[i]:
			s.fatalf("%s: row %d twice in %v", step, i, rows)
		}
		seen[i] = true
	}
	if !l.split && (len(rows) > size || (len(rows) < size && !s.done)) {
		s.fatalf("%s: %d rows for a batch of %d: %v", step, len(rows), size, rows)
	}
	if len(rows)%s.n != 0 {
		s.fatalf("%s: %d rows are not whole groups of %d: %v", step, len(rows), s.n, rows)
	}
	for k := 0; k < len(rows); k += s.n {
		first := s.rows[rows[k]]
		for j := 1; j < s.n; j++ {
			if r := s.rows[rows[k+j]]; r.put != first.put || r.pos != first.pos+j || first.pos%s.n != 0 {
				s.fatalf("%s: rows %v are not a group of one put", step, rows[k:k+s.n])
			}
		}
	}
}

// ranks returns every rank of every task's layouts.
func (s *epochSim) ranks() []epochRank {
	var out []epochRank
	for _, task := range s.tasks {
		for li, l := range s.layouts {
			for g := range l.groups {
				for p := range l.peers {
					out = append(out, epochRank{task, li, g, p})
				}
			}
		}
	}
	return out
}

func (s *epochSim) run(ops int) {
	all := s.ranks()
	doneAt := ops/2 + s.rng.IntN(ops/2+1)
	for op := range ops {
		switch x := s.rng.IntN(100); {
		case x < 15:
			s.put()
		case x < 35:
			s.commit(false)
		case x < 90:
			r := all[s.rng.IntN(len(all))]
			if !s.finished[r] {
				s.finished[r] = s.fetch(r, false)
			}
		default:
			s.fetch(all[s.rng.IntN(len(all))], true)
		}
		if op == doneAt {
			require.NoError(s.t, s.c.MarkDone("p"))
			s.done = true
		}
	}
	s.drain()
}

// drain produces every cell and has every rank fetch until the partition
// has nothing left for it, then checks that each task got every row in a
// group once.
func (s *epochSim) drain() {
	if !s.done {
		require.NoError(s.t, s.c.MarkDone("p"))
		s.done = true
	}
	s.commit(true)
	clear(s.finished) // finished ranks may ask again: rows produced since are theirs
	all := s.ranks()
	for round := 0; ; round++ {
		if round > 10000 {
			s.fatalf("ranks still fetching after %d rounds", round)
		}
		busy := false
		for _, r := range all {
			if s.finished[r] {
				continue
			}
			busy = true
			before := s.next[r]
			if s.finished[r] = s.fetch(r, false); !s.finished[r] && s.next[r] == before {
				s.fatalf("task %s %s group %d rank %d batch %d: nothing, and no end, from a done partition whose every row is ready",
					r.task, s.layouts[r.layout].spec, r.group, r.p, before)
			}
		}
		if !busy {
			break
		}
	}
	for _, task := range s.tasks {
		var lost []uint64
		for i, r := range s.rows {
			if _, ok := s.got[task][i]; r.grouped && !ok {
				lost = append(lost, i)
			}
		}
		slices.Sort(lost)
		if len(lost) > 0 {
			s.fatalf("task %s: rows %v of whole groups were never delivered", task, lost)
		}
	}
}
