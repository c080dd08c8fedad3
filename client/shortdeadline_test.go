package client_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/embedded"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/storage"
)

// Puts with a deadline of a millisecond on a full unit each fail with
// ctx's error; one that met the full unit (a refusal, a wait for room)
// wraps engine.ErrCapacity with it, as a put that waited for room and ran
// out of time does, and none takes the end of its own time for a unit
// that cannot be reached. One whose ctx ended before it learned whether
// there was room (at its insert, or its write still on the way) fails
// with ctx's error alone. A write refused as ctx ended returned
// ErrCapacity without ctx's error, and a dial cut by ctx's deadline a
// moment before ctx's timer fired was a unit "unreachable".
func TestPutWithAShortDeadlineOnAFullUnitIsCapacityWithCtxsError(t *testing.T) {
	ctx := t.Context()
	_, _, c, filler := shortWaitCluster(t)
	fillUnit(t, filler)
	row := opaque([]int{client.KVInlineMax + 1}) // through the unit, not the controller
	check := func(what string, err error) {
		t.Helper()
		require.ErrorIs(t, err, context.DeadlineExceeded, what)
		require.NotContains(t, err.Error(), "unreachable", "%s: ctx's end taken for an unreachable unit", what)
	}
	for range 10 {
		pctx, cancel := context.WithTimeout(ctx, time.Millisecond)
		_, err := c.PutNew(pctx, "p", row)
		cancel()
		check("PutNew", err)
		pctx, cancel = context.WithTimeout(ctx, time.Millisecond)
		_, err = c.PutKeys(pctx, "k", []string{"a"}, row, nil)
		cancel()
		check("PutKeys", err)
	}
}

// refusingAtEndUnit refuses every write for room once the write's ctx
// has ended, as a full unit that answers just then does.
type refusingAtEndUnit struct{ client.DataUnit }

func (u refusingAtEndUnit) Write(ctx context.Context, _ [][][]byte) ([]engine.RemoteAddr, error) {
	<-ctx.Done()
	return nil, fmt.Errorf("no room now, and the caller would not wait: %w", engine.ErrCapacity)
}

func (u refusingAtEndUnit) ReserveExtents(ctx context.Context, _ []int64) (client.Reserved, error) {
	_, err := u.Write(ctx, nil)
	return nil, err
}

// timedOutUnit fails every write as a dial cut by the write's deadline
// does: unavailable, the deadline's own error not wrapped.
type timedOutUnit struct{ client.DataUnit }

func (u timedOutUnit) Write(ctx context.Context, _ [][][]byte) ([]engine.RemoteAddr, error) {
	return nil, fmt.Errorf("dial tcp 127.0.0.1:1: i/o timeout: %w", engine.ErrUnavailable)
}

func (u timedOutUnit) ReserveExtents(ctx context.Context, _ []int64) (client.Reserved, error) {
	_, err := u.Write(ctx, nil)
	return nil, err
}

// lateCtx is a ctx whose deadline has passed but whose timer has not
// fired yet: Err is nil until done closes (a while after it was made).
type lateCtx struct {
	context.Context
	at   time.Time
	done chan struct{}
}

func newLateCtx(parent context.Context, lag time.Duration) *lateCtx {
	c := &lateCtx{Context: parent, at: time.Now(), done: make(chan struct{})}
	time.AfterFunc(lag, func() { close(c.done) })
	return c
}

func (c *lateCtx) Deadline() (time.Time, bool) { return c.at, true }
func (c *lateCtx) Done() <-chan struct{}       { return c.done }
func (c *lateCtx) Err() error {
	select {
	case <-c.done:
		return context.DeadlineExceeded
	default:
		return nil
	}
}

func TestPutKeysEndedByCtxAtItsUnitWrapsCtxsError(t *testing.T) {
	_, addr, u := servedControllerAndUnit(t)
	row := opaque([]int{client.KVInlineMax + 1})
	for _, tc := range []struct {
		name string
		unit client.DataUnit
		ctx  func() (context.Context, context.CancelFunc)
		want error
	}{
		{"refused as ctx ended", refusingAtEndUnit{embedded.Unit(u)}, func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(t.Context(), 10*time.Millisecond)
		}, engine.ErrCapacity},
		{"dial cut by ctx's deadline", timedOutUnit{embedded.Unit(u)}, func() (context.Context, context.CancelFunc) {
			return newLateCtx(t.Context(), 50*time.Millisecond), func() {}
		}, context.DeadlineExceeded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := client.New(dialMeta(t, addr, client.RemoteConfig{}), []client.DataUnit{tc.unit}, client.DefaultConfig())
			require.NoError(t, err)
			t.Cleanup(func() { c.Close() })
			for _, put := range []func(ctx context.Context) error{
				func(ctx context.Context) error {
					_, err := c.PutKeys(ctx, "k", []string{"a"}, row, nil)
					return err
				},
				func(ctx context.Context) error {
					_, err := c.ReservePutKeys(ctx, "k", []string{"a"}, nil, client.FieldSpec{Name: "x", DType: engine.Int64})
					return err
				},
			} {
				pctx, cancel := tc.ctx()
				err := put(pctx)
				cancel()
				require.ErrorIs(t, err, tc.want)
				require.ErrorIs(t, err, context.DeadlineExceeded, "the put's error lacks ctx's")
				require.NotContains(t, err.Error(), "unreachable", "ctx's end taken for an unreachable unit")
			}
		})
	}
}

// stuckCtx is a ctx whose deadline has passed and whose Done never
// closes (nil, as a Context of one's own that reports a deadline may
// have): nothing waits on it for long.
type stuckCtx struct{ context.Context }

func (stuckCtx) Deadline() (time.Time, bool) { return time.Now().Add(-time.Second), true }
func (stuckCtx) Done() <-chan struct{}       { return nil }
func (stuckCtx) Err() error                  { return nil }

// A put whose unit call failed, with a ctx whose deadline has passed but
// which never ends, returns: the client waited for that ctx to end (to
// tell a dial cut by its deadline from a unit that cannot be reached)
// and hung for good.
func TestPutWithAPassedDeadlineThatNeverEndsReturns(t *testing.T) {
	_, addr, u := servedControllerAndUnit(t)
	c, err := client.New(dialMeta(t, addr, client.RemoteConfig{}), []client.DataUnit{timedOutUnit{embedded.Unit(u)}}, client.DefaultConfig())
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	row := opaque([]int{client.KVInlineMax + 1})
	for _, put := range []struct {
		name string
		f    func(ctx context.Context) error
	}{
		{"PutKeys", func(ctx context.Context) error {
			_, err := c.PutKeys(ctx, "k", []string{"a"}, row, nil)
			return err
		}},
		{"ReservePutKeys", func(ctx context.Context) error {
			_, err := c.ReservePutKeys(ctx, "k", []string{"a"}, nil, client.FieldSpec{Name: "x", DType: engine.Int64})
			return err
		}},
	} {
		done := make(chan error, 1)
		go func() { done <- put.f(stuckCtx{t.Context()}) }()
		select {
		case err := <-done:
			require.ErrorIs(t, err, engine.ErrUnavailable, put.name)
		case <-time.After(20 * time.Second):
			t.Fatalf("%s still waiting 20 s on a ctx that never ends", put.name)
		}
	}
}

// servedControllerAndUnit is a controller served on a unix socket (its
// address) and a storage unit in this process, for a client.New of
// units of the test's own making over it.
func servedControllerAndUnit(t *testing.T) (*controller.Controller, string, *storage.Unit) {
	t.Helper()
	ctrl, err := controller.New(controller.Config{})
	require.NoError(t, err)
	t.Cleanup(func() { ctrl.Close() })
	_, addr := serveController(t, ctrl, controller.ServerConfig{}, "unix")
	u, err := storage.NewUnit(1, storage.DefaultConfig())
	require.NoError(t, err)
	t.Cleanup(func() { u.Close() })
	return ctrl, addr, u
}
