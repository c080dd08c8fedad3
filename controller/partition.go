package controller

// Partition state. Every row of a partition is a row in p.rows (a paged
// table keyed by its global index that holds the rows and their cells by
// field slot, with no pointer per row: see rowtable.go). Readiness for
// fetches is kept incrementally in ready views, one per (task, field set)
// that has been fetched, so a fetch costs O(batch), not O(partition):
//
//	rows      index → row{seq, change, consumed bits, flags} + cells[slot]
//	rowKeys   index → key      } side tables, only for the rows that
//	rowTags   index → tags     } have them: a row holds no pointer
//	more      index → consumed bits of task slots 64 and up
//	consumedN task slot → rows the task has consumed (the end of a
//	          finite stream is a comparison, not a walk)
//	fields    map name → field{slot, dtype, kind, shape | per-row shapes}
//	tasks     map name → slot in every row's consumed bitset
//	views     map (task, fields) → ordered set of ready, unconsumed rows
//
// A partition is not safe for concurrent use; the controller guards it with
// the partition's mutex.

import (
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/btree"

	"github.com/tqgo/tq/engine"
)

// producedBit marks a produced cell in cell.unit; the low bits hold the
// storage unit id.
const producedBit = 1 << 31

// cell is one (row, field) slot: 32 bytes.
type cell struct {
	off  uint64
	len  uint64
	seg  uint32
	gen  uint32
	unit uint32 // producedBit | unit id
}

func (c cell) produced() bool { return c.unit&producedBit != 0 }

func (c cell) loc() engine.CellLoc {
	if !c.produced() {
		return engine.CellLoc{}
	}
	return engine.CellLoc{Unit: engine.UnitID(c.unit &^ producedBit), Addr: engine.RemoteAddr{Segment: c.seg, Gen: c.gen, Offset: c.off, Len: c.len}}
}

func cellAt(l engine.CellLoc) cell {
	return cell{off: l.Addr.Offset, len: l.Addr.Len, seg: l.Addr.Segment, gen: l.Addr.Gen, unit: uint32(l.Unit) | producedBit}
}

// row is one row's fixed-size state. It holds no pointers (see
// rowtable.go): its key, its tags and its consumption by tasks past the
// first 64 live in the partition's side tables, found by index when its
// flags say it has them.
type row struct {
	index  uint64
	seq    uint64 // creation order of the key, for listing
	change uint64 // with a key: the change number of its last change (changes.go)
	// logged is the log index of the last record that changed the row's
	// key, cells or tags: a read that saw them waits for it (WaitRead).
	logged uint64
	// consumed is the consumption bitset of the first 64 task slots; the
	// rest are in partition.more (with more set).
	consumed uint64
	// made numbers the partition's active rows in the order inserts made
	// them (partition.made; 0 while only pre-allocated), and insPos and
	// insLen place the row in its insert: engine.RowOrigin, which
	// samplers of prompt groups go by. An insert is what made rows
	// active: Insert, a put's new keys, or a commit straight to
	// pre-allocated rows.
	made   uint64
	insPos uint32
	insLen uint32
	cells  uint16 // produced cells (rowTable keeps it; fits the padding)
	live   bool   // the slot of its page holds a row
	active bool   // false while the row is only pre-allocated
	inFeed bool   // in its partition's change feed (changes.go)
	keyed  bool   // has a key (partition.rowKeys)
	tagged bool   // has tags (partition.rowTags)
	more   bool   // consumed by a task past the first 64 (partition.more)
}

// stamp notes that record idx changed rows (0: nothing was logged).
func stamp(rows []*row, idx uint64) {
	for _, r := range rows {
		if r != nil && idx > r.logged {
			r.logged = idx
		}
	}
}

// has reports whether r's cell of field slot is produced.
func (p *partition) has(r *row, slot int) bool { return p.rows.has(r, slot) }

// keyOf returns r's key ("" for none).
func (p *partition) keyOf(r *row) string {
	if !r.keyed {
		return ""
	}
	return p.rowKeys[r.index]
}

// setKey gives r the key k (not the key map: see createKeys).
func (p *partition) setKey(r *row, k string) {
	r.keyed = k != ""
	if r.keyed {
		p.rowKeys[r.index] = k
	} else {
		delete(p.rowKeys, r.index)
	}
}

// tagsOf returns r's tags (nil for none). The map is shared: change tags
// with setTags and a new map.
func (p *partition) tagsOf(r *row) engine.Tags {
	if !r.tagged {
		return nil
	}
	return p.rowTags[r.index]
}

// tagMerge merges a batch's tags into its rows'. A row's map is never
// changed in place (see tagsOf), so rows that merge the same map into the
// same map (a batch that gives each row one tag map, into rows without
// tags or with those of an earlier such batch) can share the result: one
// merge, and one encoding (wire.TagsToPB), a batch instead of one a row,
// and one map in memory.
type tagMerge struct {
	// adopt: the maps merged in are the controller's (decoded for it,
	// shared by nobody who changes them) and are kept as they are.
	adopt bool

	done          bool
	old, add, out engine.Tags // the last merge
}

// merge returns old with add's tags set (add's win).
func (m *tagMerge) merge(old, add engine.Tags) engine.Tags {
	if m.done && old.Same(m.old) && add.Same(m.add) {
		return m.out
	}
	var out engine.Tags
	switch {
	case len(add) == 0:
		out = old
	case len(old) == 0 && m.adopt:
		out = add
	case len(old) == 0:
		out = add.Clone()
	default:
		// old's values are never changed in place either: no deep copy.
		out = make(engine.Tags, len(old)+len(add))
		maps.Copy(out, old)
		if m.adopt {
			maps.Copy(out, add)
		} else {
			maps.Copy(out, add.Clone())
		}
	}
	m.done, m.old, m.add, m.out = true, old, add, out
	return out
}

// setTags replaces r's tags.
func (p *partition) setTags(r *row, t engine.Tags) {
	r.tagged = t != nil
	if r.tagged {
		p.rowTags[r.index] = t
	} else {
		delete(p.rowTags, r.index)
	}
}

func (p *partition) isConsumed(r *row, t int) bool {
	if t < 64 {
		return r.consumed&(1<<t) != 0
	}
	if !r.more {
		return false
	}
	more := p.more[r.index]
	w := t/64 - 1
	return w < len(more) && more[w]&(1<<(t%64)) != 0
}

// setConsumed marks r consumed by task slot t or not, keeping the task's
// count of consumed rows.
func (p *partition) setConsumed(r *row, t int, v bool) {
	if p.isConsumed(r, t) == v {
		return
	}
	for len(p.consumedN) <= t {
		p.consumedN = append(p.consumedN, 0)
	}
	if v {
		p.consumedN[t]++
	} else {
		p.consumedN[t]--
	}
	word := &r.consumed
	if t >= 64 {
		w := t/64 - 1
		more := p.more[r.index]
		for len(more) <= w {
			more = append(more, 0)
		}
		p.more[r.index], r.more = more, true
		word = &more[w]
	}
	if v {
		*word |= 1 << (t % 64)
	} else {
		*word &^= 1 << (t % 64)
	}
}

// consumedWords returns r's consumption bitset as words (task slot t is
// bit t%64 of word t/64), trailing zero words trimmed.
func (p *partition) consumedWords(r *row) []uint64 {
	if r.consumed == 0 && !r.more {
		return nil
	}
	out := []uint64{r.consumed}
	if r.more {
		out = append(out, p.more[r.index]...)
	}
	for len(out) > 0 && out[len(out)-1] == 0 {
		out = out[:len(out)-1]
	}
	return out
}

// forgetRow takes r, about to be removed, out of the tasks' counts of
// consumed rows, and drops its side tables.
func (p *partition) forgetRow(r *row) {
	if r.consumed != 0 || r.more {
		for t, n := range p.consumedN {
			if n > 0 && p.isConsumed(r, t) {
				p.consumedN[t]--
			}
		}
	}
	if r.more {
		delete(p.more, r.index)
	}
	if r.tagged {
		delete(p.rowTags, r.index)
	}
	if r.keyed {
		delete(p.rowKeys, r.index)
	}
}

// field tracks a field's schema over the partition's produced cells:
// the first dtype wins; a shape change makes the field ragged, and it turns
// dense again when the remaining rows agree.
type field struct {
	name     string
	slot     int
	dtype    engine.DType
	kind     engine.Kind    // Dense, Ragged or Opaque
	shape    engine.Shape   // Dense: the shape every produced row has
	shapes   *shapeTable    // Ragged: the shapes of the rows whose shape is not base
	base     engine.Shape   // Ragged: the shape of every other produced row (the shape the field had when it turned ragged)
	counts   map[string]int // produced rows per distinct shape (not for opaque)
	produced int
}

// rowShape returns the shape of ragged field f's produced cell in row gi
// (a new slice).
func (f *field) rowShape(gi uint64) engine.Shape {
	if s, ok := f.shapes.get(gi); ok {
		return s
	}
	return f.base.Clone()
}

// shapeKey encodes a shape as a map key.
func shapeKey(s engine.Shape) string {
	var buf [64]byte
	b := buf[:0]
	for _, d := range s {
		b = binary.AppendUvarint(b, uint64(d))
	}
	return string(b)
}

type viewKey struct {
	task   string
	fields string // sorted field names joined by \x00
}

// readyView is the ordered set of rows that are active, produced for every
// field in slots and not consumed by task.
type readyView struct {
	task  int
	slots []int
	set   *readySet
}

func (v *readyView) Len() int { return v.set.Len() }

func (v *readyView) Ascend(fn func(uint64) bool) { v.set.Ascend(fn) }

type partition struct {
	mu       sync.Mutex
	id       string
	gen      uint64 // the controller's number for this partition (see LogRecord in state.proto)
	created  time.Time
	rows     rowTable
	reserved *btree.BTreeG[uint64] // pre-allocated rows not yet active
	fields   map[string]*field
	order    []*field // by slot
	// rowKeys, rowTags and more are the rows' side tables (see row).
	rowKeys map[uint64]string
	rowTags map[uint64]engine.Tags
	more    map[uint64][]uint64
	// consumedN counts the rows each task slot has consumed.
	consumedN []int
	keys      map[string]*row
	bySeq     *btree.BTreeG[*row] // the rows with keys, in creation order (listing)
	keySeq    uint64
	made      uint64 // the last row.made given
	tasks     map[string]int
	taskName  []string
	views     map[viewKey]*readyView
	fetches   fetchTable // recent keyed fetches
	// groups follows the batches samplers keep for data-replica groups;
	// keptCheck is when the first could be left behind (zero: none). See
	// keptbatches.go.
	groups    map[groupKey]*groupState
	keptCheck time.Time
	// held are the keyed fetches holding rows for their callers (some
	// settled since: dropped on the next look); heldCheck is when the
	// first hold's TTL ends (zero: look at the next fetch). See holds.go.
	held      []*fetchEntry
	heldCheck time.Time
	// exitLook: the next look also gives back the holds whose holder
	// process exited (a fetch waits at the end for held rows);
	// exitLooked is when it last did.
	exitLook   bool
	exitLooked time.Time
	// scratch is tryFetch's slice of the rows a fetch returns, reused.
	scratch []*row
	// tagsAt and originAt are SampleRequest.Tags and .Origin for this
	// partition, made once.
	tagsAt   func(uint64) engine.Tags
	originAt func(uint64) engine.RowOrigin
	// changed is closed whenever rows become ready, are reset or
	// cleared, waking blocked fetches; nil while nobody waits (see
	// changedChan).
	changed chan struct{}
	dropped bool // removed from the controller; waiters must look again
	// pending: made by the request that holds the lock, which may still
	// be refused, and then takes the partition out again (see
	// lockOrCreate); read without the lock by Partitions. preAlloc holds
	// its pre-allocated indexes until then, for the record of its
	// creation.
	pending  atomic.Bool
	preAlloc []uint64
	// preReused: where preAlloc's indexes came from in the allocator,
	// for unlockNew to put them back.
	preReused taken
	done      bool // its producer marked it done (MarkDone)
	// removed is the log index of the last record that took rows or
	// keys out of the partition: a read that found a key absent waits
	// for it.
	removed uint64
	feed    changeFeed
}

func newPartition(id string, gen uint64) *partition {
	p := &partition{
		id:       id,
		gen:      gen,
		created:  time.Now(),
		rows:     newRowTable(),
		reserved: btree.NewOrderedG[uint64](32),
		fields:   make(map[string]*field),
		keys:     make(map[string]*row),
		rowKeys:  make(map[uint64]string),
		rowTags:  make(map[uint64]engine.Tags),
		more:     make(map[uint64][]uint64),
		bySeq:    btree.NewG(32, func(a, b *row) bool { return a.seq < b.seq }),
		tasks:    make(map[string]int),
		views:    make(map[viewKey]*readyView),
	}
	p.initTagsAt()
	return p
}

func (p *partition) initTagsAt() {
	p.tagsAt = func(i uint64) engine.Tags {
		if r, ok := p.rows.get(i); ok {
			return p.tagsOf(r)
		}
		return nil
	}
	p.originAt = func(i uint64) engine.RowOrigin {
		if r, ok := p.rows.get(i); ok {
			return engine.RowOrigin{Created: r.made, Pos: r.insPos, Size: r.insLen}
		}
		return engine.RowOrigin{}
	}
}

// madeBy numbers rows, just made active by one insert, in its order.
func (p *partition) madeBy(rows []*row) {
	for i, r := range rows {
		p.made++
		r.made, r.insPos, r.insLen = p.made, uint32(i), uint32(len(rows))
	}
}

func (p *partition) notify() {
	if p.changed != nil {
		close(p.changed)
		p.changed = nil
	}
}

// changedChan returns the channel notify closes next, made when a waiter
// first asks: a commit nobody waits for makes none.
func (p *partition) changedChan() chan struct{} {
	if p.changed == nil {
		p.changed = make(chan struct{})
	}
	return p.changed
}

// addRows registers freshly allocated indexes; reserved rows are
// pre-allocated and not active.
func (p *partition) addRows(idx []uint64, active bool) []*row {
	out := make([]*row, len(idx))
	for i, gi := range idx {
		r := p.rows.add(gi)
		r.active = active
		if !active {
			p.reserved.ReplaceOrInsert(gi)
		}
		out[i] = r
	}
	return out
}

// takeReserved activates up to n of the lowest reserved rows.
func (p *partition) takeReserved(n int) []*row {
	var out []*row
	for len(out) < n {
		gi, ok := p.reserved.DeleteMin()
		if !ok {
			break
		}
		r, _ := p.rows.get(gi)
		r.active = true
		out = append(out, r)
	}
	return out
}

func (p *partition) taskSlot(name string) int {
	if t, ok := p.tasks[name]; ok {
		return t
	}
	t := len(p.taskName)
	p.tasks[name] = t
	p.taskName = append(p.taskName, name)
	return t
}

func (p *partition) fieldSlots(names []string) ([]int, bool) {
	slots := make([]int, len(names))
	for i, n := range names {
		f, ok := p.fields[n]
		if !ok {
			return nil, false
		}
		slots[i] = f.slot
	}
	return slots, true
}

func (p *partition) rowReady(r *row, slots []int) bool {
	if !r.active {
		return false
	}
	for _, s := range slots {
		if !p.has(r, s) {
			return false
		}
	}
	return true
}

// Bounds on what fetches make a partition keep, so that a peer that
// fetches under ever new names cannot make every row and every commit cost
// more without end: a task costs a consumption bit in every row, and a
// ready view (a task and a set of fields) is updated by every commit.
const (
	maxTasks = 1024
	maxViews = 1024
)

// roomForTask refuses a task the partition does not keep once it keeps
// maxTasks, with an error wrapping [engine.ErrCapacity], and a new task
// named with more than [engine.MaxNameBytes] ([engine.ErrInvalid]). p is
// locked.
func (p *partition) roomForTask(task string) error {
	_, known := p.tasks[task]
	if !known {
		if err := engine.CheckNameSize("task", task); err != nil {
			return err
		}
	}
	if !known && len(p.tasks) >= maxTasks {
		return fmt.Errorf("partition %q keeps the consumption of %d tasks, the most it does, and task %q would be one more: %w",
			p.id, len(p.tasks), task, engine.ErrCapacity)
	}
	return nil
}

// view returns the ready view for (task, fields), building it on first use
// with one pass over the partition. ok is false when a field is unknown (no
// row can be ready). A new task or view past maxTasks or maxViews is an
// error wrapping [engine.ErrCapacity].
func (p *partition) view(task string, fields []string) (v *readyView, ok bool, err error) {
	sorted := slices.Clone(fields)
	sort.Strings(sorted)
	sorted = slices.Compact(sorted)
	k := viewKey{task, strings.Join(sorted, "\x00")}
	if v, ok := p.views[k]; ok {
		return v, true, nil
	}
	slots, ok := p.fieldSlots(sorted)
	if !ok {
		return nil, false, nil
	}
	if err := p.roomForTask(task); err != nil {
		return nil, false, err
	}
	if len(p.views) >= maxViews {
		return nil, false, fmt.Errorf("partition %q keeps %d ready views (a task and the fields it fetches), the most it does, and task %q fetching %q would be one more: %w",
			p.id, len(p.views), task, sorted, engine.ErrCapacity)
	}
	v = &readyView{task: p.taskSlot(task), slots: slots, set: newReadySet()}
	p.readyRows(v, v.set.add)
	p.views[k] = v
	return v, true, nil
}

// refreshRow re-evaluates r in every view after its cells or consumption
// changed.
func (p *partition) refreshRow(r *row) {
	for _, v := range p.views {
		if p.rowReady(r, v.slots) && !p.isConsumed(r, v.task) {
			v.set.add(r.index)
		} else {
			v.set.remove(r.index)
		}
	}
}

func (p *partition) markConsumed(task int, idx []uint64) {
	if task < 64 {
		// The first 64 tasks' bits are in the row: set them here, and
		// count them once.
		m, n := uint64(1)<<task, 0
		for _, gi := range idx {
			if r, ok := p.rows.get(gi); ok && r.consumed&m == 0 {
				r.consumed |= m
				n++
			}
		}
		for len(p.consumedN) <= task {
			p.consumedN = append(p.consumedN, 0)
		}
		p.consumedN[task] += n
	} else {
		for _, gi := range idx {
			if r, ok := p.rows.get(gi); ok {
				p.setConsumed(r, task, true)
			}
		}
	}
	// One pass per view, not a walk of the views per row.
	for _, v := range p.views {
		if v.task != task {
			continue
		}
		for _, gi := range idx {
			v.set.remove(gi)
		}
	}
}

// resetConsumption clears one task's consumption (all tasks when task < 0)
// and rebuilds the affected views.
func (p *partition) resetConsumption(task int) {
	if task < 0 {
		p.rows.all(func(r *row) { r.consumed, r.more = 0, false })
		clear(p.more)
		clear(p.consumedN)
	} else if task < len(p.consumedN) && p.consumedN[task] > 0 {
		if task < 64 {
			m := ^(uint64(1) << task)
			p.rows.all(func(r *row) { r.consumed &= m })
			p.consumedN[task] = 0
		} else {
			p.rows.all(func(r *row) { p.setConsumed(r, task, false) })
		}
	}
	for _, v := range p.views {
		if task >= 0 && v.task != task {
			continue
		}
		p.readyRows(v, v.set.add)
	}
}

// readyRows calls fn for every row ready in v (active, produced for v's
// fields, not consumed by v's task), in index order, a page at a time.
func (p *partition) readyRows(v *readyView, fn func(gi uint64)) {
	p.rows.pagesInOrder(func(base uint64, pg *rowPage) {
		cols := make([][]cell, len(v.slots))
		for j, s := range v.slots {
			if s >= len(pg.cols) || pg.cols[s] == nil {
				return // no row of the page has the field
			}
			cols[j] = pg.cols[s]
		}
	rows:
		for i := range pg.rows {
			r := &pg.rows[i]
			if !r.live || !r.active || p.isConsumed(r, v.task) {
				continue
			}
			for _, col := range cols {
				if !col[i].produced() {
					continue rows
				}
			}
			fn(base + uint64(i))
		}
	})
}

// removeRows drops rows (each given once) and everything attached to
// them, appending the locations of their stored cells to freed field by
// field, each field's in the rows' order: the cells of a column slice one
// put wrote come out back to back, which the wire sends as one run and a
// client frees as one range.
func (p *partition) removeRows(rows []*row, freed []engine.CellLoc) []engine.CellLoc {
	for slot, f := range p.order {
		for _, r := range rows {
			if c := p.rows.cell(r, slot); c.produced() {
				freed = append(freed, c.loc())
				p.forgetCell(f, r.index)
			}
		}
	}
	for _, r := range rows {
		if r.keyed {
			delete(p.keys, p.keyOf(r))
			p.bySeq.Delete(r)
			p.feed.drop(r)
		}
		p.forgetRow(r)
		if !r.active {
			p.reserved.Delete(r.index)
		}
		for _, v := range p.views {
			v.set.remove(r.index)
		}
		p.rows.del(r.index)
	}
	return freed
}

// forgetCell updates a field's schema tracking when a produced cell of row
// gi goes away (cleared or about to be overwritten).
func (p *partition) forgetCell(f *field, gi uint64) {
	f.produced--
	if f.produced == 0 {
		// No rows left: the field keeps its slot but forgets dtype and shape.
		f.dtype, f.kind, f.shape, f.shapes, f.counts, f.base = engine.InvalidDType, engine.InvalidKind, nil, nil, nil, nil
		return
	}
	if f.kind != engine.Ragged {
		return
	}
	k := shapeKey(f.base)
	if f.shapes.has(gi) {
		k = f.shapes.key(gi)
		f.shapes.del(gi)
	}
	if f.counts[k]--; f.counts[k] == 0 {
		delete(f.counts, k)
	}
	if len(f.counts) == 1 {
		// One shape left: the table's, or the base's when it holds none.
		f.shape = f.base
		if f.shapes.len() > 0 {
			f.shape = f.shapes.any()
		}
		f.kind, f.shapes, f.counts, f.base = engine.Dense, nil, nil, nil
	}
}

// schemaFor returns the schema of field f over rows, dense when every
// produced row in the batch has the same shape.
func (p *partition) schemaFor(f *field, rows []*row) engine.FieldSchema {
	s := engine.FieldSchema{DType: f.dtype, Kind: f.kind}
	switch f.kind {
	case engine.Dense:
		s.Shape = f.shape.Clone()
	case engine.Ragged:
		shapes := make([]engine.Shape, len(rows))
		var first engine.Shape
		uniform, seen := true, false
		for i, r := range rows {
			if !p.has(r, f.slot) {
				continue
			}
			sh := f.rowShape(r.index)
			shapes[i] = sh
			if !seen {
				first, seen = sh, true
			} else if !sh.Equal(first) {
				uniform = false
			}
		}
		if seen && uniform {
			return engine.FieldSchema{DType: f.dtype, Kind: engine.Dense, Shape: first.Clone()}
		}
		s.Shapes = shapes
	case engine.InvalidKind:
		// Registered but nothing produced: a placeholder.
	}
	return s
}

// meta builds a BatchMeta for rows over the named fields. Unknown fields
// get no schema and make every row not ready. A field named twice is
// collected once: the meta keys its cells by name, and a request naming
// one field a million times would otherwise cost rows × names. The rows'
// tags are copies, or, with shared (for a server that encodes the meta at
// once), the rows' own maps, to read and not change.
func (p *partition) meta(rows []*row, names []string, shared bool) *engine.BatchMeta {
	fs := make([]*field, 0, min(len(names), len(p.fields)))
	var seen map[*field]struct{} // for long lists; short ones search fs
	if len(names) > metaShortNames {
		seen = make(map[*field]struct{}, len(fs))
	}
	allKnown := true
	for _, name := range names {
		f, ok := p.fields[name]
		if !ok {
			allKnown = false
			continue
		}
		if seen != nil {
			if _, dup := seen[f]; dup {
				continue
			}
			seen[f] = struct{}{}
		} else if slices.Contains(fs, f) {
			continue
		}
		fs = append(fs, f)
	}
	return p.buildMeta(rows, fs, allKnown, shared)
}

// knownFields is how many distinct fields of p names names (the fields
// meta collects for them).
func (p *partition) knownFields(names []string) int {
	seen := make(map[*field]struct{}, min(len(names), len(p.fields)))
	for _, name := range names {
		if f, ok := p.fields[name]; ok {
			seen[f] = struct{}{}
		}
	}
	return len(seen)
}

// metaShortNames is the longest field list meta checks for repeats by
// searching what it collected so far rather than with a set.
const metaShortNames = 16

// commonMeta is meta over the fields every row has produced (none for no
// rows). Which fields those are is found first, each field's cells read
// until one is missing: its cells are collected, and room made for them,
// only for the fields kept. Room for every field of the partition cost a
// get of n keys n × its fields (keys of fields of their own: n²), however
// few it answers with.
func (p *partition) commonMeta(rows []*row, shared bool) *engine.BatchMeta {
	var fs []*field
	if len(rows) > 0 {
		for _, f := range p.order {
			if f.produced > 0 && p.everyRowHas(rows, f) {
				fs = append(fs, f)
			}
		}
	}
	return p.buildMeta(rows, fs, true, shared)
}

// everyRowHas reports whether each of rows has produced its cell of f,
// reading f's cells a page at a time and stopping at the first missing.
func (p *partition) everyRowHas(rows []*row, f *field) bool {
	var col []cell // f's cells of the page of the row before
	colPage := ^uint64(0)
	for _, r := range rows {
		if k := r.index / pageSize; k != colPage {
			col, colPage = p.rows.column(r.index, f.slot), k
		}
		if col == nil || !col[r.index%pageSize].produced() {
			return false
		}
	}
	return true
}

// buildMeta builds rows' meta over fields fs. A cell not produced makes
// its row not ready. Each field's cells are collected in one pass over
// the rows. shared: as for meta.
func (p *partition) buildMeta(rows []*row, fs []*field, allKnown, shared bool) *engine.BatchMeta {
	n := len(rows)
	m := &engine.BatchMeta{
		Indexes:    make([]uint64, n),
		Partitions: make([]string, n),
		Ready:      make([]bool, n),
		Tags:       make([]engine.Tags, n),
		Schema:     make(map[string]engine.FieldSchema, len(fs)),
		Cells:      make(map[string][]engine.CellLoc, len(fs)),
	}
	var missing []bool // a field's cell of the row is not produced (nil: none)
	slab := make([]engine.CellLoc, n*len(fs))
	for fi, f := range fs {
		locs := slab[fi*n : (fi+1)*n : (fi+1)*n]
		var col []cell // f's cells of the page of the row before
		colPage := ^uint64(0)
		for i, r := range rows {
			if k := r.index / pageSize; k != colPage {
				col, colPage = p.rows.column(r.index, f.slot), k
			}
			if col != nil {
				if c := col[r.index%pageSize]; c.produced() {
					locs[i] = c.loc()
					continue
				}
			}
			if missing == nil {
				missing = make([]bool, n)
			}
			missing[i] = true
		}
		m.Schema[f.name] = p.schemaFor(f, rows)
		m.Cells[f.name] = locs
	}
	hasKey := false
	for i, r := range rows {
		m.Indexes[i] = r.index
		m.Partitions[i] = p.id
		if r.tagged {
			if m.Tags[i] = p.tagsOf(r); !shared {
				m.Tags[i] = m.Tags[i].Clone()
			}
		}
		hasKey = hasKey || r.keyed
		m.Ready[i] = allKnown && r.active && (missing == nil || !missing[i])
	}
	if hasKey {
		m.Keys = make([]string, n)
		for i, r := range rows {
			m.Keys[i] = p.keyOf(r)
		}
	}
	return m
}

// sortedRows returns every row (active and reserved) in index order.
func (p *partition) sortedRows() []*row {
	out := make([]*row, 0, p.rows.len())
	p.rows.all(func(r *row) { out = append(out, r) })
	return out
}

func (p *partition) fieldNames() []string {
	out := make([]string, 0, len(p.fields))
	for n, f := range p.fields {
		if f.produced > 0 {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

func errUnknownPartition(id string) error {
	return fmt.Errorf("partition %q: %w", id, engine.ErrNotFound)
}
