package controller

// Held fetches. A loader that fetches ahead may drop what it fetched (its
// loop broke, a read failed) and give the rows back (Unconsume). Until it
// does, the rows are consumed for the task, so another consumer of the
// task that finds the partition done and nothing else to take would be
// told ErrDone, and end, with rows that are about to come back: they then
// reach no one.
//
// A keyed fetch with engine.FetchRequest.Hold holds the rows it consumes
// for its caller until the caller settles them: Acknowledge keeps them
// (consumed for good), Unconsume gives them back. While a fetch of a task
// holds rows, no fetch of that task is told ErrDone (it waits, as for rows
// not ready yet, and wakes when the hold is settled) and CheckConsumption
// says not all consumed. Rows of a batch a sampler keeps for a DP group
// are not held: the group's peers get them anyway, and a batch the group
// leaves behind goes back by other means (keptbatches.go).
//
// A caller that dies holding rows would hold its peers at the end
// forever, so a hold not settled within Config.HeldFetchTTL is given back
// by the controller, as if by its caller: the key is spent, and the
// caller's acknowledgment, if it comes after all, is refused
// (ErrNotFound) so that it does not use rows others may have taken —
// however late: the key of a held fetch given back outlives its entry in
// the fetch table (givenBack in fetchkeys.go).
// Sooner when the controller knows the caller's process (a client on its
// host, over its unix socket: engine.FetchRequest.HolderPID): while a
// fetch waits at the end for held rows, the controller looks, at once and
// then every heldExitPoll, whether their holders' processes exited, and
// gives back what the gone ones held (a killed loader, a DataLoader
// worker killed by its parent). A pid that another process took since
// reads as alive, and a zombie too: those holds wait for the TTL as
// before. On any host when the caller named itself in its HELLO
// (engine.FetchRequest.HolderClient): a client whose connections it all
// closed, and that did not connect again within Config.HeldClientGrace,
// is gone (clients.go).
//
// A held fetch whose rows are all cleared (ClearRows, ClearKeys) holds
// nothing and is no longer held (fetchTable.forgetRows): its caller's
// acknowledgment succeeds, its giving back gives nothing back, and it is
// bounded with the fetch table's other entries.
//
// Holds are durable: a consume record says the fetch holds (ConsumeOp.hold),
// an ack record settles it, an unconsume record (the caller's or the
// controller's) gives it back, and snapshots carry the flag. After a
// restart or a checkpoint load the TTL counts from then (armHeld), as for
// kept batches: the time the controller was down does not count against
// the holders.

import (
	"fmt"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire/wirepb"
)

// DefaultHeldFetchTTL is the default Config.HeldFetchTTL.
const DefaultHeldFetchTTL = 10 * time.Minute

// heldGrace returns how long a client that closed its connections has
// to come back before its holds are given back; negative: never.
func (c *Controller) heldGrace() time.Duration {
	if c.cfg.HeldClientGrace == 0 {
		return DefaultHeldClientGrace
	}
	return c.cfg.HeldClientGrace
}

// heldTTL returns the hold's TTL; negative: holds never expire.
func (c *Controller) heldTTL() time.Duration {
	if c.cfg.HeldFetchTTL == 0 {
		return DefaultHeldFetchTTL
	}
	return c.cfg.HeldFetchTTL
}

// hold marks e held from from on and follows it. p is locked.
func (p *partition) hold(e *fetchEntry, from time.Time) {
	e.held, e.heldFrom = true, from
	p.held = append(p.held, e)
	p.heldCheck = time.Time{} // the next look works it out
}

// holding reports whether e holds rows it could give back: held, not
// given back, with consumed rows left.
func (e *fetchEntry) holding() bool { return e.held && !e.spent && len(e.consumed) > 0 }

// holds reports whether a held fetch of task outside group (""; none)
// holds rows it could give back: a fetch in the group does not wait for
// them (engine.FetchRequest.HoldGroup). p is locked.
func (p *partition) holds(task, group string) bool {
	return slices.ContainsFunc(p.held, func(e *fetchEntry) bool {
		return e.task == task && e.holding() && (group == "" || e.group != group)
	})
}

// groupHolderGone reports whether a held fetch of task in group (""
// none) holds rows for a holder that is gone: a process that exited, a
// client that left (clients.go), or one that closed its every
// connection and is within the grace, which may be gone. The group's
// own holds do not keep its fetches from the end because the group
// settles them; those of a member killed (a DataLoader's worker) it
// never will, and they come back (lookExits, expireHeld): the group is
// not at the end yet. p is locked.
func (c *Controller) groupHolderGone(p *partition, task, group string, now time.Time) bool {
	if group == "" {
		return false
	}
	var gone map[int32]bool
	for _, e := range p.held {
		if e.task != task || e.group != group || !e.holding() {
			continue
		}
		if gone == nil {
			gone = make(map[int32]bool)
		}
		if c.holderGone(e, now, gone) != "" || c.holderLeft(e, now) {
			return true
		}
	}
	return false
}

// holderLeft reports whether e's holder is a client that closed its
// every connection, however long ago: gone once the grace ends unless it
// connects again (holderGone).
func (c *Controller) holderLeft(e *fetchEntry, now time.Time) bool {
	if e.client == "" || c.heldGrace() < 0 {
		return false
	}
	left, _ := c.clients.gone(e.client, now, 0)
	return left
}

// maxHoldGroupLen bounds engine.FetchRequest.HoldGroup.
const maxHoldGroupLen = 64

// heldGroup returns the hold group to log or save for a fetch entry: none
// when it holds nothing.
func heldGroup(held bool, group string) []byte {
	if !held || group == "" {
		return nil
	}
	return []byte(group)
}

// heldRows returns the rows held fetches of task hold, in index order
// (nil: none). p is locked.
func (p *partition) heldRows(task string) []uint64 {
	var out []uint64
	for _, e := range p.held {
		if e.task == task && e.holding() {
			out = append(out, e.consumed...)
		}
	}
	slices.Sort(out)
	return out
}

// heldCounts returns, per task, the rows held fetches hold (nil: none).
// p is locked.
func (p *partition) heldCounts() map[string]int {
	var out map[string]int
	for _, e := range p.held {
		if e.holding() {
			if out == nil {
				out = make(map[string]int)
			}
			out[e.task] += len(e.consumed)
		}
	}
	return out
}

// heldExitPoll is how often a fetch waiting at the end of a done
// partition for held rows looks whether their holders exited.
const heldExitPoll = time.Second

// lookExits makes the next look (expireHeld) give back the holds of
// task whose holder process exited, if it knows the holder of any: at
// once, then every heldExitPoll. For a fetch that waits at the end for
// held rows (nextCheck wakes it). p is locked.
func (p *partition) lookExits(task string, now time.Time) {
	if !slices.ContainsFunc(p.held, func(e *fetchEntry) bool { return e.task == task && (e.pid > 0 || e.client != "") && e.holding() }) {
		return
	}
	at := p.exitLooked.Add(heldExitPoll)
	if at.Before(now) {
		at = now
	}
	p.exitLook = true
	if p.heldCheck.IsZero() || at.Before(p.heldCheck) {
		p.heldCheck = at
	}
}

// exited reports whether process pid is gone, asking the kernel once per
// pid per look (gone caches the answers).
func exited(pid int32, gone map[int32]bool) bool {
	dead, ok := gone[pid]
	if !ok {
		dead = unix.Kill(int(pid), 0) == unix.ESRCH
		gone[pid] = dead
	}
	return dead
}

// expireHeld gives back the held fetches whose TTL ended (and, when a
// fetch waits at the end for them, those whose holder process exited:
// lookExits), and sets heldCheck to when the next TTL ends (zero: none).
// p is locked.
func (c *Controller) expireHeld(p *partition, now time.Time) {
	if len(p.held) == 0 || (!p.heldCheck.IsZero() && now.Before(p.heldCheck)) {
		return
	}
	ttl := c.heldTTL()
	var gone map[int32]bool // when looking for holders that exited
	if p.exitLook {
		p.exitLook, p.exitLooked, gone = false, now, make(map[int32]bool)
	}
	var next time.Time
	var ops []*wirepb.LogOp
	keep := p.held[:0]
	for _, e := range p.held {
		if !e.held || e.spent {
			continue // settled
		}
		var why string
		until := e.heldFrom.Add(ttl)
		switch {
		case ttl >= 0 && !now.Before(until):
			why = fmt.Sprintf("for %v without settling them", ttl)
		case gone != nil:
			why = c.holderGone(e, now, gone)
		}
		if why == "" {
			keep = append(keep, e)
			if ttl >= 0 && (next.IsZero() || until.Before(next)) {
				next = until
			}
			continue
		}
		idx := e.consumed
		p.unconsume(e.task, e.key, idx, now)
		if c.cfg.Logf != nil {
			c.cfg.Logf("controller: partition %q: a fetch of task %q held %d rows %s: given back", p.id, e.task, len(idx), why)
		}
		if c.logging() {
			ops = append(ops, &wirepb.LogOp{Op: &wirepb.LogOp_Unconsume{Unconsume: &wirepb.UnconsumeOp{
				Partition: p.id, Gen: p.gen, Task: e.task, Key: []byte(e.key), Indexes: idx, AtUnixMs: now.UnixMilli(),
			}}})
		}
	}
	clear(p.held[len(keep):])
	p.held = keep
	p.heldCheck = next
	if len(ops) > 0 {
		c.log(ops...)
	}
}

// holderGone says why e's holder is gone — its process exited (gone
// caches the answers by pid), or its client left (clients.go) — or ""
// while it may live.
func (c *Controller) holderGone(e *fetchEntry, now time.Time, gone map[int32]bool) string {
	if e.pid > 0 && exited(e.pid, gone) {
		return fmt.Sprintf("for process %d, which exited", e.pid)
	}
	grace := c.heldGrace()
	if e.client == "" || grace < 0 {
		return ""
	}
	if left, d := c.clients.gone(e.client, now, grace); left {
		return fmt.Sprintf("for client %x, which closed its connections %v ago", e.client[:min(len(e.client), 4)], d.Round(time.Millisecond))
	}
	return ""
}

// nextCheck is when a fetch waiting on p must look again though nothing
// changed: a kept batch or a hold may expire then (zero: no such time).
// p is locked.
func (p *partition) nextCheck() time.Time {
	switch {
	case p.keptCheck.IsZero():
		return p.heldCheck
	case p.heldCheck.IsZero() || p.keptCheck.Before(p.heldCheck):
		return p.keptCheck
	}
	return p.heldCheck
}

// armHeld, once a state is loaded, counts every hold's TTL from now.
func (c *Controller) armHeld(now time.Time) {
	for _, p := range c.parts {
		for _, e := range p.held {
			e.heldFrom = now
		}
		p.heldCheck = time.Time{}
	}
}

// settle ends e's hold, the caller keeping the rows. p is locked.
func (p *partition) settle(e *fetchEntry, at time.Time) {
	if !e.held {
		return
	}
	e.held = false
	p.fetches.restart(e, at) // asked again (a lost reply), the fetch and its ack still answer
	if len(e.consumed) > 0 {
		p.notify() // a fetch waiting at the end may end now
	}
}

// errHoldGivenBack answers the acknowledgment of a held fetch whose rows
// were given back.
var errHoldGivenBack = fmt.Errorf("its rows were given back (by its caller, or by the controller once the hold outlived its TTL): the caller must not use them: %w", engine.ErrNotFound)

// Acknowledge says the caller of the held fetch named key (see
// [engine.FetchRequest.Hold]) keeps its rows: they stay consumed for
// task for good, and the task's fetches may be told [engine.ErrDone]
// again. An error wrapping [engine.ErrNotFound] says the fetch's rows
// were given back (by the caller, or by the controller after
// Config.HeldFetchTTL; a keyed fetch without Hold answers the same): the
// caller must not use them; however late it comes for a held fetch (the
// partition remembers the last 65,536 held fetches it gave back, past
// their fetch keys' 10 minutes). A key the partition holds nothing for and
// gave nothing back of (a fetch without Hold, or whose rows were a batch
// kept for a DP group; one acknowledged long ago; an unknown partition)
// succeeds. Idempotent.
func (c *Controller) Acknowledge(partition, task, key string) error {
	switch {
	case task == "":
		return opErr("acknowledge", partition, fmt.Errorf("acknowledge needs a task name: %w", engine.ErrInvalid))
	case key == "":
		return opErr("acknowledge", partition, fmt.Errorf("acknowledge needs a fetch key: %w", engine.ErrInvalid))
	}
	if err := checkFetchKey(key); err != nil {
		return opErr("acknowledge", partition, err)
	}
	p, err := c.lock(partition)
	if err != nil {
		return opErr("acknowledge", partition, err)
	}
	if p == nil {
		return nil
	}
	defer p.mu.Unlock()
	now := time.Now()
	c.expireHeld(p, now)
	e := p.fetches.get(key, now)
	if e == nil {
		b, ok := p.fetches.back.m[key]
		switch {
		case !ok:
			return nil
		case b.task != task:
			return opErr("acknowledge", partition, fmt.Errorf("fetch key of task %q acknowledged for task %q: %w", b.task, task, engine.ErrInvalid))
		}
		return opErr("acknowledge", partition, fmt.Errorf("held fetch of task %q, given back at %s: %w", task, b.at.UTC().Format(time.RFC3339), errHoldGivenBack))
	}
	switch {
	case e.task != task:
		return opErr("acknowledge", partition, fmt.Errorf("fetch key of task %q acknowledged for task %q: %w", e.task, task, engine.ErrInvalid))
	case e.spent:
		return opErr("acknowledge", partition, fmt.Errorf("held fetch of task %q: %w", task, errHoldGivenBack))
	case !e.held:
		return nil
	}
	p.settle(e, now)
	p.held = slices.DeleteFunc(p.held, func(x *fetchEntry) bool { return x == e })
	if c.logging() {
		c.log(&wirepb.LogOp{Op: &wirepb.LogOp_Ack{Ack: &wirepb.AckOp{
			Partition: p.id, Gen: p.gen, Task: task, Key: []byte(key), AtUnixMs: now.UnixMilli(),
		}}})
	}
	return nil
}
