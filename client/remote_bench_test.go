package client

import (
	"context"
	"fmt"
	"testing"

	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/engine"
)

// BenchmarkRemoteMetaByKeys resolves the reference small workload's 1024
// keys × 9 fields over a unix socket to a controller in this process: the
// control cost in front of every KV get (encode, decode, one round trip).
func BenchmarkRemoteMetaByKeys(b *testing.B) {
	c, err := controller.New(controller.DefaultConfig())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	const rows, fields = 1024, 9
	keys := make([]string, rows)
	for i := range keys {
		keys[i] = fmt.Sprintf("test_key_%d", i)
	}
	m, err := c.ResolveKeys("p", keys, nil, true)
	if err != nil {
		b.Fatal(err)
	}
	req := controller.CommitRequest{Partition: "p", Indexes: m.Indexes}
	for f := range fields {
		locs := make([]engine.CellLoc, rows)
		for i := range locs {
			locs[i] = engine.CellLoc{Unit: 1, Addr: engine.RemoteAddr{Segment: 1, Gen: 1, Offset: uint64(f*rows+i) * 32768, Len: 32768}}
		}
		req.Fields = append(req.Fields, controller.CommitField{Name: fmt.Sprintf("field_%02d", f), DType: engine.Float32, Kind: engine.Dense, Shape: engine.Shape{8192}, Locs: locs})
	}
	if _, err := c.Commit(req); err != nil {
		b.Fatal(err)
	}
	_, addr := serveController(b, c, controller.ServerConfig{}, "unix")
	r := dialMeta(b, addr, RemoteConfig{})
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		meta, _, err := r.ResolveKeys(ctx, "p", keys, nil, false)
		if err != nil || meta.Len() != rows {
			b.Fatal(meta, err)
		}
	}
}
