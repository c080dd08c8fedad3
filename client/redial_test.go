package client

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

type upUnit struct{ DataUnit }

func (upUnit) ID() engine.UnitID { return 7 }
func (upUnit) Acquire(context.Context, []engine.RemoteAddr) (Lease, error) {
	return &ownedLease{offs: []uint64{0}}, nil
}

// TestGivenUpDialIsNotTheUnitsFailure: a caller that gives up while it
// dials a unit that is down does not make its own cancellation the unit's
// failure: the dial goes on, and the next caller gets the unit rather than
// "unreachable" until the next try.
func TestGivenUpDialIsNotTheUnitsFailure(t *testing.T) {
	var dials atomic.Int32
	answer := make(chan struct{})
	dial := func(ctx context.Context) (DataUnit, error) {
		dials.Add(1)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-answer: // the unit answers once the first caller gave up
			return upUnit{}, nil
		}
	}
	u := newRedialUnit(7, "h", errors.New("first dial failed"), dial)
	defer u.Close()
	u.next = time.Time{} // due now
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
	defer cancel()
	_, err := u.Acquire(ctx, nil)
	require.ErrorIs(t, err, context.DeadlineExceeded, "the impatient caller gets its own error")
	close(answer)
	_, err = u.Acquire(context.Background(), nil)
	require.NoError(t, err, "a patient caller after another's given-up dial")
	require.Equal(t, int32(1), dials.Load(), "the patient caller waited for the dial under way")
}

// TestFailedDialIsEveryWaitersOutcome: callers waiting on one dial all get
// its failure, and a call before the next try does not dial again.
func TestFailedDialIsEveryWaitersOutcome(t *testing.T) {
	var dials atomic.Int32
	refused := errors.New("connection refused")
	u := newRedialUnit(7, "h", errors.New("first dial failed"), func(ctx context.Context) (DataUnit, error) {
		dials.Add(1)
		time.Sleep(20 * time.Millisecond)
		return nil, refused
	})
	defer u.Close()
	u.next = time.Time{}
	errs := make(chan error, 3)
	for range 3 {
		go func() { _, err := u.Acquire(context.Background(), nil); errs <- err }()
	}
	for range 3 {
		err := <-errs
		require.ErrorIs(t, err, engine.ErrUnavailable)
		require.ErrorIs(t, err, refused)
	}
	_, err := u.Acquire(context.Background(), nil)
	require.ErrorContains(t, err, "next try in")
	require.Equal(t, int32(1), dials.Load())
}

// droppingUnit is a unit whose connection ends once dialed (a peer that
// completes the handshake, then drops it), or once it served Acquire
// with dropAfterServe.
type droppingUnit struct {
	upUnit
	gone           atomic.Bool
	dropAfterServe bool
}

func (d *droppingUnit) broken() bool { return d.gone.Load() }

func (d *droppingUnit) Acquire(ctx context.Context, addrs []engine.RemoteAddr) (Lease, error) {
	if d.gone.Load() {
		return nil, engine.ErrUnavailable
	}
	if d.dropAfterServe {
		defer d.gone.Store(true)
	}
	return d.upUnit.Acquire(ctx, addrs)
}

// TestConnectionDroppedAtOnceBacksOff: a unit (or whatever answers at its
// address) that completes every dial and drops the connection right
// after is dialed again no more often than the backoff allows. A dial that
// succeeded used to reset the backoff and a broken connection to make the
// next dial due at once, so every call paid a dial and the unit took one
// per call.
func TestConnectionDroppedAtOnceBacksOff(t *testing.T) {
	var dials atomic.Int32
	u := newRedialUnit(7, "h", errors.New("first dial failed"), func(ctx context.Context) (DataUnit, error) {
		dials.Add(1)
		d := &droppingUnit{}
		d.gone.Store(true)
		return d, nil
	})
	defer u.Close()
	u.next = time.Time{}
	start := time.Now()
	for range 50 {
		_, err := u.Acquire(context.Background(), nil)
		require.ErrorIs(t, err, engine.ErrUnavailable)
	}
	require.Less(t, time.Since(start), redialMin, "the burst took longer than the first backoff")
	require.Equal(t, int32(1), dials.Load(), "dials in a burst of 50 calls")
}

// TestServedConnectionRedialedAtOnce: a connection that served a call and
// then ended (the unit restarted) is dialed again by the next call, with
// no backoff.
func TestServedConnectionRedialedAtOnce(t *testing.T) {
	var dials atomic.Int32
	u := newRedialUnit(7, "h", errors.New("first dial failed"), func(ctx context.Context) (DataUnit, error) {
		dials.Add(1)
		return &droppingUnit{dropAfterServe: true}, nil
	})
	defer u.Close()
	u.next = time.Time{}
	for i := range 5 {
		_, err := u.Acquire(context.Background(), nil)
		require.NoError(t, err, "call %d", i)
	}
	require.Equal(t, int32(5), dials.Load())
}
