package shm

import (
	"fmt"
	"testing"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/storage"
)

// BenchmarkShm moves size bytes per iteration through a unit in this
// process, next to a plain copy() of the same bytes between two warm
// buffers:
//
//	op=copy   copy(dst, src): the memory-bandwidth baseline
//	op=write  Write: RESERVE, one chunked copy into the segment, COMMIT
//	op=read   Read: ACQUIRE, one chunked copy out of the segment, RELEASE
//	op=view   View + Release: no copy; the cost is the two requests
//
//	go test -run '^$' -bench Shm -count 6 ./transport/shm | tee new.txt
func BenchmarkShm(b *testing.B) {
	for _, size := range []int{1 << 20, 64 << 20} {
		name := fmt.Sprintf("size=%dMiB", size>>20)
		b.Run(name+"/op=copy", func(b *testing.B) { benchShm(b, size, "copy") })
		b.Run(name+"/op=write", func(b *testing.B) { benchShm(b, size, "write") })
		b.Run(name+"/op=read", func(b *testing.B) { benchShm(b, size, "read") })
		b.Run(name+"/op=view", func(b *testing.B) { benchShm(b, size, "view") })
	}
}

func benchShm(b *testing.B, size int, op string) {
	ucfg := storage.DefaultConfig()
	ucfg.Capacity = 4 * max(int64(size), 64<<20)
	ucfg.SegmentSize = 2 * max(int64(size), 64<<20)
	tu := startUnit(b, ucfg, storage.ServerConfig{})
	tr := New(DefaultConfig())
	b.Cleanup(func() { tr.Close() })
	c, err := tr.DialConn(b.Context(), engine.PeerInfo{Unit: tu.u.ID(), Addr: tu.addr})
	if err != nil {
		b.Fatal(err)
	}
	ctx := b.Context()
	src := make([]byte, size)
	for i := range src {
		src[i] = byte(i * 7)
	}
	dst := make([]byte, size)
	copy(dst, src) // fault both buffers in
	addrs, err := c.Write(ctx, [][][]byte{{src}})
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(size))
	b.ReportAllocs()
	switch op {
	case "copy":
		for b.Loop() {
			copy(dst, src)
		}
	case "write":
		for b.Loop() {
			got, err := c.Write(ctx, [][][]byte{{src}})
			if err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if err := c.Free(ctx, got); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	case "read":
		for b.Loop() {
			if err := c.Read(ctx, addrs, [][]byte{dst}); err != nil {
				b.Fatal(err)
			}
		}
	case "view":
		for b.Loop() {
			l, err := c.View(ctx, addrs)
			if err != nil {
				b.Fatal(err)
			}
			if len(l.Bytes(0)) != size {
				b.Fatal("short view")
			}
			l.Release()
		}
	}
}
