package controller

import (
	"context"
	"errors"
	"math"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/controller/journal"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire/wirepb"
)

var rankAware = engine.SamplerSpec{Name: engine.SamplerRankAware}

// keyedFetch is specFetch with rank-aware sampling and a fetch key.
func keyedFetch(group, batch, size int, key string) engine.FetchRequest {
	req := specFetch(rankAware, group, batch, size)
	req.Key = key
	return req
}

// A group that took a batch, gave its fetch back and never came back held
// the rows forever: they were consumed for the task, kept for the group,
// and no other group could have them (the other group's blocked fetch
// waited until its deadline). After KeptBatchTTL the rows go back, and the
// blocked fetch wakes for them.
func TestKeptBatchLeftBehindGoesBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newController(t, Config{KeptBatchTTL: time.Minute})
		m := insert(t, c, "p", 8, "x")
		commitDense(t, c, "p", m.Indexes, "x")
		ctx := context.Background()

		a, err := c.Fetch(ctx, keyedFetch(0, 0, 4, "g0-b0"))
		require.NoError(t, err)
		require.Equal(t, seq(0, 4), a.Indexes)
		require.NoError(t, c.Unconsume("p", "t", "g0-b0")) // group 0 stops here
		b, err := c.Fetch(ctx, specFetch(rankAware, 1, 0, 4))
		require.NoError(t, err)
		require.Equal(t, seq(4, 8), b.Indexes)

		req := specFetch(rankAware, 1, 1, 4)
		req.Wait = true
		wctx, cancel := context.WithTimeout(ctx, time.Hour)
		defer cancel()
		start := time.Now()
		got, err := c.Fetch(wctx, req)
		require.NoError(t, err, "group 1's next batch: the rows group 0 left behind")
		require.Equal(t, seq(0, 4), got.Indexes)
		require.Equal(t, time.Minute, time.Since(start), "given back when the batch was a TTL old")

		// Group 0 coming back late gets fresh rows, not the ones group 1
		// has now: nothing is left.
		late, err := c.Fetch(ctx, specFetch(rankAware, 0, 0, 4))
		require.NoError(t, err)
		require.Zero(t, late.Len())
	})
}

// A batch a group took and went past (it asked for the next one, as a
// finite stream's last batch is followed by an ask that ends the stream)
// was consumed: it is never given back, however long it stays unfetched.
// Batches the loader prefetched and gave back when it stopped are.
func TestKeptBatchTakenStaysConsumed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newController(t, Config{KeptBatchTTL: time.Minute})
		m := insert(t, c, "p", 16, "x")
		commitDense(t, c, "p", m.Indexes, "x")
		ctx := context.Background()

		_, err := c.Fetch(ctx, keyedFetch(0, 0, 4, "b0")) // yielded: kept
		require.NoError(t, err)
		for b, key := range []string{"b1", "b2"} { // prefetched, then given back
			got, err := c.Fetch(ctx, keyedFetch(0, b+1, 4, key))
			require.NoError(t, err)
			require.Equal(t, 4, got.Len())
			require.NoError(t, c.Unconsume("p", "t", key))
		}
		time.Sleep(2 * time.Minute)
		st, err := c.ConsumptionStatus("p", "t")
		require.NoError(t, err)
		held := []bool{true, true, true, true, true, true, true, true, true, true, true, true, false, false, false, false}
		require.Equal(t, held, st.Consumed, "before any fetch looks: the batches are still held")
		other, err := c.Fetch(ctx, specFetch(rankAware, 1, 0, 8))
		require.NoError(t, err)
		require.Equal(t, seq(4, 12), other.Indexes, "the prefetched batches went back; the yielded one did not")
	})
}

// Giving a left-behind batch back is logged: after a crash the rows are
// still fetchable and the sampler no longer keeps the batch for the group.
func TestKeptBatchGivenBackSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{KeptBatchTTL: keptTTL}
	c := openRows(t, dir, cfg, 8)
	ctx := context.Background()
	_, err := c.Fetch(ctx, keyedFetch(0, 0, 4, "k"))
	require.NoError(t, err)
	require.NoError(t, c.Unconsume("p", "t", "k"))
	time.Sleep(pastKeptTTL) // past the TTL: the next fetch gives the batch back
	b, err := c.Fetch(ctx, specFetch(rankAware, 1, 0, 8))
	require.NoError(t, err)
	require.Equal(t, seq(0, 8), b.Indexes)
	require.NoError(t, c.ResetConsumption("p", "t")) // logged after the give-back
	require.NoError(t, c.WaitDurable(ctx))
	want := stateBytes(t, c)
	crash(t, c)

	c = openDurable(t, dir, cfg)
	defer c.Close()
	require.Equal(t, want, stateBytes(t, c))
	again, err := c.Fetch(ctx, specFetch(rankAware, 0, 0, 2))
	require.NoError(t, err)
	require.Equal(t, seq(0, 2), again.Indexes, "group 0's batch 0 is no longer kept (it had 4 rows)")
}

// The keyed fetches of a batch its group left behind are spent by the
// controller (spendKept) without counting them given back, and logged as
// key-only unconsume records, which replay through unconsume, which
// counts a fetch given back (gaveBack). The two agree because the record
// first stops following the batch (its forgot op): replayed, the count
// finds no batch, as the live one left none. The table and the groups
// after a replay are the live ones.
func TestKeptBatchLeftBehindKeysReplayed(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{KeptBatchTTL: keptTTL}
	c := openRows(t, dir, cfg, 8)
	ctx := context.Background()
	for _, key := range []string{"k1", "k2"} { // two peers of group 0; neither gives its fetch back
		_, err := c.Fetch(ctx, keyedFetch(0, 0, 4, key))
		require.NoError(t, err)
	}
	time.Sleep(pastKeptTTL) // past the TTL: the next fetch gives the batch back
	b, err := c.Fetch(ctx, specFetch(rankAware, 1, 0, 8))
	require.NoError(t, err)
	require.Equal(t, seq(0, 8), b.Indexes, "group 1 gets the rows group 0 left behind too")
	require.NoError(t, c.WaitDurable(ctx))
	want, wantFetches := stateBytes(t, c), fetchTableBytes(t, c)
	crash(t, c)

	c = openDurable(t, dir, cfg)
	defer c.Close()
	require.Equal(t, want, stateBytes(t, c), "the state after the replay")
	require.Equal(t, wantFetches, fetchTableBytes(t, c), "the fetch table after the replay")
	for _, key := range []string{"k1", "k2"} {
		_, err := c.Fetch(ctx, keyedFetch(0, 0, 4, key))
		require.ErrorIs(t, err, context.Canceled, "%s asked again after the replay", key)
	}
}

// A group whose step on its batch outlasts the TTL, then asks for the
// next batch (a loader without prefetch asks for batch b+1 only when done
// with b), went past that batch: it stays consumed. The look for batches
// left behind ran before the ask was noted, took b for left behind and
// handed its rows out again as batch b+1.
func TestKeptBatchSlowStepStaysConsumed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newController(t, Config{KeptBatchTTL: time.Minute})
		m := insert(t, c, "p", 12, "x")
		commitDense(t, c, "p", m.Indexes, "x")
		ctx := context.Background()

		for b := range 3 {
			got, err := c.Fetch(ctx, specFetch(rankAware, 0, b, 4))
			require.NoError(t, err)
			require.Equal(t, seq(uint64(4*b), uint64(4*b+4)), got.Indexes, "batch %d", b)
			time.Sleep(2 * time.Minute) // the step on it outlasts the TTL
		}
		last, err := c.Fetch(ctx, specFetch(rankAware, 0, 3, 4))
		require.NoError(t, err)
		require.Zero(t, last.Len(), "every row was taken once")
	})
}

// A keyed fetch of a batch the group left behind, asked again after the
// batch was given back (its reply lost, the group back late), answered
// with the batch's rows, which another group had taken by then: two groups
// held the same rows. Its key is spent with the give-back, after a
// restart too.
func TestKeptBatchGivenBackSpendsItsFetches(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{KeptBatchTTL: keptTTL}
	c := openRows(t, dir, cfg, 8)
	ctx := context.Background()
	a, err := c.Fetch(ctx, keyedFetch(0, 0, 4, "k"))
	require.NoError(t, err)
	require.Equal(t, seq(0, 4), a.Indexes)
	time.Sleep(pastKeptTTL) // past the TTL: the next fetch gives the batch back
	b, err := c.Fetch(ctx, specFetch(rankAware, 1, 0, 4))
	require.NoError(t, err)
	require.Equal(t, seq(0, 4), b.Indexes, "group 1 took the rows group 0 left behind")

	again, err := c.Fetch(ctx, keyedFetch(0, 0, 4, "k"))
	require.ErrorIs(t, err, context.Canceled, "group 0's fetch asked again got %v", again)
	require.NoError(t, c.WaitDurable(ctx))
	crash(t, c)

	c = openDurable(t, dir, cfg)
	defer c.Close()
	again, err = c.Fetch(ctx, keyedFetch(0, 0, 4, "k"))
	require.ErrorIs(t, err, context.Canceled, "after a restart, group 0's fetch asked again got %v", again)
}

// keptTTL is the kept-batch TTL of the tests that restart a durable
// controller (real time, where synctest cannot follow the log's I/O):
// long enough that the fetches a test makes one after another fall
// within it on a loaded machine (20 ms did not: a rank's batch went back
// between its fetch and the next, and was served again), and
// pastKeptTTL, a sleep that outlasts it (and the first look's wait after
// a restart).
const (
	keptTTL     = 200 * time.Millisecond
	pastKeptTTL = 500 * time.Millisecond
)

// openRows opens a durable controller in dir whose partition "p" holds n
// committed rows of field "x", indexes 0 to n-1.
func openRows(t *testing.T, dir string, cfg Config, n int) *Controller {
	t.Helper()
	c := openDurable(t, dir, cfg)
	m := insert(t, c, "p", n, "x")
	commitDense(t, c, "p", m.Indexes, "x")
	return c
}

// newRows returns an in-memory controller with n rows of "x" produced in
// partition "p".
func newRows(t *testing.T, cfg Config, n int) *Controller {
	t.Helper()
	c := newController(t, cfg)
	m := insert(t, c, "p", n, "x")
	commitDense(t, c, "p", m.Indexes, "x")
	return c
}

// restartWays restarts a durable controller from its log alone (a crash)
// and from the snapshot a clean close writes.
// liveAndRestartWays are restartWays and "live", where stop is nil: no
// restart.
var liveAndRestartWays = append([]struct {
	name string
	stop func(t *testing.T, c *Controller)
}{{"live", nil}}, restartWays...)

var restartWays = []struct {
	name string
	stop func(t *testing.T, c *Controller)
}{
	{"crash", func(t *testing.T, c *Controller) { crash(t, c) }},
	{"close", func(t *testing.T, c *Controller) { require.NoError(t, c.Close()) }},
}

// After a restart a keyed fetch of a kept batch no longer named the batch:
// when the group's peer took the batch again, gave it back and the group
// left it behind, the batch went to another group, and the fetch from
// before the restart, asked again, answered with the same rows: two
// groups held them. What is followed survives a restart.
func TestKeptBatchFetchFollowedAcrossRestart(t *testing.T) {
	for _, way := range restartWays {
		t.Run(way.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := Config{KeptBatchTTL: keptTTL}
			c := openRows(t, dir, cfg, 8)
			ctx := context.Background()
			a, err := c.Fetch(ctx, keyedFetch(0, 0, 4, "k"))
			require.NoError(t, err)
			require.Equal(t, seq(0, 4), a.Indexes)
			require.NoError(t, c.WaitDurable(ctx))
			want := stateBytes(t, c)
			way.stop(t, c)

			c = openDurable(t, dir, cfg)
			defer c.Close()
			require.Equal(t, want, stateBytes(t, c), "the state after the restart")
			peer, err := c.Fetch(ctx, keyedFetch(0, 0, 4, "k2"))
			require.NoError(t, err)
			require.Equal(t, seq(0, 4), peer.Indexes, "the group's peer gets the kept batch")
			require.NoError(t, c.Unconsume("p", "t", "k2"))
			time.Sleep(pastKeptTTL) // past the TTL: the next fetch gives the batch back
			b, err := c.Fetch(ctx, specFetch(rankAware, 1, 0, 4))
			require.NoError(t, err)
			require.Equal(t, seq(0, 4), b.Indexes, "group 1 took the rows group 0 left behind")
			again, err := c.Fetch(ctx, keyedFetch(0, 0, 4, "k"))
			require.ErrorIs(t, err, context.Canceled, "group 0's fetch from before the restart, asked again, got %v", again)
		})
	}
}

// A batch a group took before a restart and then left behind held its
// rows forever: after the restart nothing followed it.
func TestKeptBatchLeftBehindAcrossRestart(t *testing.T) {
	for _, way := range restartWays {
		t.Run(way.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := Config{KeptBatchTTL: keptTTL}
			c := openRows(t, dir, cfg, 8)
			ctx := context.Background()
			_, err := c.Fetch(ctx, specFetch(rankAware, 0, 0, 4)) // group 0 stops here
			require.NoError(t, err)
			require.NoError(t, c.WaitDurable(ctx))
			way.stop(t, c)

			c = openDurable(t, dir, cfg)
			defer c.Close()
			time.Sleep(pastKeptTTL)
			b, err := c.Fetch(ctx, specFetch(rankAware, 1, 0, 8))
			require.NoError(t, err)
			require.Equal(t, seq(0, 8), b.Indexes, "group 1 gets the rows group 0 left behind too")
		})
	}
}

// A group that took a batch and asked for the next (which was not there
// yet) went past the batch: it stays consumed after a restart too, where
// the ask was forgotten and the batch handed to another group.
func TestKeptBatchAskSurvivesRestart(t *testing.T) {
	for _, way := range restartWays {
		t.Run(way.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := Config{KeptBatchTTL: keptTTL}
			c := openRows(t, dir, cfg, 4)
			ctx := context.Background()
			a, err := c.Fetch(ctx, specFetch(rankAware, 0, 0, 4))
			require.NoError(t, err)
			require.Equal(t, seq(0, 4), a.Indexes)
			next, err := c.Fetch(ctx, specFetch(rankAware, 0, 1, 4))
			require.NoError(t, err)
			require.Zero(t, next.Len(), "nothing for the next batch yet")
			require.NoError(t, c.WaitDurable(ctx))
			want := stateBytes(t, c)
			way.stop(t, c)

			c = openDurable(t, dir, cfg)
			defer c.Close()
			require.Equal(t, want, stateBytes(t, c), "the state after the restart")
			m := insert(t, c, "p", 4, "x")
			commitDense(t, c, "p", m.Indexes, "x")
			time.Sleep(pastKeptTTL)
			b, err := c.Fetch(ctx, specFetch(rankAware, 1, 0, 4))
			require.NoError(t, err)
			require.Equal(t, seq(4, 8), b.Indexes, "group 0's batch 0 stays consumed")
		})
	}
}

// The time a batch waits to be left behind counts from the restart at the
// earliest: the time the controller was down is not the group's.
func TestKeptBatchWaitCountsFromRestart(t *testing.T) {
	const ttl = 1500 * time.Millisecond
	dir := t.TempDir()
	cfg := Config{KeptBatchTTL: ttl}
	c := openRows(t, dir, cfg, 8)
	ctx := context.Background()
	_, err := c.Fetch(ctx, specFetch(rankAware, 0, 0, 4))
	require.NoError(t, err)
	require.NoError(t, c.WaitDurable(ctx))
	crash(t, c)
	time.Sleep(ttl + 100*time.Millisecond) // down for longer than the TTL

	c = openDurable(t, dir, cfg)
	defer c.Close()
	b, err := c.Fetch(ctx, specFetch(rankAware, 1, 0, 4))
	require.NoError(t, err)
	require.Equal(t, seq(4, 8), b.Indexes, "group 0's batch is still its own right after the restart")
	time.Sleep(ttl + 100*time.Millisecond)
	b, err = c.Fetch(ctx, specFetch(rankAware, 1, 1, 4))
	require.NoError(t, err)
	require.Equal(t, seq(0, 4), b.Indexes, "a TTL after the restart, group 0's batch went back")
}

// A checkpoint holds what is followed: a batch a group took before the
// save and left behind goes back once the checkpoint is loaded.
func TestKeptBatchFollowedThroughCheckpoint(t *testing.T) {
	cfg := Config{KeptBatchTTL: keptTTL}
	c := newController(t, cfg)
	m := insert(t, c, "p", 8, "x")
	commitDense(t, c, "p", m.Indexes, "x")
	ctx := context.Background()
	_, err := c.Fetch(ctx, specFetch(rankAware, 0, 0, 4)) // group 0 stops here
	require.NoError(t, err)
	dir := filepath.Join(t.TempDir(), "ck")
	require.NoError(t, c.Save(dir))

	d := newController(t, cfg)
	_, err = d.Load(dir)
	require.NoError(t, err)
	time.Sleep(pastKeptTTL)
	b, err := d.Fetch(ctx, specFetch(rankAware, 1, 0, 8))
	require.NoError(t, err)
	require.Equal(t, seq(0, 8), b.Indexes, "group 1 gets the rows group 0 left behind too")
}

// A fetch of a followed batch with a negative batch index, or a rank or
// index past what a record names, was logged all the same: the log and
// the snapshot were refused as corrupt and the controller did not start
// again. Such a fetch is refused.
func TestKeptBatchOptionsOutOfRange(t *testing.T) {
	for _, tc := range []struct {
		name        string
		rank, batch int
	}{
		{"negative batch", 0, -1},
		{"big batch", 0, math.MaxInt32 + 1},
		{"big rank", math.MaxInt32 + 1, 0},
	} {
		for _, way := range restartWays {
			t.Run(tc.name+"/"+way.name, func(t *testing.T) {
				dir := t.TempDir()
				cfg := Config{KeptBatchTTL: keptTTL}
				c := openRows(t, dir, cfg, 8)
				ctx := context.Background()
				_, err := c.Fetch(ctx, keyedFetch(1, 0, 4, "k1"))
				require.NoError(t, err)
				got, err := c.Fetch(ctx, keyedFetch(tc.rank, tc.batch, 4, "k"))
				require.ErrorIs(t, err, engine.ErrInvalid, "got %v", got)
				require.NoError(t, c.WaitDurable(ctx))
				want := stateBytes(t, c)
				way.stop(t, c)

				c = openDurable(t, dir, cfg)
				defer c.Close()
				require.Equal(t, want, stateBytes(t, c), "the state after the restart")
			})
		}
	}
}

// logPrefix makes dir2 a controller directory whose log is dir's first n
// records (dir's controller stopped, from a log without a snapshot): a
// process killed once those were written.
func logPrefix(t *testing.T, dir, dir2 string, n uint64) {
	t.Helper()
	src, err := journal.Open(journal.Config{Dir: dir})
	require.NoError(t, err)
	require.Empty(t, src.Snapshots())
	dst, err := journal.Open(journal.Config{Dir: dir2})
	require.NoError(t, err)
	require.NoError(t, src.Replay(0, func(i uint64, rec []byte) error {
		if i <= n {
			dst.Append(slices.Clone(rec))
		}
		return nil
	}))
	require.NoError(t, dst.Wait(context.Background(), n))
	require.NoError(t, errors.Join(src.Close(), dst.Close()))
}

// Giving back a batch its group left behind was two records: one that
// stopped following the batch (forgot), then the sampler's drop and the
// rows. A process killed between them came back with the batch no longer
// followed but still kept by the sampler and its rows consumed: held
// forever, the leak following was for. Both are one record.
func TestKeptBatchGivenBackIsOneRecord(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{KeptBatchTTL: keptTTL}
	c := openRows(t, dir, cfg, 8)
	ctx := context.Background()
	_, err := c.Fetch(ctx, specFetch(rankAware, 0, 0, 4)) // group 0 stops here
	require.NoError(t, err)
	time.Sleep(pastKeptTTL) // past the TTL: the next fetch gives the batch back
	b, err := c.Fetch(ctx, specFetch(rankAware, 1, 0, 8))
	require.NoError(t, err)
	require.Equal(t, seq(0, 8), b.Indexes)
	require.NoError(t, c.WaitDurable(ctx))
	crash(t, c)

	// The last record before the one with the sampler's drop.
	j, err := journal.Open(journal.Config{Dir: dir})
	require.NoError(t, err)
	var before uint64
	require.NoError(t, j.Replay(0, func(i uint64, b []byte) error {
		var rec wirepb.LogRecord
		require.NoError(t, proto.Unmarshal(b, &rec))
		for _, op := range rec.Ops {
			if o := op.GetConsume(); o != nil && len(o.Sampler) > 0 && strings.Contains(string(o.Sampler[0]), `"dropped":true`) {
				before = i - 1
			}
		}
		return nil
	}))
	require.NoError(t, j.Close())
	require.NotZero(t, before, "no record drops the batch")

	dir2 := t.TempDir()
	logPrefix(t, dir, dir2, before)
	c = openDurable(t, dir2, cfg)
	defer c.Close()
	time.Sleep(pastKeptTTL) // a TTL after the restart
	b, err = c.Fetch(ctx, specFetch(rankAware, 1, 0, 8))
	require.NoError(t, err)
	require.Equal(t, seq(0, 8), b.Indexes, "group 0's batch went back after the restart (log of %d records)", before)
}

// The samplers that split a batch between ranks cache and journal it by
// batch index too: a negative one was taken (and journaled) there.
func TestRankOptionsOutOfRangeForEverySampler(t *testing.T) {
	for _, spec := range []engine.SamplerSpec{
		{Name: engine.SamplerSeqlenBalanced, N: 1, DPSize: 2},
		{Name: engine.SamplerTokenBudget, N: 1, DPSize: 2},
	} {
		c := newController(t, DefaultConfig())
		m := insert(t, c, "p", 8, "x")
		commitDense(t, c, "p", m.Indexes, "x")
		got, err := c.Fetch(context.Background(), specFetch(spec, 0, -1, 2))
		require.ErrorIs(t, err, engine.ErrInvalid, "%s: got %v", spec.Name, got)
		require.ErrorContains(t, err, "batch index -1")
	}
}
