//go:build linux && cgo && rdma

package rdma

import (
	"fmt"
	"testing"

	"github.com/tqgo/tq/engine"
)

// BenchmarkPostPoll is the software cost of one RDMA operation: build a
// work request, cross into C, ibv_post_send, and ibv_poll_cq until its
// completion arrives (an 8-byte READ: on the emulated device the copy is
// negligible, so this is post + poll + cgo; on hardware add the wire).
// Chains of n WRs show the cost per WR when one crossing posts many.
func BenchmarkPostPoll(b *testing.B) {
	for _, n := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("chain=%d", n), func(b *testing.B) {
			p := newPair(b, AccessLocalWrite|AccessRemoteRead|AccessRemoteWrite, HandshakeOpts{})
			wrs := make([]WR, n)
			sges := make([]SGE, n)
			for i := range wrs {
				sges[i] = SGE{Addr: p.laddr(8 * i), Length: 8, LKey: p.la.LKey}
				wrs[i] = WR{ID: uint64(i), RemoteAddr: p.raddr(8 * i), RKey: p.rb.RKey, Op: OpRead, FirstSGE: uint32(i), NumSGE: 1}
			}
			wrs[n-1].Signaled = 1 // one completion per chain, as the transport could
			wcs := make([]WC, 64)
			b.ResetTimer()
			for b.Loop() {
				if _, err := p.qa.Post(wrs, sges); err != nil {
					b.Fatal(err)
				}
				for got := 0; got == 0; {
					k, err := p.cqa.Poll(wcs)
					if err != nil {
						b.Fatal(err)
					}
					got = k
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/wr")
		})
	}
}

// BenchmarkSmallWorkload moves columns shaped like the reference small
// workload (bench.Small, simple case: 9 fields × 1024 rows × 8192 int32,
// 288 MiB; package bench imports this one, so the shape is restated) to a
// unit in another process and back over the emulated device, next to a
// copy() of the same bytes in the same run: put is RESERVE, RDMA WRITEs,
// RESERVE_COMMIT; get is ACQUIRE, RDMA READs, RELEASE.
func BenchmarkSmallWorkload(b *testing.B) {
	var extents [][][]byte
	var dst [][]byte
	var total int64
	for f := range 9 {
		d := prefault(1024 * 8192 * 4)
		for i := 0; i < len(d); i += 64 {
			d[i] = byte(f + i)
		}
		extents = append(extents, [][]byte{d})
		dst = append(dst, prefault(len(d)))
		total += int64(len(d))
	}
	b.Run("op=copy", func(b *testing.B) {
		b.SetBytes(total)
		for b.Loop() {
			for i, e := range extents {
				copy(dst[i], e[0])
			}
		}
	})
	b.Setenv("TQ_RDMA_TEST_CAPACITY", fmt.Sprint(total+total/4+64<<20))
	p := startUnitProc(b, testDevice(b), "")
	tr := New(Config{Device: testDevice(b)})
	defer tr.Close()
	c, err := tr.DialConn(b.Context(), engine.PeerInfo{Unit: 7, Incarnation: p.inc, Addr: p.addr})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	var addrs []engine.RemoteAddr
	b.Run("op=put", func(b *testing.B) {
		b.SetBytes(total)
		for b.Loop() {
			if addrs != nil {
				if err := c.Free(b.Context(), addrs); err != nil {
					b.Fatal(err)
				}
			}
			if addrs, err = c.Write(b.Context(), extents); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("op=get", func(b *testing.B) {
		b.SetBytes(total)
		for b.Loop() {
			if err := c.Read(b.Context(), addrs, dst); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func prefault(n int) []byte {
	b := make([]byte, n)
	for i := 0; i < n; i += 4096 {
		b[i] = 1
	}
	return b
}
