package kvapi

import (
	"errors"
	"sync"
	"testing"

	"github.com/tqgo/tq/engine"
)

// TestGetRacesOverwrites: reads of a key that puts keep replacing never
// fail (the cells a read resolved may be freed before it takes its lease:
// it resolves again), on an embedded cluster and through a controller
// server, with and without the one-round-trip path.
func TestGetRacesOverwrites(t *testing.T) {
	for _, mk := range []struct {
		name string
		kv   func(t *testing.T) *KV
	}{
		{"embedded", func(t *testing.T) *KV { kv, _ := newKV(t); return kv }},
		{"served with data", func(t *testing.T) *KV { return newServedKV(t).kv }},
		{"served", func(t *testing.T) *KV { return newServed(t, nil).kv }},
	} {
		t.Run(mk.name, func(t *testing.T) {
			kv := mk.kv(t)
			ctx := t.Context()
			var wg sync.WaitGroup
			errs := make(chan error, 100)
			for w := range 6 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range 3000 {
						if w%3 == 0 {
							if _, err := kv.Put(ctx, "p", "k", engine.MustBatch(engine.Field{Name: "v", Col: engine.StringsOf([]string{"x"})}), nil); err != nil {
								errs <- err
								return
							}
							continue
						}
						b, err := kv.BatchGet(ctx, "p", []string{"k"}, "v")
						if errors.Is(err, engine.ErrNotFound) && !errors.Is(err, engine.ErrLost) {
							continue // before the first put
						}
						if err != nil {
							errs <- err
							return
						}
						b.Release()
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
		})
	}
}
