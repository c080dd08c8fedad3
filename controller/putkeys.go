package controller

import (
	"fmt"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire/wirepb"
)

// CommitKeys resolves keys to rows, creating the missing ones, records
// the fields' cells for them and merges the tags, all under the
// partition's lock: readers see either none of the put or all of it. A
// rejected commit (bad keys or fields, a dtype other than the partition's,
// a location whose length is not the bytes its row's shape needs, a
// draining unit or fenced segment) creates no key and changes nothing: it
// does not create its partition either, nor log that.
func (c *Controller) CommitKeys(req engine.KeysCommit) (engine.KeysCommitted, error) {
	return c.commitKeys(req, false)
}

// commitKeys is CommitKeys; with shared, for the server, which decoded
// req's tags for it and encodes the reply at once, the controller keeps
// req's tag maps and the reply's are the rows' own (to read, not change),
// where CommitKeys copies both.
func (c *Controller) commitKeys(req engine.KeysCommit, shared bool) (engine.KeysCommitted, error) {
	n := len(req.Keys)
	err := checkKeys(req.Keys)
	switch {
	case err != nil:
	case req.Tags != nil && len(req.Tags) != n:
		err = fmt.Errorf("%d tag maps for %d keys: %w", len(req.Tags), n, engine.ErrInvalid)
	case len(req.Fields) == 0 && req.Tags == nil:
		err = fmt.Errorf("put with neither fields nor tags: %w", engine.ErrInvalid)
	default:
		if err = checkFields(req.Fields, n); err == nil {
			err = checkTagMaps(req.Tags, func(i int) string { return fmt.Sprintf("key %q", req.Keys[i]) })
		}
	}
	if err == nil {
		err = c.checkCluster(req.Cluster)
	}
	if err == nil {
		// Before the partition is made: a rejected put creates none.
		err = checkLens(req.Partition, req.Fields, func(i int) string { return fmt.Sprintf("key %q", req.Keys[i]) })
	}
	if err == nil {
		err = c.checkLocs(req.Fields, func(i int) string { return fmt.Sprintf("key %q", req.Keys[i]) })
	}
	if err != nil {
		return engine.KeysCommitted{}, opErr("commit keys", req.Partition, err)
	}
	p, err := c.lockOrCreate(req.Partition)
	if err != nil {
		return engine.KeysCommitted{}, opErr("commit keys", req.Partition, err)
	}
	// A refused commit to a partition it made takes the partition out
	// again (unlockNew): nothing of it stays, nor is logged.
	defer c.unlockNew(p)
	err = p.checkDTypes(req.Fields)
	if err == nil {
		err = c.checkFences(req.Fields)
	}
	if err == nil {
		err = c.checkDraining(req.Fields)
	}
	if err != nil {
		return engine.KeysCommitted{}, opErr("commit keys", req.Partition, err)
	}
	var tags *wirepb.LogOp
	if req.Tags != nil && c.logging() {
		// Encode first: tags that cannot be recorded change nothing. The
		// rows' indexes are filled in below, once the keys have rows.
		if tags, err = tagsOp(p, make([]uint64, n), req.Tags); err != nil {
			return engine.KeysCommitted{}, opErr("commit keys", req.Partition, err)
		}
	}
	rows, newAt := p.lookupKeys(req.Keys)
	if err := checkTagsGrowth(p, rows, req.Tags, true, func(i int) string { return fmt.Sprintf("key %q", req.Keys[i]) }); err != nil {
		return engine.KeysCommitted{}, opErr("commit keys", req.Partition, err)
	}
	if err := c.createKeys(p, req.Keys, newAt, rows); err != nil {
		return engine.KeysCommitted{}, opErr("commit keys", req.Partition, err)
	}
	born := c.keep(p) // nothing refuses the commit from here on
	var out engine.KeysCommitted
	if len(req.Fields) > 0 {
		out.Replaced = p.applyCommit(&engine.CommitRequest{Partition: req.Partition, Fields: req.Fields}, rows)
	}
	out.Tags = make([]engine.Tags, n)
	m := tagMerge{adopt: shared}
	for i, r := range rows {
		if req.Tags != nil && len(req.Tags[i]) > 0 {
			p.setTags(r, m.merge(p.tagsOf(r), req.Tags[i]))
		}
		if out.Tags[i] = p.tagsOf(r); !shared {
			out.Tags[i] = out.Tags[i].Clone()
		}
	}
	out.Fields = p.commonFields(rows)
	// One change of the keys' feed: their creation, cells and tags
	// together, as readers see them.
	change := p.feed.touch(rows)
	if c.logging() {
		ops := born
		if len(newAt) > 0 {
			ops = append(ops, p.createdOp(rows, newAt, change))
		}
		indexes := make([]uint64, n)
		for i, r := range rows {
			indexes[i] = r.index
		}
		if len(req.Fields) > 0 {
			op := commitOp(p, indexes, req.Fields)
			op.ChangeSeq = change
			ops = append(ops, &wirepb.LogOp{Op: &wirepb.LogOp_Commit{Commit: op}})
		}
		if tags != nil {
			tags.GetTags().Indexes, tags.GetTags().ChangeSeq = indexes, change
			ops = append(ops, tags)
		}
		stamp(rows, c.log(ops...))
	}
	return out, nil
}
