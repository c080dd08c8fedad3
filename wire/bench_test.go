package wire

import (
	"context"
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/wire/wirepb"
)

// BenchmarkRoundTrip measures one request and its reply through Conn and
// Server over a real socket: an echo of size payload bytes, served by an
// inline handler from an event loop (loop; 1 MiB frames are too large for
// one, and go to the connection's goroutine) or from the connection's
// goroutine (inline: the server has no loops), or in a goroutine of its
// own. Allocations count both sides (they share the process).
//
//	go test -run '^$' -bench RoundTrip -count 6 ./wire | tee new.txt
func BenchmarkRoundTrip(b *testing.B) {
	for _, network := range []string{"tcp", "unix"} {
		for _, handler := range []string{"loop", "inline", "goroutine"} {
			for _, size := range []int{0, 4 << 10, 1 << 20} {
				name := fmt.Sprintf("net=%s/handler=%s/size=%s", network, handler, sizeName(size))
				b.Run(name, func(b *testing.B) { benchRoundTrip(b, network, handler, size) })
			}
		}
	}
}

// BenchmarkRoundTripParallel runs small echoes from many goroutines on one
// connection, where the writer combines frames.
func BenchmarkRoundTripParallel(b *testing.B) {
	for _, handler := range []string{"loop", "inline", "goroutine"} {
		b.Run("net=unix/handler="+handler, func(b *testing.B) {
			c, op := benchConn(b, "unix", handler)
			b.ReportAllocs()
			b.SetParallelism(8)
			b.RunParallel(func(pb *testing.PB) {
				var reply wirepb.Ping
				for pb.Next() {
					if err := c.Do(context.Background(), op, &wirepb.Ping{Nonce: 1}, nil, &reply, nil); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

func sizeName(n int) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%dMiB", n>>20)
	case n >= 1<<10:
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprintf("%dB", n)
}

// benchConn connects to a server of echo; handler is "loop", "inline" or
// "goroutine" (see BenchmarkRoundTrip).
func benchConn(b *testing.B, network string, handler string) (*Conn, Op) {
	cfg := ServerConfig{Loops: -1}
	if handler == "loop" {
		cfg.Loops = 0
	}
	s := NewServer(cfg)
	op := Op(210)
	if handler == "goroutine" {
		s.Handle(op, echo)
	} else {
		s.HandleInline(op, echo)
	}
	var l net.Listener
	var err error
	if network == "unix" {
		l, err = net.Listen("unix", b.TempDir()+"/s.sock")
	} else {
		l, err = net.Listen("tcp", "127.0.0.1:0")
	}
	if err != nil {
		b.Fatal(err)
	}
	go s.Serve(l)
	b.Cleanup(func() { s.Close() })
	c, _, err := Dial(b.Context(), FormatAddr(network, l.Addr().String()), &wirepb.Hello{Role: "client"}, ConnConfig{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c, op
}

func benchRoundTrip(b *testing.B, network string, handler string, size int) {
	c, op := benchConn(b, network, handler)
	payload := make([]byte, size)
	dst := make([]byte, size)
	var out net.Buffers
	if size > 0 {
		out = net.Buffers{payload}
	}
	into := func(Header, proto.Message) ([][]byte, error) { return [][]byte{dst}, nil }
	var reply wirepb.Ping
	ctx := context.Background()
	lat := make([]time.Duration, 0, 1<<16)
	b.SetBytes(int64(2 * size))
	b.ReportAllocs()
	for b.Loop() {
		start := time.Now()
		if err := c.Do(ctx, op, &wirepb.Ping{Nonce: 1}, out, &reply, into); err != nil {
			b.Fatal(err)
		}
		if len(lat) < cap(lat) {
			lat = append(lat, time.Since(start))
		}
	}
	slices.Sort(lat)
	if len(lat) > 0 {
		b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
		b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
	}
}
