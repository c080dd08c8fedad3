package client

// A read or write of a storage unit that went silent without closing its
// connections (a hung process, a host cut off the network) would wait for
// the data connection's liveness check (no pong in 10 s) or the caller's
// deadline, whichever comes first, and with a deadline under that fail as
// context.DeadlineExceeded: not as the lost cells they are, nor as a unit
// to place the rows elsewhere from. A client that has not re-listed the
// units since the controller reported the unit dead (a reader never does;
// placement does at most once a second) still sends to it. So a request
// to a unit that has not finished after deadCheck asks the controller
// about its unit, and again every deadCheck while it waits: once the
// controller reports the unit dead (silent for five heartbeats), the
// request stops with an error wrapping engine.ErrUnavailable: a read's
// cells read as lost (engine.ErrLost, see readErr), a write's rows are
// placed on the other units (see writePlaced; a reserved put, see
// reservePlaced, reserves on another; bytes the unit took before
// it went silent are never committed, and its reconciliation frees them;
// a reserved put's commit or abort on it, and the frees after a failed
// put, end as unreachable).
// A unit that is answering is not cut off while the controller counts it
// alive, however long its request takes (a write waiting for room
// included). One that ends sooner costs its context and an entry in the
// client's set of watched requests, no timer and no round trip: one
// goroutine a client, running while requests are in flight, looks at them
// every watchTick and asks for the units when some have waited deadCheck
// (a timer a request cost about twice as much, 8 allocations to 3, some
// 4% of a small get over TCP).

import (
	"context"
	"fmt"
	"time"

	"github.com/tqgo/tq/engine"
)

// deadCheck is how long a request to a unit runs before the client asks
// the controller whether the unit is alive (then again as often).
const deadCheck = 2 * time.Second

// watchTick is how often the client's watcher looks at its requests in
// flight: a request is first checked between deadCheck and deadCheck +
// watchTick after it began.
const watchTick = deadCheck / 4

// watched is a request to a unit under watchDead.
type watched struct {
	id     engine.UnitID
	next   time.Time // when the watcher checks it next (the watcher's)
	cancel context.CancelCauseFunc
}

// deadWatch is a client's set of requests under watchDead, guarded by
// its discovery's mu.
type deadWatch struct {
	reqs    map[*watched]struct{}
	running bool // the watcher goroutine runs (in discovery's wg)
	ctx     context.Context
	stop    context.CancelFunc // on close
	due     []*watched         // the watcher's, reused
}

// watchDead runs call, a request to unit id, with a context that ends,
// with an error wrapping engine.ErrUnavailable, when the controller
// reports the unit dead while the call has gone on for deadCheck or
// longer. It returns call's error, or that one when it is why call ended
// (the caller's ctx still live).
func (c *Client) watchDead(ctx context.Context, id engine.UnitID, call func(context.Context) error) error {
	d := c.disc
	if d == nil {
		return call(ctx) // no controller to ask
	}
	rctx, cancel := context.WithCancelCause(ctx)
	w := &watched{id: id, next: time.Now().Add(deadCheck), cancel: cancel}
	if !d.watchAdd(c, w) {
		cancel(nil)
		return call(ctx) // closed: no controller to ask
	}
	err := call(rctx)
	d.watchRemove(w)
	if err != nil && ctx.Err() == nil && rctx.Err() != nil {
		err = context.Cause(rctx)
	}
	cancel(nil)
	return err
}

// watchAdd adds w to the requests the watcher looks at, starting it if
// it does not run; false after close.
func (d *discovery) watchAdd(c *Client, w *watched) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return false
	}
	dw := &d.watch
	if dw.reqs == nil {
		dw.reqs = map[*watched]struct{}{}
		dw.ctx, dw.stop = context.WithCancel(context.Background())
	}
	dw.reqs[w] = struct{}{}
	if !dw.running {
		dw.running = true
		d.wg.Go(func() { d.watcher(c) })
	}
	return true
}

func (d *discovery) watchRemove(w *watched) {
	d.mu.Lock()
	delete(d.watch.reqs, w)
	d.mu.Unlock()
}

// watcher checks the requests in flight every watchTick until none is
// left or the client closes: those that have waited deadCheck since they
// began or were last checked share one list of the units asked within
// learnEvery (so after they began), and those whose unit it reports dead
// are canceled.
func (d *discovery) watcher(c *Client) {
	dw := &d.watch
	t := time.NewTimer(watchTick)
	defer t.Stop()
	for {
		select {
		case <-dw.ctx.Done():
			d.mu.Lock()
			dw.running = false
			d.mu.Unlock()
			return
		case <-t.C:
		}
		now := time.Now()
		d.mu.Lock()
		if len(dw.reqs) == 0 {
			dw.running = false
			d.mu.Unlock()
			return
		}
		due := dw.due[:0]
		for w := range dw.reqs {
			if !now.Before(w.next) {
				due = append(due, w)
			}
		}
		dw.due = due
		d.mu.Unlock()
		if len(due) > 0 {
			lctx, lcancel := context.WithTimeout(dw.ctx, learnTimeout)
			err := d.learnAfter(lctx, c, now.Add(-learnEvery))
			lcancel()
			dead := c.tbl.Load().dead
			next := time.Now().Add(deadCheck)
			for _, w := range due {
				if err == nil && dead[w.id] {
					w.cancel(fmt.Errorf("storage unit %d did not answer in %v, and the controller reports it dead: %w", w.id, deadCheck, engine.ErrUnavailable))
				}
				w.next = next
			}
			clear(due)
		}
		t.Reset(watchTick)
	}
}
