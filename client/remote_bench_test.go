package client_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/engine"
)

// smallPut returns the reference small workload's 1024 keys and the
// commit of its 9 float32 fields of 32 KiB per row into given rows of
// partition "p".
func smallPut() ([]string, func(idx []uint64) engine.CommitRequest) {
	const rows, fields = 1024, 9
	keys := make([]string, rows)
	for i := range keys {
		keys[i] = fmt.Sprintf("test_key_%d", i)
	}
	return keys, func(idx []uint64) engine.CommitRequest {
		req := engine.CommitRequest{Partition: "p", Indexes: idx}
		for f := range fields {
			locs := make([]engine.CellLoc, rows)
			for i := range locs {
				locs[i] = engine.CellLoc{Unit: 1, Addr: engine.RemoteAddr{Segment: 1, Gen: 1, Offset: uint64(f*rows+i) * 32768, Len: 32768}}
			}
			req.Fields = append(req.Fields, engine.CommitField{Name: fmt.Sprintf("field_%02d", f), DType: engine.Float32, Kind: engine.Dense, Shape: engine.Shape{8192}, Locs: locs})
		}
		return req
	}
}

// BenchmarkRemoteMetaByKeys resolves the reference small workload's 1024
// keys × 9 fields over a unix socket to a controller in this process: the
// control cost in front of every KV get (encode, decode, one round trip).
func BenchmarkRemoteMetaByKeys(b *testing.B) {
	c, err := controller.New(controller.DefaultConfig())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	keys, commit := smallPut()
	m, err := c.ResolveKeys("p", keys, nil, true)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := c.Commit(commit(m.Indexes)); err != nil {
		b.Fatal(err)
	}
	_, addr := serveController(b, c, controller.ServerConfig{}, "unix")
	r := dialMeta(b, addr, client.RemoteConfig{})
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		meta, _, err := r.ResolveKeys(ctx, "p", keys, nil, false)
		if err != nil || meta.Len() != len(keys) {
			b.Fatal(meta, err)
		}
	}
}

// BenchmarkRemotePutControl is the controller's share of a KV put of the
// reference small workload (1024 keys × 9 fields) over a unix socket to a
// controller in this process: resolving the keys (creating them), then
// committing the cells; the clear that undoes it is timed apart. Each
// phase is reported next to the same call made in process, so the
// difference is the wire's cost. commit_keys is the same put as one
// COMMIT_KEYS, the KV API's way.
func BenchmarkRemotePutControl(b *testing.B) {
	c, err := controller.New(controller.DefaultConfig())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	keys, commit := smallPut()
	_, addr := serveController(b, c, controller.ServerConfig{}, "unix")
	r := dialMeta(b, addr, client.RemoteConfig{})
	ctx := context.Background()
	var resolve, resolveIn, put, putIn, clear, keysPut, keysPutIn time.Duration
	b.ReportAllocs()
	for b.Loop() {
		t0 := time.Now()
		m, _, err := r.ResolveKeys(ctx, "p", keys, nil, true)
		if err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := r.Commit(ctx, commit(m.Indexes)); err != nil {
			b.Fatal(err)
		}
		t2 := time.Now()
		if err := r.ClearKeys(ctx, "p", keys); err != nil {
			b.Fatal(err)
		}
		t3 := time.Now()
		if m, err = c.ResolveKeys("p", keys, nil, true); err != nil {
			b.Fatal(err)
		}
		t4 := time.Now()
		if _, err := c.Commit(commit(m.Indexes)); err != nil {
			b.Fatal(err)
		}
		t5 := time.Now()
		if _, err := c.ClearKeys("p", keys); err != nil {
			b.Fatal(err)
		}
		t6 := time.Now()
		req := commit(nil)
		keysReq := engine.KeysCommit{Partition: "p", Keys: keys, Fields: req.Fields}
		if _, err := r.CommitKeys(ctx, keysReq); err != nil {
			b.Fatal(err)
		}
		t7 := time.Now()
		if _, err := c.ClearKeys("p", keys); err != nil {
			b.Fatal(err)
		}
		t8 := time.Now()
		if _, err := c.CommitKeys(keysReq); err != nil {
			b.Fatal(err)
		}
		t9 := time.Now()
		if _, err := c.ClearKeys("p", keys); err != nil {
			b.Fatal(err)
		}
		resolve += t1.Sub(t0)
		put += t2.Sub(t1)
		clear += t3.Sub(t2)
		resolveIn += t4.Sub(t3)
		putIn += t5.Sub(t4)
		keysPut += t7.Sub(t6)
		keysPutIn += t9.Sub(t8)
	}
	us := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(b.N) }
	b.ReportMetric(us(resolve), "resolve_us")
	b.ReportMetric(us(resolveIn), "resolve_inproc_us")
	b.ReportMetric(us(put), "commit_us")
	b.ReportMetric(us(putIn), "commit_inproc_us")
	b.ReportMetric(us(clear), "clear_us")
	b.ReportMetric(us(keysPut), "commit_keys_us")
	b.ReportMetric(us(keysPutIn), "commit_keys_inproc_us")
}

// BenchmarkRemoteListKeysTags lists a partition of 20k keys, each with
// its own tags (a 240-byte string, an integer, a fraction), over a unix
// socket to a controller in this process: what a replay buffer's poll of
// its partitions costs, mostly the tags' JSON on both sides.
func BenchmarkRemoteListKeysTags(b *testing.B) {
	c, err := controller.New(controller.DefaultConfig())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	const n = 20_000
	keys := make([]string, n)
	tags := make([]engine.Tags, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("key-%07d", i)
		tags[i] = engine.Tags{"note": fmt.Sprintf("%0240d", i), "step": int64(i), "reward": float64(i) + 0.5}
	}
	m, err := c.ResolveKeys("p", keys, nil, true)
	if err != nil {
		b.Fatal(err)
	}
	if err := c.SetTags("p", m.Indexes, tags); err != nil {
		b.Fatal(err)
	}
	_, addr := serveController(b, c, controller.ServerConfig{}, "unix")
	r := dialMeta(b, addr, client.RemoteConfig{})
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		got, err := r.ListKeys(ctx, "p")
		if err != nil || len(got["p"]) != n {
			b.Fatal(len(got["p"]), err)
		}
	}
}
