package controller

import (
	"fmt"

	"github.com/tqgo/tq/engine"
)

// KeysCommit is the controller's whole share of a KV put: the cells a
// storage unit already holds for some keys, committed in one step that
// creates the keys it needs to. Row i of every field belongs to Keys[i].
type KeysCommit struct {
	Partition string
	Keys      []string
	// Fields may be empty: a put of tags only.
	Fields []CommitField
	// Tags, when not nil, holds one map per key, merged into its tags.
	Tags []engine.Tags
}

// KeysCommitted is what a [KeysCommit] did.
type KeysCommitted struct {
	// Replaced are the cells the commit overwrote; their storage can be
	// freed.
	Replaced []engine.CellLoc
	// Tags are the keys' tags after the merge, one map per key.
	Tags []engine.Tags
	// Fields names the fields every key holds after the commit, sorted.
	Fields []string
}

// CommitKeys resolves keys to rows, creating the missing ones, records
// the fields' cells for them and merges the tags, all under the
// partition's lock: readers see either none of the put or all of it. A
// rejected commit (bad keys or fields, a dtype other than the partition's)
// creates no key and changes nothing.
func (c *Controller) CommitKeys(req KeysCommit) (KeysCommitted, error) {
	n := len(req.Keys)
	err := checkKeys(req.Keys)
	switch {
	case err != nil:
	case req.Tags != nil && len(req.Tags) != n:
		err = fmt.Errorf("%d tag maps for %d keys: %w", len(req.Tags), n, engine.ErrInvalid)
	case len(req.Fields) == 0 && req.Tags == nil:
		err = fmt.Errorf("put with neither fields nor tags: %w", engine.ErrInvalid)
	default:
		err = checkFields(req.Fields, n)
	}
	if err != nil {
		return KeysCommitted{}, opErr("commit keys", req.Partition, err)
	}
	p, err := c.lockOrCreate(req.Partition)
	if err != nil {
		return KeysCommitted{}, opErr("commit keys", req.Partition, err)
	}
	defer p.mu.Unlock()
	if err := p.checkDTypes(req.Fields); err != nil {
		return KeysCommitted{}, opErr("commit keys", req.Partition, err)
	}
	rows, newAt := p.lookupKeys(req.Keys)
	if err := c.createKeys(p, req.Keys, newAt, rows); err != nil {
		return KeysCommitted{}, opErr("commit keys", req.Partition, err)
	}
	var out KeysCommitted
	if len(req.Fields) > 0 {
		out.Replaced = p.applyCommit(&CommitRequest{Partition: req.Partition, Fields: req.Fields}, rows)
	}
	out.Tags = make([]engine.Tags, n)
	for i, r := range rows {
		if req.Tags != nil && len(req.Tags[i]) > 0 {
			r.tags = r.tags.Merge(req.Tags[i])
		}
		out.Tags[i] = r.tags.Clone()
	}
	out.Fields = p.commonFields(rows)
	return out, nil
}
