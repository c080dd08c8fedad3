package storage

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tqgo/tq/engine"
)

// A seeded model-based test of the unit's memory management: random
// reserves (sizes of 0, 1, odd sizes, sizes about a segment and about the
// capacity), commits, aborts, frees by the controller (cells in any order,
// duplicate, stale and hostile ones), leases taken and released out of
// order, frees of leased cells, sessions ending into quarantine and their
// quarantine ending, against a model of what each extent holds. After
// every step: no two live extents overlap, every lease reads the bytes
// written, Stats equal the model's, the capacity holds, and each
// segment's allocator is consistent. At the end everything is given back
// and nothing is left.

type umExtent struct {
	addr   engine.RemoteAddr
	blk    int64 // the model's rounded size
	data   []byte
	cells  []engine.RemoteAddr // set on commit
	freed  []bool
	leases int // lease entries on it
	qrefs  int // of them, entries of leases in quarantine
	gone   bool
}

func (e *umExtent) liveCells() []int {
	var out []int
	for i, f := range e.freed {
		if !f {
			out = append(out, i)
		}
	}
	return out
}

type mResState int

const (
	mOpen mResState = iota
	mCommitted
	mAborted
	mQuarantined // can no longer commit, extents kept until aborted
)

type umRes struct {
	r     *Reservation
	exts  []*umExtent // nil for sizes of 0
	state mResState
}

type umLease struct {
	l           *Lease
	ranges      []engine.RemoteAddr
	ents        []*umExtent // nil for ranges of length 0
	want        [][]byte
	released    bool
	quarantined bool
}

type umSession struct {
	res    []*umRes
	leases []*umLease
}

type unitModel struct {
	t        *testing.T
	rng      *rand.Rand
	u        *Unit
	cfg      Config
	exts     []*umExtent // every extent ever, gone ones included
	res      []*umRes
	leases   []*umLease
	sess     *umSession   // the session new holds join, if any
	quar     []*umSession // sessions in quarantine
	seed     uint64
	step     int
	capFails int
}

func (m *unitModel) fatalf(format string, args ...any) {
	m.t.Helper()
	m.t.Fatalf("seed %d step %d: %s", m.seed, m.step, fmt.Sprintf(format, args...))
}

// freeCommitted frees every live cell of every committed extent set, as
// the controller does when their keys are cleared.
func (m *unitModel) freeCommitted() {
	for _, e := range m.committed() {
		var cells []engine.RemoteAddr
		for _, i := range e.liveCells() {
			cells = append(cells, e.cells[i])
			e.freed[i] = true
		}
		if err := m.u.Free(cells); err != nil {
			m.fatalf("Free(%v): %v", cells, err)
		}
		e.gone = true
	}
}

func (m *unitModel) sizes() []int64 {
	seg, capa := m.cfg.SegmentSize, m.cfg.Capacity
	pick := []int64{0, 1, 2, 63, 64, 65, 127, 999, 4095, 4096, 4097, 8191, 32767, 32768, 32769,
		40961, 65535, 65536, 65537, seg - 1, seg, seg + 1, seg - pageSize, seg + pageSize,
		capa / 3, capa / 2, capa - pageSize, capa, capa + 1, int64(m.rng.IntN(3000)) + 1}
	n := 1 + m.rng.IntN(3)
	out := make([]int64, n)
	for i := range out {
		if m.rng.IntN(3) == 0 {
			out[i] = int64(m.rng.IntN(70000))
		} else {
			out[i] = pick[m.rng.IntN(len(pick))]
		}
	}
	return out
}

func (m *unitModel) reserve() {
	sizes := m.sizes()
	var need int64
	for _, n := range sizes {
		if n > 0 {
			need += blockSize(n)
		}
	}
	before := m.u.Stats()
	r, err := m.u.Reserve(engine.WithoutWait(m.t.Context()), sizes)
	if err != nil {
		if !errors.Is(err, engine.ErrCapacity) {
			m.fatalf("Reserve(%v): got %v, want an error wrapping %v", sizes, err, engine.ErrCapacity)
		}
		var op *engine.OpError
		if !errors.As(err, &op) {
			m.fatalf("Reserve(%v): error %v is not an *engine.OpError", sizes, err)
		}
		if !strings.Contains(err.Error(), " bytes") {
			m.fatalf("Reserve(%v): error %q does not name the request", sizes, err)
		}
		after := m.u.Stats()
		after.Mapped, after.Segments, before.Mapped, before.Segments = 0, 0, 0, 0
		if after != before {
			m.fatalf("Reserve(%v) failed and changed stats:\n%+v\n%+v", sizes, before, after)
		}
		m.capFails++
		return
	}
	if need > m.cfg.Capacity {
		m.fatalf("Reserve(%v) of %d bytes succeeded beyond capacity %d", sizes, need, m.cfg.Capacity)
	}
	mr := &umRes{r: r, exts: make([]*umExtent, len(sizes))}
	if r.Len() != len(sizes) {
		m.fatalf("Reserve(%v): %d extents", sizes, r.Len())
	}
	for i, n := range sizes {
		buf, a := r.Buf(i), r.Addr(i)
		if int64(len(buf)) != n || int64(a.Len) != n {
			m.fatalf("Reserve(%v): extent %d has %d bytes, address %v", sizes, i, len(buf), a)
		}
		if n == 0 {
			continue
		}
		if got := r.exts[i].blk.size; got != blockSize(n) {
			m.fatalf("extent of %d bytes has a block of %d, want %d", n, got, blockSize(n))
		}
		e := &umExtent{addr: a, blk: blockSize(n), data: make([]byte, n)}
		for j := range e.data {
			e.data[j] = byte(m.rng.Uint32())
		}
		copy(buf, e.data)
		mr.exts[i] = e
		m.exts = append(m.exts, e)
	}
	m.res = append(m.res, mr)
	if m.sess != nil {
		m.sess.res = append(m.sess.res, mr)
	}
}

func (m *unitModel) pickRes(state mResState) *umRes {
	var c []*umRes
	for _, r := range m.res {
		if r.state == state {
			c = append(c, r)
		}
	}
	if len(c) == 0 {
		return nil
	}
	return c[m.rng.IntN(len(c))]
}

func (m *unitModel) commit() {
	st := []mResState{mOpen, mOpen, mOpen, mCommitted, mAborted, mQuarantined}[m.rng.IntN(6)]
	r := m.pickRes(st)
	if r == nil {
		return
	}
	err := r.r.Commit()
	if st != mOpen {
		if !errors.Is(err, engine.ErrInvalid) {
			m.fatalf("Commit of a reservation in state %d: got %v, want %v", st, err, engine.ErrInvalid)
		}
		return
	}
	if err != nil {
		m.fatalf("Commit: %v", err)
	}
	r.state = mCommitted
	for _, e := range r.exts {
		if e == nil {
			continue
		}
		// Cut it into 1 to 4 cells.
		n := 1 + m.rng.IntN(4)
		if int64(n) > int64(e.addr.Len) {
			n = int(e.addr.Len)
		}
		e.cells = cut(e.addr, n)
		e.freed = make([]bool, n)
	}
}

func (m *unitModel) abort() {
	st := []mResState{mOpen, mOpen, mCommitted, mAborted, mQuarantined, mQuarantined}[m.rng.IntN(6)]
	r := m.pickRes(st)
	if r == nil {
		return
	}
	r.r.Abort()
	if st == mOpen || st == mQuarantined {
		r.state = mAborted
		for _, e := range r.exts {
			if e != nil {
				e.gone = true
			}
		}
	}
}

// committed returns extents with a live cell.
func (m *unitModel) committed() []*umExtent {
	var c []*umExtent
	for _, e := range m.exts {
		if !e.gone && e.cells != nil && len(e.liveCells()) > 0 {
			c = append(c, e)
		}
	}
	return c
}

func (m *unitModel) free() {
	c := m.committed()
	if len(c) == 0 {
		return
	}
	var cells []engine.RemoteAddr
	type kill struct {
		e *umExtent
		i int
	}
	var kills []kill
	var whole []*umExtent
	for range 1 + m.rng.IntN(2) {
		e := c[m.rng.IntN(len(c))]
		if slices.Contains(whole, e) {
			continue
		}
		live := e.liveCells()
		if len(live) == len(e.cells) && m.rng.IntN(4) == 0 && !slices.ContainsFunc(kills, func(k kill) bool { return k.e == e }) {
			// The whole extent's address.
			cells = append(cells, e.addr)
			whole = append(whole, e)
			for i := range e.cells {
				kills = append(kills, kill{e, i})
			}
			continue
		}
		for _, i := range live {
			if m.rng.IntN(2) == 0 && !slices.Contains(kills, kill{e, i}) {
				cells = append(cells, e.cells[i])
				kills = append(kills, kill{e, i})
			}
		}
	}
	if len(cells) == 0 {
		return
	}
	m.rng.Shuffle(len(cells), func(i, j int) { cells[i], cells[j] = cells[j], cells[i] })
	if err := m.u.Free(cells); err != nil {
		m.fatalf("Free(%v): %v", cells, err)
	}
	for _, k := range kills {
		k.e.freed[k.i] = true
	}
	for _, k := range kills {
		if len(k.e.liveCells()) == 0 && k.e.leases == 0 {
			k.e.gone = true
		}
	}
}

// settle marks gone the extents whose cells were all freed and that no
// lease holds.
func (m *unitModel) settle() {
	for _, e := range m.exts {
		if !e.gone && e.cells != nil && len(e.liveCells()) == 0 && e.leases == 0 {
			e.gone = true
		}
	}
}

// reconcile runs a full reconcile (grace 0) and answers it as a
// controller would: of the reported extents at or below their fence, it
// names some in free, keeps a few live cells of others (the rest of their
// bytes go), and references the rest whole.
func (m *unitModel) reconcile() {
	rep, _, err := m.u.ReconcileFull(0, 0, 0)
	if err != nil {
		m.fatalf("ReconcileFull: %v", err)
	}
	if !rep.Last {
		m.fatalf("a full reconcile of %d extents took more than one page", len(rep.Extents))
	}
	fences := map[uint32]uint32{}
	for _, f := range rep.Fences {
		fences[f.Segment] = f.Gen
	}
	byAddr := map[engine.RemoteAddr]*umExtent{}
	for _, e := range m.committed() {
		byAddr[e.addr] = e
	}
	if len(rep.Extents) != len(byAddr) {
		m.fatalf("full reconcile reports %d extents, the model has %d with live cells", len(rep.Extents), len(byAddr))
	}
	var free, keep []engine.RemoteAddr
	for _, a := range rep.Extents {
		e := byAddr[a]
		if e == nil {
			m.fatalf("full reconcile reports %v, no extent with live cells there", a)
		}
		if f, ok := fences[a.Segment]; !ok || a.Gen > f {
			continue // in flight: not the controller's to judge
		}
		switch m.rng.IntN(3) {
		case 0:
			free = append(free, a)
			for i := range e.freed {
				e.freed[i] = true
			}
		case 1:
			live := e.liveCells()
			kept := live[m.rng.IntN(len(live))]
			for _, i := range live {
				if i == kept || m.rng.IntN(2) == 0 {
					keep = append(keep, e.cells[i])
				} else {
					e.freed[i] = true
				}
			}
		}
	}
	n, err := m.u.ApplyReconcile(rep, free, keep)
	if err != nil || n != len(free) {
		m.fatalf("ApplyReconcile(free %v, keep %v): freed %d, %v; want %d", free, keep, n, err, len(free))
	}
	m.settle()
}

// freeRanges frees cells as a UNIT_SYNC reply does: live ones, ones freed
// already, ones of extents gone, and some named twice; it counts each
// live cell once.
func (m *unitModel) freeRanges() {
	var ranges []engine.RemoteAddr
	type cellOf struct {
		e *umExtent
		i int
	}
	var kills []cellOf
	for _, e := range m.exts {
		if e.cells == nil || m.rng.IntN(4) != 0 {
			continue
		}
		for i, c := range e.cells {
			if m.rng.IntN(2) == 0 {
				continue
			}
			for range 1 + m.rng.IntN(2) {
				ranges = append(ranges, c)
			}
			if !e.gone && !e.freed[i] && !slices.Contains(kills, cellOf{e, i}) {
				kills = append(kills, cellOf{e, i})
			}
		}
	}
	m.rng.Shuffle(len(ranges), func(i, j int) { ranges[i], ranges[j] = ranges[j], ranges[i] })
	n, err := m.u.FreeRanges(ranges)
	if err != nil || n != len(kills) {
		m.fatalf("FreeRanges(%v): freed %d, %v; want %d", ranges, n, err, len(kills))
	}
	for _, k := range kills {
		k.e.freed[k.i] = true
	}
	m.settle()
}

// hostileFree sends a free the unit must refuse, changing nothing.
func (m *unitModel) hostileFree() {
	var bad engine.RemoteAddr
	var why string
	c := m.committed()
	all := slices.DeleteFunc(slices.Clone(m.exts), func(e *umExtent) bool { return e.cells == nil })
	switch k := m.rng.IntN(9); {
	case k == 0 && len(all) > 0:
		// Duplicate or stale: a freed cell, maybe of a gone extent.
		e := all[m.rng.IntN(len(all))]
		i := m.rng.IntN(len(e.cells))
		if !e.freed[i] {
			return
		}
		bad, why = e.cells[i], "freed cell"
	case k == 1 && len(c) > 0:
		e := c[m.rng.IntN(len(c))]
		bad = e.cells[e.liveCells()[0]]
		d := uint32(1 + m.rng.IntN(3))
		if m.rng.IntN(2) == 0 {
			d = -d
		}
		bad.Gen += d
		why = "live cell with another generation"
	case k == 2 && len(c) > 0:
		e := c[m.rng.IntN(len(c))]
		bad = e.addr
		bad.Offset++
		why = "misaligned past the extent's end"
	case k == 3 && len(c) > 0:
		e := c[m.rng.IntN(len(c))]
		bad = e.addr
		bad.Len++
		why = "longer than the extent"
	case k == 4 && len(c) > 0:
		e := c[m.rng.IntN(len(c))]
		bad = e.addr
		bad.Offset = []uint64{1 << 63, ^uint64(0), ^uint64(0) - 10, uint64(m.cfg.Capacity) * 4}[m.rng.IntN(4)]
		why = "out of range"
	case k == 5 && len(c) > 0:
		e := c[m.rng.IntN(len(c))]
		bad = e.addr
		bad.Len = ^uint64(0) - uint64(m.rng.IntN(3))
		why = "length wrapping around"
	case k == 6:
		r := m.pickRes(mOpen)
		if r == nil {
			r = m.pickRes(mQuarantined)
		}
		if r == nil {
			return
		}
		for _, e := range r.exts {
			if e != nil {
				bad, why = e.addr, "extent not committed"
			}
		}
		if why == "" {
			return
		}
	case k == 7 && len(all) > 0:
		// A range in a live extent that covers a freed cell.
		e := all[m.rng.IntN(len(all))]
		if e.gone || len(e.cells) < 2 {
			return
		}
		i := slices.Index(e.freed, true)
		if i < 0 {
			return
		}
		bad = e.addr
		why = "extent with a freed cell"
	case k == 8 && len(c) > 0:
		e := c[m.rng.IntN(len(c))]
		bad = engine.RemoteAddr{Segment: e.addr.Segment + 100, Gen: e.addr.Gen, Offset: e.addr.Offset, Len: e.addr.Len}
		why = "no such segment"
	default:
		return
	}
	cells := []engine.RemoteAddr{bad}
	if len(c) > 0 && m.rng.IntN(2) == 0 {
		// With a good cell: all or nothing.
		e := c[m.rng.IntN(len(c))]
		good := e.cells[e.liveCells()[0]]
		if _, err := sortedCells([]engine.RemoteAddr{good, bad}); err == nil {
			cells = append(cells, good)
			m.rng.Shuffle(len(cells), func(i, j int) { cells[i], cells[j] = cells[j], cells[i] })
		}
	}
	if len(c) > 0 && m.rng.IntN(8) == 0 {
		// The same live cell twice.
		e := c[m.rng.IntN(len(c))]
		good := e.cells[e.liveCells()[0]]
		cells, why = []engine.RemoteAddr{good, good}, "the same cell twice"
		bad = good
	}
	before := m.u.Stats()
	err := m.u.Free(cells)
	if !errors.Is(err, engine.ErrNotFound) {
		m.fatalf("Free(%v) (%s): got %v, want an error wrapping %v", cells, why, err, engine.ErrNotFound)
	}
	if !strings.Contains(err.Error(), fmtAddr(bad)) {
		m.fatalf("Free(%v) (%s): error %q does not name %s", cells, why, err, fmtAddr(bad))
	}
	if after := m.u.Stats(); after != before {
		m.fatalf("refused Free(%v) (%s) changed stats:\n%+v\n%+v", cells, why, before, after)
	}
}

func (m *unitModel) acquire() {
	c := m.committed()
	if len(c) == 0 {
		return
	}
	ml := &umLease{}
	for range 1 + m.rng.IntN(3) {
		if m.rng.IntN(6) == 0 {
			ml.ranges = append(ml.ranges, engine.RemoteAddr{})
			ml.ents = append(ml.ents, nil)
			ml.want = append(ml.want, nil)
			continue
		}
		e := c[m.rng.IntN(len(c))]
		live := e.liveCells()
		cell := e.cells[live[m.rng.IntN(len(live))]]
		// A sub-range of the cell.
		lo := uint64(m.rng.IntN(int(cell.Len)))
		hi := lo + 1 + uint64(m.rng.IntN(int(cell.Len-lo)))
		a := cell
		a.Offset, a.Len = cell.Offset+lo, hi-lo
		ml.ranges = append(ml.ranges, a)
		ml.ents = append(ml.ents, e)
		rel := a.Offset - e.addr.Offset
		ml.want = append(ml.want, e.data[rel:rel+a.Len])
	}
	l, err := m.u.Acquire(ml.ranges)
	if err != nil {
		m.fatalf("Acquire(%v): %v", ml.ranges, err)
	}
	ml.l = l
	for _, e := range ml.ents {
		if e != nil {
			e.leases++
		}
	}
	m.leases = append(m.leases, ml)
	if m.sess != nil {
		m.sess.leases = append(m.sess.leases, ml)
	}
}

func (m *unitModel) release() {
	var c []*umLease
	for _, l := range m.leases {
		if !l.released || m.rng.IntN(8) == 0 {
			c = append(c, l)
		}
	}
	if len(c) == 0 {
		return
	}
	ml := c[m.rng.IntN(len(c))]
	ml.l.Release()
	m.releaseModel(ml)
}

func (m *unitModel) releaseModel(ml *umLease) {
	if ml.released {
		return
	}
	ml.released = true
	for _, e := range ml.ents {
		if e == nil {
			continue
		}
		e.leases--
		if ml.quarantined {
			e.qrefs--
		}
		if e.leases == 0 && len(e.liveCells()) == 0 {
			e.gone = true
		}
	}
}

// endSession puts the current session's holds into quarantine as the
// server does: holds of no bytes go back at once.
func (m *unitModel) endSession() {
	s := m.sess
	m.sess = &umSession{}
	if s == nil {
		return
	}
	var res []*Reservation
	var leases []*Lease
	q := &umSession{}
	for _, r := range s.res {
		if !r.r.coversBytes() {
			r.r.Abort()
			if r.state == mOpen {
				r.state = mAborted
			}
			continue
		}
		res = append(res, r.r)
		q.res = append(q.res, r)
		if r.state == mOpen {
			r.state = mQuarantined
		}
	}
	for _, l := range s.leases {
		if !l.l.coversBytes() {
			l.l.Release()
			m.releaseModel(l)
			continue
		}
		leases = append(leases, l.l)
		q.leases = append(q.leases, l)
		if !l.released && !l.quarantined {
			l.quarantined = true
			for _, e := range l.ents {
				if e != nil {
					e.qrefs++
				}
			}
		}
	}
	if len(res)+len(leases) == 0 {
		return
	}
	m.u.quarantineHolds(res, leases)
	m.quar = append(m.quar, q)
}

// endQuarantine gives a quarantined session's holds back, as its deadline
// or its process's exit does.
func (m *unitModel) endQuarantine() {
	if len(m.quar) == 0 {
		return
	}
	i := m.rng.IntN(len(m.quar))
	q := m.quar[i]
	m.quar = slices.Delete(m.quar, i, i+1)
	var res []*Reservation
	var leases []*Lease
	for _, r := range q.res {
		res = append(res, r.r)
		if r.state == mQuarantined {
			r.state = mAborted
			for _, e := range r.exts {
				if e != nil {
					e.gone = true
				}
			}
		}
	}
	for _, l := range q.leases {
		leases = append(leases, l.l)
	}
	giveBack(res, leases)
	for _, l := range q.leases {
		m.releaseModel(l)
	}
	m.u.quarantineEnded()
}

// want returns the stats the model predicts (Mapped, Segments and the
// page fields aside).
func (m *unitModel) want() Stats {
	st := Stats{Capacity: m.cfg.Capacity, QuarantinedSessions: len(m.quar)}
	for _, e := range m.exts {
		if !e.gone {
			st.Used += e.blk
			st.Extents++
			if e.cells != nil && len(e.liveCells()) == 0 && e.qrefs > 0 && e.qrefs == e.leases {
				st.Quarantined += e.blk
			}
		}
	}
	for _, r := range m.res {
		for _, e := range r.exts {
			if e == nil {
				continue
			}
			switch r.state {
			case mOpen:
				st.Reserved += e.blk
			case mQuarantined:
				st.Quarantined += e.blk
			}
		}
		if r.state == mOpen {
			st.OpenReservations++
		}
	}
	for _, l := range m.leases {
		if !l.released {
			st.Leases++
		}
	}
	return st
}

func (m *unitModel) check() {
	m.t.Helper()
	got := m.u.Stats()
	if got.Mapped > m.cfg.Capacity || got.Used > got.Mapped {
		m.fatalf("used %d, mapped %d, capacity %d", got.Used, got.Mapped, m.cfg.Capacity)
	}
	got.Mapped, got.Segments, got.HugePages, got.PageSize = 0, 0, false, 0
	if want := m.want(); got != want {
		m.fatalf("stats:\n got %+v\nwant %+v", got, want)
	}
	// No two live extents overlap, and each lies in its segment.
	type blk struct {
		seg      uint32
		off, end int64
	}
	var live []blk
	for _, e := range m.exts {
		if !e.gone {
			live = append(live, blk{e.addr.Segment, int64(e.addr.Offset), int64(e.addr.Offset) + e.blk})
		}
	}
	slices.SortFunc(live, func(a, b blk) int {
		if a.seg != b.seg {
			return int(a.seg) - int(b.seg)
		}
		return int(a.off - b.off)
	})
	for i := 1; i < len(live); i++ {
		if live[i].seg == live[i-1].seg && live[i].off < live[i-1].end {
			m.fatalf("live blocks %+v and %+v overlap", live[i-1], live[i])
		}
	}
	m.u.mu.Lock()
	for _, s := range m.u.segs {
		if err := s.alloc.check(); err != nil {
			m.u.mu.Unlock()
			m.fatalf("segment %d: %v", s.id, err)
		}
	}
	for _, b := range live {
		s := m.u.byID[b.seg]
		if s == nil || b.end > s.size() {
			m.u.mu.Unlock()
			m.fatalf("live block %+v outside its segment", b)
		}
	}
	m.u.mu.Unlock()
	// Every lease reads what was written.
	for _, l := range m.leases {
		if l.released {
			continue
		}
		for i, w := range l.want {
			if got := l.l.Bytes(i); string(got) != string(w) {
				m.fatalf("lease range %d %v reads other bytes than written", i, l.ranges[i])
			}
		}
	}
}

// drain gives everything back and checks that nothing is left.
func (m *unitModel) drain() {
	for len(m.quar) > 0 {
		m.endQuarantine()
	}
	for _, r := range m.res {
		if r.state == mOpen || r.state == mQuarantined {
			r.r.Abort()
			r.state = mAborted
			for _, e := range r.exts {
				if e != nil {
					e.gone = true
				}
			}
		}
	}
	for _, l := range m.leases {
		l.l.Release()
		m.releaseModel(l)
	}
	m.freeCommitted()
	m.check()
	st := m.u.Stats()
	if st.Used != 0 || st.Extents != 0 || st.Leases != 0 || st.Quarantined != 0 || st.QuarantinedSessions != 0 || st.Reserved != 0 {
		m.fatalf("left after everything was given back: %+v", st)
	}
	m.u.mu.Lock()
	for _, s := range m.u.segs {
		s.alloc.releaseSpares()
		if s.alloc.used != 0 || s.alloc.slabs != 0 || s.alloc.byOff.Len() != 1 || s.alloc.freeBytes() != s.size() {
			m.u.mu.Unlock()
			m.fatalf("segment %d of %d bytes not one free range: used %d, %d slabs, %d ranges", s.id, s.size(), s.alloc.used, s.alloc.slabs, s.alloc.byOff.Len())
		}
	}
	m.u.mu.Unlock()
	// The whole capacity comes back: one extent of it fits.
	whole := roundDown(m.cfg.Capacity, pageSize)
	r, err := m.u.Reserve(engine.WithoutWait(m.t.Context()), []int64{whole})
	if err != nil {
		m.fatalf("Reserve(%d) in a drained unit of capacity %d: %v", whole, m.cfg.Capacity, err)
	}
	r.Abort()
}

// waitForRoom fills the unit, starts a Reserve that must wait, and frees
// what it needs.
func (m *unitModel) waitForRoom() {
	if len(m.quar) > 0 || slices.ContainsFunc(m.leases, func(l *umLease) bool { return !l.released }) {
		return
	}
	// Everything the model holds is freeable: the Reserve below needs all
	// of the capacity.
	whole := roundDown(m.cfg.Capacity, pageSize)
	if m.u.Stats().Used == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(m.t.Context(), 5*time.Second)
	defer cancel()
	done := make(chan error, 1)
	var got *Reservation
	go func() {
		r, err := m.u.Reserve(ctx, []int64{whole})
		got = r
		done <- err
	}()
	waitForWaiters(m.t, m.u, 1)
	m.drain0()
	if err := <-done; err != nil {
		m.fatalf("waiting Reserve(%d): %v", whole, err)
	}
	got.Abort()
}

// drain0 gives back the model's holds without the checks of drain.
func (m *unitModel) drain0() {
	for _, r := range m.res {
		if r.state == mOpen || r.state == mQuarantined {
			r.r.Abort()
			r.state = mAborted
			for _, e := range r.exts {
				if e != nil {
					e.gone = true
				}
			}
		}
	}
	m.freeCommitted()
}

// TestUnitModel runs 16 seeds of 400 steps; TQ_MODEL_SEEDS=n runs n seeds
// of 1500 steps for a longer hunt.
func TestUnitModel(t *testing.T) {
	caps := []int64{64 << 10, 256 << 10, 300001, 512 << 10, 1<<20 + 12<<10}
	segs := []int64{64 << 10, 128 << 10, 196 << 10, 256 << 10}
	seeds, steps := uint64(16), 400
	if n, err := strconv.Atoi(os.Getenv("TQ_MODEL_SEEDS")); err == nil {
		seeds, steps = uint64(n), 1500
	}
	for seed := range seeds {
		rng := rand.New(rand.NewPCG(seed, 99))
		cfg := Config{Capacity: caps[rng.IntN(len(caps))], SegmentSize: segs[rng.IntN(len(segs))], ReserveTimeout: time.Hour}
		t.Run(fmt.Sprintf("seed=%d/capacity=%d/segment=%d", seed, cfg.Capacity, cfg.SegmentSize), func(t *testing.T) {
			if seed%4 == 3 {
				lowerMaxGen(t, 6)
			}
			u := newTestUnit(t, cfg)
			m := &unitModel{t: t, rng: rng, u: u, cfg: cfg, seed: seed}
			for m.step = range steps {
				switch k := rng.IntN(100); {
				case k < 25:
					m.reserve()
				case k < 40:
					m.commit()
				case k < 45:
					m.abort()
				case k < 58:
					m.free()
				case k < 66:
					m.hostileFree()
				case k < 76:
					m.acquire()
				case k < 85:
					m.release()
				case k < 90:
					m.endSession()
				case k < 94:
					m.endQuarantine()
				case k < 95:
					m.waitForRoom()
				case k < 97:
					m.reconcile()
				case k < 99:
					m.freeRanges()
				default:
					m.sess = nil
				}
				m.check()
			}
			m.drain()
			t.Logf("%d reserves refused for capacity", m.capFails)
		})
	}
}
