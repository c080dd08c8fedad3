package kvapi

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/storage"
)

// servedCluster is a controller served on a unix socket, one storage unit
// registered with it (its data plane on loopback TCP), and a KV API over
// a client connected to them as another process's would be.
type servedCluster struct {
	ctrl  *controller.Controller
	srv   *controller.Server
	sock  string
	kv    *KV
	units map[engine.UnitID]*storage.Unit
}

// serveController serves ctrl at sock until the test ends (or stop).
func serveController(t *testing.T, ctrl *controller.Controller, sock string) *controller.Server {
	t.Helper()
	s := controller.NewServer(ctrl, controller.ServerConfig{MaxFetchWait: time.Minute})
	l, err := net.Listen("unix", sock)
	require.NoError(t, err)
	go s.Serve(l)
	t.Cleanup(func() { s.Close() })
	return s
}

// newServed starts a served cluster; ctrl nil makes an in-memory
// controller.
func newServed(t *testing.T, ctrl *controller.Controller) *servedCluster {
	t.Helper()
	ctx := t.Context()
	if ctrl == nil {
		var err error
		ctrl, err = controller.New(controller.DefaultConfig())
		require.NoError(t, err)
		t.Cleanup(func() { ctrl.Close() })
	}
	sc := &servedCluster{ctrl: ctrl, sock: filepath.Join(t.TempDir(), "ctl.sock")}
	sc.srv = serveController(t, ctrl, sc.sock)
	addr := "unix://" + sc.sock

	cfg := storage.DefaultConfig()
	cfg.Capacity, cfg.SegmentSize = 16<<20, 4<<20
	u, err := storage.NewUnit(0, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { u.Close() })
	id, err := storage.AssignID(ctx, addr, u, storage.JoinConfig{})
	require.NoError(t, err)
	sc.units = map[engine.UnitID]*storage.Unit{id: u}
	us := storage.NewServer(u, storage.ServerConfig{})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go us.Serve(l)
	t.Cleanup(func() { us.Close() })
	mem, err := storage.Join(ctx, addr, u, storage.JoinConfig{Addrs: []string{"tcp://" + l.Addr().String()}})
	require.NoError(t, err)
	t.Cleanup(func() { mem.Close() })

	c, err := client.Connect(ctx, addr, client.ConnectConfig{Name: "kvapi-test", WaitForUnits: true})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	sc.kv = New(c)
	return sc
}

// bothWays runs fn on an embedded cluster's KV and on one over a
// controller server.
func bothWays(t *testing.T, fn func(t *testing.T, kv *KV)) {
	t.Run("embedded", func(t *testing.T) {
		kv, _ := newKV(t)
		fn(t, kv)
	})
	t.Run("remote", func(t *testing.T) { fn(t, newServed(t, nil).kv) })
}

func listed(t *testing.T, kv *KV, partition string, where ...engine.TagCondition) map[string]engine.Tags {
	t.Helper()
	all, err := kv.ListWhere(t.Context(), partition, where...)
	require.NoError(t, err)
	out := map[string]engine.Tags{}
	for _, e := range all[partition] {
		out[e.Key] = e.Tags
	}
	return out
}

func TestDeleteTags(t *testing.T) {
	bothWays(t, func(t *testing.T, kv *KV) {
		ctx := t.Context()
		_, err := kv.BatchPut(ctx, "p", []string{"a", "b"}, nil, []engine.Tags{{"status": "running", "step": 1, "keep": true}, {"status": "done"}})
		require.NoError(t, err)
		after, err := kv.DeleteTags(ctx, "p", []string{"a", "b"}, "status", "step", "never-set")
		require.NoError(t, err)
		assert.Equal(t, []engine.Tags{{"keep": true}, nil}, after)
		assert.Equal(t, map[string]engine.Tags{"a": {"keep": true}, "b": nil}, listed(t, kv, "p"), "b stays, a key without tags")
		_, err = kv.DeleteTags(ctx, "p", []string{"a", "b"}, "status")
		require.NoError(t, err, "deleting again is harmless")

		// Unknown keys name themselves and change nothing.
		_, err = kv.DeleteTags(ctx, "p", []string{"a", "ghost"}, "keep")
		require.ErrorIs(t, err, engine.ErrNotFound)
		assert.Contains(t, err.Error(), `"ghost"`)
		_, err = kv.DeleteTags(ctx, "nope", []string{"a"}, "keep")
		require.ErrorIs(t, err, engine.ErrNotFound)
		for name, call := range map[string]func() error{
			"no names":   func() error { _, err := kv.DeleteTags(ctx, "p", []string{"a"}); return err },
			"empty name": func() error { _, err := kv.DeleteTags(ctx, "p", []string{"a"}, ""); return err },
			"bad name":   func() error { _, err := kv.DeleteTags(ctx, "p", []string{"a"}, "\xff"); return err },
			"no keys":    func() error { _, err := kv.DeleteTags(ctx, "p", nil, "keep"); return err },
			"twice":      func() error { _, err := kv.DeleteTags(ctx, "p", []string{"a", "a"}, "keep"); return err },
		} {
			assert.ErrorIs(t, call(), engine.ErrInvalid, name)
		}
		assert.Equal(t, map[string]engine.Tags{"a": {"keep": true}, "b": nil}, listed(t, kv, "p"))
	})
}

func TestCompareAndSetTag(t *testing.T) {
	bothWays(t, func(t *testing.T, kv *KV) {
		ctx := t.Context()
		// The status machine of a prompt, as trainers run it.
		ok, cur, err := kv.CompareAndSetTag(ctx, "p", "uid-1", "status", "pending", "running")
		require.NoError(t, err)
		assert.False(t, ok, "no key: nothing to swap from pending")
		assert.Nil(t, cur)
		ok, cur, err = kv.CompareAndSetTag(ctx, "p", "uid-1", "status", nil, "pending")
		require.NoError(t, err)
		assert.True(t, ok, "old nil makes the key")
		assert.Equal(t, "pending", cur)
		ok, cur, err = kv.CompareAndSetTag(ctx, "p", "uid-1", "status", "pending", "running")
		require.NoError(t, err)
		assert.True(t, ok)
		assert.Equal(t, "running", cur)
		ok, cur, err = kv.CompareAndSetTag(ctx, "p", "uid-1", "status", "pending", "running")
		require.NoError(t, err)
		assert.False(t, ok, "a second worker loses")
		assert.Equal(t, "running", cur, "and learns what is there")
		ok, _, err = kv.CompareAndSetTag(ctx, "p", "uid-1", "status", "running", nil)
		require.NoError(t, err)
		assert.True(t, ok)
		assert.Equal(t, map[string]engine.Tags{"uid-1": nil}, listed(t, kv, "p"))

		_, _, err = kv.CompareAndSetTag(ctx, "p", "", "status", nil, 1)
		assert.ErrorIs(t, err, engine.ErrInvalid)
		_, _, err = kv.CompareAndSetTag(ctx, "p", "k", "", nil, 1)
		assert.ErrorIs(t, err, engine.ErrInvalid)
		_, _, err = kv.CompareAndSetTag(ctx, "p", "k", "n", nil, make(chan int))
		assert.ErrorIs(t, err, engine.ErrInvalid)
		assert.Equal(t, map[string]engine.Tags{"uid-1": nil}, listed(t, kv, "p"), "bad input made nothing")
	})
}

// TestCompareAndSetTagCounter: goroutines increment a counter tag by
// read-modify-write through CompareAndSetTag; it ends at exactly the
// number of swaps that succeeded.
func TestCompareAndSetTagCounter(t *testing.T) {
	bothWays(t, func(t *testing.T, kv *KV) {
		ctx := t.Context()
		const workers, tries = 16, 40
		var wg sync.WaitGroup
		wins := make([]int, workers)
		for w := range workers {
			wg.Go(func() {
				var seen any // the worker's last read
				for range tries {
					var next int64 = 1
					if n, ok := (engine.Tags{"n": seen}).Int("n"); ok {
						next = n + 1
					}
					ok, cur, err := kv.CompareAndSetTag(ctx, "p", "counter", "n", seen, next)
					if !assert.NoError(t, err) {
						return
					}
					if ok {
						wins[w]++
					}
					seen = cur
				}
			})
		}
		wg.Wait()
		won := 0
		for _, n := range wins {
			won += n
		}
		n, ok := listed(t, kv, "p")["counter"].Int("n")
		require.True(t, ok)
		assert.Equal(t, int64(won), n)
		assert.GreaterOrEqual(t, won, tries, "every round someone wins")
		t.Logf("%d of %d swaps won", won, workers*tries)
	})
}

func TestListWhere(t *testing.T) {
	bothWays(t, func(t *testing.T, kv *KV) {
		ctx := t.Context()
		_, err := kv.BatchPut(ctx, "p", []string{"a", "b", "c", "d"}, nil, []engine.Tags{
			{"status": "finished", "n": 1}, {"status": "failure"}, {"status": "running", "is_prompt": true}, {"n": 2.5},
		})
		require.NoError(t, err)
		_, err = kv.Put(ctx, "q", "x", nil, engine.Tags{"status": "finished"})
		require.NoError(t, err)
		keys := func(partition string, where ...engine.TagCondition) []string {
			ks := slices.Collect(func(yield func(string) bool) {
				for k := range listed(t, kv, partition, where...) {
					if !yield(k) {
						return
					}
				}
			})
			slices.Sort(ks)
			return ks
		}
		assert.Equal(t, []string{"a"}, keys("p", Eq("status", "finished")))
		assert.Equal(t, []string{"a", "b"}, keys("p", In("status", "finished", "failure")))
		assert.Equal(t, []string{"c"}, keys("p", Exists("is_prompt")))
		assert.Equal(t, []string{"d"}, keys("p", Absent("status")))
		assert.Equal(t, []string{"a"}, keys("p", Eq("n", 1.0), Exists("status")))
		assert.Equal(t, []string{"a", "b", "c", "d"}, keys("p"))

		all, err := kv.ListWhere(ctx, "", Eq("status", "finished"))
		require.NoError(t, err)
		assert.Len(t, all, 2)
		assert.Equal(t, "x", all["q"][0].Key)
		assert.Equal(t, engine.Tags{"status": "finished"}, all["q"][0].Tags)

		_, err = kv.ListWhere(ctx, "p", Eq("", 1))
		assert.ErrorIs(t, err, engine.ErrInvalid)
		_, err = kv.ListWhere(ctx, "p", In("status"))
		assert.ErrorIs(t, err, engine.ErrInvalid)
	})
}

// TestTagOnlyKeys: a put of tags alone makes a key List shows and Clear
// clears, and Changes reports both.
func TestTagOnlyKeys(t *testing.T) {
	bothWays(t, func(t *testing.T, kv *KV) {
		ctx := t.Context()
		meta, err := kv.Put(ctx, "prompts", "uid-7", nil, engine.Tags{"is_prompt": true, "status": "pending"})
		require.NoError(t, err)
		assert.Empty(t, meta.Fields)
		assert.Equal(t, map[string]engine.Tags{"uid-7": {"is_prompt": true, "status": "pending"}}, listed(t, kv, "prompts"))
		cs, err := kv.Changes(ctx, "prompts", nil)
		require.NoError(t, err)
		require.Equal(t, []Change{{Key: "uid-7", Tags: engine.Tags{"is_prompt": true, "status": "pending"}}}, cs.Changes)

		b, err := kv.BatchGet(ctx, "prompts", []string{"uid-7"})
		require.NoError(t, err, "a tag-only key reads as no fields")
		assert.Zero(t, b.NumFields())
		b.Release()

		require.NoError(t, kv.Clear(ctx, "prompts", []string{"uid-7"}))
		assert.Empty(t, listed(t, kv, "prompts"))
		cs, err = kv.Changes(ctx, "prompts", cs.Cursor)
		require.NoError(t, err)
		assert.Equal(t, []Change{{Key: "uid-7", Cleared: true}}, cs.Changes)
	})
}

// TestPutTagsAtomic: a reader never sees a put's fields without its tags
// or the reverse. A writer puts keys whose field x and tag v hold the
// same number; readers, listing and reading as they go, must find both
// or neither on every key.
func TestPutTagsAtomic(t *testing.T) {
	bothWays(t, func(t *testing.T, kv *KV) {
		ctx := t.Context()
		const puts, batch = 60, 4
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() {
			defer close(stop)
			for i := range puts {
				keys := make([]string, batch)
				vals := make([]int64, batch)
				tags := make([]engine.Tags, batch)
				for j := range keys {
					n := int64(i*batch + j)
					keys[j], vals[j], tags[j] = fmt.Sprintf("k%d", n), n, engine.Tags{"v": n}
				}
				_, err := kv.BatchPut(ctx, "p", keys, engine.MustBatch(engine.Field{Name: "x", Col: col(t, vals)}), tags)
				if !assert.NoError(t, err) {
					return
				}
			}
		})
		checked := 0
		for reader := range 2 {
			wg.Go(func() {
				for done := false; !done; {
					select {
					case <-stop:
						done = true // one more pass over everything
					default:
					}
					all, err := kv.List(ctx, "p")
					if !assert.NoError(t, err) {
						return
					}
					var keys []string
					for _, e := range all["p"] {
						v, ok := e.Tags.Int("v")
						if !assert.True(t, ok, "listed key %s without its tag", e.Key) {
							return
						}
						assert.Equal(t, fmt.Sprintf("k%d", v), e.Key)
						keys = append(keys, e.Key)
					}
					if len(keys) == 0 {
						continue
					}
					m, err := kv.Client().MetaByKeys(ctx, "p", keys, nil, false)
					if !assert.NoError(t, err) {
						return
					}
					if !assert.Contains(t, m.Schema, "x", "a listed key without its field") {
						return
					}
					got, err := kv.BatchGetCopy(ctx, "p", keys, "x")
					if !assert.NoError(t, err) {
						return
					}
					xs, err := engine.Values[int64](got.Col("x"))
					if !assert.NoError(t, err) {
						return
					}
					for i := range keys {
						v, _ := m.Tags[i].Int("v")
						assert.Equal(t, v, xs[i], "key %s: field and tag of different puts", keys[i])
					}
					if reader == 0 {
						checked += len(keys)
					}
				}
			})
		}
		wg.Wait()
		assert.Positive(t, checked)
		assert.Len(t, listed(t, kv, "p"), puts*batch)
	})
}

func TestChanges(t *testing.T) {
	bothWays(t, func(t *testing.T, kv *KV) {
		ctx := t.Context()
		// Waits for the first key of a partition not made yet.
		first := make(chan *ChangeSet, 1)
		go func() {
			cs, err := kv.Changes(ctx, "p", nil)
			assert.NoError(t, err)
			first <- cs
		}()
		time.Sleep(30 * time.Millisecond)
		_, err := kv.Put(ctx, "p", "a", engine.MustBatch(engine.Field{Name: "x", Col: col(t, []int64{1})}), engine.Tags{"status": "pending"})
		require.NoError(t, err)
		var cs *ChangeSet
		select {
		case cs = <-first:
		case <-time.After(10 * time.Second):
			t.Fatal("a put did not end the wait")
		}
		require.Equal(t, []Change{{Key: "a", Tags: engine.Tags{"status": "pending"}}}, cs.Changes)

		// Nothing after the cursor: the wait ends with ctx.
		short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		_, err = kv.Changes(short, "p", cs.Cursor)
		cancel()
		require.ErrorIs(t, err, context.DeadlineExceeded)
		canceled, cancel := context.WithCancel(ctx)
		go func() { time.Sleep(30 * time.Millisecond); cancel() }()
		_, err = kv.Changes(canceled, "p", cs.Cursor)
		require.ErrorIs(t, err, context.Canceled)

		// Tag changes, fields, new keys and clears, each key once in the
		// order of its last change.
		_, err = kv.Put(ctx, "p", "b", nil, engine.Tags{"status": "pending"})
		require.NoError(t, err)
		_, _, err = kv.CompareAndSetTag(ctx, "p", "a", "status", "pending", "running")
		require.NoError(t, err)
		_, err = kv.DeleteTags(ctx, "p", []string{"b"}, "status")
		require.NoError(t, err)
		_, err = kv.Put(ctx, "p", "c", nil, engine.Tags{"n": 1})
		require.NoError(t, err)
		require.NoError(t, kv.Clear(ctx, "p", []string{"c"}))
		next, err := kv.Changes(ctx, "p", cs.Cursor)
		require.NoError(t, err)
		assert.Equal(t, []Change{{Key: "a", Tags: engine.Tags{"status": "running"}}, {Key: "b"}, {Key: "c", Cleared: true}}, next.Changes)
		assert.False(t, next.Reset)

		// The partition cleared and made again: a reset.
		require.NoError(t, kv.Client().Meta().ClearPartition(ctx, "p"))
		_, err = kv.Put(ctx, "p", "z", nil, engine.Tags{"n": 1})
		require.NoError(t, err)
		reset, err := kv.Changes(ctx, "p", next.Cursor)
		require.NoError(t, err)
		assert.True(t, reset.Reset)
		assert.Equal(t, []Change{{Key: "z", Tags: engine.Tags{"n": int64(1)}}}, normalize(reset.Changes))

		_, err = kv.Changes(ctx, "q", next.Cursor)
		assert.ErrorIs(t, err, engine.ErrInvalid, "another partition's cursor")
		_, err = kv.Changes(ctx, "", nil)
		assert.ErrorIs(t, err, engine.ErrInvalid)
	})
}

// normalize gives whole-number tags the int64 a remote listing has.
func normalize(cs []Change) []Change {
	for i := range cs {
		for k := range cs[i].Tags {
			if n, ok := cs[i].Tags.Int(k); ok {
				cs[i].Tags[k] = n
			}
		}
	}
	return cs
}

// TestTagsAcrossControllerRestart: through a controller server with a
// data directory, swaps and removals survive a restart, and a change
// cursor handed out before it lists exactly what changed after.
func TestTagsAcrossControllerRestart(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	ctrl, err := controller.New(controller.Config{Dir: dir})
	require.NoError(t, err)
	sc := newServed(t, ctrl)
	kv := sc.kv
	_, err = kv.BatchPut(ctx, "p", []string{"a", "b"}, nil, []engine.Tags{{"status": "pending"}, {"status": "pending", "step": 1}})
	require.NoError(t, err)
	cs, err := kv.Changes(ctx, "p", nil)
	require.NoError(t, err)
	require.Len(t, cs.Changes, 2)
	ok, _, err := kv.CompareAndSetTag(ctx, "p", "a", "status", "pending", "running")
	require.NoError(t, err)
	require.True(t, ok)
	_, err = kv.DeleteTags(ctx, "p", []string{"b"}, "step")
	require.NoError(t, err)

	// The controller restarts (a crash would do the same: every answer
	// waited for its record).
	require.NoError(t, sc.srv.Close())
	require.NoError(t, ctrl.Close())
	ctrl, err = controller.New(controller.Config{Dir: dir})
	require.NoError(t, err)
	t.Cleanup(func() { ctrl.Close() })
	serveController(t, ctrl, sc.sock)
	_, err = kv.List(ctx, "p") // a read: the client dials the new server
	require.NoError(t, err)

	assert.Equal(t, map[string]engine.Tags{"a": {"status": "running"}, "b": {"status": "pending"}}, listed(t, kv, "p"))
	next, err := kv.Changes(ctx, "p", cs.Cursor)
	require.NoError(t, err)
	assert.False(t, next.Reset, "the cursor is still good")
	assert.Equal(t, []Change{{Key: "a", Tags: engine.Tags{"status": "running"}}, {Key: "b", Tags: engine.Tags{"status": "pending"}}}, next.Changes)
	ok, cur, err := kv.CompareAndSetTag(ctx, "p", "a", "status", "pending", "done")
	require.NoError(t, err)
	assert.False(t, ok, "the swap before the restart holds")
	assert.Equal(t, "running", cur)
	ok, _, err = kv.CompareAndSetTag(ctx, "p", "a", "status", "running", "done")
	require.NoError(t, err)
	assert.True(t, ok)
	last, err := kv.Changes(ctx, "p", next.Cursor)
	require.NoError(t, err)
	assert.Equal(t, []Change{{Key: "a", Tags: engine.Tags{"status": "done"}}}, last.Changes)
}
