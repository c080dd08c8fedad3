package embedded

import (
	"context"
	"fmt"
	"testing"

	"github.com/tqgo/tq/controller"
)

// BenchmarkSetGetValue is the server's share of a small KV_SET and
// KV_GET_VALUE without the wire: SetValue of a 1 KiB value (read into
// the unit by a copy, as from the connection), then GetValue of it and
// its release, on a controller without a log (BenchmarkSmallKV's
// server). One op is the pair.
func BenchmarkSetGetValue(b *testing.B) {
	_, _, kd, _ := kvPairWith(b, controller.DefaultConfig()) // in memory, as the benchmarks' server
	ctx := context.Background()
	val := make([]byte, 1<<10)
	read := controller.ReadFunc(func(dst []byte) error { copy(dst, val); return nil })
	keys := make([]string, 64)
	for i := range keys {
		keys[i] = fmt.Sprintf("k%d", i)
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		key := keys[i%len(keys)]
		if _, err := kd.SetValue(ctx, "p", key, "v", len(val), read); err != nil {
			b.Fatal(err)
		}
		got, _, release, ok, err := kd.GetValue(ctx, "p", key, "v", 1<<20)
		if err != nil || !ok || len(got) != len(val) {
			b.Fatal(ok, err)
		}
		release()
	}
}
