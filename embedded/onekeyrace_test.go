package embedded

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/storage"
)

var raceSeed = flag.Uint64("onekey.seed", 0, "seed of TestOneKeyRaces's ops (0: the time)")

// raceValue is a value that names its partition, key and sequence number
// and whose every byte follows from them: a read of anything else (torn,
// another key's, a reused extent's) fails check.
func raceValue(partition, key string, seq uint64, n int) []byte {
	v := fmt.Appendf(nil, "%s/%s/%d/", partition, key, seq)
	for i := range n {
		v = append(v, byte(seq)+byte(i)*7)
	}
	return v
}

// checkRaceValue parses v, a raceValue of key of partition, and returns
// its sequence number.
func checkRaceValue(partition, key string, v []byte) (uint64, error) {
	parts := bytes.SplitN(v, []byte("/"), 4)
	if len(parts) != 4 || string(parts[0]) != partition || string(parts[1]) != key {
		return 0, fmt.Errorf("value %q is not one of %s/%s", v, partition, key)
	}
	seq, err := strconv.ParseUint(string(parts[2]), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("value %q: %w", v, err)
	}
	if want := raceValue(partition, key, seq, len(parts[3])); !bytes.Equal(v, want) {
		return 0, fmt.Errorf("value %q torn, want %q", v, want)
	}
	return seq, nil
}

// TestOneKeyRaces runs the one-key fast paths (SetValue, GetValue, Get,
// one-key PutKeys) of a durable controller against each other and
// against general puts of many fields, tag puts, clears of keys, fields
// and partitions, a drain moving cells and checkpoint saves: every value
// read is one that was set for that key, whole; once the writers stop a
// get reads the last set, and once everything is cleared the units hold
// nothing.
func TestOneKeyRaces(t *testing.T) {
	for _, tc := range []struct{ durable, loads bool }{{false, false}, {true, false}, {true, true}} {
		t.Run(fmt.Sprintf("durable=%v/loads=%v", tc.durable, tc.loads), func(t *testing.T) {
			cfg := controller.DefaultConfig()
			if tc.durable {
				cfg.Dir = t.TempDir()
			}
			testOneKeyRaces(t, cfg, tc.loads)
		})
	}
}

// testOneKeyRaces is TestOneKeyRaces on a controller of cfg. With loads,
// checkpoints saved are loaded back too; the cells a load replaces are
// queued for units that collect them, which these do not, so the units'
// bytes are not checked then.
func testOneKeyRaces(t *testing.T, cfg controller.Config, loads bool) {
	seed := *raceSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (-onekey.seed to run the same ops again)", seed)
	ctrl, units, kd, cl := kvPairWith(t, cfg)
	ctx := context.Background()
	free := Freer(ctrl, units...)
	srv := controller.NewServer(ctrl, controller.ServerConfig{
		CheckpointDir: t.TempDir(),
		Dial: func(_ context.Context, ui engine.UnitInfo) (engine.DataConn, error) {
			for _, u := range units {
				if u.ID() == ui.ID {
					return readConn{u}, nil
				}
			}
			return nil, engine.ErrNotFound
		},
	})
	t.Cleanup(func() { srv.Close() })

	parts := []string{"p", "q"}
	keys := []string{"a", "b", "c"}
	var seq atomic.Uint64
	var issued sync.Map // partition/key -> max seq issued (*atomic.Uint64)
	note := func(p, k string, s uint64) {
		v, _ := issued.LoadOrStore(p+"/"+k, new(atomic.Uint64))
		for {
			cur := v.(*atomic.Uint64).Load()
			if s <= cur || v.(*atomic.Uint64).CompareAndSwap(cur, s) {
				return
			}
		}
	}
	verify := func(p, k string, v []byte) error {
		s, err := checkRaceValue(p, k, v)
		if err != nil {
			return err
		}
		m, ok := issued.Load(p + "/" + k)
		if !ok || s > m.(*atomic.Uint64).Load() {
			return fmt.Errorf("%s/%s read seq %d never set", p, k, s)
		}
		return nil
	}
	var gets atomic.Int64
	var mu sync.Mutex
	var failures []error
	fail := func(err error) {
		mu.Lock()
		failures = append(failures, err)
		mu.Unlock()
	}
	expected := func(err error) bool {
		// A put refused because storage is full or the field's dtype
		// differs (a dense field put by another op) is not a race.
		return err == nil || errors.Is(err, engine.ErrCapacity) || errors.Is(err, engine.ErrDTypeMismatch) || errors.Is(err, engine.ErrNotReady)
	}

	ops := []func(r *rand.Rand, p, k string){
		func(r *rand.Rand, p, k string) { // SET
			s := seq.Add(1)
			note(p, k, s)
			v := raceValue(p, k, s, r.IntN(200))
			_, err := kd.SetValue(ctx, p, k, "f", len(v), controller.ReadFunc(func(dst []byte) error { copy(dst, v); return nil }))
			if !expected(err) {
				fail(fmt.Errorf("set %s/%s: %w", p, k, err))
			}
		},
		func(r *rand.Rand, p, k string) { // GET_VALUE
			val, _, release, ok, err := kd.GetValue(ctx, p, k, "f", 1<<20)
			if err != nil {
				fail(fmt.Errorf("get value %s/%s: %w", p, k, err))
				return
			}
			if ok {
				gets.Add(1)
				if err := verify(p, k, val); err != nil {
					fail(fmt.Errorf("get value: %w", err))
				}
				release()
			}
		},
		func(r *rand.Rand, p, k string) { // KV_GET of f
			_, b, err := kd.GetKeys(ctx, p, []string{k}, []string{"f"}, 1<<20)
			if err != nil {
				if !errors.Is(err, engine.ErrNotFound) && !errors.Is(err, engine.ErrNotReady) || errors.Is(err, engine.ErrLost) {
					fail(fmt.Errorf("get keys %s/%s: %w", p, k, err))
				}
				return
			}
			if b != nil {
				if err := verify(p, k, b.Col("f").RowBytes(0)); err != nil {
					fail(fmt.Errorf("get keys: %w", err))
				}
				b.Release()
			}
		},
		func(r *rand.Rand, p, k string) { // one-key KV_PUT of several fields
			s := seq.Add(1)
			note(p, k, s)
			b := engine.MustBatch(
				engine.Field{Name: "f", Col: engine.BytesOf([][]byte{raceValue(p, k, s, r.IntN(200))})},
				engine.Field{Name: "g", Col: engine.BytesOf([][]byte{raceValue(p, k, s, 3)})},
			)
			_, err := kd.PutKeys(ctx, p, []string{k}, b, []engine.Tags{{"t": int64(s)}})
			if !expected(err) {
				fail(fmt.Errorf("kv put %s/%s: %w", p, k, err))
			}
		},
		func(r *rand.Rand, p, k string) { // general put of many fields
			s := seq.Add(1)
			note(p, k, s)
			fs := []engine.Field{{Name: "f", Col: engine.BytesOf([][]byte{raceValue(p, k, s, r.IntN(200))})}}
			for i := range 4 {
				fs = append(fs, engine.Field{Name: "h" + strconv.Itoa(i), Col: engine.BytesOf([][]byte{raceValue(p, k, s, i)})})
			}
			_, err := cl.PutKeys(ctx, p, []string{k}, engine.MustBatch(fs...), nil)
			if !expected(err) {
				fail(fmt.Errorf("general put %s/%s: %w", p, k, err))
			}
		},
		func(r *rand.Rand, p, k string) { // tags only
			_, err := cl.PutKeys(ctx, p, []string{k}, nil, []engine.Tags{{"u": int64(1)}})
			if !expected(err) {
				fail(fmt.Errorf("tag put %s/%s: %w", p, k, err))
			}
		},
		func(r *rand.Rand, p, k string) { // clear the key
			if err := cl.ClearKeys(ctx, p, []string{k}); err != nil {
				fail(fmt.Errorf("clear %s/%s: %w", p, k, err))
			}
		},
		func(r *rand.Rand, p, k string) { // HDEL
			_, freed, err := ctrl.ClearFields(p, []string{k}, []string{"f", "g"})
			if err == nil {
				err = free(ctx, p, []string{k}, freed)
			}
			if err != nil {
				fail(fmt.Errorf("clear fields %s/%s: %w", p, k, err))
			}
		},
	}
	weights := []int{8, 8, 4, 3, 2, 1, 1, 1}
	pick := func(r *rand.Rand) int {
		n := r.IntN(28)
		for i, w := range weights {
			if n < w {
				return i
			}
			n -= w
		}
		return 0
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := range 6 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(seed, uint64(g)))
			for {
				select {
				case <-stop:
					return
				default:
				}
				p, k := parts[r.IntN(len(parts))], keys[r.IntN(len(keys))]
				ops[pick(r)](r, p, k)
			}
		})
	}
	wg.Go(func() { // partition clears, drains, checkpoints
		r := rand.New(rand.NewPCG(seed, 99))
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(time.Duration(r.IntN(20)) * time.Millisecond):
			}
			switch i % 4 {
			case 0:
				if err := cl.ClearPartition(ctx, parts[r.IntN(len(parts))]); err != nil {
					fail(fmt.Errorf("clear partition: %w", err))
				}
			case 1:
				if err := drainOnce(ctx, ctrl, units[r.IntN(len(units))], units); err != nil {
					fail(fmt.Errorf("drain: %w", err))
				}
			case 2:
				if _, err := srv.SaveCheckpoint(ctx, "c"+strconv.Itoa(i), nil); err != nil {
					fail(fmt.Errorf("checkpoint: %w", err))
				}
			case 3:
				if !loads {
					continue
				}
				if err := srv.LoadCheckpoint(ctx, "c"+strconv.Itoa(i-1)); err != nil {
					fail(fmt.Errorf("load checkpoint: %w", err))
				}
			}
		}
	})
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()
	t.Logf("%d sets, %d values read", seq.Load(), gets.Load())
	for _, err := range failures {
		t.Error(err)
	}

	// Quiet: the last set of each key is what a get reads.
	for _, p := range parts {
		for _, k := range keys {
			s := seq.Add(1)
			note(p, k, s)
			v := raceValue(p, k, s, 10)
			_, err := kd.SetValue(ctx, p, k, "f", len(v), controller.ReadFunc(func(dst []byte) error { copy(dst, v); return nil }))
			require.NoError(t, err)
			got, _, release, ok, err := kd.GetValue(ctx, p, k, "f", 1<<20)
			require.NoError(t, err)
			require.True(t, ok)
			require.Equal(t, string(v), string(got))
			release()
		}
	}
	for _, p := range parts {
		require.NoError(t, cl.ClearPartition(ctx, p))
	}
	if loads {
		return
	}
	require.Zero(t, used(units), "bytes left on the units once every partition is cleared")
}

// drainOnce moves every cell off from as a mover does (mark it draining,
// copy each cell elsewhere, move it with a compare-and-set, free the old
// location once the move is durable and any copy not taken), then lifts
// the drain.
func drainOnce(ctx context.Context, ctrl *controller.Controller, from *storage.Unit, units []*storage.Unit) error {
	to := otherUnit(units, from)
	if _, err := ctrl.DrainUnit(from.ID(), true); err != nil {
		return err
	}
	defer ctrl.DrainUnit(from.ID(), false)
	cells, _, err := ctrl.UnitCells(from.ID(), nil, 0, 0)
	if err != nil {
		return err
	}
	for _, c := range cells {
		l, err := from.Acquire([]engine.RemoteAddr{c.Loc.Addr})
		if err != nil {
			continue // replaced or cleared meanwhile
		}
		addrs, err := WriteReserved(ctx, to, [][][]byte{{l.Bytes(0)}})
		l.Release()
		if err != nil {
			return err
		}
		moved, old, err := ctrl.MoveCells(c.Partition, []engine.CellMove{{Index: c.Index, Field: c.Field, From: c.Loc, To: engine.CellLoc{Unit: to.ID(), Addr: addrs[0]}}})
		if err != nil {
			return err
		}
		if err := ctrl.WaitDurable(ctx); err != nil {
			return err
		}
		if !moved[0] {
			to.FreeRanges(addrs)
		}
		for _, o := range old {
			from.FreeRanges([]engine.RemoteAddr{o.Addr})
		}
	}
	return nil
}
