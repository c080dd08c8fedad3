package kvapi

import (
	"bytes"
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/engine"
)

// TestDurableKVGetsWaitOnlyForTheirKeys: on a durable controller, a KV
// get (KV_GET_VALUE for one field, KV_GET for two) of keys whose records
// are on disk is answered at once, while one of a key whose last put is
// not on disk yet waits for it, and then reads that put, without holding
// up the loop that read it: gets on the other connections are answered
// meanwhile.
func TestDurableKVGetsWaitOnlyForTheirKeys(t *testing.T) {
	ctx := t.Context()
	var hold atomic.Pointer[chan struct{}] // set: the log's writer waits on it
	sc := newServedDurableKV(t, func(cfg *controller.Config) {
		cfg.OnJournalWrite = func(time.Duration, int) {
			if h := hold.Load(); h != nil {
				<-*h
			}
		}
	})
	ctrl := sc.ctrl

	val := func(s string, n int) *engine.Batch {
		return engine.MustBatch(
			engine.Field{Name: "v", Col: engine.BytesOf([][]byte{bytes.Repeat([]byte(s), n)})},
			engine.Field{Name: "w", Col: engine.BytesOf([][]byte{[]byte(s)})})
	}
	for _, key := range []string{"a", "b"} {
		_, err := sc.kv.Put(ctx, "p", key, val(key+"1", 100), nil)
		require.NoError(t, err)
	}
	reader := func() *KV {
		c, err := client.Connect(ctx, "unix://"+sc.sock, client.ConnectConfig{Name: "reader"})
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		return New(c)
	}
	read := func(kv *KV, key string, fields ...string) (string, error) {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		b, err := kv.BatchGet(ctx, "p", []string{key}, fields...) // KV_GET_VALUE, KV_GET
		if err != nil {
			return "", err
		}
		defer b.Release()
		var s string
		for _, f := range fields {
			s += string(b.Col(f).RowBytes(0)) + "|"
		}
		return s, nil
	}
	waiting, other := reader(), reader()
	for range 4 { // on a loop by now
		for _, kv := range []*KV{waiting, other} {
			got, err := read(kv, "a", "v")
			require.NoError(t, err)
			require.Equal(t, string(bytes.Repeat([]byte("a1"), 100))+"|", got)
		}
	}

	// The log's writer stops: a put of a is applied, not yet durable.
	gate := make(chan struct{})
	var opened sync.Once
	open := func() { opened.Do(func() { hold.Store(nil); close(gate) }) }
	t.Cleanup(open) // a failing test lets the log go on before the cleanups
	hold.Store(&gate)
	before, ok := ctrl.KeyCells("p", "a", []string{"v"}, nil)
	require.True(t, ok)
	put := make(chan error, 1)
	go func() {
		_, err := sc.kv.Put(ctx, "p", "a", val("a2", 100), nil)
		put <- err
	}()
	require.Eventually(t, func() bool {
		now, ok := ctrl.KeyCells("p", "a", []string{"v"}, nil)
		return ok && now[0].Loc != before[0].Loc
	}, 5*time.Second, time.Millisecond, "the put of a was not applied")

	type result struct {
		got string
		err error
	}
	gets := make(chan result, 2)
	for _, fields := range [][]string{{"v"}, {"v", "w"}} {
		go func() {
			got, err := read(waiting, "a", fields...)
			gets <- result{got, err}
		}()
	}
	// The other connection's gets of b, whose records are on disk, are
	// answered while those of a wait.
	for i := range 20 {
		got, err := read(other, "b", []string{"v", "w"}[:1+i%2]...)
		require.NoError(t, err)
		require.Contains(t, got, "b1b1")
	}
	select {
	case r := <-gets:
		t.Fatalf("a get of a was answered before the put it read was durable: %q, %v", r.got, r.err)
	case <-time.After(100 * time.Millisecond):
	}

	open()
	require.NoError(t, <-put)
	a2 := string(bytes.Repeat([]byte("a2"), 100))
	for range 2 {
		r := <-gets
		require.NoError(t, r.err)
		assert.Contains(t, []string{a2 + "|", a2 + "|a2|"}, r.got)
	}
}
