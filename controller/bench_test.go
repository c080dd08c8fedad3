package controller

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/controller/journal"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// replacementSampler samples the first BatchSize ready rows without
// consuming them, so every iteration of a benchmark sees the same partition.
type replacementSampler struct{}

func (replacementSampler) Sample(req engine.SampleRequest) ([]uint64, []uint64, error) {
	out := make([]uint64, 0, req.BatchSize)
	req.Ready.Ascend(func(i uint64) bool {
		out = append(out, i)
		return len(out) < req.BatchSize
	})
	return out, nil, nil
}

// fill builds a partition of rows produced for fields, committed in
// batches of 4096, with one key per row when keyed.
func fill(b *testing.B, c *Controller, partition string, rows int, keyed bool, fields ...string) {
	b.Helper()
	const chunk = 4096
	for done := 0; done < rows; done += chunk {
		n := min(chunk, rows-done)
		var m *engine.BatchMeta
		var err error
		if keyed {
			keys := make([]string, n)
			for i := range keys {
				keys[i] = fmt.Sprintf("k%d", done+i)
			}
			m, err = c.ResolveKeys(partition, keys, nil, true)
		} else {
			m, err = c.Insert(partition, n, fields)
		}
		if err != nil {
			b.Fatal(err)
		}
		req := engine.CommitRequest{Partition: partition, Indexes: m.Indexes}
		for _, f := range fields {
			locs := make([]engine.CellLoc, n)
			for i := range locs {
				locs[i] = engine.CellLoc{Unit: 1, Addr: engine.RemoteAddr{Segment: 1, Offset: uint64(i) * 64, Len: 64}}
			}
			req.Fields = append(req.Fields, engine.CommitField{Name: f, DType: engine.Float32, Kind: engine.Dense, Shape: engine.Shape{16}, Locs: locs})
		}
		if _, err := c.Commit(req); err != nil {
			b.Fatal(err)
		}
	}
}

var partitionSizes = []struct {
	name string
	rows int
}{{"10k", 10_000}, {"100k", 100_000}, {"1M", 1_000_000}}

// BenchmarkFetch fetches 1024 rows from partitions of growing size. The
// cost must not grow with the partition: a fetch is O(batch).
func BenchmarkFetch(b *testing.B) {
	for _, size := range partitionSizes {
		b.Run("rows="+size.name, func(b *testing.B) {
			c, _ := New(Config{Sampler: replacementSampler{}})
			defer c.Close()
			fill(b, c, "p", size.rows, false, "prompt", "response")
			req := engine.FetchRequest{Partition: "p", Task: "train", Fields: []string{"prompt", "response"}, BatchSize: 1024}
			ctx := context.Background()
			if _, err := c.Fetch(ctx, req); err != nil { // builds the ready view once
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				m, err := c.Fetch(ctx, req)
				if err != nil || m.Len() != 1024 {
					b.Fatalf("fetch: %d rows, %v", m.Len(), err)
				}
			}
		})
	}
}

// BenchmarkFetchConsume fetches and consumes 1024 rows at a time with the
// sequential sampler from partitions of 10k, 100k and 1M rows; when a
// partition runs dry its consumption is reset. The cost must not grow with
// the partition (the target: rows=1M at most 1.2× rows=10k).
//
// ns/fetch is the time of the fetches alone; ns/op adds the resets, a walk
// of the partition once per partition's worth of fetches (about the same
// per fetch at every size). cpu-ns/fetch is the process's CPU time (every
// thread: the garbage collector's work counts) outside the resets, per
// fetch: on a machine busy with other work it varies far less than the
// wall-clock figures. The resets are not left out with StopTimer: it
// stops the world to read memory statistics, which at 10k rows (a reset
// every 10 fetches) cost more than the fetches. Compare sizes with
// benchstat over -count 6, each size run in its own process, interleaved:
//
//	for i in 1 2 3 4 5 6; do for s in 10k 1M; do
//	  go test -run '^$' -bench "FetchConsume/rows=$s\$" ./controller; done; done | benchstat -
func BenchmarkFetchConsume(b *testing.B) {
	for _, size := range partitionSizes {
		b.Run("rows="+size.name, func(b *testing.B) {
			c, _ := New(DefaultConfig())
			defer c.Close()
			fill(b, c, "p", size.rows, false, "prompt")
			req := engine.FetchRequest{Partition: "p", Task: "train", Fields: []string{"prompt"}, BatchSize: 1024}
			ctx := context.Background()
			var fetching, resetCPU time.Duration
			b.ReportAllocs()
			cpu0 := processCPU()
			for b.Loop() {
				t0 := time.Now()
				m, err := c.Fetch(ctx, req)
				fetching += time.Since(t0)
				if err != nil {
					b.Fatal(err)
				}
				if m.Len() == 0 {
					r0 := processCPU()
					c.ResetConsumption("p", "train")
					resetCPU += processCPU() - r0
				}
			}
			cpu := processCPU() - cpu0 - resetCPU
			b.ReportMetric(float64(fetching.Nanoseconds())/float64(b.N), "ns/fetch")
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/fetch")
		})
	}
}

// processCPU returns the CPU time the process has used, every thread.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkFetchFinal is the fetch at the end of a finite stream: a done
// partition whose every row but 16 is consumed, fetched in batches of 1024
// (a short last batch of 16, given back for the next iteration). Deciding
// that nothing more will come must not walk the partition.
func BenchmarkFetchFinal(b *testing.B) {
	for _, size := range partitionSizes {
		b.Run("rows="+size.name, func(b *testing.B) {
			c, _ := New(DefaultConfig())
			defer c.Close()
			fill(b, c, "p", size.rows, false, "prompt")
			ctx := context.Background()
			req := engine.FetchRequest{Partition: "p", Task: "train", Fields: []string{"prompt"}, BatchSize: size.rows - 16}
			if _, err := c.Fetch(ctx, req); err != nil {
				b.Fatal(err)
			}
			if err := c.MarkDone("p"); err != nil {
				b.Fatal(err)
			}
			req.BatchSize = 1024
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				i++
				req.Key = "f" + strconv.Itoa(i)
				m, err := c.Fetch(ctx, req)
				if err != nil || m.Len() != 16 {
					b.Fatalf("fetch: %d rows, %v", m.Len(), err)
				}
				if err := c.Unconsume("p", "train", req.Key); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkResolveKeys resolves 1024 existing keys in partitions of
// growing size.
func BenchmarkResolveKeys(b *testing.B) {
	for _, size := range partitionSizes {
		b.Run("rows="+size.name, func(b *testing.B) {
			c, _ := New(DefaultConfig())
			defer c.Close()
			fill(b, c, "p", size.rows, true, "x")
			keys := make([]string, 1024)
			for i := range keys {
				keys[i] = fmt.Sprintf("k%d", (i*7919)%size.rows)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.ResolveKeys("p", keys, nil, false); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkMemoryPerCell reports the controller's heap per produced cell
// for 100k rows × 9 fields (the reference's "small" layout), without keys
// and with a key and a tag per row.
func BenchmarkMemoryPerCell(b *testing.B) {
	fields := []string{"f0", "f1", "f2", "f3", "f4", "f5", "f6", "f7", "f8"}
	const rows = 100_000
	for _, keyed := range []bool{false, true} {
		b.Run(fmt.Sprintf("keyed=%v", keyed), func(b *testing.B) {
			for b.Loop() {
				runtime.GC()
				var before, after runtime.MemStats
				runtime.ReadMemStats(&before)
				c, _ := New(DefaultConfig())
				fill(b, c, "p", rows, keyed, fields...)
				if keyed {
					ff, _ := c.ForceFetch("p", []string{})
					tags := make([]engine.Tags, ff.Len())
					for i := range tags {
						tags[i] = engine.Tags{"step": i}
					}
					c.SetTags("p", ff.Indexes, tags)
				}
				runtime.GC()
				runtime.ReadMemStats(&after)
				b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(rows*len(fields)), "bytes/cell")
				runtime.KeepAlive(c)
				c.Close()
			}
		})
	}
}

// BenchmarkCommitKeys is a KV put's controller step for the reference
// small workload, 1024 new keys × 9 fields, in process; the clear that
// undoes it is timed apart.
func BenchmarkCommitKeys(b *testing.B) {
	c, _ := New(DefaultConfig())
	defer c.Close()
	const rows, fields = 1024, 9
	req := engine.KeysCommit{Partition: "p", Keys: make([]string, rows)}
	for i := range req.Keys {
		req.Keys[i] = fmt.Sprintf("test_key_%d", i)
	}
	for f := range fields {
		locs := make([]engine.CellLoc, rows)
		for i := range locs {
			locs[i] = engine.CellLoc{Unit: 1, Addr: engine.RemoteAddr{Segment: 1, Gen: 1, Offset: uint64(f*rows+i) * 32768, Len: 32768}}
		}
		req.Fields = append(req.Fields, engine.CommitField{Name: fmt.Sprintf("field_%02d", f), DType: engine.Float32, Kind: engine.Dense, Shape: engine.Shape{8192}, Locs: locs})
	}
	var clear time.Duration
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.CommitKeys(req); err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		if _, err := c.ClearKeys("p", req.Keys); err != nil {
			b.Fatal(err)
		}
		clear += time.Since(t0)
	}
	b.ReportMetric(float64(clear.Microseconds())/float64(b.N), "clear_us")
}

// BenchmarkResolveKeysFields resolves 1024 keys of a partition of 1024
// rows with 1 to 32 fields, every field (the KV get's default): the
// per-cell cost of building a meta.
func BenchmarkResolveKeysFields(b *testing.B) {
	for _, nf := range []int{1, 32} {
		b.Run(fmt.Sprintf("fields=%d", nf), func(b *testing.B) {
			c, _ := New(DefaultConfig())
			defer c.Close()
			fields := make([]string, nf)
			for i := range fields {
				fields[i] = fmt.Sprintf("f%02d", i)
			}
			fill(b, c, "p", 1024, true, fields...)
			keys := make([]string, 1024)
			for i := range keys {
				keys[i] = fmt.Sprintf("k%d", i)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.ResolveKeys("p", keys, nil, false); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkRestart is the time a durable controller takes to come back
// with 1M keys (one partition, one field, every cell committed): from the
// snapshot a clean close leaves, and from the log alone (no snapshot was
// taken: every key is replayed) after a crash. Each iteration opens the
// directory (recovery, then the start's own log record) and crashes
// again, so the next finds the same state.
func BenchmarkRestart(b *testing.B) {
	for _, from := range []string{"snapshot", "log"} {
		b.Run("keys=1M/from="+from, func(b *testing.B) {
			cfg := Config{Dir: b.TempDir(), Fsync: journal.FsyncNever, SnapshotBytes: 1 << 40}
			c, err := New(cfg)
			if err != nil {
				b.Fatal(err)
			}
			fill(b, c, "p", 1_000_000, true, "v")
			if err := c.WaitDurable(context.Background()); err != nil {
				b.Fatal(err)
			}
			if from == "snapshot" {
				if err := c.Close(); err != nil { // writes a snapshot
					b.Fatal(err)
				}
			} else {
				crash(b, c)
			}
			for b.Loop() {
				c, err := New(cfg)
				if err != nil {
					b.Fatal(err)
				}
				if st, err := c.Stats("p"); err != nil || st.Keys != 1_000_000 {
					b.Fatalf("after the restart: %+v, %v", st, err)
				}
				crash(b, c)
			}
			var snaps, log int64
			filepath.WalkDir(cfg.Dir, func(path string, d fs.DirEntry, err error) error {
				if info, err := d.Info(); err == nil && !d.IsDir() {
					if strings.HasPrefix(d.Name(), "snap-") {
						snaps += info.Size()
					} else {
						log += info.Size()
					}
				}
				return nil
			})
			b.ReportMetric(float64(log)/(1<<20), "log_MiB")
			b.ReportMetric(float64(snaps)/(1<<20), "snapshot_MiB")
		})
	}
}

// BenchmarkCommitKeysWatched is BenchmarkCommitKeys' put of 1024 new keys
// (tags only) on a partition whose change feed someone follows: each put
// is then listed from the last cursor, as a replay buffer would.
func BenchmarkCommitKeysWatched(b *testing.B) {
	c, _ := New(DefaultConfig())
	defer c.Close()
	const rows = 1024
	req := engine.KeysCommit{Partition: "p", Keys: make([]string, rows), Tags: make([]engine.Tags, rows)}
	for i := range req.Keys {
		req.Keys[i] = fmt.Sprintf("test_key_%d", i)
		req.Tags[i] = engine.Tags{"status": "pending"}
	}
	var cursor []byte
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.CommitKeys(req); err != nil {
			b.Fatal(err)
		}
		ch, err := c.KeyChanges(context.Background(), engine.ChangesRequest{Partition: "p", Cursor: cursor, Limit: 2 * rows})
		if err != nil || len(ch.Changes) != rows {
			b.Fatal(len(ch.Changes), err)
		}
		cursor = ch.Cursor
		if _, err := c.ClearKeys("p", req.Keys); err != nil {
			b.Fatal(err)
		}
	}
}

// taggedRows: a server over a fresh controller with one unit registered,
// and 4096 keys with the tags of a rollout step, one map for every row.
func taggedRows(b *testing.B) (c *Controller, s *Server, unit engine.UnitID, keys []string, tags []engine.Tags) {
	b.Helper()
	c, _ = New(DefaultConfig())
	s = NewServer(c, ServerConfig{})
	b.Cleanup(func() { s.Close() })
	unit, err := c.units.Register(engine.UnitInfo{Incarnation: 1, Host: "h", Addrs: []string{"tcp://127.0.0.1:1"}}, true)
	if err != nil {
		b.Fatal(err)
	}
	const rows = 4096
	keys = make([]string, rows)
	tags = make([]engine.Tags, rows)
	one := engine.Tags{"status": "generated", "model": "policy-v3", "step": 7}
	for i := range keys {
		keys[i], tags[i] = fmt.Sprintf("rollout/step-7/%d", i), one
	}
	return c, s, unit, keys, tags
}

// benchCall serves req (of op) with s's handler, and encodes the reply,
// for the whole benchmark, and reports the time a row of rows.
func benchCall(b *testing.B, s *Server, op wire.Op, req proto.Message, rows int) {
	b.Helper()
	body, err := proto.Marshal(req)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		reply, err := s.call(ctx, op, body, &effects{})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := proto.Marshal(reply); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*rows), "ns/row")
}

// BenchmarkCommitKeysTagged is a tagged KV put of 4096 keys as the
// server handles it: decode the request, commit (cells of one field, and
// the same tags on every row, as a batch of a rollout step carries them),
// encode the reply. The keys exist (each iteration updates them), so the
// tags merge into those already there.
func BenchmarkCommitKeysTagged(b *testing.B) {
	_, s, unit, keys, tags := taggedRows(b)
	enc, err := wire.TagsToPB(tags)
	if err != nil {
		b.Fatal(err)
	}
	locs := wire.RunsToPB([]engine.CellRun{{Unit: unit, First: engine.RemoteAddr{Segment: 1, Gen: 1, Len: 8}, Count: len(keys)}})
	benchCall(b, s, wire.OpCommitKeys, &wirepb.CommitKeysRequest{Partition: "p", Keys: keys, HasTags: true, Tags: enc,
		Fields: []*wirepb.CommitField{{Name: "reward", Dtype: "float64", Kind: "dense", Shape: &wirepb.Shape{}, HasLocs: true, Locs: locs}}}, len(keys))
}

// BenchmarkListKeysTagged lists a partition of 4096 keys put in one
// tagged batch as the server answers LIST_KEYS: list, encode the reply.
func BenchmarkListKeysTagged(b *testing.B) {
	c, s, _, keys, tags := taggedRows(b)
	if _, err := c.CommitKeys(engine.KeysCommit{Partition: "p", Keys: keys, Tags: tags}); err != nil {
		b.Fatal(err)
	}
	benchCall(b, s, wire.OpListKeys, &wirepb.ListKeysRequest{Partition: "p"}, len(keys))
}

// BenchmarkResolveKeysTagged resolves 4096 keys put in one tagged batch
// with one field, as the server answers RESOLVE_KEYS (a KV get's
// controller step): resolve, encode the reply.
func BenchmarkResolveKeysTagged(b *testing.B) {
	c, s, unit, keys, tags := taggedRows(b)
	locs := make([]engine.CellLoc, len(keys))
	for i := range locs {
		locs[i] = engine.CellLoc{Unit: unit, Addr: engine.RemoteAddr{Segment: 1, Gen: 1, Offset: uint64(i) * 8, Len: 8}}
	}
	reward := engine.CommitField{Name: "reward", DType: engine.Float64, Kind: engine.Dense, Shape: engine.Shape{}, Locs: locs}
	if _, err := c.CommitKeys(engine.KeysCommit{Partition: "p", Keys: keys, Tags: tags, Fields: []engine.CommitField{reward}}); err != nil {
		b.Fatal(err)
	}
	benchCall(b, s, wire.OpResolveKeys, &wirepb.ResolveKeysRequest{Partition: "p", Keys: keys}, len(keys))
}

// BenchmarkStats: what each metrics scrape asks of every partition, on
// partitions of growing size. It walks no rows: its cost holds with the
// rows (race builds walk them to check the count).
func BenchmarkStats(b *testing.B) {
	for _, rows := range []int{1 << 10, 1 << 20} {
		b.Run(fmt.Sprintf("rows=%d", rows), func(b *testing.B) {
			c, err := New(Config{})
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			fill(b, c, "p", rows, false, "a", "b", "c", "d")
			b.ResetTimer()
			for b.Loop() {
				if _, err := c.Stats("p"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkStatsPage: one STATS_PAGE of 16 partitions from the middle of
// the controller's partitions, as the server answers it, with the
// controller holding more and more partitions: a page costs its entries
// and a search, not a walk (or a sort) of every partition's name.
func BenchmarkStatsPage(b *testing.B) {
	for _, n := range []int{1 << 10, 1 << 16} {
		b.Run(fmt.Sprintf("partitions=%d", n), func(b *testing.B) {
			c, s := benchServer(b, Config{})
			for i := range n {
				if _, err := c.CreatePartition(fmt.Sprintf("p-%08d", i)); err != nil {
					b.Fatal(err)
				}
			}
			benchCall(b, s, wire.OpStatsPage, &wirepb.StatsPageRequest{After: fmt.Sprintf("p-%08d", n/2), Limit: 16}, 16)
		})
	}
}

// BenchmarkListKeysPage: one LIST_KEYS page over every partition, from
// a cursor in the middle, with the controller holding more and more
// partitions of one key each: a page costs its keys and a search, not a
// sort of every partition's name.
func BenchmarkListKeysPage(b *testing.B) {
	for _, n := range []int{1 << 10, 1 << 16} {
		b.Run(fmt.Sprintf("partitions=%d", n), func(b *testing.B) {
			c, s := benchServer(b, Config{})
			for i := range n {
				if _, err := c.CommitKeys(engine.KeysCommit{Partition: fmt.Sprintf("p-%08d", i), Keys: []string{"k"}, Tags: []engine.Tags{{"step": 1}}}); err != nil {
					b.Fatal(err)
				}
			}
			p, _ := c.lock(fmt.Sprintf("p-%08d", n/2))
			cursor := encodeKeysCursor(p.id, p.gen, 1)
			p.mu.Unlock()
			benchCall(b, s, wire.OpListKeys, &wirepb.ListKeysRequest{Cursor: cursor, Limit: 16}, 16)
		})
	}
}

// BenchmarkDeleteTags: a DELETE_TAGS of n keys and n tag names, as the
// server answers it, the keys holding a tag of their own and none of the
// names (the names a request may carry are bounded only by the body):
// it costs the keys' tags and the names, not their product.
func BenchmarkDeleteTags(b *testing.B) {
	for _, n := range []int{1 << 10, 1 << 13} {
		b.Run(fmt.Sprintf("keys=names=%d", n), func(b *testing.B) {
			c, s := benchServer(b, Config{})
			keys, names, tags := make([]string, n), make([]string, n), make([]engine.Tags, n)
			for i := range n {
				keys[i], names[i], tags[i] = fmt.Sprintf("k-%d", i), fmt.Sprintf("name-%d", i), engine.Tags{"step": 7}
			}
			if _, err := c.CommitKeys(engine.KeysCommit{Partition: "p", Keys: keys, Tags: tags}); err != nil {
				b.Fatal(err)
			}
			benchCall(b, s, wire.OpDeleteTags, &wirepb.DeleteTagsRequest{Partition: "p", Keys: keys, Names: names}, n)
		})
	}
}

// BenchmarkRefusedNewPartition: a request that creates a partition of
// PreAlloc rows and is refused (a get of a field the new partition
// lacks), which undoes the partition and its pre-allocation: it costs
// the pre-allocation, not its square.
func BenchmarkRefusedNewPartition(b *testing.B) {
	for _, n := range []int{1 << 10, 1 << 13} {
		b.Run(fmt.Sprintf("prealloc=%d", n), func(b *testing.B) {
			c := benchController(b, Config{PreAlloc: n})
			for range b.N {
				if _, _, err := c.ResolveKeysCreated("p", []string{"k"}, []string{"x"}, true); !errors.Is(err, engine.ErrNotFound) {
					b.Fatalf("got %v, want ErrNotFound", err)
				}
			}
			if ps := c.Partitions(); len(ps) != 0 {
				b.Fatalf("partitions %q left", ps)
			}
		})
	}
}

// BenchmarkClearRowsOfAKeyedFetch: a ClearRows of every other row of a
// keyed fetch of n rows: it costs the rows, not the rows cleared times
// the rows the fetch keeps.
func BenchmarkClearRowsOfAKeyedFetch(b *testing.B) {
	for _, n := range []int{1 << 10, 1 << 13} {
		b.Run(fmt.Sprintf("rows=%d", n), func(b *testing.B) {
			c := benchController(b, Config{})
			field := []engine.CommitField{{Name: "x", DType: engine.Float32, Kind: engine.Dense, Shape: engine.Shape{2}}}
			for i := range b.N {
				b.StopTimer()
				p := fmt.Sprintf("p%d", i)
				m, err := c.Insert(p, n, []string{"x"})
				if err != nil {
					b.Fatal(err)
				}
				if _, err := c.Commit(engine.CommitRequest{Partition: p, Indexes: m.Indexes, Fields: field}); err != nil {
					b.Fatal(err)
				}
				got, err := c.Fetch(context.Background(), engine.FetchRequest{Partition: p, Task: "t", Fields: []string{"x"}, BatchSize: n, Key: "k"})
				if err != nil || got.Len() != n {
					b.Fatalf("fetch: %v", err)
				}
				half := make([]uint64, 0, n/2)
				for j := 0; j < n; j += 2 {
					half = append(half, got.Indexes[j])
				}
				b.StartTimer()
				if _, err := c.ClearRows(p, half); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkFetchTableSharedRows fills a fetch table with keyed fetches
// that all name the same 32 rows (the peers of a DP group fetching one
// kept batch, or the same batch fetched again and again), then lets them
// all expire with one more fetch. The cost per fetch must not grow with
// the number of fetches sharing the rows: each one's removal walked every
// entry of its rows, so the expiry of k of them cost k² × 32.
func BenchmarkFetchTableSharedRows(b *testing.B) {
	const nrows = 32
	rows := make([]uint64, nrows)
	for i := range rows {
		rows[i] = uint64(i)
	}
	for _, k := range []int{256, 2048} {
		b.Run("fetches="+strconv.Itoa(k), func(b *testing.B) {
			keys := make([]string, k)
			for i := range keys {
				keys[i] = "k" + strconv.Itoa(i)
			}
			at := time.Unix(1000, 0)
			b.ReportAllocs()
			for b.Loop() {
				var t fetchTable
				for _, key := range keys {
					t.add(&fetchEntry{key: key, task: "t", sampled: rows, at: at})
				}
				t.add(&fetchEntry{key: "late", task: "t", at: at.Add(2 * fetchKeyTTL)})
				if len(t.m) != 1 || len(t.byRow) != 0 {
					b.Fatalf("%d entries and %d rows indexed after the expiry, want 1 and 0", len(t.m), len(t.byRow))
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*k), "ns/fetch")
		})
	}
}

// benchController is a controller of cfg for a benchmark, closed when it
// ends.
func benchController(b *testing.B, cfg Config) *Controller {
	b.Helper()
	c, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c
}

// benchServer is benchController's controller and a server of it, closed
// before it.
func benchServer(b *testing.B, cfg Config) (*Controller, *Server) {
	c := benchController(b, cfg)
	s := NewServer(c, ServerConfig{})
	b.Cleanup(func() { s.Close() })
	return c, s
}

// BenchmarkUnconsumeRows: an UNCONSUME with indexes naming each row of a
// held fetch of n rows, as the server answers it (the first gives them
// back, the others check them and change nothing): it costs the fetch's
// rows and the indexes, not their product.
func BenchmarkUnconsumeRows(b *testing.B) {
	for _, n := range []int{1 << 10, 1 << 14} {
		b.Run(fmt.Sprintf("rows=%d", n), func(b *testing.B) {
			c, s := benchServer(b, Config{})
			m, err := c.Insert("p", n, []string{"x"})
			if err != nil {
				b.Fatal(err)
			}
			req := engine.CommitRequest{Partition: "p", Indexes: m.Indexes,
				Fields: []engine.CommitField{{Name: "x", DType: engine.Float32, Kind: engine.Dense, Shape: engine.Shape{2}}}}
			if _, err := c.Commit(req); err != nil {
				b.Fatal(err)
			}
			f, err := c.Fetch(context.Background(), engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: n, Key: "k", Hold: true})
			if err != nil || f.Len() != n {
				b.Fatalf("fetch: %d rows, %v", f.Len(), err)
			}
			benchCall(b, s, wire.OpUnconsume, &wirepb.UnconsumeRequest{Partition: "p", Task: "t", Key: []byte("k"), Indexes: f.Indexes}, n)
		})
	}
}

// BenchmarkIndexAllocRelease is the allocator's hot path: with a million
// indexes in use, each op releases 64 of them (walking through all of
// them over the ops) and allocates 64, which the reuse queue gives back.
func BenchmarkIndexAllocRelease(b *testing.B) {
	a := newIndexAllocator()
	held, err := a.alloc(1 << 20)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for k := 0; k < b.N; k++ {
		at := k * 64 % len(held)
		batch := held[at : at+64]
		a.release(batch)
		idx, err := a.alloc(64)
		if err != nil {
			b.Fatal(err)
		}
		copy(batch, idx)
	}
}
