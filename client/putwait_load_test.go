package client_test

import (
	"context"
	"io"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/storage"
	"github.com/tqgo/tq/wire"
)

// countingProxy forwards unix connections to the controller at addr and
// counts the requests of op its clients send.
func countingProxy(t *testing.T, addr string, op wire.Op) (string, *atomic.Int64) {
	t.Helper()
	network, target, err := wire.ParseAddr(addr)
	require.NoError(t, err)
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "proxy.sock"))
	require.NoError(t, err)
	var n atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial(network, target)
			if err != nil {
				in.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, in, out)
			mu.Unlock()
			wg.Go(func() { io.Copy(in, out); in.Close() })
			wg.Go(func() {
				defer out.Close()
				h := make([]byte, wire.HeaderSize)
				for {
					if _, err := io.ReadFull(in, h); err != nil {
						return
					}
					hd, err := wire.DecodeHeader(h)
					if err != nil {
						return
					}
					if hd.Op == op && hd.Flags&wire.FlagReply == 0 {
						n.Add(1)
					}
					if _, err := out.Write(h); err != nil {
						return
					}
					if _, err := io.CopyN(out, in, int64(hd.BodyLen)+int64(hd.PayloadLen)); err != nil {
						return
					}
				}
			})
		}
	})
	return wire.FormatAddr("unix", l.Addr().String()), &n
}

// listCountedCluster is a controller in its own server with one unit of
// joinWaitingUnit (reserve wait wait), a client c that reaches the
// controller through countingProxy, whose UNITS requests lists counts, and
// a client that fills and frees.
func listCountedCluster(t *testing.T, wait time.Duration) (c, filler *client.Client, lists *atomic.Int64) {
	t.Helper()
	ctx := t.Context()
	ctrl, err := controller.New(controller.Config{UnitTimeout: time.Minute})
	require.NoError(t, err)
	t.Cleanup(func() { ctrl.Close() })
	_, addr := serveController(t, ctrl, controller.ServerConfig{}, "unix")
	joinWaitingUnit(t, addr, wait)
	filler, err = client.Connect(ctx, addr, client.ConnectConfig{})
	require.NoError(t, err)
	t.Cleanup(func() { filler.Close() })
	paddr, lists := countingProxy(t, addr, wire.OpUnits)
	c, err = client.Connect(ctx, paddr, client.ConnectConfig{})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c, filler, lists
}

// Many puts of one client waiting on a full unit whose reserve wait is
// short list the units with the controller about once a second all
// together, not once a second each.
func TestWaitingPutsListTheUnitsAboutOnceASecond(t *testing.T) {
	ctx := t.Context()
	c, filler, lists := listCountedCluster(t, shortWait)
	metas := fillUnit(t, filler)

	const puts = 8
	pctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	errs := make([]error, puts)
	for i := range puts {
		wg.Go(func() {
			_, errs[i] = c.PutNew(pctx, "p", opaque([]int{64 << 10}))
		})
	}
	time.Sleep(500 * time.Millisecond) // every put waits
	from, began := lists.Load(), time.Now()
	time.Sleep(4 * time.Second)
	n, secs := lists.Load()-from, time.Since(began).Seconds()
	// The waiting puts hold none of the client's I/O slots: its reads
	// and frees go on, among them those that make room for the puts.
	rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
	_, err := c.GetCopy(rctx, metas[len(metas)-1])
	rcancel()
	require.NoError(t, err, "a read of the client whose puts wait")
	for _, m := range metas[:puts] {
		rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
		require.NoError(t, c.Clear(rctx, m), "a free of the client whose puts wait")
		rcancel()
	}
	wg.Wait()
	cancel()
	for i, err := range errs {
		assert.NoError(t, err, "put %d", i)
	}
	assert.LessOrEqual(t, float64(n), secs+2,
		"%d puts waiting on a unit with a %v reserve wait listed the units %d times in %.1f s", puts, shortWait, n, secs)
}

// A waiting put whose ctx is canceled (not timed out) fails with
// ErrCapacity and context.Canceled, names what it could not place and
// says it waited for room, and frees what it wrote.
func TestPutWaitingForRoomCanceled(t *testing.T) {
	ctx := t.Context()
	_, u, c, filler := shortWaitCluster(t)
	metas := fillUnit(t, filler)
	require.NoError(t, filler.Clear(ctx, metas[0]))
	require.Eventually(t, func() bool { return u.Stats().Extents == len(metas)-1 }, 10*time.Second, 10*time.Millisecond)
	before := u.Stats().Used
	for _, after := range []time.Duration{shortWait / 2, 3 * shortWait, 1200 * time.Millisecond, 1500 * time.Millisecond} {
		// Canceled once it waits in the unit, when it knows the unit is
		// full (canceled before it reached the unit, a put has only
		// ctx's error to give; on a loaded machine 25 ms may pass first).
		pctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			_, err := c.PutNew(pctx, "p", opaque(repeat(4, 64<<10)))
			done <- err
		}()
		require.Eventually(t, func() bool { return u.Stats().Waiting > 0 }, 10*time.Second, time.Millisecond,
			"the put to cancel after %v never waited in its unit", after)
		time.AfterFunc(after, cancel)
		err := <-done
		require.ErrorIs(t, err, engine.ErrCapacity, "canceled after %v", after)
		require.ErrorIs(t, err, context.Canceled, "canceled after %v", after)
		assert.Contains(t, err.Error(), "room", "canceled after %v", after)
		require.Eventually(t, func() bool { return u.Stats().Used == before }, 10*time.Second, 10*time.Millisecond,
			"the unit's used bytes after the put canceled after %v: want %d as before", after, before)
	}
}

// spanCluster is shortWaitCluster whose one unit (full) is joined by a
// second, empty one (b) once the first is full: a put of more than b
// holds writes part of its rows to b and waits for room for the rest.
func spanCluster(t *testing.T) (ctrl *controller.Controller, a, b *storage.Unit, c, filler *client.Client, fill []*engine.BatchMeta) {
	t.Helper()
	ctrl, err := controller.New(controller.Config{UnitTimeout: time.Minute})
	require.NoError(t, err)
	t.Cleanup(func() { ctrl.Close() })
	_, addr := serveController(t, ctrl, controller.ServerConfig{}, "unix")
	a = joinShortUnit(t, addr)
	filler, err = client.Connect(t.Context(), addr, client.ConnectConfig{})
	require.NoError(t, err)
	t.Cleanup(func() { filler.Close() })
	fill = fillUnit(t, filler)
	b = joinShortUnit(t, addr)
	c, err = client.Connect(t.Context(), addr, client.ConnectConfig{})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return ctrl, a, b, c, filler, fill
}

// A put whose rows span two units, one full: the rows the other took
// are freed when ctx ends, and committed once when room comes.
func TestPutWaitingAcrossUnits(t *testing.T) {
	ctx := t.Context()
	for _, succeed := range []bool{false, true} {
		_, a, b, c, filler, fill := spanCluster(t)
		usedA := a.Stats().Used
		want := opaque(repeat(20, 64<<10)) // b holds 16
		done := make(chan error, 1)
		var got *engine.BatchMeta
		pctx, cancel := context.WithTimeout(ctx, time.Minute)
		if !succeed {
			pctx, cancel = context.WithTimeout(ctx, 1500*time.Millisecond)
		}
		go func() {
			defer cancel()
			var err error
			got, err = c.PutNew(pctx, "p", want)
			done <- err
		}()
		if !succeed {
			err := <-done
			require.ErrorIs(t, err, engine.ErrCapacity)
			require.ErrorIs(t, err, context.DeadlineExceeded)
			require.Eventually(t, func() bool { return b.Stats().Used == 0 && a.Stats().Used == usedA }, 10*time.Second, 10*time.Millisecond,
				"used bytes after the failed put: unit a %d (want %d), unit b %d (want 0)", a.Stats().Used, usedA, b.Stats().Used)
			st, err := c.Stats(ctx, "p")
			if err == nil {
				assert.Zero(t, st.Rows+st.Reserved, "rows of the failed put in the controller")
			}
			continue
		}
		stillWaits(t, done)
		for _, m := range fill[:6] {
			require.NoError(t, filler.Clear(ctx, m))
		}
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(30 * time.Second):
			t.Fatal("the put still waits after rows were cleared")
		}
		st, err := c.Stats(ctx, "p")
		require.NoError(t, err)
		assert.Equal(t, 20, st.Rows, "rows of the put in the controller")
		g, err := c.GetCopy(ctx, got)
		require.NoError(t, err)
		assert.Equal(t, want.Col("v").Data(), g.Col("v").Data(), "the put's bytes do not read back")
		assert.Equal(t, int64(16<<16), b.Stats().Used, "unit b's used bytes")
		assert.Equal(t, usedA-2<<16, a.Stats().Used, "unit a's used bytes: 6 rows cleared, 4 put")
	}
}

// A put waiting on a full unit that is set draining meanwhile waits on
// the other units (full too) and, when ctx ends, frees what it wrote.
func TestPutWaitingOnAUnitThatDrains(t *testing.T) {
	ctx := t.Context()
	_, a, b, c, _, _ := spanCluster(t)
	usedA := a.Stats().Used
	pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := c.PutNew(pctx, "p", opaque(repeat(20, 64<<10)))
		done <- err
	}()
	stillWaits(t, done)
	rm, ok := c.Meta().(*client.RemoteMeta)
	require.True(t, ok)
	_, err := rm.DrainUnit(ctx, a.ID(), true)
	require.NoError(t, err)
	err = <-done
	require.ErrorIs(t, err, engine.ErrCapacity)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Eventually(t, func() bool { return b.Stats().Used == 0 && a.Stats().Used == usedA }, 10*time.Second, 10*time.Millisecond,
		"used bytes after the failed put: unit a %d (want %d), unit b %d (want 0)", a.Stats().Used, usedA, b.Stats().Used)
}

// A request to a unit that runs past deadCheck asks the controller
// whether the unit is alive, and again every deadCheck (see
// deadwatch.go). Many slow requests of one client, begun at different
// times (writes waiting for room on a unit whose reserve wait is long,
// as large reads over a slow network would be), share one list of the
// units a second: each used to ask for a list of its own, 8 requests
// begun a quarter of a second apart about 4 a second.
func TestSlowRequestsListTheUnitsAboutOnceASecond(t *testing.T) {
	c, filler, lists := listCountedCluster(t, time.Minute)
	fillUnit(t, filler)

	const puts = 8
	pctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	for range puts {
		wg.Go(func() {
			c.PutNew(pctx, "p", opaque([]int{64 << 10})) // canceled below
		})
		time.Sleep(250 * time.Millisecond)
	}
	from, began := lists.Load(), time.Now()
	time.Sleep(4 * time.Second)
	n, secs := lists.Load()-from, time.Since(began).Seconds()
	cancel()
	wg.Wait()
	assert.LessOrEqual(t, float64(n), secs+2,
		"%d writes waiting on a unit with a 1 min reserve wait listed the units %d times in %.1f s", puts, n, secs)
}
