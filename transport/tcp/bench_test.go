package tcp

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/storage"
)

// BenchmarkWriteRead moves size bytes to a unit and back per iteration
// (Write, Read; the extents are freed in batches), next to a plain Go stream of the same bytes over the
// same kind of socket: the client writes them in 1 MiB writes, a goroutine
// reads them into a buffer and writes them back, the client reads them.
// Both report bytes moved in both directions.
//
//	go test -run '^$' -bench WriteRead -count 6 ./transport/tcp | tee new.txt
func BenchmarkWriteRead(b *testing.B) {
	for _, network := range []string{"tcp", "unix"} {
		for _, size := range []int{1 << 20, 64 << 20} {
			name := fmt.Sprintf("net=%s/size=%dMiB", network, size>>20)
			b.Run(name+"/impl=tq", func(b *testing.B) { benchTQ(b, network, size) })
			b.Run(name+"/impl=stream", func(b *testing.B) { benchStream(b, network, size) })
		}
	}
}

// benchExtent is the extent size the benchmark cuts its data into: a put
// of several column slices.
const benchExtent = 8 << 20

func benchTQ(b *testing.B, network string, size int) {
	ucfg := storage.DefaultConfig()
	ucfg.Capacity = 4 * max(int64(size), 64<<20)
	ucfg.SegmentSize = 2 * max(int64(size), 64<<20)
	tu := startUnit(b, network, ucfg, storage.ServerConfig{})
	tr := New(DefaultConfig())
	b.Cleanup(func() { tr.Close() })
	c, err := tr.Dial(b.Context(), engine.PeerInfo{Unit: tu.u.ID(), Addr: tu.addr})
	if err != nil {
		b.Fatal(err)
	}
	src := make([]byte, size)
	for i := range src {
		src[i] = byte(i * 7)
	}
	dst := make([]byte, size)
	var extents [][][]byte
	var dsts [][]byte
	for at := 0; at < size; at += benchExtent {
		end := min(at+benchExtent, size)
		extents = append(extents, [][]byte{src[at:end]})
		dsts = append(dsts, dst[at:end])
	}
	ctx := b.Context()
	// Freed in batches, as clients free cells when rows are cleared.
	var stored []engine.RemoteAddr
	cycle := func() time.Duration {
		start := time.Now()
		addrs, err := c.Write(ctx, extents)
		if err != nil {
			b.Fatal(err)
		}
		if err := c.Read(ctx, addrs, dsts); err != nil {
			b.Fatal(err)
		}
		took := time.Since(start)
		if stored = append(stored, addrs...); len(stored) >= 16 {
			if err := c.Free(ctx, stored); err != nil {
				b.Fatal(err)
			}
			stored = stored[:0]
		}
		return took
	}
	cycle() // map the segments, open the connections
	lat := make([]time.Duration, 0, 1024)
	b.SetBytes(2 * int64(size))
	b.ReportAllocs()
	for b.Loop() {
		lat = append(lat, cycle())
	}
	report(b, lat, size)
}

func benchStream(b *testing.B, network string, size int) {
	l, _ := listen(b, network)
	served := make(chan struct{})
	go func() {
		defer close(served)
		nc, err := l.Accept()
		if err != nil {
			return
		}
		defer nc.Close()
		echo(nc, size)
	}()
	b.Cleanup(func() {
		l.Close()
		<-served
	})
	nc, err := net.Dial(l.Addr().Network(), l.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { nc.Close() })
	src := make([]byte, size)
	dst := make([]byte, size)
	var hdr [8]byte
	binary.LittleEndian.PutUint64(hdr[:], uint64(size))
	lat := make([]time.Duration, 0, 1024)
	b.SetBytes(2 * int64(size))
	b.ReportAllocs()
	for b.Loop() {
		start := time.Now()
		if _, err := nc.Write(hdr[:]); err != nil {
			b.Fatal(err)
		}
		for at := 0; at < size; at += 1 << 20 {
			if _, err := nc.Write(src[at:min(at+1<<20, size)]); err != nil {
				b.Fatal(err)
			}
		}
		if _, err := io.ReadFull(nc, dst); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	nc.Close()
	report(b, lat, size)
}

// echo reads length-prefixed messages into one buffer and writes each
// back in 1 MiB writes, until the connection ends.
func echo(nc net.Conn, size int) {
	buf := make([]byte, size)
	var hdr [8]byte
	for {
		if _, err := io.ReadFull(nc, hdr[:]); err != nil {
			return
		}
		n := int(binary.LittleEndian.Uint64(hdr[:]))
		if _, err := io.ReadFull(nc, buf[:n]); err != nil {
			return
		}
		for at := 0; at < n; at += 1 << 20 {
			if _, err := nc.Write(buf[at:min(at+1<<20, n)]); err != nil {
				return
			}
		}
	}
}

// report adds GB/s (both directions) and latency percentiles.
func report(b *testing.B, lat []time.Duration, size int) {
	if len(lat) == 0 {
		return
	}
	var total time.Duration
	for _, d := range lat {
		total += d
	}
	b.ReportMetric(float64(2*size)*float64(len(lat))/total.Seconds()/1e9, "GB/s")
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}
