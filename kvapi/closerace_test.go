package kvapi

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
)

// TestCloseRacesCalls closes the store (the embedded cluster, or a
// connected client) while goroutines put, get, list, follow the change
// feed, swap tags, reserve and commit puts and wait on futures. Every
// call returns (none hangs past a generous deadline, none panics), a
// call that failed because of the Close says the store is closed
// (engine.ErrClosed), a put that reported success is readable through a
// fresh look at the store where it still runs, and every call after
// Close fails with engine.ErrClosed.
func TestCloseRacesCalls(t *testing.T) {
	for seed := range uint64(3) {
		t.Run(fmt.Sprintf("embedded/seed=%d", seed), func(t *testing.T) {
			kv, e := newKV(t)
			closeRace(t, kv, e.Close, nil, seed)
		})
		t.Run(fmt.Sprintf("remote/seed=%d", seed), func(t *testing.T) {
			sc := newServed(t, nil)
			// The controller outlives the client: what a put said it
			// did is there for another client to read.
			after := func(part string) map[string]engine.Tags {
				c, err := client.Connect(t.Context(), "unix://"+sc.sock, client.ConnectConfig{Name: "after-close"})
				require.NoError(t, err)
				defer c.Close()
				return listed(t, New(c), part)
			}
			closeRace(t, sc.kv, sc.kv.Client().Close, after, seed)
		})
	}
}

// closedErr reports whether err says the store was closed.
func closedErr(err error) bool {
	return errors.Is(err, engine.ErrClosed) && strings.Contains(err.Error(), "closed")
}

// closeRace runs the race on kv, closing it with closeFn; after, when
// not nil, lists the partition through a client of its own once the
// race is over.
func closeRace(t *testing.T, kv *KV, closeFn func() error, after func(part string) map[string]engine.Tags, seed uint64) {
	const workers, part = 6, "race"
	// A bounded wait: a call that hangs after Close fails the test
	// rather than hanging it.
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	_, err := kv.Put(ctx, part, "seed", engine.MustBatch(engine.Field{Name: "x", Col: col(t, []int64{1})}), engine.Tags{"s": "0"})
	require.NoError(t, err)
	first, err := kv.Changes(ctx, part, nil)
	require.NoError(t, err)

	calls := callsOn(t, kv, part, first.Cursor)
	var mu sync.Mutex
	var put []string // the keys of the puts that said they were done
	var started sync.WaitGroup
	var wg sync.WaitGroup
	errs := make(chan error, 1024)
	started.Add(workers)
	for w := range workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			for n := 0; ; n++ {
				if n == 3 {
					started.Done()
				}
				name := callNames[rng.IntN(len(callNames))]
				stamp := fmt.Sprintf("w%d-%d", w, n)
				err := calls[name](stamp)
				if errors.Is(err, errNoReserve) {
					continue
				}
				if err == nil {
					mu.Lock()
					put = append(put, putKeys(name, stamp)...)
					mu.Unlock()
					continue
				}
				if ctx.Err() != nil {
					errs <- fmt.Errorf("%s: hung until the test's deadline: %w", name, err)
					return
				}
				if !closedErr(err) {
					errs <- fmt.Errorf("%s during Close: not a closed store: %w", name, err)
				}
				if n >= 3 {
					return
				}
				started.Done()
				return
			}
		})
	}
	started.Wait()
	require.NoError(t, closeFn())
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for _, name := range callNames {
		err := calls[name]("after")
		assert.True(t, closedErr(err), "%s after Close: %v", name, err)
	}
	if after != nil {
		there := after(part)
		for _, k := range put {
			assert.Contains(t, there, k, "a put of %s said it was done", k)
		}
	}
}

// putKeys returns the keys a call of name with stamp made, if it was a
// put.
func putKeys(name, stamp string) []string {
	switch name {
	case "put", "reserve", "put async":
		return []string{stamp}
	case "batch put":
		return []string{stamp + "a", stamp + "b"}
	}
	return nil
}

// errNoReserve: the unit cannot lend memory (tcp), and the client is
// open.
var errNoReserve = errors.New("no reserved puts over this transport")

var callNames = []string{"put", "batch put", "get", "get copy", "list", "list where", "changes", "cas", "delete tags", "clear", "reserve", "put async", "get async"}

// callsOn returns the calls the race runs, by name: each a whole call,
// its result released.
func callsOn(t *testing.T, kv *KV, part string, cursor []byte) map[string]func(stamp string) error {
	ctx := t.Context()
	row := func() *engine.Batch {
		return engine.MustBatch(engine.Field{Name: "x", Col: col(t, []int64{7})})
	}
	return map[string]func(string) error{
		"put": func(s string) error {
			_, err := kv.Put(ctx, part, s, row(), engine.Tags{"s": s})
			return err
		},
		"batch put": func(s string) error {
			_, err := kv.BatchPut(ctx, part, []string{s + "a", s + "b"}, nil, []engine.Tags{{"s": s}, {"s": s}})
			return err
		},
		"get": func(string) error {
			b, err := kv.BatchGet(ctx, part, []string{"seed"}, "x")
			if err == nil {
				b.Release()
			}
			return err
		},
		"get copy": func(string) error {
			_, err := kv.BatchGetCopy(ctx, part, []string{"seed"}, "x")
			return err
		},
		"list": func(string) error {
			_, err := kv.List(ctx, part)
			return err
		},
		"list where": func(string) error {
			_, err := kv.ListWhere(ctx, part, Exists("s"))
			return err
		},
		"changes": func(string) error {
			_, err := kv.Changes(ctx, part, cursor)
			return err
		},
		"cas": func(s string) error {
			_, _, err := kv.CompareAndSetTag(ctx, part, "seed", "c", nil, s)
			return err
		},
		"delete tags": func(string) error {
			_, err := kv.DeleteTags(ctx, part, []string{"seed"}, "c")
			return err
		},
		"clear": func(s string) error {
			return kv.Clear(ctx, part, []string{s + "a"})
		},
		"reserve": func(s string) error {
			b, err := kv.ReservePut(ctx, part, []string{s}, client.FieldSpec{Name: "x", DType: engine.Int64})
			if errors.Is(err, engine.ErrNotSupported) && !errors.Is(err, engine.ErrClosed) {
				return errNoReserve
			}
			if err != nil {
				return err
			}
			_, err = b.Commit(ctx)
			return err
		},
		"put async": func(s string) error {
			_, err := kv.PutAsync(ctx, part, s, row(), nil).Wait(ctx)
			return err
		},
		"get async": func(string) error {
			b, err := kv.BatchGetAsync(ctx, part, []string{"seed"}, "x").Wait(ctx)
			if err == nil {
				b.Release()
			}
			return err
		},
	}
}

// TestReserveAfterCloseSaysClosed: a reserved put through a closed
// client whose unit is reached over tcp says the client was closed, not
// only that tcp cannot reserve memory (the partition's dtypes known to
// the client, so that no controller call says it instead).
func TestReserveAfterCloseSaysClosed(t *testing.T) {
	sc := newServed(t, nil)
	ctx := t.Context()
	_, err := sc.kv.Put(ctx, "p", "k", engine.MustBatch(engine.Field{Name: "x", Col: col(t, []int64{1})}), nil)
	require.NoError(t, err)
	require.NoError(t, sc.kv.Client().Close())
	_, err = sc.kv.ReservePut(ctx, "p", []string{"a"}, client.FieldSpec{Name: "x", DType: engine.Int64})
	require.ErrorIs(t, err, engine.ErrClosed)
	require.ErrorContains(t, err, "the client was closed")
}
