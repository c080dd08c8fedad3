package bench

import (
	"context"
	"hash/crc32"
	"testing"

	"github.com/tqgo/tq/kvapi"
)

func checksum(t testing.TB, b interface {
	Names() []string
}, data func(string) []byte) uint32 {
	t.Helper()
	h := crc32.NewIEEE()
	for _, n := range b.Names() {
		h.Write([]byte(n))
		h.Write(data(n))
	}
	return h.Sum32()
}

// TestFlowSmoke runs the benchmarks' flow (put, list, get as views and as
// copies, clear) on a tiny workload and checks what was read is what was
// written, so the benchmark code stays correct between benchmark runs.
func TestFlowSmoke(t *testing.T) {
	w := workload{"tiny", 8, 3, 16}
	batch, keys := w.make(t)
	want := checksum(t, batch, func(n string) []byte { return batch.Col(n).Data() })
	e := newEmbedded(t, 8<<20)
	kv := kvapi.New(e.Client)
	ctx := context.Background()
	for range 3 {
		if _, err := kv.BatchPut(ctx, "p", keys, batch, nil); err != nil {
			t.Fatal(err)
		}
		l, err := kv.List(ctx, "p")
		if err != nil || len(l["p"]) != w.batch {
			t.Fatalf("list: %d keys, %v", len(l["p"]), err)
		}
		v, err := kv.BatchGetView(ctx, "p", keys)
		if err != nil {
			t.Fatal(err)
		}
		if got := checksum(t, v, func(n string) []byte { return v.Col(n).Data() }); got != want {
			t.Fatalf("view checksum %08x, want %08x", got, want)
		}
		v.Release()
		g, err := kv.BatchGetCopy(ctx, "p", keys)
		if err != nil {
			t.Fatal(err)
		}
		if got := checksum(t, g, func(n string) []byte { return g.Col(n).Data() }); got != want {
			t.Fatalf("copy checksum %08x, want %08x", got, want)
		}
		if err := kv.Clear(ctx, "p", keys); err != nil {
			t.Fatal(err)
		}
	}
	if n := newCopier(w.bytes()).run(batch); n <= 0 {
		t.Fatal("copier did nothing")
	}
}
