package main

// Claims of the README's "A cluster of processes" section that no other
// test held.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/internal/auth"
	"github.com/tqgo/tq/kvapi"
)

// A bare `tq serve` is, as the README's first example says, a controller
// and two units on 127.0.0.1:7370 and ${TMPDIR:-/tmp}/tq-$UID; units
// heartbeat every second and a unit waits 2 minutes for its controller.
func TestServeDefaultsAreTheReadmes(t *testing.T) {
	t.Setenv(auth.EnvDataDir, t.TempDir())
	unsetEnv(t, auth.EnvToken)
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	var out, errOut strings.Builder
	require.NoError(t, serve(t.Context(), []string{"--check-config"}, &out, &errOut), errOut.String())
	for _, line := range []string{
		"role: all",
		"listen: 127.0.0.1:7370",
		"units: 2",
		fmt.Sprintf("socket_dir: %s/tq-%d", tmp, os.Getuid()),
		"heartbeat_interval: 1s",
		"controller_wait: 2m0s",
		"shm_quarantine: 30s",
	} {
		assert.Contains(t, out.String(), "\n"+line+"\n")
	}
}

// silentPair is a controller (1 s heartbeats cut to 50 ms) and two units
// of 16 MiB as tq serve processes, and a client of them, for the tests
// of a unit that goes silent (SIGSTOP) with its connections open.
type silentPair struct {
	bin, addr string
	ctrl      *serveProc
	units     []*serveProc // unit i+1 is units[i]: each start waits for its unit to register
	c         *client.Client
}

// startSilentPair starts a silentPair whose units serve shared memory
// (a socket directory) with shm, over TCP alone without, with extra unit
// flags, and whose client uses transport ("": automatic).
func startSilentPair(t *testing.T, shm bool, transport string, extra []string) *silentPair {
	t.Helper()
	bin := tqBinary(t)
	ctrl := startServe(t, nil, bin, "--role", "controller", "--listen", "127.0.0.1:0", "--socket-dir", t.TempDir(), "--heartbeat", "50ms")
	addr := ctrl.addr("tcp")
	var units []*serveProc
	for range 2 {
		dir := ""
		if shm {
			dir = t.TempDir()
		}
		args := append([]string{"--role", "unit", "--controller", addr, "--socket-dir", dir, "--capacity", "16MiB"}, extra...)
		u := startServeIn(t, ctrl.dataDir, nil, bin, args...)
		t.Cleanup(u.kill) // SIGKILL ends a stopped process too
		units = append(units, u)
	}
	var c *client.Client
	require.Eventually(t, func() bool {
		if c != nil {
			c.Close()
		}
		var err error
		c, err = client.Connect(t.Context(), addr, client.ConnectConfig{WaitForUnits: true, Token: ctrl.token(t), Transport: transport})
		return err == nil && len(c.Units()) == 2
	}, 20*time.Second, 50*time.Millisecond, "two units registered")
	t.Cleanup(func() { c.Close() })
	return &silentPair{bin: bin, addr: addr, ctrl: ctrl, units: units, c: c}
}

// waitLost waits until tq stat shows a unit LOST.
func (sc *silentPair) waitLost(t *testing.T) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; {
		out, _ := sc.ctrl.tqStat(sc.bin, sc.addr)
		if strings.Contains(string(out), "LOST") {
			return
		}
		require.False(t, time.Now().After(deadline), "tq stat never showed the stopped unit LOST:\n%s", out)
		time.Sleep(50 * time.Millisecond)
	}
}

// usedBytes returns a function that tells, from the controller's list of
// units, the bytes a unit holds and whether it counts it alive.
func (sc *silentPair) usedBytes(ctx context.Context, t *testing.T) func(engine.UnitID) (int64, bool) {
	t.Helper()
	meta, err := client.DialMeta(ctx, sc.addr, client.RemoteConfig{Token: sc.ctrl.token(t)})
	require.NoError(t, err)
	t.Cleanup(func() { meta.Close() })
	return func(id engine.UnitID) (int64, bool) {
		infos, err := meta.Units(ctx)
		require.NoError(t, err)
		for _, u := range infos {
			if u.ID == id {
				return u.Used, u.Alive
			}
		}
		t.Fatalf("unit %d not listed", id)
		return 0, false
	}
}

// putOnOne puts keys to partition p through kv and returns the one unit
// that holds them all (local-first placement puts a small put on one).
func (sc *silentPair) putOnOne(ctx context.Context, t *testing.T, kv *kvapi.KV, p string, keys []string) engine.UnitID {
	t.Helper()
	_, err := kv.BatchPut(ctx, p, keys, helperBatch(0, len(keys)), nil)
	require.NoError(t, err)
	on := unitsOf(ctx, t, sc.c, p, keys)
	require.Len(t, on, 1, "local-first puts the rows on one unit: %v", on)
	for id := range on {
		return id
	}
	panic("unreachable")
}

// A unit that goes silent without dying (SIGSTOP: its connections stay
// open, nothing answers on them, as of a host cut off the network) is
// shown LOST by tq stat within five heartbeats; then, by a client that
// has not re-listed the units since, a put goes to the other unit and a
// read of its cells fails with engine.ErrLost, neither waiting for its
// deadline.
func TestSilentUnitIsLostAndTakesNoWrites(t *testing.T) {
	sc := startSilentPair(t, false, "", nil)
	units, c := sc.units, sc.c
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	kv := kvapi.New(c)
	keys := helperKeys(0, 8)
	silent := sc.putOnOne(ctx, t, kv, "p", keys)
	// Each start waits for its unit to register: unit 1 is units[0].
	require.NoError(t, units[silent-1].cmd.Process.Signal(syscall.SIGSTOP))

	sc.waitLost(t)
	// A put whose first key is the first put's goes to the same unit
	// first, if the client has not re-listed the units since.
	pctx, pcancel := context.WithTimeout(ctx, 8*time.Second)
	defer pcancel()
	_, err := kv.BatchPut(pctx, "q", keys, helperBatch(0, 8), nil)
	require.NoError(t, err, "a put with unit %d LOST", silent)
	on := unitsOf(ctx, t, c, "q", keys)
	assert.Zero(t, on[silent], "a put after unit %d was LOST placed cells on it: %v", silent, on)

	rctx, rcancel := context.WithTimeout(ctx, 8*time.Second)
	defer rcancel()
	_, err = kv.BatchGet(rctx, "p", keys)
	require.Error(t, err, "a read of the silent unit's cells")
	assert.True(t, errors.Is(err, engine.ErrLost), "a read of the silent unit's cells: %v, want ErrLost", err)
	assert.NoError(t, rctx.Err(), "the read waited for its deadline")
}

// TestSilentUnitTakesNoReservedPuts: a put filled in place in shared
// memory (ReservePutKeys) whose placement picks a unit that went silent
// with its connections open (SIGSTOP) and that the controller reports
// dead reserves on the other unit instead of waiting for its deadline.
func TestSilentUnitTakesNoReservedPuts(t *testing.T) {
	sc := startSilentPair(t, true, "", nil)
	units, c := sc.units, sc.c
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	spec := client.FieldSpec{Name: "v", DType: engine.Int64, Shape: engine.Shape{4}}
	keys := helperKeys(0, 8)
	kb, err := c.ReservePutKeys(ctx, "p", keys, nil, spec)
	require.NoError(t, err)
	require.Equal(t, "shm", kb.Unit().Transport(), "the reservation is in shared memory")
	silent := kb.Unit().ID()
	_, err = kb.Commit(ctx)
	require.NoError(t, err)
	// Each start waits for its unit to register: unit 1 is units[0].
	require.NoError(t, units[silent-1].cmd.Process.Signal(syscall.SIGSTOP))
	sc.waitLost(t)
	// The same first key: placement picks the same unit first, if the
	// client has not re-listed the units since.
	pctx, pcancel := context.WithTimeout(ctx, 8*time.Second)
	defer pcancel()
	kb, err = c.ReservePutKeys(pctx, "q", keys, []engine.Tags{{"n": int64(1)}, nil, nil, nil, nil, nil, nil, nil}, spec)
	require.NoError(t, err, "a reserved put with unit %d LOST", silent)
	assert.NotEqual(t, silent, kb.Unit().ID(), "the reserved put went to the LOST unit")
	_, err = kb.Commit(pctx)
	require.NoError(t, err)
	on := unitsOf(ctx, t, c, "q", keys)
	assert.Equal(t, map[engine.UnitID]int{kb.Unit().ID(): len(keys)}, on)
}

// TestSilentUnitEndsAReservedPutsCommitAndAbort: a put filled in place
// in shared memory whose unit goes silent (SIGSTOP) after the reservation
// and is reported dead fails its Commit, and its Abort, as unavailable
// rather than at the caller's deadline; once the unit resumes, the
// keys of the failed commit read as missing.
func TestSilentUnitEndsAReservedPutsCommitAndAbort(t *testing.T) {
	sc := startSilentPair(t, true, "", []string{"--reconcile-interval", "200ms", "--reconcile-grace", "1s"})
	units, c := sc.units, sc.c
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	used := sc.usedBytes(ctx, t)
	spec := client.FieldSpec{Name: "v", DType: engine.Int64, Shape: engine.Shape{4}}
	keys := helperKeys(0, 8)
	commit, err := c.ReservePutKeys(ctx, "p", keys, nil, spec)
	require.NoError(t, err)
	require.Equal(t, "shm", commit.Unit().Transport(), "the reservation is in shared memory")
	silent := commit.Unit().ID()
	// The same first key: placement picks the same unit first.
	abort, err := c.ReservePutKeys(ctx, "q", keys, nil, spec)
	require.NoError(t, err)
	require.Equal(t, silent, abort.Unit().ID(), "both reservations on one unit")
	vals, err := engine.Values[int64](commit.Column("v"))
	require.NoError(t, err)
	for i := range vals {
		vals[i] = int64(i)
	}
	time.Sleep(500 * time.Millisecond) // a few heartbeats report the reservations
	_, alive := used(silent)
	require.True(t, alive)
	require.NoError(t, units[silent-1].cmd.Process.Signal(syscall.SIGSTOP))
	sc.waitLost(t)

	for _, step := range []struct {
		name string
		end  func(context.Context) error
	}{
		{"commit", func(ctx context.Context) error { _, err := commit.Commit(ctx); return err }},
		{"abort", abort.Abort},
	} {
		sctx, scancel := context.WithTimeout(ctx, 8*time.Second)
		err := step.end(sctx)
		assert.ErrorIs(t, err, engine.ErrUnavailable, "%s on the silent unit %d", step.name, silent)
		assert.NoError(t, sctx.Err(), "%s waited for its deadline", step.name)
		scancel()
	}

	// The reservations' connections closed under them without a goodbye:
	// the unit quarantines the extents for its reserve timeout (30 s)
	// before it frees them, which this test does not wait for.
	require.NoError(t, units[silent-1].cmd.Process.Signal(syscall.SIGCONT))
	require.Eventually(t, func() bool { _, alive = used(silent); return alive }, 20*time.Second, 50*time.Millisecond, "unit %d alive again", silent)
	_, err = kvapi.New(c).BatchGet(ctx, "p", keys)
	assert.ErrorIs(t, err, engine.ErrNotFound, "keys of a commit that failed")
}

// TestSilentUnitFreesWhatItTookOnceItResumes: a put placed on a unit
// that went silent (SIGSTOP) and is reported dead moves to the other
// unit, each row once; once the unit resumes (SIGCONT) it is alive
// again, its old cells read, and what the abandoned write left on it is
// freed, never committed.
func TestSilentUnitFreesWhatItTookOnceItResumes(t *testing.T) {
	sc := startSilentPair(t, false, "", []string{"--reconcile-interval", "200ms", "--reconcile-grace", "1s"})
	units, c := sc.units, sc.c
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	used := sc.usedBytes(ctx, t)
	kv := kvapi.New(c)
	keys := helperKeys(0, 8)
	silent := sc.putOnOne(ctx, t, kv, "p", keys)
	// The put's bytes reach the controller with the unit's heartbeats:
	// wait until two reads a few heartbeats apart agree on some (a fixed
	// wait read none on a loaded machine).
	var before int64
	require.Eventually(t, func() bool {
		a, _ := used(silent)
		time.Sleep(200 * time.Millisecond)
		before, _ = used(silent)
		return before > 0 && before == a
	}, 20*time.Second, 50*time.Millisecond, "unit %d's heartbeats report the put", silent)
	require.NoError(t, units[silent-1].cmd.Process.Signal(syscall.SIGSTOP))
	require.Eventually(t, func() bool { _, alive := used(silent); return !alive }, 20*time.Second, 50*time.Millisecond, "unit %d reported dead", silent)

	// The same first key: the put goes to the silent unit first.
	big := make([]string, 64)
	for i := range big {
		big[i] = fmt.Sprintf("sample_%d", i)
	}
	pctx, pcancel := context.WithTimeout(ctx, 8*time.Second)
	defer pcancel()
	_, err := kv.BatchPut(pctx, "q", big, helperBatch(0, 64), nil)
	require.NoError(t, err, "a put with unit %d LOST", silent)
	on := unitsOf(ctx, t, c, "q", big)
	assert.Zero(t, on[silent], "a put after unit %d was LOST placed cells on it: %v", silent, on)
	st, err := c.Stats(ctx, "q")
	require.NoError(t, err)
	assert.Equal(t, 64, st.Rows, "rows of q")

	require.NoError(t, units[silent-1].cmd.Process.Signal(syscall.SIGCONT))
	require.Eventually(t, func() bool { _, alive := used(silent); return alive }, 20*time.Second, 50*time.Millisecond, "unit %d alive again", silent)
	rctx, rcancel := context.WithTimeout(ctx, 8*time.Second)
	defer rcancel()
	_, err = kv.BatchGet(rctx, "p", keys)
	require.NoError(t, err, "a read of unit %d's cells once it answers again", silent)
	var now int64
	require.Eventually(t, func() bool { now, _ = used(silent); return now == before }, 30*time.Second, 100*time.Millisecond,
		"unit %d's used bytes after the abandoned write: %d, %d before", silent, now, before)
	_, err = kv.BatchGet(rctx, "q", big)
	require.NoError(t, err)
	// Puts reach it again.
	for i := range 20 {
		k := []string{fmt.Sprintf("again_%d", i)}
		_, err := kv.BatchPut(ctx, "r", k, helperBatch(i, 1), nil)
		require.NoError(t, err)
	}
}

// TestSilentUnitsLeaseIsGivenBackOnceItResumes: a view read over shared
// memory from a unit gone silent (SIGSTOP) and reported dead fails with
// ErrLost; once the unit resumes (SIGCONT) and answers the lease the
// client gave up on, the lease is given back: the unit holds none.
func TestSilentUnitsLeaseIsGivenBackOnceItResumes(t *testing.T) {
	sc := startSilentPair(t, true, client.TransportShm, []string{"--metrics", "127.0.0.1:0"})
	units, c := sc.units, sc.c
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	kv := kvapi.New(c)
	keys := helperKeys(0, 8)
	silent := sc.putOnOne(ctx, t, kv, "p", keys)
	leases := func() string {
		resp, err := http.Get(units[silent-1].metricsURL)
		require.NoError(t, err)
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		for _, l := range strings.Split(string(body), "\n") {
			if strings.HasPrefix(l, "tq_unit_leases") {
				return l[strings.LastIndexByte(l, ' ')+1:]
			}
		}
		return "none"
	}
	meta, err := c.MetaByKeys(ctx, "p", keys, nil, false)
	require.NoError(t, err)
	require.NoError(t, units[silent-1].cmd.Process.Signal(syscall.SIGSTOP))
	sc.waitLost(t)
	rctx, rcancel := context.WithTimeout(ctx, 8*time.Second)
	defer rcancel()
	_, err = c.GetView(rctx, meta)
	require.ErrorIs(t, err, engine.ErrLost, "a view of the silent unit's cells")
	require.NoError(t, rctx.Err(), "the read waited for its deadline")

	require.NoError(t, units[silent-1].cmd.Process.Signal(syscall.SIGCONT))
	var n string
	require.Eventually(t, func() bool { n = leases(); return n == "0" }, 30*time.Second, 100*time.Millisecond,
		"unit %d's leases after the view it answered late: %s", silent, n)
	v, err := c.GetView(ctx, meta)
	require.NoError(t, err, "a view of unit %d's cells once it answers again", silent)
	v.Release()
	require.Eventually(t, func() bool { n = leases(); return n == "0" }, 30*time.Second, 100*time.Millisecond,
		"unit %d's leases after a view released: %s", silent, n)
}
