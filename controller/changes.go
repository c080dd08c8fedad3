package controller

// The change feed. Every change to a partition's keys — a key created,
// cells committed to it, its tags set or removed, the key cleared — takes
// the partition's next change number and stamps the keys it touched with
// it. KeyChanges lists the keys whose last change came after a cursor,
// ordered by position (change number, then key creation number), and
// waits for one when there is none. Cleared keys are remembered (the
// newest maxCleared per partition) so that they can be reported; a cursor
// from before the last one forgotten is answered with a reset, as is one
// from another incarnation of the partition (cleared and made again) or of
// the controller (an in-memory one that restarted).
//
// Change numbers are part of the state: the log's ops that change keys
// carry the number they gave (change_seq), and state files hold each
// key's number, the partition's last, and the cleared keys. So a cursor
// stays valid across restarts of a durable controller.

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"

	"github.com/google/btree"

	"github.com/tqgo/tq/engine"
)

// maxCleared is how many cleared keys a partition remembers for its
// change feed.
const maxCleared = 1 << 16

// changePos orders the feed: a key's last change number, then its
// creation number (unique among a partition's keys, cleared ones too).
type changePos struct{ change, seq uint64 }

func (a changePos) less(b changePos) bool {
	return a.change < b.change || a.change == b.change && a.seq < b.seq
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

// changeFeed is a partition's change feed; the partition's lock guards it.
type changeFeed struct {
	seq       uint64                    // the last change number given
	rows      *btree.BTreeG[*row]       // the keyed rows, by position
	cleared   *btree.BTreeG[clearedKey] // recently cleared keys, by position
	clearedAt map[string]changePos      // the position of each of cleared
	floor     changePos                 // the position of the last cleared key forgotten
	watch     chan struct{}             // closed at the next change; nil while nobody waits
}

func newChangeFeed() changeFeed {
	return changeFeed{
		rows:      btree.NewG(32, func(a, b *row) bool { return a.pos().less(b.pos()) }),
		cleared:   btree.NewG(32, func(a, b clearedKey) bool { return a.pos.less(b.pos) }),
		clearedAt: make(map[string]changePos),
	}
}

// added enters a row that just got its key (the key's clearing, if it was
// cleared before, is forgotten: the key is reported as it is now).
func (f *changeFeed) added(r *row) {
	if pos, ok := f.clearedAt[r.key]; ok {
		f.cleared.Delete(clearedKey{pos: pos})
		delete(f.clearedAt, r.key)
	}
	f.rows.ReplaceOrInsert(r)
}

// next returns a new change number when one of rows has a key, else 0.
func (f *changeFeed) next(rows []*row) uint64 {
	for _, r := range rows {
		if r.key != "" {
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
		if r.key == "" || r.change == n {
			continue
		}
		f.rows.Delete(r)
		r.change = n
		f.rows.ReplaceOrInsert(r)
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
func (f *changeFeed) bury(rows []*row, n uint64) {
	if n == 0 {
		return
	}
	f.seq = max(f.seq, n)
	for _, r := range rows {
		if r.key == "" {
			continue
		}
		f.remember(clearedKey{key: r.key, pos: changePos{n, r.seq}})
	}
	f.wake()
}

// remember adds a cleared key, forgetting the oldest past maxCleared.
func (f *changeFeed) remember(ck clearedKey) {
	if pos, ok := f.clearedAt[ck.key]; ok {
		f.cleared.Delete(clearedKey{pos: pos})
	}
	f.cleared.ReplaceOrInsert(ck)
	f.clearedAt[ck.key] = ck.pos
	for f.cleared.Len() > maxCleared {
		old, _ := f.cleared.DeleteMin()
		delete(f.clearedAt, old.key)
		f.floor = old.pos
	}
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
// the partition and its gen (0: from the beginning, whatever the
// partition), and the position of the last change listed.
type changesCursor struct {
	cluster   string
	partition string
	gen       uint64
	pos       changePos
}

const changesCursorVersion = 1

// encode writes the cursor: a version byte, uvarints gen, change and
// seq, the cluster id (uvarint length, bytes), then the partition id.
func (cc changesCursor) encode() []byte {
	b := []byte{changesCursorVersion}
	b = binary.AppendUvarint(b, cc.gen)
	b = binary.AppendUvarint(b, cc.pos.change)
	b = binary.AppendUvarint(b, cc.pos.seq)
	b = binary.AppendUvarint(b, uint64(len(cc.cluster)))
	b = append(b, cc.cluster...)
	return append(b, cc.partition...)
}

func decodeChangesCursor(b []byte) (changesCursor, error) {
	var cc changesCursor
	if len(b) == 0 {
		return cc, nil
	}
	bad := fmt.Errorf("malformed changes cursor: %w", engine.ErrInvalid)
	if b[0] != changesCursorVersion {
		return cc, bad
	}
	b = b[1:]
	var vals [4]uint64
	for i := range vals {
		v, n := binary.Uvarint(b)
		if n <= 0 {
			return cc, bad
		}
		vals[i], b = v, b[n:]
	}
	if vals[3] > uint64(len(b)) {
		return cc, bad
	}
	cc.gen, cc.pos = vals[0], changePos{vals[1], vals[2]}
	cc.cluster, cc.partition = string(b[:vals[3]]), string(b[vals[3]:])
	if cc.gen == 0 || cc.partition == "" {
		return cc, bad
	}
	return cc, nil
}

// KeyChanges lists the keys of a partition changed after req.Cursor (nil:
// from the beginning): created, committed to, their tags set or removed,
// or cleared. Each key comes once, as it is now, in the order of the last
// changes (a key cleared and made again is reported as it is now; a
// cleared key has Cleared set). An answer holds at most req.Limit changes
// (0: DefaultKeysPage; at most 65536) and about 8 MiB; More says that the
// next is ready. The first answer from a nil cursor lists every key the
// partition holds, no cleared ones.
//
// With req.Wait it blocks until there is a change after the cursor (the
// partition may not exist yet), the context ends or the controller
// closes; without it an answer with no changes comes at once. The cursor
// of an answer is where the next request starts; it stays valid across a
// restart of a durable controller. A cursor of another incarnation of the
// partition (cleared since) or of the controller (an in-memory one that
// restarted), one from before the newest 65536 cleared keys, or one past
// the partition's last change is answered with Reset (see
// [engine.KeyChanges]).
//
// Errors: [engine.ErrInvalid] for an empty partition id, a bad limit, a
// malformed cursor or one of another partition; with Wait, the context's
// error or [engine.ErrClosed].
func (c *Controller) KeyChanges(ctx context.Context, req engine.ChangesRequest) (engine.KeyChanges, error) {
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
		p := c.lock(req.Partition)
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
			out := p.changesSince(c.cluster, cur, limit)
			wake, dropped = p.feed.wait(), p.changed
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
			return engine.KeyChanges{}, opErr("key changes", req.Partition, engine.ErrClosed)
		}
	}
}

// changesSince lists the changes after cur. p is locked.
func (p *partition) changesSince(cluster string, cur changesCursor, limit int) engine.KeyChanges {
	var out engine.KeyChanges
	from, withCleared := cur.pos.after(), true
	switch {
	case cur.gen == 0:
		from, withCleared = changePos{}, false
	case cur.cluster != cluster || cur.gen != p.gen || cur.pos.change > p.feed.seq || cur.pos.less(p.feed.floor):
		from, withCleared, out.Reset = changePos{}, false, true
	}
	// Up to limit+1 of each, then merged in position order.
	var rows []*row
	p.feed.rows.AscendGreaterOrEqual(&row{change: from.change, seq: from.seq}, func(r *row) bool {
		rows = append(rows, r)
		return len(rows) <= limit
	})
	var gone []clearedKey
	if withCleared {
		p.feed.cleared.AscendGreaterOrEqual(clearedKey{pos: from}, func(ck clearedKey) bool {
			gone = append(gone, ck)
			return len(gone) <= limit
		})
	}
	last := cur.pos
	size := 0
	for len(rows)+len(gone) > 0 {
		if len(out.Changes) == limit || size >= maxKeysPageBytes {
			out.More = true
			break
		}
		if len(gone) == 0 || len(rows) > 0 && rows[0].pos().less(gone[0].pos) {
			r := rows[0]
			rows = rows[1:]
			out.Changes = append(out.Changes, engine.KeyChange{Key: r.key, Index: r.index, Tags: r.tags.Clone()})
			last = r.pos()
			size += len(r.key) + 16 + 32*len(r.tags)
		} else {
			ck := gone[0]
			gone = gone[1:]
			out.Changes = append(out.Changes, engine.KeyChange{Key: ck.key, Cleared: true})
			last = ck.pos
			size += len(ck.key) + 16
		}
	}
	if !out.More {
		// Everything up to the partition's last change is told.
		last = changePos{p.feed.seq, math.MaxUint64}
	}
	out.Cursor = changesCursor{cluster: cluster, partition: p.id, gen: p.gen, pos: last}.encode()
	return out
}
