package storage

// These measure how long one request naming many items (the wire's limit,
// wire.MaxSegments) holds the unit's lock: another client's small request
// made meanwhile waits behind it. Each reports the big call's time and the
// longest wait of a small Acquire issued every 100 µs while it runs
// (max-lock-wait-ms and max-get-ms; p50 and p99 of the lock waits).

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
)

const lockHoldItems = wire.MaxSegments

func lockHoldUnit(b *testing.B, capacity int64) *Unit {
	b.Helper()
	cfg := DefaultConfig()
	cfg.Capacity = capacity
	cfg.SegmentSize = 64 << 20
	u, err := NewUnit(1, cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { u.Close() })
	return u
}

// commitOne reserves and commits one extent of n bytes.
func commitOne(b *testing.B, u *Unit, n int64) engine.RemoteAddr {
	b.Helper()
	r, err := u.Reserve(b.Context(), []int64{n})
	if err != nil {
		b.Fatal(err)
	}
	if err := r.Commit(); err != nil {
		b.Fatal(err)
	}
	return r.Addr(0)
}

// cellsOf cuts a into n cells of equal length.
func cellsOf(a engine.RemoteAddr, n int) []engine.RemoteAddr {
	cells := make([]engine.RemoteAddr, n)
	step := a.Len / uint64(n)
	for i := range cells {
		cells[i] = engine.RemoteAddr{Segment: a.Segment, Gen: a.Gen, Offset: a.Offset + uint64(i)*step, Len: step}
	}
	return cells
}

// probeWhile runs big once while another goroutine, every 100 µs, takes
// the unit's lock and lets go (how long a caller waits for it) and then
// acquires small (a small GET). It returns big's time and the longest of
// each wait.
func probeWhile(b *testing.B, u *Unit, small []engine.RemoteAddr, big func()) (took time.Duration, worst holdWaits) {
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	started := make(chan struct{})
	go func() {
		defer wg.Done()
		close(started)
		for !stop.Load() {
			t := time.Now()
			u.mu.Lock()
			d := time.Since(t)
			u.mu.Unlock()
			worst.lock = max(worst.lock, d)
			worst.waits = append(worst.waits, d)
			t = time.Now()
			l, err := u.Acquire(small)
			d = time.Since(t)
			if err != nil {
				b.Error(err)
				return
			}
			l.Release()
			worst.get = max(worst.get, d)
			time.Sleep(100 * time.Microsecond)
		}
	}()
	<-started
	time.Sleep(time.Millisecond)
	t := time.Now()
	big()
	took = time.Since(t)
	stop.Store(true)
	wg.Wait()
	return took, worst
}

// holdWaits are the longest waits of probeWhile's probes.
type holdWaits struct {
	lock, get time.Duration
	waits     []time.Duration // every lock wait
}

func reportHold(b *testing.B, prefix string, took []time.Duration, worst []holdWaits) {
	var t time.Duration
	var w holdWaits
	for i := range took {
		t += took[i]
		w.lock = max(w.lock, worst[i].lock)
		w.get = max(w.get, worst[i].get)
		w.waits = append(w.waits, worst[i].waits...)
	}
	slices.Sort(w.waits)
	if n := len(w.waits); n > 0 {
		b.ReportMetric(float64(w.waits[n/2].Microseconds())/1e3, prefix+"p50-lock-wait-ms")
		b.ReportMetric(float64(w.waits[n*99/100].Microseconds())/1e3, prefix+"p99-lock-wait-ms")
	}
	b.ReportMetric(float64(t.Microseconds())/1e3/float64(len(took)), prefix+"call-ms")
	b.ReportMetric(float64(w.lock.Microseconds())/1e3, prefix+"max-lock-wait-ms")
	b.ReportMetric(float64(w.get.Microseconds())/1e3, prefix+"max-get-ms")
}

func BenchmarkLockHold(b *testing.B) {
	b.Run("op=acquire", func(b *testing.B) {
		u := lockHoldUnit(b, 256<<20)
		small := []engine.RemoteAddr{commitOne(b, u, 64)}
		cells := cellsOf(commitOne(b, u, lockHoldItems*8), lockHoldItems)
		var took []time.Duration
		var worst []holdWaits
		for b.Loop() {
			var l *Lease
			t, w := probeWhile(b, u, small, func() {
				var err error
				if l, err = u.Acquire(cells); err != nil {
					b.Fatal(err)
				}
			})
			l.Release()
			took, worst = append(took, t), append(worst, w)
		}
		reportHold(b, "", took, worst)
	})
	b.Run("op=release", func(b *testing.B) {
		u := lockHoldUnit(b, 256<<20)
		small := []engine.RemoteAddr{commitOne(b, u, 64)}
		cells := cellsOf(commitOne(b, u, lockHoldItems*8), lockHoldItems)
		var took []time.Duration
		var worst []holdWaits
		for b.Loop() {
			l, err := u.Acquire(cells)
			if err != nil {
				b.Fatal(err)
			}
			t, w := probeWhile(b, u, small, l.Release)
			took, worst = append(took, t), append(worst, w)
		}
		reportHold(b, "", took, worst)
	})
	b.Run("op=free", func(b *testing.B) {
		u := lockHoldUnit(b, 256<<20)
		small := []engine.RemoteAddr{commitOne(b, u, 64)}
		var took []time.Duration
		var worst []holdWaits
		for b.Loop() {
			b.StopTimer()
			cells := cellsOf(commitOne(b, u, lockHoldItems*8), lockHoldItems)
			b.StartTimer()
			t, w := probeWhile(b, u, small, func() {
				if err := u.Free(cells); err != nil {
					b.Fatal(err)
				}
			})
			took, worst = append(took, t), append(worst, w)
		}
		reportHold(b, "", took, worst)
	})
	b.Run("op=free-4096-extents", func(b *testing.B) {
		u := lockHoldUnit(b, 256<<20)
		small := []engine.RemoteAddr{commitOne(b, u, 64)}
		var took []time.Duration
		var worst []holdWaits
		for b.Loop() {
			b.StopTimer()
			cells := make([]engine.RemoteAddr, 0, lockHoldItems)
			for range 4096 {
				cells = append(cells, cellsOf(commitOne(b, u, lockHoldItems/4096*8), lockHoldItems/4096)...)
			}
			b.StartTimer()
			t, w := probeWhile(b, u, small, func() {
				if err := u.Free(cells); err != nil {
					b.Fatal(err)
				}
			})
			took, worst = append(took, t), append(worst, w)
		}
		reportHold(b, "", took, worst)
	})
	b.Run("op=reserve", func(b *testing.B) {
		u := lockHoldUnit(b, 1<<30)
		small := []engine.RemoteAddr{commitOne(b, u, 64)}
		sizes := make([]int64, lockHoldItems)
		for i := range sizes {
			sizes[i] = 64
		}
		var took []time.Duration
		var worst []holdWaits
		var tookA []time.Duration
		var worstA []holdWaits
		for b.Loop() {
			var r *Reservation
			t, w := probeWhile(b, u, small, func() {
				var err error
				if r, err = u.Reserve(b.Context(), sizes); err != nil {
					b.Fatal(err)
				}
			})
			took, worst = append(took, t), append(worst, w)
			t, w = probeWhile(b, u, small, r.Abort)
			tookA, worstA = append(tookA, t), append(worstA, w)
		}
		reportHold(b, "", took, worst)
		reportHold(b, "abort-", tookA, worstA)
	})
}

// BenchmarkStatsQuarantine measures Stats with extents=n extents that only
// leases in quarantine hold (their cells freed): each was walked under the
// unit's lock before Stats kept a running sum.
func BenchmarkStatsQuarantine(b *testing.B) {
	for _, n := range []int{1 << 10, 1 << 20} {
		b.Run(fmt.Sprintf("extents=%d", n), func(b *testing.B) {
			u := lockHoldUnit(b, 1<<30)
			sizes := make([]int64, n)
			for i := range sizes {
				sizes[i] = 64
			}
			r, err := u.Reserve(b.Context(), sizes)
			if err != nil {
				b.Fatal(err)
			}
			if err := r.Commit(); err != nil {
				b.Fatal(err)
			}
			addrs := make([]engine.RemoteAddr, n)
			for i := range addrs {
				addrs[i] = r.Addr(i)
			}
			l, err := u.Acquire(addrs)
			if err != nil {
				b.Fatal(err)
			}
			u.quarantineHolds(nil, []*Lease{l})
			if err := u.Free(addrs); err != nil {
				b.Fatal(err)
			}
			if got, want := u.Stats().Quarantined, int64(n)*64; got != want {
				b.Fatalf("got %d bytes in quarantine, want %d", got, want)
			}
			b.ReportAllocs()
			for b.Loop() {
				u.Stats()
			}
		})
	}
}
