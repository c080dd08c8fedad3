package controller

// Samplers by request, the done marker, and what both put in the durable
// state.
//
// A fetch may name a built-in sampler (engine.FetchRequest.Sampler); the
// controller keeps one instance per spec text ("grpo:4"), made on first
// use, beside the sampler it was configured with. Each one's journal
// entries carry the spec (ConsumeOp.sampler_spec) and each one's state
// goes into snapshots and checkpoints (StateHeader.samplers), so that a
// restarted controller gives data-parallel peers the batches it gave
// before, whichever sampler made them.
//
// A partition's producer marks it done (MarkDone) when it will add no
// more rows; fetches then take short last batches and, with nothing left,
// fail with engine.ErrDone (see tryFetch).

import (
	"fmt"
	"maps"
	"slices"

	"github.com/tqgo/tq/controller/sampler"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/internal/invariants"
	"github.com/tqgo/tq/wire/wirepb"
)

// maxNamedSamplers bounds the samplers fetches may make (each spec with
// its parameters is one).
const maxNamedSamplers = 256

// samplerFor returns the sampler a fetch with spec uses: the configured
// one for the zero spec, else the instance for the spec, made on first
// use. A bad spec is an error wrapping [engine.ErrInvalid].
func (c *Controller) samplerFor(spec engine.SamplerSpec) (engine.Sampler, error) {
	if spec.IsZero() {
		return c.sampler, nil
	}
	spec, err := sampler.Canonical(spec)
	if err != nil {
		return nil, err
	}
	key := spec.String()
	c.namedMu.Lock()
	defer c.namedMu.Unlock()
	if s, ok := c.named[key]; ok {
		return s, nil
	}
	if len(c.named) >= maxNamedSamplers {
		return nil, fmt.Errorf("sampler %s: the controller already keeps the %d samplers fetches may choose: %w", key, maxNamedSamplers, engine.ErrInvalid)
	}
	s, err := sampler.New(spec)
	if err != nil {
		return nil, err
	}
	c.named[key] = s
	return s, nil
}

// samplerForText is samplerFor of a spec in text form ("" is the
// configured sampler), for replay and state loads.
func (c *Controller) samplerForText(text string) (engine.Sampler, error) {
	if text == "" {
		return c.sampler, nil
	}
	spec, err := sampler.ParseSpec(text)
	if err != nil {
		return nil, err
	}
	return c.samplerFor(spec)
}

// eachSampler calls fn for the configured sampler and every one fetches
// chose.
func (c *Controller) eachSampler(fn func(engine.Sampler)) {
	fn(c.sampler)
	c.namedMu.Lock()
	named := slices.Collect(maps.Values(c.named))
	c.namedMu.Unlock()
	for _, s := range named {
		fn(s)
	}
}

// forgetRows tells every sampler that keeps batches that rows of
// partition were cleared (live and in replay; the partition is locked).
func (c *Controller) forgetRows(partition string, rows []uint64) {
	c.eachSampler(func(s engine.Sampler) {
		if f, ok := s.(engine.RowForgetter); ok {
			f.ForgetRows(partition, rows)
		}
	})
}

// forgetTask tells every caching sampler that task's consumption of
// partition ("": every task's) was reset, live and in replay (the reset
// record stands for the samplers' change; the partition is locked): the
// batches they keep for it are the last round's.
func (c *Controller) forgetTask(partition, task string) {
	c.eachSampler(func(s engine.Sampler) {
		switch s := s.(type) {
		case engine.TaskForgetter:
			s.ForgetTask(partition, task)
		case engine.CachingSampler:
			if task == "" {
				s.ClearCache(partition)
			}
		}
	})
}

// namedState adds the state of the samplers fetches chose to a state
// header, by spec text in sorted order.
func (c *Controller) namedState(head *wirepb.StateHeader) error {
	c.namedMu.Lock()
	keys := slices.Sorted(maps.Keys(c.named))
	named := maps.Clone(c.named)
	c.namedMu.Unlock()
	for _, k := range keys {
		ss, ok := named[k].(engine.StatefulSampler)
		if !ok {
			continue
		}
		b, err := ss.SaveState()
		if err != nil {
			return fmt.Errorf("sampler %s state: %w", k, err)
		}
		head.Samplers = append(head.Samplers, &wirepb.NamedSamplerState{Spec: k, State: b})
	}
	return nil
}

// namedLoad is the state of a sampler fetches chose, from a state
// header, checked: fresh, a new sampler of its spec, took it.
type namedLoad struct {
	key   string // the spec, canonical
	state []byte
	fresh engine.Sampler
}

// checkNamed checks the states of the samplers fetches chose in a state
// header, each by loading it into a fresh sampler of its spec, and
// changes no sampler: a checkpoint load that fails on one of them must
// leave all of them as they were. A bad spec or state is corrupt; more
// samplers than the controller keeps, [engine.ErrInvalid].
func (c *Controller) checkNamed(head *wirepb.StateHeader) ([]namedLoad, error) {
	loads := make([]namedLoad, 0, len(head.Samplers))
	keys := make(map[string]bool)
	for _, ns := range head.Samplers {
		spec, err := sampler.ParseSpec(ns.Spec)
		if err == nil {
			spec, err = sampler.Canonical(spec)
		}
		var s engine.Sampler
		if err == nil {
			s, err = sampler.New(spec)
		}
		if err != nil {
			return nil, corrupt("sampler spec %q: %v", ns.Spec, err)
		}
		ss, ok := s.(engine.StatefulSampler)
		if !ok {
			return nil, corrupt("state for sampler %q, which keeps none", ns.Spec)
		}
		if err := ss.LoadState(ns.State); err != nil {
			return nil, fmt.Errorf("sampler %s state: %w", ns.Spec, err)
		}
		loads = append(loads, namedLoad{key: spec.String(), state: ns.State, fresh: s})
		keys[spec.String()] = true
	}
	c.namedMu.Lock()
	n := len(c.named)
	for k := range keys {
		if _, ok := c.named[k]; !ok {
			n++
		}
	}
	c.namedMu.Unlock()
	if n > maxNamedSamplers {
		return nil, fmt.Errorf("the state names samplers that would make %d, and the controller keeps at most %d: %w", n, maxNamedSamplers, engine.ErrInvalid)
	}
	return loads, nil
}

// installNamed gives the samplers fetches chose the states checkNamed
// checked; a spec with no sampler yet gets the fresh one. With replace,
// samplers the states do not name forget the batches they keep for
// partitions (a checkpoint load). It cannot fail.
func (c *Controller) installNamed(loads []namedLoad, replace bool, partitions []string) {
	c.namedMu.Lock()
	defer c.namedMu.Unlock()
	seen := make(map[string]bool)
	for _, l := range loads {
		seen[l.key] = true
		s, ok := c.named[l.key]
		if !ok {
			// A fetch may have made some meanwhile (it makes its sampler
			// before taking its partition's lock): the bound may be
			// passed by as many.
			c.named[l.key] = l.fresh
			continue
		}
		// Loaded in place, not replaced: a fetch may hold it already.
		if err := s.(engine.StatefulSampler).LoadState(l.state); err != nil {
			panic(fmt.Sprintf("controller: sampler %s refuses a state a new sampler of its spec took: %v", l.key, err))
		}
	}
	if !replace {
		return
	}
	for k, s := range c.named {
		if cs, ok := s.(engine.CachingSampler); ok && !seen[k] {
			for _, id := range partitions {
				cs.ClearCache(id)
			}
		}
	}
}

// MarkDone records that the producer of partition will add no more rows
// (the partition is made if it does not exist). From then on a fetch that
// finds fewer rows ready than it asks for, while every row the task has
// not consumed is ready, takes what the sampler gives it (a short last
// batch), and a fetch that gets nothing fails with an error wrapping
// [engine.ErrDone]: a finite streaming loader ends there. Rows added
// after all the same are served as usual. MarkDone is idempotent.
func (c *Controller) MarkDone(partition string) error {
	p, err := c.lockOrCreate(partition)
	if err != nil {
		return opErr("mark done", partition, err)
	}
	defer c.unlockNew(p)
	born := c.keep(p)
	if p.done {
		return nil // not new
	}
	p.done = true
	if c.logging() {
		c.log(append(born, &wirepb.LogOp{Op: &wirepb.LogOp_Done{Done: &wirepb.DoneOp{Partition: p.id, Gen: p.gen}}})...)
	}
	p.notify()
	return nil
}

// unconsumed counts the rows of p (pre-allocated ones included) that task
// has not consumed, from the count of consumed rows kept per task as rows
// are consumed, given back and removed: a finite stream's end is found
// without walking the partition.
func (p *partition) unconsumed(task string) int {
	t, ok := p.tasks[task]
	n := p.rows.len()
	if ok && t < len(p.consumedN) {
		n -= p.consumedN[t]
	}
	if invariants.Enabled && ok {
		walked := 0
		p.rows.all(func(r *row) {
			if !p.isConsumed(r, t) {
				walked++
			}
		})
		if walked != n {
			panic(fmt.Sprintf("partition %q task %q: %d rows unconsumed by the count, %d by a walk", p.id, task, n, walked))
		}
	}
	return n
}
