package client

// A KV put needs no rows before it writes: the bytes go to the units
// first, then one COMMIT_KEYS creates the missing keys, commits the cells
// and merges the tags at once (see [github.com/tqgo/tq/controller.Controller.CommitKeys]).
// Placement does not depend on the rows' indexes (see place.go: the seeds
// are the keys' hashes), so no put resolves its keys first.

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"sync"

	"github.com/tqgo/tq/engine"
)

// keySeed is the placement seed of a key.
func keySeed(key string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(key))
	return h.Sum64()
}

// keyPlanner returns the planner of a KV put of keys: its seed is the
// first key's hash, each row's seed its key's.
func (c *Client) keyPlanner(keys []string) (*planner, []uint64) {
	seeds := make([]uint64, len(keys))
	for i, k := range keys {
		seeds[i] = keySeed(k)
	}
	return c.newPlanner(seeds[0]), seeds
}

// PutKeys writes row i of b to keys[i] of partition and merges tags[i]
// into its tags, creating missing keys; b or tags may be nil, not both.
// Readers see all of the put's cells and tags or none of them, and a put
// that fails leaves nothing behind: no key created, no cell written. The
// rows may spread over several units (see place.go), written to them at
// once. It returns what the controller reported: each key's tags after
// the merge and the fields every key holds. A put whose ctx ends at its
// commit fares as [Client.Put]'s does: only where the error says that the
// put may have happened may it have changed its keys.
//
// Errors: [engine.ErrInvalid] for bad keys (none, empty, repeated, not
// valid UTF-8), a partition or field name that is empty or not valid
// UTF-8 (refused before any byte moves), a row or tag count that does not
// match the keys, or an empty batch;
// [engine.ErrDTypeMismatch] when a field already has another dtype in the
// partition; [engine.ErrCapacity] when storage stays full until ctx ends
// (a put waits for room as long as ctx allows, as for [Client.Put]).
func (c *Client) PutKeys(ctx context.Context, partition string, keys []string, b *engine.Batch, tags []engine.Tags) (engine.KeysCommitted, error) {
	out, err := c.putKeys(ctx, partition, keys, b, tags)
	if c.placeAgain(ctx, err) {
		out, err = c.putKeys(ctx, partition, keys, b, tags)
	}
	if err != nil {
		return engine.KeysCommitted{}, &engine.OpError{Op: "put keys", Peer: partition, Err: err}
	}
	return out, nil
}

func (c *Client) putKeys(ctx context.Context, partition string, keys []string, b *engine.Batch, tags []engine.Tags) (_ engine.KeysCommitted, err error) {
	switch {
	case len(keys) == 0:
		return engine.KeysCommitted{}, fmt.Errorf("empty key list: %w", engine.ErrInvalid)
	case b == nil && tags == nil:
		return engine.KeysCommitted{}, fmt.Errorf("put with neither fields nor tags: %w", engine.ErrInvalid)
	case b != nil && b.NumFields() == 0:
		return engine.KeysCommitted{}, fmt.Errorf("put with an empty field set: %w", engine.ErrInvalid)
	case b != nil && b.Rows() != len(keys):
		return engine.KeysCommitted{}, fmt.Errorf("%d keys for %d rows: %w", len(keys), b.Rows(), engine.ErrInvalid)
	case tags != nil && len(tags) != len(keys):
		return engine.KeysCommitted{}, fmt.Errorf("%d tag maps for %d keys: %w", len(tags), len(keys), engine.ErrInvalid)
	}
	// Before any byte goes to a unit (the controller checks them too late).
	if err := checkPartKeys(partition, keys, nil); err != nil {
		return engine.KeysCommitted{}, err
	}
	if err := checkBatchNames(b); err != nil {
		return engine.KeysCommitted{}, err
	}
	if err := checkKeyTags(keys, tags); err != nil {
		return engine.KeysCommitted{}, err
	}
	req := engine.KeysCommit{Partition: partition, Keys: keys, Tags: tags}
	if b == nil {
		return c.meta.CommitKeys(ctx, req)
	}
	if kd := c.keyData(); kd != nil && b.Size() <= KVInlineMax {
		// One round trip: the controller writes the bytes to a unit of
		// its process and commits.
		out, err := kd.PutKeysData(ctx, req, b)
		// A controller without units of its own, or one that would not
		// wait for room (in memory): the put goes through the units.
		if !errors.Is(err, engine.ErrNotSupported) && !errors.Is(err, engine.ErrCapacity) {
			return out, err
		}
	}
	fields := b.Fields()
	all := allRows(len(keys))
	p, seeds := c.keyPlanner(keys)
	req.Cluster = p.cluster
	if err := p.noUnit(); err != nil {
		return engine.KeysCommitted{}, err
	}
	if s, ok := p.whole(b.Size()); ok {
		// Every row on one unit, in key order: dense fields go to the
		// controller as one run each.
		u := p.slots[s].u
		exts, err := c.writeRows(engine.WithoutWait(ctx), u, fields, all, nil)
		if err == nil {
			c.room.wrote(u.ID(), int64(b.Size()))
			return c.commitKeysOn(ctx, u, req, fields, exts)
		}
		switch {
		case unreachable(ctx, err):
			p.exclude([]int{s}, []error{err}) // nothing written: the rows go to the others
		case !errors.Is(err, engine.ErrCapacity):
			return engine.KeysCommitted{}, err
		case ctx.Err() != nil:
			// Refused for room as ctx ended: ErrCapacity with ctx's
			// error, as writePlaced's.
			return engine.KeysCommitted{}, waitedOut(ctx, err, len(keys))
		default:
			p.refused(s, int64(b.Size())) // the rows spill
		}
	}
	locs := make([][]engine.CellLoc, len(fields))
	for i := range fields {
		locs[i] = make([]engine.CellLoc, len(keys))
	}
	done, err := c.writePlaced(ctx, p, fields, all, seeds, locs)
	defer func() {
		if err != nil {
			err = errors.Join(err, c.freeWritten(context.WithoutCancel(ctx), done, locs))
		}
	}()
	if err != nil {
		return engine.KeysCommitted{}, err
	}
	req.Fields = commitFields(fields, all, locs)
	out, maybe, err := commitWritten(ctx, "put", func(ctx context.Context) (engine.KeysCommitted, error) { return c.meta.CommitKeys(ctx, req) })
	if err != nil {
		if maybe {
			done = nil // the commit may have happened
		}
		return engine.KeysCommitted{}, err
	}
	return out, nil
}

// commitKeysOn commits a KV put whose rows were all written to unit u,
// one extent per field.
func (c *Client) commitKeysOn(ctx context.Context, u DataUnit, req engine.KeysCommit, fields []engine.Field, exts []engine.RemoteAddr) (engine.KeysCommitted, error) {
	req.Fields = extentFields(fields, u.ID(), exts, true)
	out, maybe, err := commitWritten(ctx, "put", func(ctx context.Context) (engine.KeysCommitted, error) { return c.meta.CommitKeys(ctx, req) })
	if err != nil {
		if maybe {
			return engine.KeysCommitted{}, err // the commit may have happened
		}
		return engine.KeysCommitted{}, errors.Join(err, c.freeOn(context.WithoutCancel(ctx), u, fieldAddrs(req.Fields)))
	}
	return out, nil
}

// KeysPutBuffer is a KV put whose bytes the caller writes in place, into
// extents a storage unit reserved for it (see [Client.ReservePutKeys]);
// the rules for its columns are those of [PutBuffer].
type KeysPutBuffer struct {
	*reserved
	part   string
	keys   []string
	tags   []engine.Tags
	names  []string // the fields', for the dtype cache
	dtypes []engine.DType
}

// ReservePutKeys reserves, on one storage unit, one extent per field for
// keys' rows (row i of each field belongs to keys[i]) and returns a buffer
// whose columns alias them for the caller to fill. The rows become
// readable, all at once, at Commit, and so do the keys; tags, when not
// nil, are merged then. The unit is the one placement picks for the whole
// put (see place.go: the first local unit with room, under local-first). A field whose dtype differs from the partition's is refused here,
// before the caller fills anything (and again, atomically, at Commit).
//
// Errors as for [Client.PutKeys] and [Client.ReservePut]: in particular
// [engine.ErrNotSupported] when the unit is reached over a transport that
// cannot lend memory (tcp). On error nothing stays reserved and no key is
// created.
func (c *Client) ReservePutKeys(ctx context.Context, partition string, keys []string, tags []engine.Tags, fields ...FieldSpec) (*KeysPutBuffer, error) {
	b, err := c.reservePutKeys(ctx, partition, keys, tags, fields)
	if err != nil {
		return nil, &engine.OpError{Op: "reserve put", Peer: partition, Err: err}
	}
	return b, nil
}

func (c *Client) reservePutKeys(ctx context.Context, partition string, keys []string, tags []engine.Tags, fields []FieldSpec) (*KeysPutBuffer, error) {
	switch {
	case len(keys) == 0:
		return nil, fmt.Errorf("empty key list: %w", engine.ErrInvalid)
	case tags != nil && len(tags) != len(keys):
		return nil, fmt.Errorf("%d tag maps for %d keys: %w", len(tags), len(keys), engine.ErrInvalid)
	}
	if err := checkPartKeys(partition, keys, nil); err != nil {
		return nil, err
	}
	// Before the caller fills anything: Commit would refuse them after.
	if err := checkKeyTags(keys, tags); err != nil {
		return nil, err
	}
	kinds, sizes, dtypes, err := checkSpecs(fields, len(keys))
	if err != nil {
		return nil, err
	}
	// The dtype check runs next to the reservation: it costs a controller
	// round trip, not one more in line, and none when this client put the
	// same dtypes into the partition before.
	checked := make(chan error, 1)
	if c.dtypes.match(partition, specNames(fields), dtypes) {
		checked <- nil
	} else {
		go func() { checked <- c.checkDTypes(ctx, partition, fields, dtypes) }()
	}
	r, err := c.reservePlaced(ctx, keySeed(keys[0]), fields, len(keys), kinds, sizes)
	if cerr := <-checked; cerr != nil {
		if err == nil {
			err = errors.Join(cerr, r.abort(context.WithoutCancel(ctx)))
		} else {
			// Nothing is reserved; both say what was wrong.
			err = errors.Join(cerr, err)
		}
	}
	if err != nil {
		return nil, err
	}
	// Kept until Commit: copies (the tags deep ones), so that the caller
	// may reuse its slices and maps.
	var own []engine.Tags
	if tags != nil {
		own = make([]engine.Tags, len(tags))
		for i, t := range tags {
			own[i] = t.Clone()
		}
	}
	return &KeysPutBuffer{reserved: r, part: partition, keys: slices.Clone(keys), tags: own, names: specNames(fields), dtypes: dtypes}, nil
}

// checkDTypes refuses fields whose dtype differs from the partition's.
func (c *Client) checkDTypes(ctx context.Context, partition string, fields []FieldSpec, dtypes []engine.DType) error {
	known, err := c.meta.Fields(ctx, partition)
	if errors.Is(err, engine.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, k := range known {
		for i, f := range fields {
			if f.Name == k.Name && k.DType != engine.InvalidDType && k.DType != dtypes[i] {
				return fmt.Errorf("field %q of partition %q is %v, put has %v: %w", f.Name, partition, k.DType, dtypes[i], engine.ErrDTypeMismatch)
			}
		}
	}
	c.dtypes.learn(partition, specNames(fields), dtypes)
	return nil
}

func specNames(fields []FieldSpec) []string {
	out := make([]string, len(fields))
	for i, f := range fields {
		out[i] = f.Name
	}
	return out
}

// dtypeCache remembers, per partition, the dtypes of fields this client
// put or checked. It only ever spares the round trip of a reserved put's
// dtype pre-check: a put whose every field the cache knows with the same
// dtype skips it. Anything else asks the controller, and the controller
// checks every commit again, atomically, so a stale entry (the partition
// cleared and refilled with other dtypes meanwhile) at worst lets a put
// be refused at Commit instead of before the fill.
type dtypeCache struct {
	mu sync.Mutex
	m  map[string]map[string]engine.DType
}

// maxCachedPartitions bounds the cache; past it, it starts over.
const maxCachedPartitions = 1024

func (d *dtypeCache) match(partition string, names []string, dtypes []engine.DType) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	known := d.m[partition]
	for i, name := range names {
		if dt, ok := known[name]; !ok || dt != dtypes[i] {
			return false
		}
	}
	return true
}

func (d *dtypeCache) learn(partition string, names []string, dtypes []engine.DType) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.m == nil || len(d.m) >= maxCachedPartitions {
		d.m = map[string]map[string]engine.DType{}
	}
	known := d.m[partition]
	if known == nil {
		known = map[string]engine.DType{}
		d.m[partition] = known
	}
	for i, name := range names {
		known[name] = dtypes[i]
	}
}

// Commit makes the filled extents readable on the unit and commits the
// keys' cells and tags to the controller in one step, then frees the cells
// the commit replaced. On failure the extents are given back and no key
// this put created stays. A commit the controller refuses as lost (see
// [PutBuffer.Commit]) is put again elsewhere; one whose ctx ends fares as
// [PutBuffer.Commit]'s does. A second Commit, or Commit after Abort, fails
// with [engine.ErrInvalid].
func (b *KeysPutBuffer) Commit(ctx context.Context) (engine.KeysCommitted, error) {
	out, err := b.commit(ctx)
	if err != nil {
		return engine.KeysCommitted{}, &engine.OpError{Op: "reserve put", Peer: b.part, Err: err}
	}
	return out, nil
}

func (b *KeysPutBuffer) commit(ctx context.Context) (engine.KeysCommitted, error) {
	if !b.end() {
		return engine.KeysCommitted{}, fmt.Errorf("put buffer ended already: %w", engine.ErrInvalid)
	}
	cfs, _, err := b.commitUnit(ctx, true)
	if err != nil {
		return engine.KeysCommitted{}, err
	}
	req := engine.KeysCommit{Partition: b.part, Keys: b.keys, Fields: cfs, Tags: b.tags, Cluster: b.cluster}
	out, maybe, err := commitWritten(ctx, "put", func(ctx context.Context) (engine.KeysCommitted, error) { return b.c.meta.CommitKeys(ctx, req) })
	if err != nil {
		if maybe {
			return engine.KeysCommitted{}, err // the commit may have happened
		}
		err = b.writeAgain(ctx, err, cfs, func(again *engine.Batch) (err error) {
			out, err = b.c.PutKeys(ctx, b.part, b.keys, again, b.tags)
			return err
		})
		if err != nil {
			return engine.KeysCommitted{}, err
		}
	}
	b.c.dtypes.learn(b.part, b.names, b.dtypes)
	return out, nil
}

// Abort gives the reserved extents back and clears the keys the
// reservation created; keys that existed keep what they held. Abort does
// nothing after Commit or a first Abort.
func (b *KeysPutBuffer) Abort(ctx context.Context) error {
	if !b.end() {
		return nil
	}
	if err := b.abortExtents(ctx); err != nil {
		return &engine.OpError{Op: "reserve put", Peer: b.part, Err: err}
	}
	return nil
}
