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
// it went silent are never committed, and its reconciliation frees them).
// A unit that is answering is not cut off while the controller counts it
// alive, however long its request takes (a write waiting for room
// included); one that ends sooner costs a timer and no round trip.

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/tqgo/tq/engine"
)

// deadCheck is how long a request to a unit runs before the client asks
// the controller whether the unit is alive (then again as often).
const deadCheck = 2 * time.Second

// watchDead runs call, a request to unit id, with a context that ends,
// with an error wrapping engine.ErrUnavailable, when the controller
// reports the unit dead while the call has gone on for deadCheck or
// longer. It returns call's error, or that one when it is why call ended
// (the caller's ctx still live).
func (c *Client) watchDead(ctx context.Context, id engine.UnitID, call func(context.Context) error) error {
	if c.disc == nil {
		return call(ctx) // no controller to ask
	}
	rctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var (
		mu      sync.Mutex
		stopped bool
		timer   *time.Timer
		checks  sync.WaitGroup // a check armed or running
	)
	var check func()
	check = func() {
		defer checks.Done()
		// A list asked for within learnEvery, so after this call began
		// (deadCheck ago): its dead flags are no older than this call's
		// wait, and the client's slow calls, however many, share one
		// list a learnEvery (large reads over a slow network may all
		// take longer than deadCheck).
		lctx, lcancel := context.WithTimeout(rctx, learnTimeout)
		err := c.disc.learnAfter(lctx, c, time.Now().Add(-learnEvery))
		lcancel()
		if err == nil && c.tbl.Load().dead[id] {
			cancel(fmt.Errorf("storage unit %d did not answer in %v, and the controller reports it dead: %w", id, deadCheck, engine.ErrUnavailable))
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if !stopped {
			checks.Add(1)
			timer = time.AfterFunc(deadCheck, check)
		}
	}
	mu.Lock()
	checks.Add(1)
	timer = time.AfterFunc(deadCheck, check)
	mu.Unlock()

	err := call(rctx)
	var cause error
	if err != nil && ctx.Err() == nil && rctx.Err() != nil {
		cause = context.Cause(rctx)
	}
	cancel(nil) // a check under way stops asking
	mu.Lock()
	stopped = true
	if timer.Stop() {
		checks.Done() // armed, never ran
	}
	mu.Unlock()
	checks.Wait()
	if cause != nil {
		return cause
	}
	return err
}
