package controller

// Tag changes beyond a put's merge: removing tags, and compare-and-set of
// one tag. Each is one change under the partition's lock, logged as one
// record, and a change of the keys' feed (changes.go).

import (
	"encoding/json"
	"fmt"
	"unicode/utf8"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire/wirepb"
)

// DeleteTags removes the tags names from each of keys, in one change:
// every key loses them, or on error none does. Names a key lacks are
// skipped, so deleting twice is harmless. It returns each key's tags
// after.
//
// Errors: [engine.ErrInvalid] for no keys, an empty or repeated key, no
// names, or an empty name; [engine.ErrNotFound] naming the keys the
// partition lacks (or the partition).
func (c *Controller) DeleteTags(partition string, keys, names []string) ([]engine.Tags, error) {
	tags, _, err := c.DeleteTagsCounted(partition, keys, names)
	return tags, err
}

// DeleteTagsCounted is DeleteTags that also answers, for each key, how
// many of names it had, counted in the same step as the removal (so of
// callers removing one tag at once, one hears that the key had it): what
// a Redis client expects of a delete. A name given twice counts once.
func (c *Controller) DeleteTagsCounted(partition string, keys, names []string) ([]engine.Tags, []int, error) {
	err := checkKeys(keys)
	if err == nil && len(names) == 0 {
		err = fmt.Errorf("no tag names to delete: %w", engine.ErrInvalid)
	}
	for _, n := range names {
		if err == nil {
			err = engine.CheckTagName(n)
		}
	}
	if err != nil {
		return nil, nil, opErr("delete tags", partition, err)
	}
	p, err := c.lock(partition)
	if err != nil {
		return nil, nil, opErr("delete tags", partition, err)
	}
	if p == nil {
		return nil, nil, opErr("delete tags", partition, fmt.Errorf("keys %s: %w", engine.QuoteKeys(keys), errUnknownPartition(partition)))
	}
	defer p.mu.Unlock()
	rows, missing := p.lookupKeys(keys)
	if len(missing) > 0 {
		unknown := make([]string, len(missing))
		for j, i := range missing {
			unknown[j] = keys[i]
		}
		return nil, nil, opErr("delete tags", partition, &engine.KeysError{Keys: unknown,
			Err: fmt.Errorf("keys %s not in partition %q: %w", engine.QuoteKeys(unknown), partition, engine.ErrNotFound)})
	}
	// The answer holds every key's tags after: bounded as a put's is.
	if err := checkTagsGrowth(p, rows, nil, true, func(i int) string { return fmt.Sprintf("key %q", keys[i]) }); err != nil {
		return nil, nil, opErr("delete tags", partition, err)
	}
	var touched []*row
	had := make([]int, len(rows))
	drop := nameSet(names)
	for i, r := range rows {
		if after, n := tagsWithout(p.tagsOf(r), drop); n > 0 {
			had[i] = n
			p.setTags(r, after)
			touched = append(touched, r)
		}
	}
	out := make([]engine.Tags, len(rows))
	for i, r := range rows {
		out[i] = p.tagsOf(r).Clone()
	}
	if len(touched) == 0 {
		return out, had, nil
	}
	n := p.feed.touch(touched)
	if c.logging() {
		idx := make([]uint64, len(touched))
		for i, r := range touched {
			idx[i] = r.index
		}
		stamp(touched, c.log(removeTagsOp(p, idx, names, n)))
	}
	return out, had, nil
}

// nameSet is names as a set, for tagsWithout.
func nameSet(names []string) map[string]struct{} {
	set := make(map[string]struct{}, len(names))
	for _, n := range names {
		set[n] = struct{}{}
	}
	return set
}

// tagsWithout returns t without the names in drop, a new map (copies of
// t share t), and how many of them t had; t itself, and 0, when it had
// none. It looks up the smaller of t and drop in the other, so a request
// naming many tags costs each key its own tags, not every name.
func tagsWithout(t engine.Tags, drop map[string]struct{}) (engine.Tags, int) {
	had := 0
	if len(t) <= len(drop) {
		for n := range t {
			if _, ok := drop[n]; ok {
				had++
			}
		}
	} else {
		for n := range drop {
			if _, ok := t[n]; ok {
				had++
			}
		}
	}
	if had == 0 {
		return t, 0
	}
	if had == len(t) {
		return nil, had
	}
	out := t.Clone() // as Without does
	for n := range out {
		if _, ok := drop[n]; ok {
			delete(out, n)
		}
	}
	return out, had
}

func hasTag(p *partition, r *row, name string) bool {
	_, ok := p.tagsOf(r)[name]
	return ok
}

func removeTagsOp(p *partition, indexes []uint64, names []string, change uint64) *wirepb.LogOp {
	return &wirepb.LogOp{Op: &wirepb.LogOp_RemoveTags{RemoveTags: &wirepb.RemoveTagsOp{
		Partition: p.id, Gen: p.gen, Indexes: indexes, Names: names, ChangeSeq: change}}}
}

// checkTagMaps refuses tags that cannot be written as JSON (see
// [engine.Tags.Check]), naming the i'th map's owner by who(i). A
// controller without a log checks too: what it takes it must be able to
// list, send and checkpoint.
func checkTagMaps(tags []engine.Tags, who func(int) string) error {
	for i, t := range tags {
		if err := t.Check(); err != nil {
			return fmt.Errorf("%s: %w", who(i), err)
		}
	}
	return nil
}

// maxReplyTagsBytes bounds the tags one answer carries for the keys it
// names (a put's answer holds every key's tags after it): half a frame
// (wire.MaxBodyLen), so that the answer of a change that was made can
// always be sent.
const maxReplyTagsBytes = 32 << 20

// checkTagsGrowth refuses tags that would make a key's tags larger than
// [engine.MaxTagsBytes]: rows[i]'s (nil: a key not made yet) merged with
// adds[i] (adds nil: none), naming the i'th key by who(i). With reply,
// the answer holds every one of rows' tags after: their total is bounded
// by maxReplyTagsBytes too. p is locked; nothing changes.
func checkTagsGrowth(p *partition, rows []*row, adds []engine.Tags, reply bool, who func(int) string) error {
	// Below this many keys no answer can pass the bound.
	reply = reply && len(rows)*engine.MaxTagsBytes > maxReplyTagsBytes
	if adds == nil && !reply {
		return nil // a put without tags (a KV SET) looks at nothing
	}
	total := 0
	for i, r := range rows {
		var old, add engine.Tags
		if r != nil {
			old = p.tagsOf(r)
		}
		if adds != nil {
			add = adds[i]
		}
		switch {
		case len(add) > 0:
			n := old.MergedJSONSize(add)
			// A key past the bound already (tags from before it) may
			// still shrink.
			if n > engine.MaxTagsBytes && n > old.JSONSize() {
				return fmt.Errorf("%s: tags of %d bytes as JSON after the merge (at most %d): %w", who(i), n, engine.MaxTagsBytes, engine.ErrInvalid)
			}
			total += n
		case reply:
			total += old.JSONSize()
		}
	}
	if reply && total > maxReplyTagsBytes {
		return fmt.Errorf("%d keys whose tags take %d bytes as JSON, more than one answer carries (%d); name fewer keys at once: %w", len(rows), total, maxReplyTagsBytes, engine.ErrInvalid)
	}
	return nil
}

// CompareAndSetTag sets tag req.Name of key req.Key to req.New if it
// holds req.Old, atomically (under the partition's lock, one change, one
// record). nil (or any value whose JSON is null) stands for "absent" on
// both sides: Old nil requires the tag to be absent (a tag holding null
// counts as absent), New nil deletes it. Values compare as JSON values
// ([engine.TagValueEqual]).
//
// A key the partition lacks has no tags: with Old nil and New set, the
// swap creates it (a tag-only key, and the partition if needed), as a put
// of that tag would; with Old set it does not swap. It reports whether it
// swapped and the tag's value after the call (the one that did not match
// when it did not). A swap to a value equal to the one there changes
// nothing (no record, no change for the feed) and reports a swap.
//
// Errors: [engine.ErrInvalid] for an empty partition id, key or tag name,
// one that is not valid UTF-8, or a value JSON cannot encode. Nothing
// changes then.
func (c *Controller) CompareAndSetTag(req engine.TagSwap) (engine.TagSwapped, error) {
	err := checkKeys([]string{req.Key})
	switch {
	case err != nil:
	case req.Partition == "":
		err = fmt.Errorf("empty partition id: %w", engine.ErrInvalid)
	case !utf8.ValidString(req.Key):
		err = fmt.Errorf("key %q is not valid UTF-8: %w", req.Key, engine.ErrInvalid)
	default:
		err = engine.CheckTagName(req.Name)
	}
	for _, v := range []*any{&req.Old, &req.New} {
		if err != nil || *v == nil {
			continue
		}
		if cerr := engine.CheckTagValue(*v); cerr != nil {
			err = fmt.Errorf("tag %q: value %v is not JSON: %w", req.Name, *v, cerr)
		} else if b, _ := json.Marshal(*v); string(b) == "null" {
			// A typed nil (a nil slice or map) is null, which is absent
			// here as over the wire.
			*v = nil
		}
	}
	if err != nil {
		return engine.TagSwapped{}, opErr("compare and set tag", req.Partition, err)
	}
	var p *partition
	if req.Old == nil && req.New != nil {
		if p, err = c.lockOrCreate(req.Partition); err != nil {
			return engine.TagSwapped{}, opErr("compare and set tag", req.Partition, err)
		}
	} else if p, err = c.lock(req.Partition); err != nil {
		return engine.TagSwapped{}, opErr("compare and set tag", req.Partition, err)
	} else if p == nil {
		// No partition, no key, no tag: only "absent" matches, and
		// deleting what is absent changes nothing.
		return engine.TagSwapped{Swapped: req.Old == nil}, nil
	}
	defer c.unlockNew(p) // a new partition goes again if refused
	r := p.keys[req.Key]
	var cur any
	if r != nil {
		cur = p.tagsOf(r)[req.Name]
	}
	if !engine.TagValueEqual(cur, req.Old) {
		return engine.TagSwapped{Current: engine.Tags{req.Name: cur}.Clone()[req.Name]}, nil
	}
	if req.New == nil && (r == nil || !hasTag(p, r, req.Name)) {
		return engine.TagSwapped{Swapped: true}, nil // absent already
	}
	if req.New != nil && engine.TagValueEqual(cur, req.New) {
		// Set already: a swap that changes nothing is no change (no
		// record, nothing for the change feed), as deleting what is
		// absent is none.
		return engine.TagSwapped{Swapped: true, Current: engine.Tags{req.Name: cur}.Clone()[req.Name]}, nil
	}
	set := engine.Tags{req.Name: req.New}
	if req.New != nil {
		if err := checkTagsGrowth(p, []*row{r}, []engine.Tags{set}, false, func(int) string { return fmt.Sprintf("key %q", req.Key) }); err != nil {
			return engine.TagSwapped{}, opErr("compare and set tag", req.Partition, err)
		}
	}
	var ops []*wirepb.LogOp
	var tags *wirepb.LogOp
	if req.New != nil && c.logging() {
		// Encode first: a value that cannot be recorded changes nothing.
		if tags, err = tagsOp(p, []uint64{0}, []engine.Tags{set}); err != nil {
			return engine.TagSwapped{}, opErr("compare and set tag", req.Partition, err)
		}
	}
	rows := []*row{r}
	created := r == nil
	if created {
		if err := c.createKeys(p, []string{req.Key}, []int{0}, rows); err != nil {
			return engine.TagSwapped{}, opErr("compare and set tag", req.Partition, err)
		}
		r = rows[0]
	}
	ops = c.keep(p) // nothing refuses the swap from here on
	if req.New == nil {
		p.setTags(r, p.tagsOf(r).Without(req.Name))
	} else {
		p.setTags(r, p.tagsOf(r).Merge(set))
	}
	n := p.feed.touch(rows)
	if c.logging() {
		if created {
			ops = append(ops, p.createdOp(rows, []int{0}, n))
		}
		if tags != nil {
			tags.GetTags().Indexes[0], tags.GetTags().ChangeSeq = r.index, n
			ops = append(ops, tags)
		} else {
			ops = append(ops, removeTagsOp(p, []uint64{r.index}, []string{req.Name}, n))
		}
		stamp([]*row{r}, c.log(ops...))
	}
	return engine.TagSwapped{Swapped: true, Current: set.Clone()[req.Name]}, nil
}
