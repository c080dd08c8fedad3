package controller

// Keyed fetches. A remote client names each fetch with a random key
// (engine.FetchRequest.Key). The partition remembers, for a while, what a
// keyed fetch took, so that
//
//   - the same fetch asked again (its reply was lost with a broken
//     connection, or the controller restarted before the client read it)
//     returns the same rows instead of consuming more, and
//   - a fetch its caller gave up on can be undone (Unconsume): the rows go
//     back to the task, and a fetch with that key that has not happened
//     yet never will (the key is spent).
//
// Entries live fetchKeyTTL, at most maxFetchKeys per partition (the oldest
// go first); the keys of held fetches given back are remembered longer
// (givenBack). An entry past its time is gone for every reader (get),
// whether or not the table dropped it yet: which ones it has dropped
// depends on when it last added one, and a restarted controller (a log
// replayed, a snapshot loaded) must answer as the live one did. Times
// compare in whole milliseconds, as the log and snapshots keep them. They are part of the durable state: consume and unconsume
// records carry the key, and snapshots hold the table.
//
// A reset of a task's consumption ends what its entries can give back:
// the rows are the new round's, and may be another fetch's by now. Asked
// again, a fetch from before still answers with the rows it took; one
// the reset un-held, for fetchKeyTTL from the reset.
//
// An entry names its rows by index, and a clear releases indexes for new
// rows. So a clear takes the rows it removes out of every entry (live and
// in replay, which finds them through the table's index by row): the
// fetch asked again must not answer with a new row at a reused index,
// nor give it back (Unconsume) while another fetch holds it. The entry
// remembers the indexes it lost so (cleared): a give-back of some of its
// rows (UnconsumeRows) naming one, from a loader that did not yield the
// row, gives nothing back for it, where an index the fetch never took is
// refused. The two look alike once the index is reused.

import (
	"cmp"
	"context"
	"fmt"
	"iter"
	"slices"
	"sync"
	"time"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire/wirepb"
)

const (
	// fetchKeyTTL is how long a keyed fetch can be asked again or undone.
	fetchKeyTTL = 10 * time.Minute
	// maxFetchKeys bounds a partition's table.
	maxFetchKeys = 1 << 16
	// maxFetchKeyLen bounds a key.
	maxFetchKeyLen = 64
)

type fetchEntry struct {
	key      string
	task     string
	sampled  []uint64
	consumed []uint64
	spent    bool // given back (or refused before it happened)
	at       time.Time
	kept     *keptRef // the kept batch it took, while followed (keptbatches.go)
	// held: its consumed rows are held for its caller, not yet settled
	// (holds.go); heldFrom is when its TTL started.
	held     bool
	heldFrom time.Time
	pid      int32  // the holder's process on this host (0: unknown); not logged
	client   string // the holder client's id ("": unknown); not logged
	group    string // the hold's group (engine.FetchRequest.HoldGroup)
	// cleared: the rows of sampled and consumed a clear removed since
	// the fetch (forgetRows), each once: at most the fetch's rows.
	cleared []uint64
	// seq orders the entries of a row (fetchRefs): the table's count of
	// links when index last linked it.
	seq uint64
	// prev and next link the table's order.
	prev, next *fetchEntry
}

// fetchTable is a partition's recent keyed fetches, guarded by the
// partition's lock.
type fetchTable struct {
	m map[string]*fetchEntry
	// head and tail end the list of the entries of m by time (at), the
	// oldest first, but for held ones, which keep their place until
	// settled: an entry whose time restarts moves to the end (restart).
	head, tail *fetchEntry
	// byRow holds, for each row index an entry in order names, the
	// entries that name it, so that a clear finds what it changes without
	// walking the table.
	byRow map[uint64]fetchRefs
	seq   uint64 // the last fetchEntry.seq
	// back are the held fetches given back, remembered past their
	// entries (givenBack).
	back givenBack
}

// maxGivenBack bounds a partition's givenBack.
const maxGivenBack = 1 << 16

// givenBack remembers the keys of held fetches whose rows were given back
// (by their caller, or by the controller: holds.go) after their entries
// leave the table (fetchKeyTTL, maxFetchKeys), so that an acknowledgment
// that comes however late is refused: forgotten, the key would read as one
// never held, whose acknowledgment succeeds, and the caller would use rows
// another consumer may have been given. The fetch asked again is refused
// too (errFetchGivenBack), however late: forgotten, the key would take new
// rows, which the caller would use as the old fetch's. No TTL: at most maxGivenBack,
// the oldest forgotten first; a give-back of a held fetch is rare (a
// holder that died, or dropped what it fetched). Durable with the table:
// snapshots carry them (fetchTable.copyState, StatePartition.given_back),
// and an unconsume record replayed gives the fetch back again.
type givenBack struct {
	m     map[string]backEntry
	order []string // by give-back: the oldest first
}

type backEntry struct {
	task string
	at   time.Time
}

func (b *givenBack) add(key, task string, at time.Time) {
	if _, ok := b.m[key]; ok {
		return
	}
	if b.m == nil {
		b.m = make(map[string]backEntry)
	}
	for len(b.order) >= maxGivenBack {
		delete(b.m, b.order[0])
		b.order = b.order[1:]
	}
	b.m[key] = backEntry{task: task, at: at}
	b.order = append(b.order, key)
}

// fetchRefs are the entries that name one row, in the order index linked
// them (fetchEntry.seq): most often one, kept without an allocation; a
// few in a list; and many (the peers of a DP group that each fetched one
// kept batch, a batch fetched again and again) in a set, so that taking
// one out does not walk the others: the expiry of k fetches of the same
// rows cost k² per row.
type fetchRefs struct {
	one  *fetchEntry
	more []*fetchEntry
	// many holds them all, instead of one and more, once more than
	// maxRefList would be in more; it is never a list again.
	many map[*fetchEntry]struct{}
}

// maxRefList bounds fetchRefs.more.
const maxRefList = 16

// appendTo appends r's entries to out in the order index linked them.
func (r *fetchRefs) appendTo(out []*fetchEntry) []*fetchEntry {
	if r.many == nil {
		if r.one != nil {
			out = append(out, r.one)
		}
		return append(out, r.more...)
	}
	n := len(out)
	for e := range r.many {
		out = append(out, e)
	}
	slices.SortFunc(out[n:], func(a, b *fetchEntry) int { return cmp.Compare(a.seq, b.seq) })
	return out
}

// expired reports whether e is past its time at now: gone, though the
// table may not have dropped it yet. A held fetch lives until it is
// settled (holds.go).
func (e *fetchEntry) expired(now time.Time) bool {
	return !e.held && now.UnixMilli()-e.at.UnixMilli() > fetchKeyTTL.Milliseconds()
}

func (t *fetchTable) get(key string, now time.Time) *fetchEntry {
	e := t.m[key]
	if e == nil || e.expired(now) {
		return nil
	}
	return e
}

// entries are the table's entries in its order.
func (t *fetchTable) entries() iter.Seq[*fetchEntry] {
	return func(yield func(*fetchEntry) bool) {
		for e := t.head; e != nil; {
			next := e.next
			if !yield(e) {
				return
			}
			e = next
		}
	}
}

func (t *fetchTable) pushBack(e *fetchEntry) {
	e.prev, e.next = t.tail, nil
	if t.tail == nil {
		t.head = e
	} else {
		t.tail.next = e
	}
	t.tail = e
}

func (t *fetchTable) unlink(e *fetchEntry) {
	if e.prev == nil {
		t.head = e.next
	} else {
		e.prev.next = e.next
	}
	if e.next == nil {
		t.tail = e.prev
	} else {
		e.next.prev = e.prev
	}
	e.prev, e.next = nil, nil
}

// restart restarts e's time at at, and moves it to the end of the order,
// which expiry (add) walks from the oldest.
func (t *fetchTable) restart(e *fetchEntry, at time.Time) {
	e.at = at
	if t.m[e.key] == e {
		t.unlink(e)
		t.pushBack(e)
	}
}

// remove drops e from the table.
func (t *fetchTable) remove(e *fetchEntry) {
	delete(t.m, e.key)
	t.unlink(e)
	t.unindex(e)
}

func (t *fetchTable) add(e *fetchEntry) {
	if t.m == nil {
		t.m = make(map[string]*fetchEntry)
	}
	if old := t.m[e.key]; old != nil {
		t.remove(old)
	}
	// Forget expired entries and, past the bound, the oldest; not a held
	// fetch, which lives until it is settled (holds.go): its caller's
	// acknowledgment must find it. The walk passes the held ones (few:
	// the fetches ahead of their callers) and ends at the first entry
	// that lives: those after it are younger.
	for d := t.head; d != nil && (len(t.m) >= maxFetchKeys || d.held || d.expired(e.at)); {
		next := d.next
		if !d.held {
			t.remove(d)
		}
		d = next
	}
	t.m[e.key] = e
	t.pushBack(e)
	t.index(e)
}

// index adds e to byRow under each row it names.
func (t *fetchTable) index(e *fetchEntry) {
	if len(e.sampled) == 0 && len(e.consumed) == 0 {
		return
	}
	if t.byRow == nil {
		t.byRow = make(map[uint64]fetchRefs)
	}
	t.seq++
	e.seq = t.seq
	link := func(gi uint64) {
		r := t.byRow[gi]
		switch {
		case r.many != nil:
			r.many[e] = struct{}{}
			return
		case r.one == nil:
			r.one = e
		case r.one == e && len(r.more) == 0, len(r.more) > 0 && r.more[len(r.more)-1] == e:
			return // named in sampled and consumed: e's rows are linked in a row
		case len(r.more) < maxRefList:
			r.more = append(r.more, e)
		default:
			r.many = make(map[*fetchEntry]struct{}, 2*maxRefList)
			r.many[r.one] = struct{}{}
			for _, x := range r.more {
				r.many[x] = struct{}{}
			}
			r.many[e] = struct{}{}
			r.one, r.more = nil, nil
		}
		t.byRow[gi] = r
	}
	for _, gi := range e.sampled {
		link(gi)
	}
	for _, gi := range e.consumed {
		link(gi)
	}
}

// unindex removes e from byRow.
func (t *fetchTable) unindex(e *fetchEntry) {
	unlink := func(gi uint64) {
		r, ok := t.byRow[gi]
		if !ok {
			return
		}
		switch {
		case r.many != nil:
			delete(r.many, e)
			if len(r.many) == 0 {
				delete(t.byRow, gi)
			}
			return
		case r.one == e:
			r.one = nil
			if len(r.more) > 0 {
				r.one, r.more = r.more[0], r.more[1:]
			}
		default:
			if i := slices.Index(r.more, e); i >= 0 {
				r.more = slices.Delete(r.more, i, i+1)
			}
		}
		if r.one == nil {
			delete(t.byRow, gi)
		} else {
			t.byRow[gi] = r
		}
	}
	for _, gi := range e.sampled {
		unlink(gi)
	}
	for _, gi := range e.consumed {
		unlink(gi)
	}
}

// forgetRows takes rows removed from the partition out of every entry
// (see the file comment). Slices an entry held are replaced, not
// changed: a snapshot may still be writing them. A held fetch left with
// no consumed row holds nothing: it is no longer held (its at is now
// then, as for an acknowledged one, so that it can still be asked again
// and acknowledged), and forgetRows reports whether there was one, for
// the partition to drop it from its holds. Held, it would stay in the table past maxFetchKeys, and in
// the partition's holds that every fetch looks through, until the
// held-fetch TTL (forever with a negative one) for a caller that cleared
// what it held and never settled it; its acknowledgment, once the TTL
// gave it back, was refused, though nothing was given back.
func (t *fetchTable) forgetRows(rows []uint64, now time.Time) (unheld bool) {
	// Each entry once, however many of rows it names: its rows are
	// filtered once, not once per row of it that goes.
	var hit, named []*fetchEntry
	seen := map[*fetchEntry]struct{}{}
	for _, gi := range rows {
		r, ok := t.byRow[gi]
		if !ok {
			continue
		}
		delete(t.byRow, gi)
		named = r.appendTo(named[:0])
		for _, e := range named {
			if _, dup := seen[e]; !dup {
				seen[e] = struct{}{}
				hit = append(hit, e)
			}
		}
	}
	if len(hit) == 0 {
		return
	}
	gone := make(map[uint64]struct{}, len(rows))
	for _, gi := range rows {
		gone[gi] = struct{}{}
	}
	var settled []*fetchEntry
	for _, e := range hit {
		e.cleared = appendCleared(e.cleared, e.sampled, e.consumed, gone)
		e.sampled = withoutRows(e.sampled, gone)
		e.consumed = withoutRows(e.consumed, gone)
		if e.held && len(e.consumed) == 0 {
			e.held = false
			settled = append(settled, e)
		}
	}
	// They move to the end of the table in an order of their own (their
	// time as snapshots keep it, then their key), not hit's: that is
	// byRow's, the order index linked them in, which a snapshot's load
	// rebuilds from the table's and so may differ from the live one's
	// (unconsumeRows links a fetch again without moving it).
	slices.SortFunc(settled, func(a, b *fetchEntry) int {
		return cmp.Or(cmp.Compare(a.at.UnixMilli(), b.at.UnixMilli()), cmp.Compare(a.key, b.key))
	})
	for _, e := range settled {
		t.restart(e, now)
	}
	return len(settled) > 0
}

// forgetRows takes rows removed from p out of its keyed fetches
// (fetchTable.forgetRows) and drops the held ones left holding nothing
// from p's holds (settled, as expireHeld drops them). p is locked.
func (p *partition) forgetRows(rows []uint64, now time.Time) {
	if p.fetches.forgetRows(rows, now) {
		p.held = slices.DeleteFunc(p.held, func(e *fetchEntry) bool { return !e.held })
		p.heldCheck = time.Time{} // the next look works it out
	}
}

// reset forgets the rows the entries of task ("": every task) consumed,
// whose consumption was reset (at now): given back now, a fetch from
// before would make rows fetchable again that a fetch since took. Its
// kept batch is no longer followed either (forgetGroups). Asked again, it
// still answers with the rows it sampled. A held one is no longer held
// (nothing left to give back), and can be asked again for fetchKeyTTL
// from now, as an acknowledged one from its acknowledgment: its time was
// the fetch's, and a hold older than fetchKeyTTL lost its entry at the
// reset, so that the fetch asked again took the new round's rows. Those
// move to the end of the order, which expiry (add) walks from the
// oldest.
func (t *fetchTable) reset(task string, now time.Time) {
	var moved []*fetchEntry
	for e := range t.entries() {
		if task != "" && e.task != task {
			continue
		}
		e.kept = nil
		if e.held {
			e.held = false
			moved = append(moved, e)
		}
		if len(e.consumed) > 0 {
			t.unindex(e)
			e.consumed = nil
			t.index(e)
		}
	}
	for _, e := range moved {
		t.restart(e, now)
	}
}

// appendCleared returns cleared (an entry's, whose slice a snapshot may
// still be writing: a new one when it adds) with the rows of sampled and
// then consumed that are in gone, each once. An entry's sampled and
// consumed no longer name a row it cleared (byRow does not link it), so
// a row is in cleared at most once however often its index is reused
// and cleared again.
func appendCleared(cleared, sampled, consumed []uint64, gone map[uint64]struct{}) []uint64 {
	var add []uint64
	for _, gi := range sampled {
		if _, ok := gone[gi]; ok {
			add = append(add, gi)
		}
	}
	var seen map[uint64]struct{} // a set: both lists can be a large fetch's
	if len(add) > 0 && len(consumed) > 0 {
		seen = make(map[uint64]struct{}, len(add))
		for _, gi := range add {
			seen[gi] = struct{}{}
		}
	}
	for _, gi := range consumed {
		if _, ok := gone[gi]; !ok {
			continue
		}
		if _, dup := seen[gi]; !dup {
			add = append(add, gi)
		}
	}
	if len(add) == 0 {
		return cleared
	}
	return append(slices.Clip(cleared), add...)
}

// withoutRows returns rows less those in gone: rows itself when it has
// none of them, else a new slice.
func withoutRows(rows []uint64, gone map[uint64]struct{}) []uint64 {
	keep := func(gi uint64) bool { _, ok := gone[gi]; return !ok }
	i := slices.IndexFunc(rows, func(gi uint64) bool { return !keep(gi) })
	if i < 0 {
		return rows
	}
	out := slices.Clone(rows[:i])
	for _, gi := range rows[i+1:] {
		if keep(gi) {
			out = append(out, gi)
		}
	}
	return out
}

// copyState returns the table's entries that live at now and its held
// fetches given back (givenBack), for a snapshot.
func (t *fetchTable) copyState(now time.Time) ([]*wirepb.StateFetch, []*wirepb.StateGivenBack) {
	out := make([]*wirepb.StateFetch, 0, len(t.m))
	for e := range t.entries() {
		if e.expired(now) {
			continue
		}
		out = append(out, &wirepb.StateFetch{
			Key: []byte(e.key), Task: e.task, Sampled: e.sampled, Consumed: e.consumed, Spent: e.spent, AtUnixMs: e.at.UnixMilli(),
			Kept: e.kept.pb(), Held: e.held, HoldGroup: heldGroup(e.held, e.group), Cleared: e.cleared,
		})
	}
	var back []*wirepb.StateGivenBack
	if len(t.back.order) > 0 {
		back = make([]*wirepb.StateGivenBack, 0, len(t.back.order))
	}
	for _, key := range t.back.order {
		b := t.back.m[key]
		back = append(back, &wirepb.StateGivenBack{Key: []byte(key), Task: b.task, AtUnixMs: b.at.UnixMilli()})
	}
	return out, back
}

// loadFetches loads a snapshot's fetch table: its entries fs and its held
// fetches given back. p is locked.
func (p *partition) loadFetches(fs []*wirepb.StateFetch, back []*wirepb.StateGivenBack) error {
	for _, f := range fs {
		if len(f.Key) == 0 || len(f.Key) > maxFetchKeyLen || f.Task == "" {
			return corrupt("partition %q: a fetch key of %d bytes for task %q", p.id, len(f.Key), f.Task)
		}
		if f.Spent && f.Held {
			// A held fetch given back, as a state from before
			// StatePartition.given_back wrote it (no entry is both).
			p.fetches.back.add(string(f.Key), f.Task, time.UnixMilli(f.AtUnixMs))
			continue
		}
		ref, err := keptRefOf(f.Task, f.Kept)
		if err != nil {
			return fmt.Errorf("partition %q: %w", p.id, err)
		}
		e := &fetchEntry{key: string(f.Key), task: f.Task, sampled: f.Sampled, consumed: f.Consumed, cleared: f.Cleared, spent: f.Spent, at: time.UnixMilli(f.AtUnixMs), kept: ref}
		p.fetches.add(e)
		if f.Held && !f.Spent {
			e.group = string(f.HoldGroup)
			p.hold(e, e.at) // armHeld restarts its TTL
		}
	}
	for _, b := range back {
		if len(b.Key) == 0 || len(b.Key) > maxFetchKeyLen || b.Task == "" {
			return corrupt("partition %q: a given-back fetch key of %d bytes for task %q", p.id, len(b.Key), b.Task)
		}
		p.fetches.back.add(string(b.Key), b.Task, time.UnixMilli(b.AtUnixMs))
	}
	return nil
}

func checkFetchKey(key string) error {
	if len(key) > maxFetchKeyLen {
		return fmt.Errorf("fetch key of %d bytes, at most %d: %w", len(key), maxFetchKeyLen, engine.ErrInvalid)
	}
	return nil
}

// errFetchGivenBack is the answer to a keyed fetch repeated after its rows
// were given back (or after an unconsume came first, or the batch it took
// was left behind by its group: keptbatches.go).
var errFetchGivenBack = fmt.Errorf("fetch was given back by its caller (or its batch, left behind by its group, by the controller): %w", context.Canceled)

// unconsume marks the rows indexes (those still here) not consumed by task
// and spends key (none for ""). p is locked.
func (p *partition) unconsume(task, key string, indexes []uint64, at time.Time) {
	t, known := p.tasks[task]
	if !known {
		indexes = nil // a task this partition does not know consumed nothing (and gets no slot)
	}
	for _, gi := range indexes {
		if r, ok := p.rows.get(gi); ok {
			p.setConsumed(r, t, false)
			if len(p.views) > 0 {
				p.refreshRow(r)
			}
		}
	}
	if key == "" {
		// Rows given back by the controller (keptbatches.go).
	} else if e := p.fetches.get(key, at); e != nil && e.task == task {
		if e.kept != nil && !e.spent {
			p.gaveBack(e.kept)
		}
		if e.held {
			e.held = false
			p.fetches.restart(e, at) // the caller's ack, if it comes, must still learn of this (holds.go)
			p.fetches.back.add(key, task, at)
		}
		e.spent = true
	} else {
		p.fetches.add(&fetchEntry{key: key, task: task, spent: true, at: at})
	}
	if len(indexes) > 0 {
		p.notify()
	}
}

// unconsumeRows marks the rows indexes of the fetch named key not
// consumed by task and takes them out of the fetch, which keeps its
// other rows (UnconsumeRows); a held fetch left with none holds nothing,
// as in forgetRows. p is locked.
func (p *partition) unconsumeRows(task, key string, indexes []uint64, at time.Time) {
	e := p.fetches.get(key, at)
	if e == nil || e.task != task || e.spent {
		return
	}
	gone := make(map[uint64]struct{}, len(indexes))
	for _, gi := range indexes {
		gone[gi] = struct{}{}
	}
	left := withoutRows(e.consumed, gone)
	if len(left) == len(e.consumed) {
		return
	}
	if t, known := p.tasks[task]; known {
		for _, gi := range indexes {
			if r, ok := p.rows.get(gi); ok {
				p.setConsumed(r, t, false)
				if len(p.views) > 0 {
					p.refreshRow(r)
				}
			}
		}
	}
	p.fetches.unindex(e)
	e.consumed = left // a new slice: a snapshot may still be writing the old
	p.fetches.index(e)
	if e.held && len(e.consumed) == 0 {
		e.held = false
		p.fetches.restart(e, at)
		p.held = slices.DeleteFunc(p.held, func(x *fetchEntry) bool { return x == e })
		p.heldCheck = time.Time{}
	}
	p.notify()
}

// spentKeys remembers keys given back for a partition that did not exist
// yet: a keyed fetch still waiting for the partition to be created must
// not take rows once it is. Entries live fetchKeyTTL, at most
// maxFetchKeys; they are not durable (a restart ends the fetch that could
// have used one along with its connection).
type spentKeys struct {
	mu    sync.Mutex
	m     map[string]time.Time
	order []string
}

func (s *spentKeys) add(key string, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = make(map[string]time.Time)
	}
	for len(s.order) > 0 && (len(s.order) >= maxFetchKeys || now.Sub(s.m[s.order[0]]) > fetchKeyTTL) {
		delete(s.m, s.order[0])
		s.order = s.order[1:]
	}
	if _, ok := s.m[key]; !ok {
		s.order = append(s.order, key)
	}
	s.m[key] = now
}

func (s *spentKeys) has(key string, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	at, ok := s.m[key]
	return ok && now.Sub(at) <= fetchKeyTTL
}
