package controller

// Batches a caching sampler keeps for a data-replica group, and giving
// back the ones the group left behind.
//
// A rank-aware, GRPO or balanced sampler with ranks keeps each group's batch so that
// the group's peers get it too, and the rows are consumed for the task as
// soon as the first peer takes it; giving a fetch of it back (Unconsume)
// returns nothing, since the peers still ask the sampler for it. A group
// that never comes back for the batch (its ranks gave their fetches back
// and stopped, or died holding it) would hold those rows forever: no
// other group can have them and nobody gives them back.
//
// So the partition follows each kept batch of a group, by (sampler spec,
// task, DP rank, batch index): when a fetch last took it, and how many
// fetches took it and did not give it back (a fetch without a key never
// can). And per group, the highest batch index it asked for. A batch that
// no fetch took for Config.KeptBatchTTL is left behind when
//
//   - the group never asked for a later batch (the group stopped there), or
//   - every fetch that took it gave it back (prefetched and dropped when
//     the loader stopped);
//
// then the sampler drops it (engine.BatchDropper) and its rows are no
// longer consumed for the task: another group gets them; the keyed
// fetches that took it are spent, as if given back. A batch that a
// fetch kept and that the group went past was consumed; it is only
// forgotten. Both changes are logged, in one record with the end of
// following the batch (the sampler's drop in a consume op, the rows and
// the keys in unconsume ops), so a restart agrees.
//
// A sampler that splits one batch between the DP ranks (seqlen_balanced,
// token_budget: engine.SplitBatchDropper) makes and consumes every rank's
// part with the first fetch of the batch index; each rank is a group, and
// its part its batch. The parts made for the other ranks are followed from
// then (made), as batches no fetch holds: a rank that never fetches its
// part (it stopped) leaves it behind, and its rows go back a TTL later.
// The fetch's record names them (made). A rank whose part was cleared
// before it fetched it, asking for it at the end of a done partition with
// nothing ready to refill it, gets its part of another batch that it
// holds no fetch of instead (movePart: a later batch first, then the
// earliest; an earlier one is a batch a lagging rank remade after all its
// rows were cleared, which this rank went past): the part is followed as
// the batch it was served as from then, and the fetch's record names the
// batch it came from (forgot) with the sampler's entries for the move.
//
// A batch (or part) that a fetch of its group took and that lost every
// row to clears since is not made again from other rows when a lagging
// rank of the group asks for it: that rank would train on other rows
// than its peers did. The fetch is refused, naming the batch
// (checkKeptGone).
//
// A server's fetch of a kept batch whose meta is beyond a reply
// (replyFetch) gives the batch back at once, TTL or not, as one left
// behind: every fetch of the batch index would answer the same meta
// (the sampler keeps it whatever the batch size asked for). The group's
// next fetch of it makes a batch afresh, and its peers get that one; a
// peer that took the dropped batch before keeps what it got.
//
// With a negative TTL nothing is given back, but batches are followed
// all the same (a part is still moved to its rank at the end), and one
// the group went past is forgotten DefaultKeptBatchTTL after a fetch last
// took it, so that what is followed stays bounded (keptLook).
//
// What is followed is logged and in the state: a fetch that took a kept
// batch names it in its consume record (and its key's entry), an ask that
// raised the group's highest batch index is a record of its own, and a
// batch no longer followed is an op (forgot), alone when the batch is
// only forgotten, first in the record that gives it back otherwise.
// After a restart or a checkpoint load the first look waits a TTL
// (armKept): the time the controller was down does not count against
// the groups, whose ranks come back and ask again meanwhile. The check
// runs on fetches of the partition, and a blocked fetch wakes for it
// (Fetch's wait).

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/tqgo/tq/controller/sampler"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire/wirepb"
)

// DefaultKeptBatchTTL is the default Config.KeptBatchTTL.
const DefaultKeptBatchTTL = 10 * time.Minute

// groupKey names a data-replica group of a task under one sampler.
type groupKey struct {
	spec string // the sampler's spec text ("": the configured sampler)
	task string
	rank int
}

// keptBatch follows one batch a sampler keeps for a group.
type keptBatch struct {
	touched time.Time // when a fetch last took it
	held    int       // fetches that took it and did not give it back
}

type groupState struct {
	asked   int // the highest batch index the group asked for
	batches map[int]*keptBatch
}

// keptRef names the kept batch a keyed fetch took, so that giving the
// fetch back can be counted.
type keptRef struct {
	group groupKey
	batch int
}

func (c *Controller) keptTTL() time.Duration {
	if c.cfg.KeptBatchTTL == 0 {
		return DefaultKeptBatchTTL
	}
	return c.cfg.KeptBatchTTL
}

// givesBack reports whether batches left behind are given back (a
// negative Config.KeptBatchTTL: never).
func (c *Controller) givesBack() bool { return c.keptTTL() > 0 }

// keptLook is how long after a fetch last took a batch the partition
// looks at it: the TTL, or, when nothing is given back, the default
// (a batch the group went past is still forgotten, so that what is
// followed stays bounded).
func (c *Controller) keptLook() time.Duration {
	if !c.givesBack() {
		return DefaultKeptBatchTTL
	}
	return c.keptTTL()
}

// followsKept reports whether batches smp keeps for req's group are
// followed. They are whatever the TTL: a part of a split batch is moved
// to its rank at the end of a done partition (movePart) even when nothing
// is given back.
func (c *Controller) followsKept(req *engine.FetchRequest, smp engine.Sampler) bool {
	_, ok := smp.(engine.BatchDropper)
	return ok && req.Options.HasRank && !c.replaying
}

// group returns the state of a group, made on first use.
func (p *partition) group(k groupKey) *groupState {
	if p.groups == nil {
		p.groups = make(map[groupKey]*groupState)
	}
	g := p.groups[k]
	if g == nil {
		g = &groupState{asked: -1, batches: make(map[int]*keptBatch)}
		p.groups[k] = g
	}
	return g
}

// asked notes that a group asked for its batch, and reports whether that
// raised the highest batch index it asked for.
func (p *partition) asked(k groupKey, batch int) bool {
	g := p.group(k)
	if batch <= g.asked {
		return false
	}
	g.asked = batch
	return true
}

// took notes that a fetch took the group's kept batch at now and returns
// what names it for a keyed fetch.
func (p *partition) took(k groupKey, batch int, now time.Time, look time.Duration) *keptRef {
	g := p.group(k)
	kb := g.batches[batch]
	if kb == nil {
		kb = &keptBatch{}
		g.batches[batch] = kb
	}
	kb.touched = now
	kb.held++
	if at := now.Add(look); p.keptCheck.IsZero() || at.Before(p.keptCheck) {
		p.keptCheck = at
	}
	return &keptRef{group: k, batch: batch}
}

// madeKept notes that the batch of group k was made at now by a fetch of
// another group (a part of a batch split between ranks), and is followed
// from then as a batch no fetch holds: what followed an earlier batch of
// that index, whose rows are gone, does not count for it.
func (p *partition) madeKept(k groupKey, batch int, now time.Time, look time.Duration) {
	p.group(k).batches[batch] = &keptBatch{touched: now}
	if at := now.Add(look); p.keptCheck.IsZero() || at.Before(p.keptCheck) {
		p.keptCheck = at
	}
}

// madeParts follows the parts of batch that a fetch of group k made for
// the other ranks (those in ranks, the ranks whose part holds rows) and
// returns what names them in the fetch's record.
func (p *partition) madeParts(k groupKey, batch int, ranks []int, now time.Time, look time.Duration) []*wirepb.KeptRef {
	var refs []*wirepb.KeptRef
	for _, r := range ranks {
		if r == k.rank {
			continue // the fetch's own: took
		}
		g := groupKey{spec: k.spec, task: k.task, rank: r}
		p.madeKept(g, batch, now, look)
		refs = append(refs, (&keptRef{group: g, batch: batch}).pb())
	}
	return refs
}

// movePart is for a final fetch of group k's batch (the partition is done
// and every row it has is ready) that got nothing: the group's part is
// empty (cleared before it fetched it, or never made) and no rows are
// ready to refill it. It moves into batch the group's part of another
// batch that no fetch of the group holds, and returns the part's rows
// and the batch it came from, no longer followed; the caller serves the
// rows as batch and follows them so. Such a part was made by another
// rank's fetch (a later batch, or an earlier one remade after all its
// rows were cleared, which the group went past) or given back; the first
// later one goes first, then the earliest. A part the group holds is
// never moved: it has those rows already. nil when there is none.
func (p *partition) movePart(k groupKey, batch int, split engine.SplitBatchDropper, journal func([]byte)) ([]uint64, *keptRef, error) {
	g := p.groups[k]
	if g == nil {
		return nil, nil, nil
	}
	var later, earlier []int
	for b, kb := range g.batches {
		switch {
		case kb.held > 0:
		case b > batch:
			later = append(later, b)
		case b < batch:
			earlier = append(earlier, b)
		}
	}
	slices.Sort(later)
	slices.Sort(earlier)
	for _, b := range append(later, earlier...) {
		rows, err := split.MovePart(p.id, k.task, k.rank, b, batch, journal)
		if err != nil {
			return nil, nil, err
		}
		if len(rows) > 0 {
			ref := keptRef{group: k, batch: b}
			p.forget(ref)
			return rows, &ref, nil
		}
	}
	return nil, nil, nil
}

// checkKeptGone refuses a fetch of group k's batch that a fetch of the
// group took and did not give back, when every row of it was cleared
// since: its sampler no longer keeps it (or, for a split batch, the
// group's part of it), and would make it again from the rows ready now,
// so that the group's ranks that ask after the clear train on other rows
// than those that asked before it, with no word of it. The error wraps
// [engine.ErrNotFound] and names the batch; nothing is consumed. A batch
// that no fetch of the group took (a part a peer rank made for it,
// cleared before it fetched it) is made afresh as before. p is locked.
func (p *partition) checkKeptGone(k groupKey, batch int, smp engine.Sampler) error {
	g := p.groups[k]
	if g == nil {
		return nil
	}
	kb := g.batches[batch]
	if kb == nil || kb.held == 0 {
		return nil
	}
	if split, ok := smp.(engine.SplitBatchDropper); ok {
		if slices.Contains(split.Parts(p.id, k.task, batch), k.rank) {
			return nil
		}
	} else if cs, ok := smp.(engine.CachingSampler); !ok ||
		cs.Cached(p.id, k.task, engine.SamplingOptions{HasRank: true, DPRank: k.rank, BatchIndex: batch}) {
		return nil
	}
	return fmt.Errorf("batch %d of DP rank %d of task %q: a fetch of the rank took it and every row of it was cleared since; "+
		"made again it would hold other rows than that fetch got: %w", batch, k.rank, k.task, engine.ErrNotFound)
}

// pb is r as its records and the state name it (nil for nil).
func (r *keptRef) pb() *wirepb.KeptRef {
	if r == nil {
		return nil
	}
	return &wirepb.KeptRef{SamplerSpec: r.group.spec, DpRank: int64(r.group.rank), BatchIndex: int64(r.batch)}
}

// maxKeptIndex bounds the DP rank and the batch index a record or the
// state names.
const maxKeptIndex = math.MaxInt32

// checkKeptOptions refuses a DP rank or batch index that a record could
// not name: logged for a sampler whose batches are followed, it would
// make the log unreadable (keptRefOf). The other samplers that take a
// rank (seqlen, token_budget) cache and journal batches by these too,
// and a negative batch index means nothing to any.
func checkKeptOptions(opts engine.SamplingOptions) error {
	if !opts.HasRank {
		return nil
	}
	if opts.DPRank < 0 || opts.DPRank > maxKeptIndex || opts.BatchIndex < 0 || opts.BatchIndex > maxKeptIndex {
		return fmt.Errorf("dp rank %d, batch index %d: each must be 0 to %d: %w", opts.DPRank, opts.BatchIndex, maxKeptIndex, engine.ErrInvalid)
	}
	return nil
}

// keptRefOf is the kept batch of task that a record or the state names
// (nil for none).
func keptRefOf(task string, pb *wirepb.KeptRef) (*keptRef, error) {
	if pb == nil {
		return nil, nil
	}
	if pb.DpRank < 0 || pb.BatchIndex < 0 || pb.DpRank > maxKeptIndex || pb.BatchIndex > maxKeptIndex {
		return nil, corrupt("kept batch %d of DP rank %d of task %q", pb.BatchIndex, pb.DpRank, task)
	}
	if pb.SamplerSpec != "" {
		if _, err := sampler.ParseSpec(pb.SamplerSpec); err != nil {
			return nil, corrupt("kept batch of task %q: sampler spec %q: %s", task, pb.SamplerSpec, err.Error())
		}
	}
	return &keptRef{group: groupKey{spec: pb.SamplerSpec, task: task, rank: int(pb.DpRank)}, batch: int(pb.BatchIndex)}, nil
}

// follows reports whether the group's batch ref is followed.
func (p *partition) follows(ref keptRef) bool {
	g := p.groups[ref.group]
	return g != nil && g.batches[ref.batch] != nil
}

// forget stops following a group's batch.
func (p *partition) forget(ref keptRef) {
	if g := p.groups[ref.group]; g != nil {
		delete(g.batches, ref.batch)
	}
}

// armKept, once a state is loaded, makes the first look for batches left
// behind wait a TTL from now (see the file comment).
func (c *Controller) armKept(now time.Time) {
	look := c.keptLook()
	for _, p := range c.parts {
		p.keptCheck = time.Time{}
		for _, g := range p.groups {
			if len(g.batches) > 0 {
				p.keptCheck = now.Add(look)
			}
		}
	}
}

// gaveBack notes that a keyed fetch of a kept batch was given back.
func (p *partition) gaveBack(ref *keptRef) {
	if g := p.groups[ref.group]; g != nil {
		if kb := g.batches[ref.batch]; kb != nil && kb.held > 0 {
			kb.held--
		}
	}
}

// forgetGroups stops following the batches of task ("": every task), whose
// consumption was reset: giving one back later could hand its rows out a
// second time.
func (p *partition) forgetGroups(task string) {
	for k := range p.groups {
		if task == "" || k.task == task {
			delete(p.groups, k)
		}
	}
	if len(p.groups) == 0 {
		p.keptCheck = time.Time{}
	}
}

// expireKept gives back the batches groups left behind (see the file
// comment) once the earliest could be. p is locked.
func (c *Controller) expireKept(p *partition, now time.Time) {
	if p.keptCheck.IsZero() || now.Before(p.keptCheck) {
		return
	}
	look, givesBack := c.keptLook(), c.givesBack()
	var next time.Time
	changed := false
	for k, g := range p.groups { // a few groups, each with a few batches
		for b, kb := range g.batches {
			if at := kb.touched.Add(look); now.Before(at) {
				if next.IsZero() || at.Before(next) {
					next = at
				}
				continue
			}
			left := b >= g.asked || kb.held == 0 // else the group went past it: consumed
			if left && !givesBack {
				continue // followed until its rank takes it (movePart)
			}
			delete(g.batches, b)
			// One record: a restart must not find the batch no longer
			// followed but still kept, its rows held forever.
			var ops []*wirepb.LogOp
			if c.logging() {
				ops = append(ops, &wirepb.LogOp{Op: &wirepb.LogOp_Consume{Consume: &wirepb.ConsumeOp{
					Partition: p.id, Gen: p.gen, Task: k.task, SamplerSpec: k.spec, AtUnixMs: now.UnixMilli(),
					Forgot: (&keptRef{group: k, batch: b}).pb(),
				}}})
			}
			if left {
				var gave bool
				ops, gave = c.giveBackKept(p, k, b, now, ops)
				changed = gave || changed
			}
			if len(ops) > 0 {
				c.log(ops...)
			}
		}
	}
	p.keptCheck = next
	if changed {
		p.notify()
	}
}

// giveBackKept drops group k's batch b from its sampler and makes its rows
// (those still in p) fetchable again for the task, and adds the ops that
// record both to ops. It reports whether anything changed.
func (c *Controller) giveBackKept(p *partition, k groupKey, b int, now time.Time, ops []*wirepb.LogOp) ([]*wirepb.LogOp, bool) {
	smp, err := c.samplerForText(k.spec)
	if err != nil {
		return ops, false // a spec it took before: cannot fail
	}
	d, ok := smp.(engine.BatchDropper)
	if !ok {
		return ops, false
	}
	var entries [][]byte
	var journal func([]byte)
	if c.logging() {
		journal = func(e []byte) { entries = append(entries, e) }
	}
	opts := engine.SamplingOptions{HasRank: true, DPRank: k.rank, BatchIndex: b}
	rows, err := d.DropBatch(p.id, k.task, opts, journal)
	if err != nil {
		if c.cfg.Logf != nil {
			c.cfg.Logf("controller: partition %q: give back batch %d of group %d of task %q: %v", p.id, b, k.rank, k.task, err)
		}
		return ops, false
	}
	if len(rows) == 0 && len(entries) == 0 {
		return ops, false
	}
	var back []uint64
	t := p.taskSlot(k.task)
	for _, gi := range rows {
		if r, ok := p.rows.get(gi); ok && p.isConsumed(r, t) {
			back = append(back, gi)
		}
	}
	p.unconsume(k.task, "", back, now)
	// The keyed fetches that took the batch and were not given back are
	// spent: asked again, they must not answer with rows another group
	// may take now.
	spent := p.spendKept(keptRef{group: k, batch: b}, now)
	if c.logging() {
		ops = append(ops,
			&wirepb.LogOp{Op: &wirepb.LogOp_Consume{Consume: &wirepb.ConsumeOp{
				Partition: p.id, Gen: p.gen, Task: k.task, Sampler: entries, SamplerSpec: k.spec, AtUnixMs: now.UnixMilli(),
			}}},
			&wirepb.LogOp{Op: &wirepb.LogOp_Unconsume{Unconsume: &wirepb.UnconsumeOp{
				Partition: p.id, Gen: p.gen, Task: k.task, Indexes: back, AtUnixMs: now.UnixMilli(),
			}}},
		)
		for _, key := range spent {
			ops = append(ops, &wirepb.LogOp{Op: &wirepb.LogOp_Unconsume{Unconsume: &wirepb.UnconsumeOp{
				Partition: p.id, Gen: p.gen, Task: k.task, Key: []byte(key), AtUnixMs: now.UnixMilli(),
			}}})
		}
	}
	return ops, true
}

// spendKept spends the keyed fetches that took kept batch ref, were not
// given back and live at now, and returns their keys. p is locked.
func (p *partition) spendKept(ref keptRef, now time.Time) []string {
	var keys []string
	for e := range p.fetches.entries() {
		if e.kept != nil && *e.kept == ref && !e.spent && !e.expired(now) {
			e.spent = true
			keys = append(keys, e.key)
		}
	}
	return keys
}

// copyGroups is the groups' state for a snapshot, in a fixed order. p is
// locked.
func (p *partition) copyGroups() []*wirepb.StateKeptGroup {
	if len(p.groups) == 0 {
		return nil
	}
	out := make([]*wirepb.StateKeptGroup, 0, len(p.groups))
	for k, g := range p.groups {
		sg := &wirepb.StateKeptGroup{SamplerSpec: k.spec, Task: k.task, DpRank: int64(k.rank), Asked: int64(g.asked)}
		for b, kb := range g.batches {
			sg.Batches = append(sg.Batches, &wirepb.StateKeptBatch{Index: int64(b), TouchedUnixMs: kb.touched.UnixMilli(), Held: int64(kb.held)})
		}
		slices.SortFunc(sg.Batches, func(a, b *wirepb.StateKeptBatch) int { return cmp.Compare(a.Index, b.Index) })
		out = append(out, sg)
	}
	slices.SortFunc(out, func(a, b *wirepb.StateKeptGroup) int {
		return cmp.Or(cmp.Compare(a.SamplerSpec, b.SamplerSpec), cmp.Compare(a.Task, b.Task), cmp.Compare(a.DpRank, b.DpRank))
	})
	return out
}

// loadGroups takes the groups' state from a snapshot.
func (p *partition) loadGroups(gs []*wirepb.StateKeptGroup) error {
	for _, sg := range gs {
		if sg.Task == "" || sg.Asked < -1 || sg.Asked > maxKeptIndex {
			return corrupt("partition %q: kept batches of task %q, asked for batch %d", p.id, sg.Task, sg.Asked)
		}
		ref, err := keptRefOf(sg.Task, &wirepb.KeptRef{SamplerSpec: sg.SamplerSpec, DpRank: sg.DpRank})
		if err != nil {
			return fmt.Errorf("partition %q: %w", p.id, err)
		}
		if _, dup := p.groups[ref.group]; dup {
			return corrupt("partition %q: kept batches of DP rank %d of task %q twice", p.id, sg.DpRank, sg.Task)
		}
		g := p.group(ref.group)
		g.asked = int(sg.Asked)
		for _, sb := range sg.Batches {
			if sb.Index < 0 || sb.Index > maxKeptIndex || sb.Held < 0 || sb.Held > math.MaxInt32 {
				return corrupt("partition %q: kept batch %d of DP rank %d of task %q, held %d times", p.id, sb.Index, sg.DpRank, sg.Task, sb.Held)
			}
			g.batches[int(sb.Index)] = &keptBatch{touched: time.UnixMilli(sb.TouchedUnixMs), held: int(sb.Held)}
		}
	}
	return nil
}
