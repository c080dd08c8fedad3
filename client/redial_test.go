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
