package bench

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
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
//   - workload=kvget: the same clients each read their own 1 KiB values,
//     put before the timer starts, one GET at a time: a read waits only
//     for records of the keys it reads that are not synced yet, here
//     none, so the log should cost it nothing;
//   - workload=kvgetcopy: the same through BatchGetCopy, which resolves
//     the key on the controller (RESOLVE_KEYS) and reads the value from
//     its unit. RESOLVE_KEYS runs in a goroutine each, not on the event
//     loop, with the log or without: 16 readers did 10–12% better so
//     (2026-12-04, 2 CPUs, one loop): a metadata read costs more than a
//     KV get, and a loop is one core;
//   - workload=kvfresh: half the clients put 1 KiB values, each to a key
//     of its own, while the other half each read one writer's key: most
//     reads see a put whose record is not synced yet and wait for it.
//     It tells what reads that must wait cost (with the log a KV get is
//     served on the event loop unless it must wait, and then leaves the
//     loop for a goroutine);
//   - workload=small: the reference flow on the small workload (288 MiB,
//     simple case) between a writer and a reader process over shm
//     (BenchmarkFlow): few, large commits.
//
// Target: log=batch within 10% of log=off on each. Compare with
//
//	go test -run '^$' -bench Log -count 6 ./bench | tee log.txt
//	benchstat -col /log log.txt
//
// Each workload=kv log=batch run also reports what the disk allows: the
// median write+fdatasync of a small record in the directory the log lives
// in (fsync_us, measured just before the run) and ceiling_x, the ratio to
// log=off that a log reaches when each put waits for exactly one such
// sync and nothing else: its clients run a closed loop, so each put+get
// takes log=off's time plus a sync. A log=batch ratio cannot pass that
// ceiling; where the ceiling is under 0.9 the 10% target needs a disk with
// faster syncs, not a faster log.
func BenchmarkLog(b *testing.B) {
	modes := []string{"off", "batch"}
	const clients, size = 16, 1 << 10
	kvServers := map[string]string{}
	for _, mode := range modes {
		kvServers[mode], _ = benchServerFlags(b, "TQ_BENCH_SERVER_LOG="+mode)
	}
	pools := map[string][]*kvapi.KV{}
	owner := b // the clients live until the whole benchmark ends
	pool := func(b *testing.B, tr, mode string) []*kvapi.KV {
		kvs := pools[tr+mode]
		for len(kvs) < clients {
			c, err := connectOwned(owner, kvServers[mode], tr, 1)
			if err != nil {
				b.Fatal(err)
			}
			kvs = append(kvs, kvapi.New(c))
		}
		pools[tr+mode] = kvs
		return kvs
	}
	for _, tr := range []string{client.TransportTCP, client.TransportShm} {
		var offOps float64 // log=off's ops/s, run just before log=batch
		for _, mode := range modes {
			b.Run(fmt.Sprintf("workload=kv/transport=%s/log=%s", tr, mode), func(b *testing.B) {
				kvs := pool(b, tr, mode)
				var sync time.Duration
				if mode != "off" {
					sync = syncLatency(b, os.TempDir())
				}
				ops := runTQSmallKV(b, kvs, size)
				if mode == "off" {
					offOps = ops
				} else if offOps > 0 {
					// A put+get takes 2*clients/offOps with the log off.
					pair := time.Duration(2 * clients / offOps * float64(time.Second))
					b.ReportMetric(float64(sync.Microseconds()), "fsync_us")
					b.ReportMetric(float64(pair)/float64(pair+sync), "ceiling_x")
				}
			})
		}
	}
	for _, tr := range []string{client.TransportTCP, client.TransportShm} {
		for _, mode := range modes {
			b.Run(fmt.Sprintf("workload=kvget/transport=%s/log=%s", tr, mode), func(b *testing.B) {
				runTQSmallGets(b, pool(b, tr, mode), size, false)
			})
		}
	}
	for _, mode := range modes {
		b.Run(fmt.Sprintf("workload=kvgetcopy/transport=tcp/log=%s", mode), func(b *testing.B) {
			runTQSmallGets(b, pool(b, client.TransportTCP, mode), size, true)
		})
	}
	for _, mode := range modes {
		b.Run(fmt.Sprintf("workload=kvfresh/transport=tcp/log=%s", mode), func(b *testing.B) {
			runTQFreshGets(b, pool(b, client.TransportTCP, mode), size)
		})
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

// runTQSmallGets puts smallKVKeys values of size bytes per client, then
// has each client read its own, one GET at a time, checking each, and
// reports ops/s and the GETs' latency. With copies the GETs are
// BatchGetCopy: the key's cells resolved (RESOLVE_KEYS), then read from
// their unit.
func runTQSmallGets(b *testing.B, kvs []*kvapi.KV, size int, copies bool) {
	ctx := context.Background()
	keys := make([][]string, len(kvs))
	vals := make([][][]byte, len(kvs))
	for w, kv := range kvs {
		for k := range smallKVKeys {
			key := fmt.Sprintf("r%d_k%d", w, k)
			val := make([]byte, size)
			for i := range val {
				val[i] = byte(i*7 + w + k)
			}
			batch := engine.MustBatch(engine.Field{Name: "v", Col: engine.BytesOf([][]byte{val})})
			if _, err := kv.Put(ctx, "small", key, batch, nil); err != nil {
				b.Fatal(err)
			}
			keys[w], vals[w] = append(keys[w], key), append(vals[w], val)
		}
	}
	b.SetBytes(int64(size))
	b.ReportAllocs()
	wall, lats := runWorkers(b, len(kvs), 1, func(w, i int, lat latencies) error {
		k := i % smallKVKeys
		t0 := time.Now()
		get := kvs[w].BatchGet
		if copies {
			get = kvs[w].BatchGetCopy
		}
		got, err := get(ctx, "small", keys[w][k:k+1], "v")
		lat.add(0, time.Since(t0))
		if err != nil {
			return err
		}
		defer got.Release()
		if v := got.Col("v").RowBytes(0); !bytes.Equal(v, vals[w][k]) {
			return fmt.Errorf("key %s read back %d bytes, not the %d put", keys[w][k], len(v), size)
		}
		return nil
	})
	b.ReportMetric(float64(b.N)/wall.Seconds(), "ops/s")
	reportLatency(b, lats, 0, "get")
}

// runTQFreshGets has the even clients put values of size bytes to a key
// each and the odd ones read the key of the writer before them, checking
// that each read is a whole value one of the puts wrote; it reports puts
// and reads together as ops/s.
func runTQFreshGets(b *testing.B, kvs []*kvapi.KV, size int) {
	ctx := context.Background()
	vals := make([]*engine.Batch, len(kvs))
	for w := range kvs {
		key := fmt.Sprintf("f%d", w/2)
		vals[w] = engine.MustBatch(engine.Field{Name: "v", Col: engine.BytesOf([][]byte{make([]byte, size)})})
		if w%2 == 0 {
			v := vals[w].Col("v").Data()
			binary.LittleEndian.PutUint64(v, uint64(w)<<40)
			binary.LittleEndian.PutUint64(v[size-8:], ^(uint64(w) << 40))
			if _, err := kvs[w].Put(ctx, "small", key, vals[w], nil); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.SetBytes(int64(size))
	b.ReportAllocs()
	wall, lats := runWorkers(b, len(kvs), 2, func(w, i int, lat latencies) error {
		key := fmt.Sprintf("f%d", w/2)
		t0 := time.Now()
		if w%2 == 0 {
			v := vals[w].Col("v").Data()
			stamp := uint64(w)<<40 | uint64(i) + 1
			binary.LittleEndian.PutUint64(v, stamp)
			binary.LittleEndian.PutUint64(v[len(v)-8:], ^stamp)
			_, err := kvs[w].Put(ctx, "small", key, vals[w], nil)
			lat.add(0, time.Since(t0))
			return err
		}
		got, err := kvs[w].BatchGet(ctx, "small", []string{key}, "v")
		lat.add(1, time.Since(t0))
		if err != nil {
			return err
		}
		defer got.Release()
		v := got.Col("v").RowBytes(0)
		if len(v) != size || binary.LittleEndian.Uint64(v) != ^binary.LittleEndian.Uint64(v[size-8:]) {
			return fmt.Errorf("key %s read back %d bytes that no put wrote", key, len(v))
		}
		return nil
	})
	b.ReportMetric(float64(b.N)/wall.Seconds(), "ops/s")
	reportLatency(b, lats, 0, "put")
	reportLatency(b, lats, 1, "get")
}

// syncLatency is the median time to append a 1 KiB record to a file in
// dir and fdatasync it, what one group commit of the log waits for at
// least (the log's data dir is under os.TempDir in these benchmarks).
func syncLatency(b *testing.B, dir string) time.Duration {
	f, err := os.CreateTemp(dir, "tq-bench-sync-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	rec := make([]byte, 1<<10)
	took := make([]time.Duration, 200)
	for i := range took {
		t0 := time.Now()
		if _, err := f.Write(rec); err != nil {
			b.Fatal(err)
		}
		if err := unix.Fdatasync(int(f.Fd())); err != nil {
			b.Fatal(err)
		}
		took[i] = time.Since(t0)
	}
	slices.Sort(took)
	return took[len(took)/2]
}
