package resp

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/embedded"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/storage"
)

// drainOnce moves every cell off from as a mover does, then lifts the
// drain.
func drainOnce(ctx context.Context, e *endpoint, from *storage.Unit) error {
	ctrl := e.e.Controller
	var to *storage.Unit
	for _, u := range e.e.Units {
		if u != from {
			to = u
		}
	}
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
			continue
		}
		addrs, err := embedded.WriteReserved(ctx, to, [][][]byte{{l.Bytes(0)}})
		l.Release()
		if err != nil {
			return err
		}
		moved, old, err := ctrl.MoveCells(c.Partition, []engine.CellMove{{Index: c.Index, Field: c.Field, From: c.Loc, To: engine.CellLoc{Unit: to.ID(), Addr: addrs[0]}}})
		if err != nil {
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

// TestSetGetRacesClears runs SET and GET of a few keys of two partitions
// against DEL, HSET of the same key, HDEL, TQ.TAG and FLUSHDB over
// several connections: a GET answers a value SET to that key, whole, or
// nil; once the writers stop a GET reads the last SET, and once every
// partition is flushed the units hold nothing.
func TestSetGetRacesClears(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	ctx := context.Background()
	e := newEndpoint(t, Config{})
	var seq atomic.Uint64
	var maxSeq sync.Map
	val := func(key string, s uint64, n int) string {
		b := fmt.Appendf(nil, "%s/%d/", key, s)
		for i := range n {
			b = append(b, 'a'+byte(s+uint64(i))%26)
		}
		return string(b)
	}
	check := func(key, v string) error {
		parts := bytes.SplitN([]byte(v), []byte("/"), 3)
		if len(parts) != 3 || string(parts[0]) != key {
			return fmt.Errorf("GET %s read %q", key, v)
		}
		s, err := strconv.ParseUint(string(parts[1]), 10, 64)
		if err != nil || val(key, s, len(parts[2])) != v {
			return fmt.Errorf("GET %s read %q: torn", key, v)
		}
		if m, ok := maxSeq.Load(key); !ok || s > m.(*atomic.Uint64).Load() {
			return fmt.Errorf("GET %s read seq %d never set", key, s)
		}
		return nil
	}
	note := func(key string, s uint64) {
		m, _ := maxSeq.LoadOrStore(key, new(atomic.Uint64))
		for cur := m.(*atomic.Uint64).Load(); s > cur && !m.(*atomic.Uint64).CompareAndSwap(cur, s); cur = m.(*atomic.Uint64).Load() {
		}
	}
	keys := []string{"a", "b", "{q}a", "{q}b"}
	errs := make(chan error, 1000)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := range 6 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(seed, uint64(g)))
			rc := redis.NewClient(&redis.Options{Addr: e.addr, PoolSize: 1})
			defer rc.Close()
			for {
				select {
				case <-stop:
					return
				default:
				}
				k := keys[r.IntN(len(keys))]
				var err error
				switch n := r.IntN(20); {
				case n < 7:
					s := seq.Add(1)
					note(k, s)
					err = rc.Set(ctx, k, val(k, s, r.IntN(300)), 0).Err()
				case n < 14:
					var v string
					v, err = rc.Get(ctx, k).Result()
					if err == nil {
						err = check(k, v)
					}
				case n < 15:
					s := seq.Add(1)
					note(k, s)
					err = rc.HSet(ctx, k, "value", val(k, s, 5), "other", "x").Err()
				case n < 16:
					err = rc.HDel(ctx, k, "value").Err()
				case n < 17:
					err = rc.Del(ctx, k).Err()
				case n < 18:
					err = rc.Do(ctx, "TQ.TAG", k, "t", strconv.Itoa(n)).Err()
				case n < 19:
					s := seq.Add(1)
					note(k, s)
					err = rc.MSet(ctx, k, val(k, s, 7)).Err()
				default:
					if r.IntN(10) == 0 {
						err = rc.FlushAll(ctx).Err()
					}
				}
				if err != nil && err != redis.Nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Go(func() { // drains moving the keys' cells
		r := rand.New(rand.NewPCG(seed, 99))
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Duration(r.IntN(10)) * time.Millisecond):
			}
			if err := drainOnce(ctx, e, e.e.Units[r.IntN(len(e.e.Units))]); err != nil {
				errs <- err
				return
			}
		}
	})
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("%d sets", seq.Load())
	rc := e.client(t, nil)
	for _, k := range keys {
		v := val(k, seq.Add(1), 3)
		require.NoError(t, rc.Set(ctx, k, v, 0).Err())
		require.Equal(t, v, rc.Get(ctx, k).Val())
	}
	require.NoError(t, rc.FlushAll(ctx).Err())
	require.Zero(t, e.used(), "bytes left once every partition is flushed")
}
