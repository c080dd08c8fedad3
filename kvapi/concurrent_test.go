package kvapi

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/tqgo/tq/engine"
)

// Many writers and readers on shared and private partitions at once: every
// read sees exactly what its writer put, and nothing leaks.
func TestConcurrentClients(t *testing.T) {
	kv, e := newKV(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			part := fmt.Sprintf("p%d", w%3) // partitions shared by several writers
			for it := range 20 {
				keys := []string{fmt.Sprintf("w%d_%d_a", w, it), fmt.Sprintf("w%d_%d_b", w, it)}
				vals := []int64{int64(w*1000 + it), int64(-w*1000 - it)}
				c, err := engine.DenseOf(vals)
				if err != nil {
					t.Error(err)
					return
				}
				b := engine.MustBatch(engine.Field{Name: "v", Col: c})
				if _, err := kv.BatchPut(ctx, part, keys, b, []engine.Tags{{"w": w}, {"w": w}}); err != nil {
					t.Error(err)
					return
				}
				got, err := kv.BatchGet(ctx, part, keys, "v")
				if err != nil {
					t.Error(err)
					return
				}
				gv, _ := engine.Values[int64](got.Col("v"))
				if len(gv) != 2 || gv[0] != vals[0] || gv[1] != vals[1] {
					t.Errorf("writer %d iteration %d read %v, wrote %v", w, it, gv, vals)
					return
				}
				if it%2 == 0 {
					if err := kv.Clear(ctx, part, keys); err != nil {
						t.Error(err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	all, err := kv.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for p, es := range all {
		n += len(es)
		var keys []string
		for _, en := range es {
			keys = append(keys, en.Key)
		}
		if err := kv.Clear(ctx, p, keys); err != nil {
			t.Fatal(err)
		}
	}
	if n != 8*10*2 {
		t.Fatalf("%d keys left, want %d", n, 8*10*2)
	}
	for _, u := range e.Units {
		if st := u.Stats(); st.Used != 0 {
			t.Fatalf("unit %d uses %d bytes after clearing everything", u.ID(), st.Used)
		}
	}
}
