package storage

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/tqgo/tq/engine"
)

// TestReconcileFence walks the example of reconcile.go's comment: one
// segment with a confirmed extent, a freed one, one committed long ago,
// a reservation and one committed just now.
func TestReconcileFence(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const grace = time.Minute
		u := newTestUnit(t, testConfig())
		confirmed := put(t, u, pattern(1, 100))[0]
		freed := put(t, u, pattern(2, 100))[0]
		old := put(t, u, pattern(3, 100))[0]
		if err := u.Free([]engine.RemoteAddr{freed}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(grace)
		// The controller confirms the first: it references it.
		rep := ReconcileReport{Extents: []engine.RemoteAddr{confirmed}, Fences: []SegmentFence{{1, 1}}}
		if _, err := u.ApplyReconcile(rep, nil, nil); err != nil {
			t.Fatal(err)
		}
		r := reserve(t, u, 100)
		fresh := put(t, u, pattern(5, 100))[0]
		if got := []uint32{confirmed.Gen, freed.Gen, old.Gen, r.Addr(0).Gen, fresh.Gen}; !slices.Equal(got, []uint32{1, 2, 3, 4, 5}) {
			t.Fatalf("generations %v, want 1 to 5", got)
		}

		full, next, err := u.ReconcileFull(0, grace, 0)
		if err != nil {
			t.Fatal(err)
		}
		want := ReconcileReport{
			Full: true, Segments: []uint32{1}, Extents: []engine.RemoteAddr{confirmed, old, fresh},
			Fences: []SegmentFence{{1, 3}}, Last: true, LiveSegments: []uint32{1}, NextSegment: 2,
		}
		if diff := cmp.Diff(want, full); diff != "" || next != 2 {
			t.Errorf("full reconcile (-want +got), next %d:\n%s", next, diff)
		}
		periodic, err := u.ReconcilePeriodic(grace, 0)
		if err != nil {
			t.Fatal(err)
		}
		want = ReconcileReport{Extents: []engine.RemoteAddr{old}, Fences: []SegmentFence{{1, 3}}}
		if diff := cmp.Diff(want, periodic); diff != "" {
			t.Errorf("periodic reconcile (-want +got):\n%s", diff)
		}

		// The reservation commits: the fence moves up to the fresh
		// extent, which is in flight until the grace passes.
		if err := r.Commit(); err != nil {
			t.Fatal(err)
		}
		if full, _, _ = u.ReconcileFull(0, grace, 0); full.Fences[0].Gen != 3 {
			t.Errorf("fence right after the commit: %d, want 3", full.Fences[0].Gen)
		}
		time.Sleep(grace)
		if full, _, _ = u.ReconcileFull(0, grace, 0); full.Fences[0].Gen != 5 {
			t.Errorf("fence after the grace: %d, want 5", full.Fences[0].Gen)
		}
	})
}

// model of one extent for the reconcile property test.
type mExtent struct {
	addr      engine.RemoteAddr
	r         *Reservation // while reserved
	state     extentState  // 0: gone
	committed time.Time
	confirmed bool
}

// reconcileModel tracks every extent a test made on a unit.
type reconcileModel struct {
	u     *Unit
	exts  []*mExtent
	grace time.Duration
}

// segGen returns segment seg's generation counter: the highest handed
// out, which may be one the model never saw (a reservation that found no
// room gives its extents back, but not their generations).
func (m *reconcileModel) segGen(t *testing.T, seg uint32) uint32 {
	t.Helper()
	m.u.mu.Lock()
	defer m.u.mu.Unlock()
	s := m.u.byID[seg]
	if s == nil {
		t.Fatalf("no segment %d", seg)
	}
	for _, e := range m.exts {
		if e.addr.Segment == seg && e.addr.Gen > s.gen {
			t.Fatalf("segment %d handed out generation %d, counts %d", seg, e.addr.Gen, s.gen)
		}
	}
	return s.gen
}

func (m *reconcileModel) inFlight(e *mExtent, now time.Time) bool {
	return e.state == extentReserved || e.state == extentCommitted && !e.confirmed && now.Sub(e.committed) < m.grace
}

// fence is the model's fence of segment seg.
func (m *reconcileModel) fence(t *testing.T, seg uint32, now time.Time) uint32 {
	t.Helper()
	f := m.segGen(t, seg)
	for _, e := range m.exts {
		if e.addr.Segment == seg && m.inFlight(e, now) && e.addr.Gen <= f {
			f = e.addr.Gen - 1
		}
	}
	return f
}

// checkFences fails unless every fence of rep is the model's, and so
// below every extent in flight in its segment.
func (m *reconcileModel) checkFences(t *testing.T, rep ReconcileReport, now time.Time) {
	t.Helper()
	for _, f := range rep.Fences {
		for _, e := range m.exts {
			if e.addr.Segment == f.Segment && m.inFlight(e, now) && e.addr.Gen <= f.Gen {
				t.Fatalf("fence %d of segment %d is at or above generation %d, in flight (state %d)", f.Gen, f.Segment, e.addr.Gen, e.state)
			}
		}
		if want := m.fence(t, f.Segment, now); f.Gen != want {
			t.Fatalf("fence of segment %d is %d, want %d", f.Segment, f.Gen, want)
		}
	}
}

// TestReconcileProperty drives a unit with random reservations, commits,
// aborts, frees, time and reconciles against a model: fences are exact
// (never at or above an extent in flight), reports hold exactly what
// they should, and applying an answer — even one naming extents it must
// not free — frees only reported extents at or below their fence, never a
// reserved or unlisted one.
func TestReconcileProperty(t *testing.T) {
	for seed := range uint64(8) {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) { reconcileProperty(t, seed) })
		})
	}
}

func reconcileProperty(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 99))
	cfg := testConfig()
	cfg.SegmentSize = minSegmentSize
	cfg.Capacity = 1 << 20
	cfg.ReserveTimeout = 24 * time.Hour
	u := newTestUnit(t, cfg)
	m := &reconcileModel{u: u, grace: 10 * time.Second}
	pick := func(state extentState) *mExtent {
		var c []*mExtent
		for _, e := range m.exts {
			if e.state == state {
				c = append(c, e)
			}
		}
		if len(c) == 0 {
			return nil
		}
		return c[rng.IntN(len(c))]
	}
	for step := range 600 {
		switch op := rng.IntN(10); {
		case op < 3: // reserve
			sizes := make([]int64, 1+rng.IntN(3))
			for i := range sizes {
				sizes[i] = 1 + rng.Int64N(16<<10)
			}
			// Full: give up after a (fake) second, long before the
			// reaper would expire the open reservations.
			ctx, cancel := context.WithTimeout(t.Context(), time.Second)
			r, err := u.Reserve(ctx, sizes)
			cancel()
			if errors.Is(err, engine.ErrCapacity) {
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			for i := range sizes {
				a := r.Addr(i)
				m.exts = append(m.exts, &mExtent{addr: a, r: r, state: extentReserved})
			}
		case op < 5: // commit or abort a reservation
			e := pick(extentReserved)
			if e == nil {
				continue
			}
			r := e.r
			commit := rng.IntN(4) != 0
			if commit {
				if err := r.Commit(); err != nil {
					t.Fatal(err)
				}
			} else {
				r.Abort()
			}
			for _, x := range m.exts {
				if x.r == r {
					x.r = nil
					if commit {
						x.state, x.committed = extentCommitted, time.Now()
					} else {
						x.state = 0
					}
				}
			}
		case op < 6: // a client frees a committed extent's cells
			e := pick(extentCommitted)
			if e == nil {
				continue
			}
			if err := u.Free([]engine.RemoteAddr{e.addr}); err != nil {
				t.Fatal(err)
			}
			e.state = 0
		case op < 8:
			time.Sleep(time.Duration(rng.Int64N(int64(m.grace))))
		default:
			reconcileStep(t, u, m, rng, rng.IntN(2) == 0)
		}
		checkModel(t, u, m, step)
	}
	for _, e := range m.exts {
		if e.r != nil {
			e.r.Abort()
		}
	}
}

// reconcileStep runs a full or periodic reconcile against the model and
// answers it like a controller that references a random half of what it
// is told about, and also names extents it must not free.
func reconcileStep(t *testing.T, u *Unit, m *reconcileModel, rng *rand.Rand, full bool) {
	t.Helper()
	maxExtents := 1 + rng.IntN(6)
	var from uint32
	var covered []uint32
	for {
		now := time.Now()
		var rep ReconcileReport
		var err error
		if full {
			rep, from, err = u.ReconcileFull(from, m.grace, maxExtents)
		} else {
			rep, err = u.ReconcilePeriodic(m.grace, maxExtents)
		}
		if err != nil {
			t.Fatal(err)
		}
		m.checkFences(t, rep, now)
		checkReport(t, m, rep, now, maxExtents)
		covered = append(covered, rep.Segments...)
		if full && rep.Last {
			var live []uint32
			for _, s := range u.Segments() {
				live = append(live, s.ID)
			}
			slices.Sort(live)
			if !slices.Equal(rep.LiveSegments, live) || !slices.Equal(covered, live) {
				t.Fatalf("full reconcile covered %v, last page lists %v live, unit has %v", covered, rep.LiveSegments, live)
			}
		}

		// The answer: a random half of the reported extents, plus
		// extents that were not reported (reserved, committed or gone).
		fences := map[uint32]uint32{}
		for _, f := range rep.Fences {
			fences[f.Segment] = f.Gen
		}
		reported := map[engine.RemoteAddr]bool{}
		var free []engine.RemoteAddr
		for _, a := range rep.Extents {
			reported[a] = true
			if rng.IntN(2) == 0 {
				free = append(free, a)
			}
		}
		for _, e := range m.exts {
			if !reported[e.addr] && rng.IntN(8) == 0 {
				free = append(free, e.addr)
			}
		}
		rng.Shuffle(len(free), func(i, j int) { free[i], free[j] = free[j], free[i] })
		wantFreed := 0
		inFree := map[engine.RemoteAddr]bool{}
		for _, a := range free {
			inFree[a] = true
		}
		for _, e := range m.exts {
			if !reported[e.addr] || e.state != extentCommitted {
				continue
			}
			if f, ok := fences[e.addr.Segment]; !ok || e.addr.Gen > f {
				continue // above its fence: not judged
			}
			if inFree[e.addr] {
				e.state = 0
				wantFreed++
			} else {
				e.confirmed = true
			}
		}
		got, err := u.ApplyReconcile(rep, free, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got != wantFreed {
			t.Fatalf("ApplyReconcile freed %d extents, want %d", got, wantFreed)
		}
		if !full || rep.Last {
			return
		}
	}
}

// checkReport fails unless rep lists exactly the extents it should.
func checkReport(t *testing.T, m *reconcileModel, rep ReconcileReport, now time.Time, maxExtents int) {
	t.Helper()
	var want []engine.RemoteAddr
	if rep.Full {
		if len(rep.Extents) > maxExtents && len(rep.Segments) != 1 {
			t.Fatalf("a page of %d segments lists %d extents, more than %d", len(rep.Segments), len(rep.Extents), maxExtents)
		}
		for _, e := range m.exts {
			if e.state == extentCommitted && slices.Contains(rep.Segments, e.addr.Segment) {
				want = append(want, e.addr)
			}
		}
		var fenced []uint32
		for _, f := range rep.Fences {
			fenced = append(fenced, f.Segment)
		}
		if !slices.Equal(fenced, rep.Segments) {
			t.Fatalf("page covers segments %v, fences %v", rep.Segments, fenced)
		}
	} else {
		for _, e := range m.exts {
			if e.state == extentCommitted && !e.confirmed && now.Sub(e.committed) >= m.grace && e.addr.Gen <= m.fence(t, e.addr.Segment, now) {
				want = append(want, e.addr)
			}
		}
	}
	less := func(a, b engine.RemoteAddr) bool {
		return a.Segment < b.Segment || a.Segment == b.Segment && a.Offset < b.Offset
	}
	if !rep.Full && len(want) > maxExtents {
		// Capped: the first maxExtents in (segment, offset) order.
		slices.SortFunc(want, func(a, b engine.RemoteAddr) int {
			if less(a, b) {
				return -1
			}
			return 1
		})
		want = want[:maxExtents]
	}
	if diff := cmp.Diff(want, rep.Extents, cmpopts.SortSlices(less), cmpopts.EquateEmpty()); diff != "" {
		t.Fatalf("report (full %v) extents (-want +got):\n%s", rep.Full, diff)
	}
}

// checkModel fails unless the unit holds exactly the model's extents in
// their states.
func checkModel(t *testing.T, u *Unit, m *reconcileModel, step int) {
	t.Helper()
	u.mu.Lock()
	defer u.mu.Unlock()
	n := 0
	for _, e := range m.exts {
		got := u.extentAt(e.addr)
		switch {
		case e.state == 0 && got != nil:
			t.Fatalf("step %d: extent %v is gone in the model, the unit has it (state %d)", step, e.addr, got.state)
		case e.state != 0 && (got == nil || got.state != e.state || got.confirmed != e.confirmed || e.state == extentCommitted && len(got.live) != 1):
			t.Fatalf("step %d: extent %v: model state %d confirmed %v, unit %+v", step, e.addr, e.state, e.confirmed, got)
		}
		if e.state != 0 {
			n++
		}
	}
	if n != u.extents {
		t.Fatalf("step %d: the model has %d extents, the unit %d", step, n, u.extents)
	}
}

// TestFreeRangesProperty frees random ranges — cells, runs of cells,
// ranges overlapping freed bytes, stale generations, nonsense — twice
// each, against a model of each extent's live bytes: the second time
// changes nothing, live bytes match the model, and an extent goes back to
// the pool exactly when its last byte is freed and no lease holds it.
func TestFreeRangesProperty(t *testing.T) {
	for seed := range uint64(8) {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) { freeRangesProperty(t, seed) })
	}
}

func freeRangesProperty(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 7))
	u := newTestUnit(t, testConfig())
	type mext struct {
		addr  engine.RemoteAddr
		live  []bool // per byte
		lease *Lease
		gone  bool
	}
	var exts []*mext
	liveOf := func(e *mext) []span {
		var out []span
		for i, l := range e.live {
			if !l {
				continue
			}
			off := int64(e.addr.Offset) + int64(i)
			if n := len(out); n > 0 && out[n-1].end == off {
				out[n-1].end++
			} else {
				out = append(out, span{off, off + 1})
			}
		}
		return out
	}
	for step := range 400 {
		if len(exts) < 4 || rng.IntN(4) == 0 {
			for _, a := range put(t, u, pattern(uint64(step), 1+rng.IntN(1500))) {
				exts = append(exts, &mext{addr: a, live: slices.Repeat([]bool{true}, int(a.Len))})
			}
		}
		var ranges []engine.RemoteAddr
		for range 1 + rng.IntN(5) {
			e := exts[rng.IntN(len(exts))]
			lo := rng.Uint64N(e.addr.Len)
			hi := lo + 1 + rng.Uint64N(e.addr.Len-lo)
			a := engine.RemoteAddr{Segment: e.addr.Segment, Gen: e.addr.Gen, Offset: e.addr.Offset + lo, Len: hi - lo}
			switch rng.IntN(10) {
			case 0:
				a.Gen += 1 << 20 // a generation the segment never had: skipped
			case 1:
				a.Segment += 100 // no such segment
			case 2:
				a.Len = 0
			default:
				if !e.gone {
					for i := lo; i < hi; i++ {
						e.live[i] = false
					}
				}
			}
			ranges = append(ranges, a)
		}
		if e := exts[rng.IntN(len(exts))]; e.lease == nil && !e.gone && rng.IntN(4) == 0 {
			// A lease on live bytes keeps the extent past its last free.
			for _, s := range liveOf(e) {
				l, err := u.Acquire([]engine.RemoteAddr{{Segment: e.addr.Segment, Gen: e.addr.Gen, Offset: uint64(s.off), Len: uint64(s.end - s.off)}})
				if err != nil {
					t.Fatalf("step %d: Acquire of live bytes %v of %v: %v", step, s, e.addr, err)
				}
				e.lease = l
				break
			}
		}
		for pass := range 2 {
			n, err := u.FreeRanges(ranges)
			if err != nil {
				t.Fatal(err)
			}
			if pass == 1 && n != 0 {
				t.Fatalf("step %d: the same ranges again freed %d of them", step, n)
			}
		}
		if e := exts[rng.IntN(len(exts))]; e.lease != nil && rng.IntN(2) == 0 {
			e.lease.Release()
			e.lease = nil
		}
		u.mu.Lock()
		for _, e := range exts {
			if e.gone {
				continue
			}
			live := liveOf(e)
			got := u.extentAt(e.addr)
			switch {
			case len(live) == 0 && e.lease == nil:
				if got != nil {
					u.mu.Unlock()
					t.Fatalf("step %d: extent %v has no live byte and no lease but is still held", step, e.addr)
				}
				e.gone = true
			case got == nil || got.state != extentCommitted:
				u.mu.Unlock()
				t.Fatalf("step %d: extent %v with live bytes %v or a lease is gone", step, e.addr, live)
			case !slices.Equal(got.live, live) && !(len(got.live) == 0 && len(live) == 0):
				u.mu.Unlock()
				t.Fatalf("step %d: extent %v live %v, want %v", step, e.addr, got.live, live)
			}
		}
		u.mu.Unlock()
	}
	for _, e := range exts {
		if e.lease != nil {
			e.lease.Release()
		}
	}
	var all []engine.RemoteAddr
	for _, e := range exts {
		all = append(all, e.addr)
	}
	if _, err := u.FreeRanges(all); err != nil {
		t.Fatal(err)
	}
	if st := u.Stats(); st.Extents != 0 || st.Used != 0 || st.Leases != 0 {
		t.Errorf("after freeing everything: %+v", st)
	}
}

// A reservation that can never commit — a held one that expired, or one
// whose session ended into quarantine — keeps its extents but is not in
// flight: an extent committed after it in its segment is reported, and
// the segment's fence passes it. It used to hold the fence below itself,
// so nothing committed after it could be freed or confirmed until its
// client aborted it or the quarantine ended.
func TestOrphanReservationDoesNotHoldTheFence(t *testing.T) {
	const grace = time.Minute
	for _, tc := range []struct {
		name   string
		orphan func(t *testing.T, u *Unit, r *Reservation)
	}{
		{name: "expired while held", orphan: func(t *testing.T, u *Unit, r *Reservation) {
			time.Sleep(u.cfg.ReserveTimeout + time.Second) // the reaper expires it
		}},
		{name: "in quarantine", orphan: func(t *testing.T, u *Unit, r *Reservation) {
			u.quarantineHolds([]*Reservation{r}, nil)
			t.Cleanup(u.quarantineEnded)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				cfg := testConfig()
				cfg.ReserveTimeout = time.Minute
				u := newTestUnit(t, cfg)
				orphaned, err := u.ReserveHeld(t.Context(), []int64{100})
				if err != nil {
					t.Fatal(err)
				}
				defer orphaned.Abort()
				tc.orphan(t, u, orphaned)
				if st := u.Stats(); st.OpenReservations != 0 {
					t.Fatalf("open reservations: got %d, want 0", st.OpenReservations)
				}
				later := put(t, u, pattern(1, 100))[0]
				if later.Segment != orphaned.Addr(0).Segment || later.Gen <= orphaned.Addr(0).Gen {
					t.Fatalf("committed %v, not after the orphan %v in its segment", later, orphaned.Addr(0))
				}
				time.Sleep(grace)

				periodic, err := u.ReconcilePeriodic(grace, 0)
				if err != nil {
					t.Fatal(err)
				}
				want := ReconcileReport{Extents: []engine.RemoteAddr{later}, Fences: []SegmentFence{{later.Segment, later.Gen}}}
				if diff := cmp.Diff(want, periodic); diff != "" {
					t.Errorf("periodic reconcile (-want +got):\n%s", diff)
				}
				full, _, err := u.ReconcileFull(0, grace, 0)
				if err != nil {
					t.Fatal(err)
				}
				if got := full.Fences; !slices.Equal(got, []SegmentFence{{later.Segment, later.Gen}}) {
					t.Errorf("full reconcile's fences: got %v, want %v", got, []SegmentFence{{later.Segment, later.Gen}})
				}
				// The controller names no cell of it: the unit frees it, and
				// not the orphan's extents, which its client may still fill.
				if _, err := u.ApplyReconcile(periodic, []engine.RemoteAddr{later}, nil); err != nil {
					t.Fatal(err)
				}
				if st := u.Stats(); st.Extents != 1 {
					t.Errorf("extents after the reconcile freed the later one: got %d, want 1 (the orphan's)", st.Extents)
				}
			})
		})
	}
}

// TestReconcilePeriodicBesideSegmentDrops: a periodic reconcile walks a
// copy of the segment list while Reserves drop empty segments to map
// larger ones (and retire them outside the lock); it must not read what a
// retire writes (-race caught its retired flag once).
func TestReconcilePeriodicBesideSegmentDrops(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Capacity = 256 << 10
	cfg.SegmentSize = 64 << 10
	u := newTestUnit(t, cfg)
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		for {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			if _, err := u.ReconcilePeriodic(0, 0); err != nil {
				done <- err
				return
			}
		}
	}()
	rng := rand.New(rand.NewPCG(1, 2))
	drops := 0
	for i := 0; i < 3000 && drops < 200; i++ {
		r, err := u.Reserve(engine.WithoutWait(t.Context()), []int64{int64(1 + rng.IntN(250<<10))})
		if errors.Is(err, engine.ErrCapacity) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		r.Abort()
		u.mu.Lock()
		drops = len(u.retired)
		u.mu.Unlock()
	}
	close(stop)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if drops == 0 {
		t.Fatal("no segment was dropped: the test tests nothing")
	}
}

// TestFreeRangesManyLinear frees the ranges of one fragmented extent in
// the orders that make cutting them one by one quadratic (each cut shifts
// every span after it), as [TestFreeManyCellsLinear] does for Free: a
// controller's free list (UNIT_SYNC) may hold about a million ranges, and
// the unit's lock is held throughout. Then ranges that overlap each other
// and freed bytes: each counts only if it freed a byte no earlier range of
// the call freed.
func TestFreeRangesManyLinear(t *testing.T) {
	cfg := testConfig()
	cfg.SegmentSize = 4 << 20
	u := newTestUnit(t, cfg)
	const n = 1 << 20
	a := put(t, u, make([]byte, 2*n))[0]
	cells := cut(a, 2*n)[:n] // the extent's second half stays live
	var odd, even []engine.RemoteAddr
	for i := n - 1; i >= 0; i-- {
		if i%2 == 1 {
			odd = append(odd, cells[i])
		}
	}
	for i := 0; i < n; i += 2 {
		junk := engine.RemoteAddr{Segment: a.Segment, Gen: a.Gen + 1, Offset: a.Offset, Len: 1} // no such generation
		even = append(even, cells[i], engine.RemoteAddr{Segment: 9, Offset: 1 << 40}, junk)
	}
	for _, step := range []struct {
		name   string
		ranges []engine.RemoteAddr
		want   int
	}{
		{"odd cells, last first", odd, n / 2},
		{"odd cells again", odd, 0},
		{"even cells, first first", even, n / 2},
	} {
		start := time.Now()
		got, err := u.FreeRanges(step.ranges)
		if err != nil {
			t.Fatalf("FreeRanges(%s): %v", step.name, err)
		}
		// Linear work is well under a second idle; quadratic would be
		// hours. The bound leaves room for a loaded machine under -race
		// (6.9 s seen with 5 s).
		if d := time.Since(start); d > time.Minute {
			t.Errorf("FreeRanges(%d %s) held the unit for %v, want well under a minute", len(step.ranges), step.name, d)
		}
		if got != step.want {
			t.Errorf("FreeRanges(%s) freed bytes of %d ranges, want %d", step.name, got, step.want)
		}
	}
	if got := u.Stats(); got.Extents != 1 {
		t.Fatalf("with half the extent live: %d extents, want 1", got.Extents)
	}
	// Of the live half [n, 2n): [n, n+10) frees; [n+5, n+10) and [n-5, n+5)
	// only overlap it; [n+8, n+20) frees [n+10, n+20); the whole extent
	// frees the rest; the whole extent again frees nothing.
	at := func(lo, hi uint64) engine.RemoteAddr {
		return engine.RemoteAddr{Segment: a.Segment, Gen: a.Gen, Offset: a.Offset + lo, Len: hi - lo}
	}
	got, err := u.FreeRanges([]engine.RemoteAddr{at(n, n+10), at(n+5, n+10), at(n-5, n+5), at(n+8, n+20), a, a})
	if err != nil {
		t.Fatal(err)
	}
	if got != 3 {
		t.Errorf("overlapping ranges: %d freed bytes, want 3", got)
	}
	if got := u.Stats(); got.Used != 0 || got.Extents != 0 {
		t.Errorf("after freeing every byte: used %d in %d extents, want none", got.Used, got.Extents)
	}
}

// TestApplyReconcileKeep: the controller's keep ranges name the bytes of
// a reported extent that cells still reference; the unit frees the rest.
// A keep range whose end overflows (offset+len past 2^64: no controller
// sends one, but it comes off the wire) used to wrap to a small end, and
// the unit freed the very bytes it named, data the controller still
// references. Now the answer is refused whole, with an error naming the
// range, and nothing is freed.
func TestApplyReconcileKeep(t *testing.T) {
	u := newTestUnit(t, testConfig())
	r, err := u.Reserve(t.Context(), []int64{4096})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Commit(); err != nil {
		t.Fatal(err)
	}
	ext := r.Addr(0)
	cell := func(off, n uint64) engine.RemoteAddr {
		return engine.RemoteAddr{Segment: ext.Segment, Gen: ext.Gen, Offset: ext.Offset + off, Len: n}
	}
	report := func() ReconcileReport {
		t.Helper()
		rep, _, err := u.ReconcileFull(0, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(rep.Extents) != 1 || rep.Extents[0] != ext {
			t.Fatalf("report lists %v, want [%v]", rep.Extents, ext)
		}
		return rep
	}
	live := func(a engine.RemoteAddr) bool {
		l, err := u.Acquire([]engine.RemoteAddr{a})
		if err != nil {
			return false
		}
		l.Release()
		return true
	}

	// Wrapping: [2048, 2048+len) with len wrapping the end to 1024.
	wrap := cell(2048, 1<<64-1024)
	_, err = u.ApplyReconcile(report(), nil, []engine.RemoteAddr{wrap})
	if !errors.Is(err, engine.ErrInvalid) {
		t.Errorf("ApplyReconcile with keep range %v: got error %v, want one wrapping ErrInvalid", wrap, err)
	}
	if !live(cell(0, 4096)) {
		t.Fatalf("ApplyReconcile with keep range %v freed bytes of the extent", wrap)
	}

	// A well-formed keep: the bytes outside [1024, 3072) go.
	if _, err := u.ApplyReconcile(report(), nil, []engine.RemoteAddr{cell(1024, 2048)}); err != nil {
		t.Fatal(err)
	}
	if !live(cell(1024, 2048)) {
		t.Error("the kept range was freed")
	}
	if live(cell(0, 1)) || live(cell(3072, 1)) {
		t.Error("bytes outside the kept range are still live")
	}
}
