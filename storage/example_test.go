package storage_test

import (
	"context"
	"fmt"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/storage"
)

func ExampleUnit() {
	cfg := storage.DefaultConfig()
	cfg.Capacity = 4 << 20
	cfg.SegmentSize = 1 << 20
	u, err := storage.NewUnit(1, cfg)
	if err != nil {
		panic(err)
	}
	defer u.Close()

	// A put of one column slice: reserve, fill in place, commit.
	r, err := u.Reserve(context.Background(), []int64{11})
	if err != nil {
		panic(err)
	}
	copy(r.Buf(0), "hello world")
	if err := r.Commit(); err != nil {
		panic(err)
	}
	ext := r.Addr(0)

	// The controller cuts the extent into cells; a get leases them.
	hello := engine.RemoteAddr{Segment: ext.Segment, Gen: ext.Gen, Offset: ext.Offset, Len: 5}
	world := engine.RemoteAddr{Segment: ext.Segment, Gen: ext.Gen, Offset: ext.Offset + 6, Len: 5}
	l, err := u.Acquire([]engine.RemoteAddr{world, hello})
	if err != nil {
		panic(err)
	}
	fmt.Printf("%s %s\n", l.Bytes(0), l.Bytes(1))
	l.Release()

	// The cells are cleared: once every byte is freed the extent is gone.
	space := engine.RemoteAddr{Segment: ext.Segment, Gen: ext.Gen, Offset: ext.Offset + 5, Len: 1}
	if err := u.Free([]engine.RemoteAddr{hello, space, world}); err != nil {
		panic(err)
	}
	fmt.Println("extents:", u.Stats().Extents)
	// Output:
	// world hello
	// extents: 0
}
