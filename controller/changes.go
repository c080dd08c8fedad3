package controller

// The change feed. Every change to a partition's keys — a key created,
// cells committed to it, its tags set or removed, the key cleared — takes
// the partition's next change number and stamps the keys it touched with
// it. KeyChanges lists the keys whose last change came after a cursor,
// ordered by position (change number, then key creation number), and
// waits for one when there is none. The ordered index of the keys is
// built by the first listing, so a partition nobody follows pays a
// number per key a change touches and nothing more. Cleared keys are remembered (the
// newest maxCleared per partition) so that they can be reported; a cursor
// from before the last one forgotten is answered with a reset (one within
// a listing of every key, only when that key was cleared after the
// listing began), as is one from another incarnation of the partition
// (cleared and made again) or of the controller (an in-memory one that
// restarted).
//
// Change numbers are part of the state: the log's ops that change keys
// carry the number they gave (change_seq), and state files hold each
// key's number, the partition's last, and the cleared keys. So a cursor
// stays valid across restarts of a durable controller, as long as
// nothing it saw was lost: a cursor names the start of the controller
// that gave it and the last log record appended when it was given, and
// one whose record is at or past the record of a later start saw records
// that start did not find (a machine crash with --fsync never, an older
// copy of the data directory restored): it is answered with a reset, as
// is one naming a start the state does not know (one of the newest 64).

import (
	"cmp"
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"sort"

	"github.com/google/btree"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire/wirepb"
)

// maxCleared is how many cleared keys a partition remembers for its
// change feed at least.
const maxCleared = 1 << 16

// changePos orders the feed: a key's last change number, then its
// creation number (unique among a partition's keys, cleared ones too).
type changePos struct{ change, seq uint64 }

func (a changePos) less(b changePos) bool {
	return a.change < b.change || a.change == b.change && a.seq < b.seq
}

func (a changePos) cmp(b changePos) int {
	if c := cmp.Compare(a.change, b.change); c != 0 {
		return c
	}
	return cmp.Compare(a.seq, b.seq)
}

// after returns the first position after a.
func (a changePos) after() changePos {
	if a.seq == math.MaxUint64 {
		return changePos{a.change + 1, 0}
	}
	return changePos{a.change, a.seq + 1}
}

func (r *row) pos() changePos { return changePos{r.change, r.seq} }

// clearedKey is a key a change cleared, at the position of that change.
type clearedKey struct {
	key string
	pos changePos
}

// clearedRing holds the newest maxCleared cleared keys in position order:
// buf grows to maxCleared, then each new key takes the oldest's place.
type clearedRing struct {
	buf  []clearedKey
	head int // where the oldest is, once buf is full
}

func (cr *clearedRing) len() int { return len(cr.buf) }

// at returns the i-th oldest.
func (cr *clearedRing) at(i int) clearedKey { return cr.buf[(cr.head+i)%len(cr.buf)] }

// push adds the newest, and returns the one it pushed out, if any.
func (cr *clearedRing) push(ck clearedKey) (out clearedKey, full bool) {
	if len(cr.buf) < maxCleared {
		cr.buf = append(cr.buf, ck)
		return clearedKey{}, false
	}
	out, cr.buf[cr.head] = cr.buf[cr.head], ck
	cr.head = (cr.head + 1) % len(cr.buf)
	return out, true
}

// search returns the first i whose key is at pos or after.
func (cr *clearedRing) search(pos changePos) int {
	return sort.Search(cr.len(), func(i int) bool { return !cr.at(i).pos.less(pos) })
}

// changeFeed is a partition's change feed; the partition's lock guards it.
// Keeping it costs a change nothing but a number per key it touches until
// someone lists changes: the ordered index of the keys is built then (and
// kept up to date from then on).
type changeFeed struct {
	seq     uint64              // the last change number given
	rows    *btree.BTreeG[*row] // the keyed rows by position; nil until the first listing
	cleared clearedRing         // the newest maxCleared cleared keys
	floor   changePos           // the position of the last cleared key forgotten
	watch   chan struct{}       // closed at the next change; nil while nobody waits
}

// index returns the keyed rows ordered by position, building the index
// from keys (every keyed row) the first time.
func (f *changeFeed) index(keys map[string]*row) *btree.BTreeG[*row] {
	if f.rows != nil {
		return f.rows
	}
	rows := make([]*row, 0, len(keys))
	for _, r := range keys {
		rows = append(rows, r)
	}
	slices.SortFunc(rows, func(a, b *row) int { return a.pos().cmp(b.pos()) })
	f.rows = btree.NewG(32, func(a, b *row) bool { return a.pos().less(b.pos()) })
	for _, r := range rows {
		f.rows.ReplaceOrInsert(r)
		r.inFeed = true
	}
	return f.rows
}

// drop takes r, about to be removed, out of the index.
func (f *changeFeed) drop(r *row) {
	if r.inFeed {
		f.rows.Delete(r)
		r.inFeed = false
	}
}

// next returns a new change number when one of rows has a key, else 0.
func (f *changeFeed) next(rows []*row) uint64 {
	for _, r := range rows {
		if r.keyed {
			f.seq++
			return f.seq
		}
	}
	return 0
}

// stamp records that change n touched the keyed rows among rows; n 0
// (no key touched, or a log from before change numbers) records nothing.
func (f *changeFeed) stamp(rows []*row, n uint64) {
	if n == 0 {
		return
	}
	f.seq = max(f.seq, n)
	for _, r := range rows {
		switch {
		case !r.keyed || r.change == n && (r.inFeed || f.rows == nil):
		case f.rows == nil:
			r.change = n
		default:
			f.drop(r)
			r.change = n
			f.rows.ReplaceOrInsert(r)
			r.inFeed = true
		}
	}
	f.wake()
}

// touch makes one change of rows and returns its number (0: no row has a
// key).
func (f *changeFeed) touch(rows []*row) uint64 {
	n := f.next(rows)
	f.stamp(rows, n)
	return n
}

// bury records the keyed rows among rows, about to be removed, as cleared
// by change n.
func (f *changeFeed) bury(p *partition, rows []*row, n uint64) {
	if n == 0 {
		return
	}
	f.seq = max(f.seq, n)
	group := make([]clearedKey, 0, len(rows))
	for _, r := range rows {
		if r.keyed {
			group = append(group, clearedKey{key: p.keyOf(r), pos: changePos{n, r.seq}})
		}
	}
	slices.SortFunc(group, func(a, b clearedKey) int { return a.pos.cmp(b.pos) })
	for _, ck := range group {
		if out, full := f.cleared.push(ck); full {
			f.floor = out.pos
		}
	}
	f.wake()
}

func (f *changeFeed) wake() {
	if f.watch != nil {
		close(f.watch)
		f.watch = nil
	}
}

// wait returns a channel closed at the next change.
func (f *changeFeed) wait() <-chan struct{} {
	if f.watch == nil {
		f.watch = make(chan struct{})
	}
	return f.watch
}

// changesCursor is where a listing of changes stands: the controller
// (its cluster id: an in-memory controller draws a new one each start),
// the start that gave it (its nonce) and the last log record appended
// then (0 without a log), the partition and its gen (0: from the
// beginning, whatever the partition), and the position of the last
// change listed. Within a listing of every key (from a nil cursor or a
// reset) that has more pages, asOf is the partition's last change number
// when the listing began (0 otherwise): keys cleared by then were not
// listed, so forgetting them does not matter to the pages that follow.
type changesCursor struct {
	cluster   string
	start     uint64 // nonce
	logIndex  uint64
	partition string
	gen       uint64
	pos       changePos
	asOf      uint64
}

// The cursor's versions: 2 is 1 with asOf; 3, the one written, has asOf
// (0 if unset), the start and the log index. A cursor of version 1 or 2
// names no start: it is answered with a reset.
const (
	changesCursorVersion      = 1
	changesCursorVersionAsOf  = 2
	changesCursorVersionStart = 3
)

// encode writes the cursor: a version byte, uvarints gen, change, seq,
// asOf, start, log index, the cluster id (uvarint length, bytes), then
// the partition id.
func (cc changesCursor) encode() []byte {
	b := []byte{changesCursorVersionStart}
	for _, v := range [...]uint64{cc.gen, cc.pos.change, cc.pos.seq, cc.asOf, cc.start, cc.logIndex, uint64(len(cc.cluster))} {
		b = binary.AppendUvarint(b, v)
	}
	b = append(b, cc.cluster...)
	return append(b, cc.partition...)
}

func decodeChangesCursor(b []byte) (changesCursor, error) {
	var cc changesCursor
	if len(b) == 0 {
		return cc, nil
	}
	bad := fmt.Errorf("malformed changes cursor: %w", engine.ErrInvalid)
	// gen, change, seq, asOf, start, log index, cluster id length; which
	// of them the version has.
	var vals [7]uint64
	var has [7]bool
	version := b[0]
	switch version {
	case changesCursorVersion:
		has = [7]bool{true, true, true, false, false, false, true}
	case changesCursorVersionAsOf:
		has = [7]bool{true, true, true, true, false, false, true}
	case changesCursorVersionStart:
		has = [7]bool{true, true, true, true, true, true, true}
	default:
		return cc, bad
	}
	b = b[1:]
	for i := range vals {
		if !has[i] {
			continue
		}
		v, n := binary.Uvarint(b)
		if n <= 0 {
			return cc, bad
		}
		vals[i], b = v, b[n:]
	}
	if vals[6] > uint64(len(b)) {
		return cc, bad
	}
	cc.gen, cc.pos, cc.asOf, cc.start, cc.logIndex = vals[0], changePos{vals[1], vals[2]}, vals[3], vals[4], vals[5]
	cc.cluster, cc.partition = string(b[:vals[6]]), string(b[vals[6]:])
	if cc.gen == 0 || cc.partition == "" || version == changesCursorVersionAsOf && cc.asOf == 0 {
		return cc, bad
	}
	return cc, nil
}

// maxStarts is how many of the newest starts a controller remembers for
// the change feed's cursors.
const maxStarts = 64

// startMark is a start a cursor may name (wirepb.StartMark): its nonce
// and the log index of its record (0 without a log).
type startMark struct{ nonce, index uint64 }

// noteStart adds a start to c.starts, forgetting the oldest past
// maxStarts.
func (c *Controller) noteStart(nonce, index uint64) {
	if len(c.starts) == maxStarts {
		c.starts = slices.Delete(c.starts, 0, 1)
	}
	c.starts = append(c.starts, startMark{nonce, index})
}

// knows reports whether everything cur saw is still in c's state: the
// start that gave it is known, and no start since found the log shorter
// than cur's record.
func (c *Controller) knows(cur changesCursor) bool {
	if cur.cluster != c.cluster {
		return false
	}
	i := slices.IndexFunc(c.starts, func(s startMark) bool { return s.nonce == cur.start })
	if i < 0 || cur.start == 0 {
		return false
	}
	for _, s := range c.starts[i+1:] {
		if cur.logIndex >= s.index {
			return false
		}
	}
	return true
}

// startsPB returns c.starts for a snapshot's header.
func (c *Controller) startsPB() []*wirepb.StartMark {
	out := make([]*wirepb.StartMark, len(c.starts))
	for i, s := range c.starts {
		out[i] = &wirepb.StartMark{Nonce: s.nonce, Index: s.index}
	}
	return out
}

// nonce returns this start's nonce.
func (c *Controller) nonce() uint64 { return c.starts[len(c.starts)-1].nonce }

// KeyChanges lists the keys of a partition changed after req.Cursor (nil:
// from the beginning): created, committed to, their tags set or removed,
// or cleared. Each key comes once, as it is now, in the order of the last
// changes (a key cleared and made again is reported as it is now; a
// cleared key has Cleared set). An answer holds at most req.Limit changes
// (0: DefaultKeysPage; at most 65536) and about 8 MiB; More says that the
// next is ready. The first answer from a nil cursor (or a reset) lists
// every key the partition holds, no cleared ones; the answers that
// continue it tell the keys cleared after it, not before.
//
// With req.Wait it blocks until there is a change after the cursor (the
// partition may not exist yet), the context ends or the controller
// closes; without it an answer with no changes comes at once. The cursor
// of an answer is where the next request starts; it stays valid across a
// restart of a durable controller. A cursor of another incarnation of the
// partition (cleared since) or of the controller (an in-memory one that
// restarted), one that saw changes the log lost or names a start the
// state does not know (see the top of this file), one from before the
// newest 65536 cleared keys, or one past the partition's last change is
// answered with Reset (see [engine.KeyChanges]).
//
// Errors: [engine.ErrInvalid] for an empty partition id, a bad limit, a
// malformed cursor or one of another partition; with Wait, the context's
// error or [engine.ErrClosed].
func (c *Controller) KeyChanges(ctx context.Context, req engine.ChangesRequest) (engine.KeyChanges, error) {
	return c.keyChanges(ctx, req, false)
}

// keyChanges is KeyChanges; with shared, for the server, which encodes
// the answer at once, the keys' tags are the rows' own maps (to read, not
// change) rather than copies.
func (c *Controller) keyChanges(ctx context.Context, req engine.ChangesRequest, shared bool) (engine.KeyChanges, error) {
	limit := req.Limit
	switch {
	case req.Partition == "":
		return engine.KeyChanges{}, opErr("key changes", req.Partition, fmt.Errorf("empty partition id: %w", engine.ErrInvalid))
	case limit < 0 || limit > maxKeysPage:
		return engine.KeyChanges{}, opErr("key changes", req.Partition, fmt.Errorf("%d changes per answer (1 to %d): %w", limit, maxKeysPage, engine.ErrInvalid))
	case limit == 0:
		limit = DefaultKeysPage
	}
	cur, err := decodeChangesCursor(req.Cursor)
	if err != nil {
		return engine.KeyChanges{}, opErr("key changes", req.Partition, err)
	}
	if cur.partition != "" && cur.partition != req.Partition {
		return engine.KeyChanges{}, opErr("key changes", req.Partition, fmt.Errorf("cursor of partition %q: %w", cur.partition, engine.ErrInvalid))
	}
	c.changeWaiters.Add(1)
	defer c.changeWaiters.Add(-1)
	for {
		var wake, dropped <-chan struct{}
		p, err := c.lock(req.Partition)
		if err != nil {
			return engine.KeyChanges{}, opErr("key changes", req.Partition, err)
		}
		if p == nil {
			if cur.gen != 0 {
				// The partition the cursor saw was cleared.
				return engine.KeyChanges{Reset: true}, nil
			}
			c.mu.RLock()
			wake = c.created
			c.mu.RUnlock()
			if c.get(req.Partition) != nil {
				continue // made between lock and RLock
			}
		} else {
			out := p.changesSince(c.cursorHere(), cur, cur.gen == 0 || c.knows(cur), limit, shared)
			wake, dropped = p.feed.wait(), p.changedChan()
			p.mu.Unlock()
			if len(out.Changes) > 0 || out.Reset {
				return out, nil
			}
			if !req.Wait {
				return out, nil
			}
			// Wait from the position reached (the same changes, told in
			// the same cursor's terms).
			cur, _ = decodeChangesCursor(out.Cursor)
		}
		if !req.Wait {
			return engine.KeyChanges{}, nil
		}
		select {
		case <-wake:
		case <-dropped:
		case <-ctx.Done():
			return engine.KeyChanges{}, opErr("key changes", req.Partition, fmt.Errorf("wait for a change: %w", ctx.Err()))
		case <-c.done:
			return engine.KeyChanges{}, opErr("key changes", req.Partition, errClosed)
		}
	}
}

// cursorHere returns a cursor naming c, this start and the last log
// record appended: taken under a partition's lock, every change the
// partition shows is in a record up to it.
func (c *Controller) cursorHere() changesCursor {
	cc := changesCursor{cluster: c.cluster, start: c.nonce()}
	if c.j != nil {
		cc.logIndex = c.j.Last()
	}
	return cc
}

// changesSince lists the changes after cur, known unless the changes it
// saw may be lost (see Controller.knows); here names the controller for
// the answer's cursor (Controller.cursorHere). p is locked.
func (p *partition) changesSince(here, cur changesCursor, known bool, limit int, shared bool) engine.KeyChanges {
	var out engine.KeyChanges
	from, withCleared, asOf := cur.pos.after(), true, cur.asOf
	// The cleared keys the cursor needs are those after its position
	// and, within a listing of every key, those cleared since it began.
	needs := cur.pos
	if began := (changePos{cur.asOf, math.MaxUint64}); needs.less(began) {
		needs = began
	}
	switch {
	case cur.gen == 0:
		from, withCleared, asOf = changePos{}, false, p.feed.seq
	case !known || cur.gen != p.gen || cur.pos.change > p.feed.seq || cur.asOf > p.feed.seq || needs.less(p.feed.floor):
		from, withCleared, asOf, out.Reset = changePos{}, false, p.feed.seq, true
	}
	// The keys (up to limit+1 of them) and the cleared keys from the
	// position on, merged in position order.
	var rows []*row
	p.feed.index(p.keys).AscendGreaterOrEqual(&row{change: from.change, seq: from.seq}, func(r *row) bool {
		rows = append(rows, r)
		return len(rows) <= limit
	})
	cl := &p.feed.cleared
	gone := cl.len() // the next cleared key: cl.at(gone), while gone < cl.len()
	if withCleared {
		gone = cl.search(needs.after())
	}
	var told map[string]bool // cleared keys told in this answer
	last := cur.pos
	size := 0
	for len(rows) > 0 || gone < cl.len() {
		var kc engine.KeyChange
		var pos changePos
		if gone == cl.len() || len(rows) > 0 && rows[0].pos().less(cl.at(gone).pos) {
			r := rows[0]
			kc, pos = engine.KeyChange{Key: p.keyOf(r), Index: r.index, Tags: p.tagsOf(r)}, r.pos()
		} else {
			ck := cl.at(gone)
			if _, live := p.keys[ck.key]; live || told[ck.key] {
				// Made again since (it is told as it is now), or cleared
				// twice.
				gone, last = gone+1, ck.pos
				continue
			}
			kc, pos = engine.KeyChange{Key: ck.key, Cleared: true}, ck.pos
		}
		if len(out.Changes) == limit || size >= maxKeysPageBytes {
			out.More = true
			break
		}
		if kc.Cleared {
			gone++
			if told == nil {
				told = make(map[string]bool)
			}
			told[kc.Key] = true
		} else {
			rows = rows[1:]
			if !shared {
				kc.Tags = kc.Tags.Clone()
			}
		}
		out.Changes = append(out.Changes, kc)
		last = pos
		size += len(kc.Key) + 16 + kc.Tags.JSONSize()
	}
	if !out.More {
		// Everything up to the partition's last change is told.
		last, asOf = changePos{p.feed.seq, math.MaxUint64}, 0
	}
	here.partition, here.gen, here.pos, here.asOf = p.id, p.gen, last, asOf
	out.Cursor = here.encode()
	return out
}
