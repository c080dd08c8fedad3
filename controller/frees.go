package controller

// Freeing storage is the server's job. A commit that overwrites cells and
// a clear hand back the locations of cells no row references any more;
// once the change that dropped them is durable (a crash must not leave a
// row naming memory a unit has already reused), the server queues the
// ranges per unit, and each unit collects its queue with a long poll
// (UNIT_SYNC). While a checkpoint is being saved nothing is handed out:
// the checkpoint reads cells as they were when it began.

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tqgo/tq/engine"
)

const (
	// maxUnitSyncWait bounds a UNIT_SYNC long poll.
	maxUnitSyncWait = 30 * time.Second
	// maxFreesPerSync bounds the ranges one UNIT_SYNC reply carries.
	maxFreesPerSync = 1 << 20
	// maxQueuedFrees bounds a unit's queue: past it the queue is dropped
	// and the unit asked for a full reconcile, which frees the same.
	maxQueuedFrees = 1 << 24
)

type unitQueue struct {
	ranges    []engine.RemoteAddr
	reconcile bool          // ask the unit for a full reconcile
	wake      chan struct{} // closed and replaced when something is queued
	// sent is the last batch handed out, numbered seq, until the unit
	// acks it: a reply lost with its connection is sent again.
	sent []engine.RemoteAddr
	seq  uint64
}

// freeQueue holds, per unit, the ranges to free.
type freeQueue struct {
	// alive reports a unit the registry hears from. Frees for one it does
	// not are not kept (a unit that is gone for good would hold them for
	// ever): the unit is asked for a full reconcile instead, which frees
	// the same once it is back.
	alive func(engine.UnitID) bool

	mu    sync.Mutex
	units map[engine.UnitID]*unitQueue
	holds int           // checkpoints being saved: nothing is handed out
	wake  chan struct{} // closed and replaced when holds drops to 0
}

func newFreeQueue(alive func(engine.UnitID) bool) *freeQueue {
	return &freeQueue{alive: alive, units: make(map[engine.UnitID]*unitQueue), wake: make(chan struct{})}
}

func (q *freeQueue) unitLocked(id engine.UnitID) *unitQueue {
	u := q.units[id]
	if u == nil {
		u = &unitQueue{wake: make(chan struct{})}
		q.units[id] = u
	}
	return u
}

// add queues the stored cells of locs for their units.
func (q *freeQueue) add(locs []engine.CellLoc) {
	if len(locs) == 0 {
		return
	}
	alive := map[engine.UnitID]bool{}
	for _, l := range locs {
		if _, ok := alive[l.Unit]; !ok && l.Stored() && !l.Lost() {
			alive[l.Unit] = q.alive(l.Unit)
		}
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	var last engine.UnitID
	var u *unitQueue
	touched := map[*unitQueue]bool{}
	for _, l := range locs {
		if !l.Stored() || l.Lost() || l.Addr.Len == 0 {
			continue
		}
		if u == nil || l.Unit != last {
			last, u = l.Unit, q.unitLocked(l.Unit)
		}
		if !alive[l.Unit] {
			u.ranges, u.reconcile = nil, true
			continue
		}
		if len(u.ranges) >= maxQueuedFrees {
			u.ranges, u.reconcile = nil, true
		}
		u.ranges = append(u.ranges, l.Addr)
		touched[u] = true
	}
	for u := range touched {
		close(u.wake)
		u.wake = make(chan struct{})
	}
}

// drop forgets a unit's queue: the unit is gone for good (it came back
// as another incarnation, under a new id, or was evicted).
func (q *freeQueue) drop(id engine.UnitID) {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.units, id)
}

// hold stops handing out frees until the returned func is called.
func (q *freeQueue) hold() (release func()) {
	q.mu.Lock()
	q.holds++
	q.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			q.mu.Lock()
			if q.holds--; q.holds == 0 {
				close(q.wake)
				q.wake = make(chan struct{})
			}
			q.mu.Unlock()
		})
	}
}

// take hands out the unit's next batch: the one sent last if the unit
// has not acked it (ack < its seq), else what is queued, waiting until
// there is something (and no checkpoint holds the frees) or a reconcile is
// asked for, up to wait or until ctx ends. The batch comes coalesced,
// numbered seq; an empty batch has seq 0.
func (q *freeQueue) take(ctx context.Context, id engine.UnitID, ack uint64, wait time.Duration) (ranges []engine.RemoteAddr, seq uint64, reconcile bool) {
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		q.mu.Lock()
		u := q.unitLocked(id)
		if u.sent != nil && ack >= u.seq {
			u.sent = nil // applied
		}
		if u.sent != nil && q.holds == 0 {
			reconcile, u.reconcile = u.reconcile, false
			ranges, seq = u.sent, u.seq
			q.mu.Unlock()
			return ranges, seq, reconcile
		}
		if u.reconcile || (q.holds == 0 && len(u.ranges) > 0) {
			reconcile, u.reconcile = u.reconcile, false
			if q.holds == 0 && len(u.ranges) > 0 {
				n := min(len(u.ranges), maxFreesPerSync)
				ranges = engine.CoalesceRanges(append([]engine.RemoteAddr(nil), u.ranges[:n]...))
				u.ranges = append(u.ranges[:0], u.ranges[n:]...)
				u.seq++
				u.sent, seq = ranges, u.seq
			}
			q.mu.Unlock()
			return ranges, seq, reconcile
		}
		uwake, hwake := u.wake, q.wake
		q.mu.Unlock()
		select {
		case <-uwake:
		case <-hwake:
		case <-t.C:
			return nil, 0, false
		case <-ctx.Done():
			return nil, 0, false
		}
	}
}

// localFrees defers the frees a process makes on its own units while a
// checkpoint is being saved (see [Controller.FreeLocal]).
type localFrees struct {
	held    atomic.Int32 // holds, read without mu on the way in
	mu      sync.Mutex
	holds   int
	pending []localFree
}

type localFree struct {
	locs []engine.CellLoc
	free func([]engine.CellLoc)
}

// FreeLocal calls free(locs), which frees bytes on storage units of this
// process (a KV put's replaced cells, once the put is durable), at once,
// or once no checkpoint is being saved: a save reads the cells of the
// state it copied, and the free queue units collect is held meanwhile,
// but frees made in process would pass it by.
func (c *Controller) FreeLocal(locs []engine.CellLoc, free func([]engine.CellLoc)) {
	g := &c.local
	// The save counts its hold before it copies the state, and a free is
	// made after the change that dropped its cells: if that change is in
	// the copy, the hold is seen here.
	if g.held.Load() == 0 {
		free(locs)
		return
	}
	g.mu.Lock()
	if g.holds > 0 {
		g.pending = append(g.pending, localFree{locs, free})
		g.mu.Unlock()
		return
	}
	g.mu.Unlock()
	free(locs)
}

// hold defers FreeLocal's frees until the returned func is called.
func (g *localFrees) hold() (release func()) {
	g.mu.Lock()
	g.holds++
	g.held.Store(int32(g.holds))
	g.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			g.mu.Lock()
			g.holds--
			g.held.Store(int32(g.holds))
			var run []localFree
			if g.holds == 0 {
				run, g.pending = g.pending, nil
			}
			g.mu.Unlock()
			for _, f := range run {
				f.free(f.locs)
			}
		})
	}
}
