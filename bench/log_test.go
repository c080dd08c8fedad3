package bench

import (
	"fmt"
	"testing"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/kvapi"
)

// BenchmarkLog measures what the controller's durable metadata log costs:
// each workload runs with the log off (state in memory) and on (fsync
// batch, tq serve's default: every acknowledged change is on disk before
// the reply, concurrent requests share an fsync), one after the other in
// the same run, against servers that both stay up for the whole run.
//
//   - workload=kv: 16 clients each doing a put then a get of a 1 KiB
//     value (BenchmarkSmallKV's loop) against a server process, over tcp
//     (the unit's unix socket) and shm: every put is a commit the log
//     must hold;
//   - workload=small: the reference flow on the small workload (288 MiB,
//     simple case) between a writer and a reader process over shm
//     (BenchmarkFlow): few, large commits.
//
// Target: log=batch within 10% of log=off on each. Compare with
//
//	go test -run '^$' -bench Log -count 6 ./bench | tee log.txt
//	benchstat -col /log log.txt
func BenchmarkLog(b *testing.B) {
	modes := []string{"off", "batch"}
	const clients, size = 16, 1 << 10
	kvServers := map[string]string{}
	for _, mode := range modes {
		kvServers[mode], _ = benchServerFlags(b, "TQ_BENCH_SERVER_LOG="+mode)
	}
	pools := map[string][]*kvapi.KV{}
	owner := b // the clients live until the whole benchmark ends
	for _, tr := range []string{client.TransportTCP, client.TransportShm} {
		for _, mode := range modes {
			b.Run(fmt.Sprintf("workload=kv/transport=%s/log=%s", tr, mode), func(b *testing.B) {
				kvs := pools[tr+mode]
				for len(kvs) < clients {
					c, err := connectOwned(owner, kvServers[mode], tr, 1)
					if err != nil {
						b.Fatal(err)
					}
					kvs = append(kvs, kvapi.New(c))
				}
				pools[tr+mode] = kvs
				runTQSmallKV(b, kvs, size)
			})
		}
	}
	ctx := b.Context()
	for _, mode := range modes {
		b.Run(fmt.Sprintf("workload=small/transport=shm/log=%s", mode), func(b *testing.B) {
			srv, err := StartServer(ctx, ServerConfig{Capacity: Small.Bytes(Simple)*5/4 + 64<<20, Log: mode})
			if err != nil {
				b.Fatal(err)
			}
			defer srv.Close()
			benchFlow(b, srv, "shm", Small, Simple)
		})
	}
}
