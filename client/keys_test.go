package client_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/embedded"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/kvapi"
)

// TestCommitKeysTagsAtomic: a put's cells and tags become visible
// together. A writer overwrites one key, each time with a cell at offset i
// and tag v = i; readers resolving the key must always find the two
// agreeing, locally and through a controller server.
func TestCommitKeysTagsAtomic(t *testing.T) {
	for _, where := range []string{"local", "remote"} {
		t.Run(where, func(t *testing.T) {
			ctx := context.Background()
			ctrl := newController(t)
			var m client.MetaService = embedded.Meta(ctrl)
			if where == "remote" {
				_, addr := serveController(t, ctrl, controller.ServerConfig{}, "unix")
				m = dialMeta(t, addr, client.RemoteConfig{})
			}
			const puts = 300
			stop := make(chan struct{})
			var wg sync.WaitGroup
			wg.Go(func() {
				defer close(stop)
				for i := range puts {
					_, err := m.CommitKeys(ctx, engine.KeysCommit{Partition: "p", Keys: []string{"k"},
						Fields: []engine.CommitField{{Name: "x", DType: engine.Int64, Kind: engine.Dense, Shape: engine.Shape{},
							Locs: []engine.CellLoc{{Unit: 1, Addr: engine.RemoteAddr{Segment: 1, Gen: 1, Offset: uint64(i) * 8, Len: 8}}}}},
						Tags: []engine.Tags{{"v": i}}})
					if !assert.NoError(t, err) {
						return
					}
				}
			})
			for range 2 {
				wg.Go(func() {
					for {
						select {
						case <-stop:
							return
						default:
						}
						meta, _, err := m.ResolveKeys(ctx, "p", []string{"k"}, nil, false)
						if err != nil {
							assert.ErrorIs(t, err, engine.ErrNotFound, "before the first put")
							continue
						}
						v, ok := meta.Tags[0].Int("v")
						if assert.True(t, ok, "cells without their tags") && assert.Contains(t, meta.Cells, "x", "tags without their cells") {
							assert.Equal(t, uint64(v)*8, meta.Cells["x"][0].Addr.Offset, "cell and tag of different puts")
						}
					}
				})
			}
			wg.Wait()
		})
	}
}

// TestRemoteListKeysWhereSparse: a filter that few keys pass reads the
// keys in bounded pages, some empty; the client reads on to the end.
func TestRemoteListKeysWhereSparse(t *testing.T) {
	ctx := context.Background()
	ctrl := newController(t)
	_, addr := serveController(t, ctrl, controller.ServerConfig{}, "unix")
	r := dialMeta(t, addr, client.RemoteConfig{})
	const n = 1<<18 + 100
	keys := make([]string, n)
	tags := make([]engine.Tags, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("k%d", i)
	}
	tags[3] = engine.Tags{"status": "finished"}
	tags[n-1] = engine.Tags{"status": "finished"}
	_, err := ctrl.CommitKeys(engine.KeysCommit{Partition: "p", Keys: keys, Tags: tags})
	require.NoError(t, err)
	got, err := r.ListKeysWhere(ctx, "p", engine.TagFilter{{Name: "status", Test: engine.TagEquals, Values: []any{"finished"}}})
	require.NoError(t, err)
	require.Len(t, got["p"], 2)
	assert.Equal(t, []string{"k3", keys[n-1]}, []string{got["p"][0].Key, got["p"][1].Key})
	page, next, err := r.ListKeysPageWhere(ctx, "p", engine.TagFilter{{Name: "status", Test: engine.TagAbsent}}, nil, 1)
	require.NoError(t, err)
	require.NotNil(t, next)
	assert.Equal(t, "k0", page[0].Keys[0].Key)
}

// bareMeta is a metadata service with none of KeyService's calls.
type bareMeta struct{ client.MetaService }

// TestKeyServiceNotSupported: the KV API's tag calls over a metadata
// service that lacks them fail with ErrNotSupported, naming it.
func TestKeyServiceNotSupported(t *testing.T) {
	e, err := embedded.New(embedded.DefaultConfig())
	require.NoError(t, err)
	defer e.Close()
	var units []client.DataUnit
	for _, u := range e.Units {
		units = append(units, embedded.Unit(u))
	}
	c, err := client.New(bareMeta{embedded.Meta(e.Controller, e.Units...)}, units, client.DefaultConfig())
	require.NoError(t, err)
	kv := kvapi.New(c)
	ctx := context.Background()
	_, err = kv.Put(ctx, "p", "k", nil, engine.Tags{"a": 1})
	require.NoError(t, err)
	_, err = kv.DeleteTags(ctx, "p", []string{"k"}, "a")
	require.ErrorIs(t, err, engine.ErrNotSupported)
	assert.Contains(t, err.Error(), "bareMeta")
	_, _, err = kv.CompareAndSetTag(ctx, "p", "k", "a", 1, 2)
	require.ErrorIs(t, err, engine.ErrNotSupported)
	_, err = kv.ListWhere(ctx, "p", kvapi.Exists("a"))
	require.ErrorIs(t, err, engine.ErrNotSupported)
	_, err = kv.Changes(ctx, "p", nil)
	require.ErrorIs(t, err, engine.ErrNotSupported)
	// Bad names are still refused first.
	_, _, err = kv.CompareAndSetTag(ctx, "p", "k", "", 1, 2)
	require.ErrorIs(t, err, engine.ErrInvalid)
}

// TestRemoteKeyChangesAsksAgain: a wait the server's limit ends long
// before the caller's deadline is asked again; the caller sees the change
// that came later, or its own deadline.
func TestRemoteKeyChangesAsksAgain(t *testing.T) {
	ctx := context.Background()
	ctrl := newController(t)
	_, addr := serveController(t, ctrl, controller.ServerConfig{MaxFetchWait: 20 * time.Millisecond}, "tcp")
	r := dialMeta(t, addr, client.RemoteConfig{})
	go func() {
		time.Sleep(200 * time.Millisecond)
		_, err := ctrl.CompareAndSetTag(engine.TagSwap{Partition: "p", Key: "k", Name: "status", New: "pending"})
		assert.NoError(t, err)
	}()
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ch, err := r.KeyChanges(wctx, engine.ChangesRequest{Partition: "p", Wait: true})
	require.NoError(t, err)
	require.Len(t, ch.Changes, 1)
	assert.Equal(t, engine.Tags{"status": "pending"}, ch.Changes[0].Tags)

	start := time.Now()
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	_, err = r.KeyChanges(short, engine.ChangesRequest{Partition: "p", Cursor: ch.Cursor, Wait: true})
	require.ErrorIs(t, err, context.DeadlineExceeded)
	// One ask returns after the server's 20 ms; asking again runs to near the
	// 100 ms deadline (less the margin the client keeps for the answer).
	assert.GreaterOrEqual(t, time.Since(start), 60*time.Millisecond, "asked again until its own deadline")
}
