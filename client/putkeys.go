package client

// A KV put needs no rows before it writes: the bytes go to a unit first,
// then one COMMIT_KEYS creates the missing keys, commits the cells and
// merges the tags at once (see [github.com/tqgo/tq/controller.Controller.CommitKeys]). That
// holds when the put's unit does not depend on the rows' indexes: under
// [LocalFirst] with a unit on this host, or with a single unit. Otherwise
// (hash placement over several units) the keys are resolved first, as a
// batch put resolves its rows, and the keys that resolve created are
// cleared again if the put fails.

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"sync"

	"github.com/tqgo/tq/engine"
)

// keyPlan is where a KV put's rows go.
type keyPlan struct {
	groups  map[DataUnit][]int // positions in keys
	created []string           // keys a resolve made, cleared if the put fails
}

// planKeys places the rows of keys on units, resolving the keys (and
// creating missing ones) only when the placement needs their indexes.
func (c *Client) planKeys(ctx context.Context, partition string, keys []string) (keyPlan, error) {
	all := allRows(len(keys))
	if u := c.keyUnit(keys); u != nil {
		return keyPlan{groups: map[DataUnit][]int{u: all}}, nil
	}
	m, created, err := c.meta.ResolveKeys(ctx, partition, keys, nil, true)
	if err != nil {
		return keyPlan{}, err
	}
	plan := keyPlan{groups: c.place(m, all)}
	for _, p := range created {
		plan.created = append(plan.created, keys[p])
	}
	return plan, nil
}

// keyUnit returns the one unit a KV put goes to when that does not depend
// on the rows' indexes: a unit on this host under [LocalFirst] (picked by
// a hash of the first key when there are several), or the only unit. It
// returns nil otherwise.
func (c *Client) keyUnit(keys []string) DataUnit {
	units, local := c.writable()
	if c.cfg.Placement == LocalFirst && len(local) > 0 {
		if len(local) == 1 {
			return local[0]
		}
		h := fnv.New64a()
		h.Write([]byte(keys[0]))
		return local[h.Sum64()%uint64(len(local))]
	}
	if len(units) == 1 {
		return units[0]
	}
	return nil
}

// forget clears the keys a failed put's resolve created.
func (c *Client) forget(ctx context.Context, partition string, created []string) error {
	if len(created) == 0 {
		return nil
	}
	return c.meta.ClearKeys(context.WithoutCancel(ctx), partition, created)
}

// PutKeys writes row i of b to keys[i] of partition and merges tags[i]
// into its tags, creating missing keys; b or tags may be nil, not both.
// Readers see all of the put's cells and tags or none of them, and a put
// that fails leaves nothing behind: no key created, no cell written. (Under
// hash placement over several units the missing keys are created before
// the write, so a listing may show them, without the put's fields, until
// the put commits or fails.) It returns what the controller reported: each
// key's tags after the merge and the fields every key holds.
//
// Errors: [engine.ErrInvalid] for bad keys (none, empty, repeated, not
// valid UTF-8), a partition or field name that is empty or not valid
// UTF-8 (refused before any byte moves), a row or tag count that does not
// match the keys, or an empty batch;
// [engine.ErrDTypeMismatch] when a field already has another dtype in the
// partition; [engine.ErrCapacity] when storage stays full until ctx ends.
func (c *Client) PutKeys(ctx context.Context, partition string, keys []string, b *engine.Batch, tags []engine.Tags) (engine.KeysCommitted, error) {
	out, err := c.putKeys(ctx, partition, keys, b, tags)
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
	plan, err := c.planKeys(ctx, partition, keys)
	if err != nil {
		return engine.KeysCommitted{}, err
	}
	fields := b.Fields()
	if len(plan.groups) == 1 {
		// Every row on one unit, in key order: dense fields go to the
		// controller as one run each.
		for u := range plan.groups {
			return c.putKeysOn(ctx, u, req, fields, plan.created)
		}
	}
	locs := make([][]engine.CellLoc, len(fields))
	for i := range fields {
		locs[i] = make([]engine.CellLoc, len(keys))
	}
	var done []written
	defer func() {
		if err != nil {
			ctx := context.WithoutCancel(ctx)
			err = errors.Join(err, freeWritten(ctx, done, locs), c.forget(ctx, partition, plan.created))
		}
	}()
	for u, rows := range plan.groups {
		if _, err := c.writeRows(ctx, u, fields, rows, locs); err != nil {
			return engine.KeysCommitted{}, err
		}
		done = append(done, written{unit: u, rows: rows})
	}
	all := allRows(len(keys))
	req.Fields = commitFields(fields, all, locs)
	out, err := c.meta.CommitKeys(ctx, req)
	if err != nil {
		if !refused(err) {
			done, plan.created = nil, nil // the commit may have happened
		}
		return engine.KeysCommitted{}, err
	}
	return out, nil
}

// putKeysOn is a KV put of every row to unit u.
func (c *Client) putKeysOn(ctx context.Context, u DataUnit, req engine.KeysCommit, fields []engine.Field, created []string) (engine.KeysCommitted, error) {
	all := allRows(len(req.Keys))
	exts, err := c.writeRows(ctx, u, fields, all, nil)
	if err != nil {
		return engine.KeysCommitted{}, errors.Join(err, c.forget(ctx, req.Partition, created))
	}
	req.Fields = extentFields(fields, u.ID(), exts, true)
	out, err := c.meta.CommitKeys(ctx, req)
	if err != nil {
		if !refused(err) {
			return engine.KeysCommitted{}, err // the commit may have happened
		}
		ctx := context.WithoutCancel(ctx)
		return engine.KeysCommitted{}, errors.Join(err, u.Free(ctx, fieldAddrs(req.Fields)), c.forget(ctx, req.Partition, created))
	}
	return out, nil
}

// KeysPutBuffer is a KV put whose bytes the caller writes in place, into
// extents a storage unit reserved for it (see [Client.ReservePutKeys]);
// the rules for its columns are those of [PutBuffer].
type KeysPutBuffer struct {
	*reserved
	part    string
	keys    []string
	tags    []engine.Tags
	created []string // keys the reservation's resolve made
	names   []string // the fields', for the dtype cache
	dtypes  []engine.DType
}

// ReservePutKeys reserves, on one storage unit, one extent per field for
// keys' rows (row i of each field belongs to keys[i]) and returns a buffer
// whose columns alias them for the caller to fill. The rows become
// readable, all at once, at Commit, and so do the keys (except under hash
// placement over several units, as for [Client.PutKeys]); tags, when not
// nil, are merged then. A field whose dtype differs from the partition's is refused here,
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

func (c *Client) reservePutKeys(ctx context.Context, partition string, keys []string, tags []engine.Tags, fields []FieldSpec) (_ *KeysPutBuffer, err error) {
	switch {
	case len(keys) == 0:
		return nil, fmt.Errorf("empty key list: %w", engine.ErrInvalid)
	case tags != nil && len(tags) != len(keys):
		return nil, fmt.Errorf("%d tag maps for %d keys: %w", len(tags), len(keys), engine.ErrInvalid)
	}
	if err := checkPartKeys(partition, keys, nil); err != nil {
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
	var plan keyPlan
	defer func() {
		if err != nil {
			err = errors.Join(err, c.forget(ctx, partition, plan.created))
		}
	}()
	plan, err = c.planKeys(ctx, partition, keys)
	if err != nil {
		return nil, errors.Join(err, <-checked)
	}
	// A reserved put goes to one unit: the one of the first key's row.
	var u DataUnit
	for gu, rows := range plan.groups {
		if u == nil || rows[0] == 0 {
			u = gu
		}
	}
	r, err := c.reserve(ctx, u, fields, len(keys), kinds, sizes)
	if cerr := <-checked; cerr != nil {
		if err == nil {
			err = errors.Join(cerr, r.abort(context.WithoutCancel(ctx)))
		} else {
			err = cerr
		}
	}
	if err != nil {
		return nil, err
	}
	// Kept until Commit: copies, so that the caller may reuse its slices.
	return &KeysPutBuffer{reserved: r, part: partition, keys: slices.Clone(keys), tags: slices.Clone(tags), created: plan.created, names: specNames(fields), dtypes: dtypes}, nil
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
// this put created stays. A second Commit, or Commit after Abort, fails
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
		return engine.KeysCommitted{}, errors.Join(err, b.c.forget(ctx, b.part, b.created))
	}
	out, err := b.c.meta.CommitKeys(ctx, engine.KeysCommit{Partition: b.part, Keys: b.keys, Fields: cfs, Tags: b.tags})
	if err != nil {
		if !refused(err) {
			return engine.KeysCommitted{}, err // the commit may have happened
		}
		return engine.KeysCommitted{}, errors.Join(err, b.free(ctx, cfs), b.c.forget(ctx, b.part, b.created))
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
	err := errors.Join(b.res.Abort(ctx), b.c.forget(ctx, b.part, b.created))
	if err != nil {
		return &engine.OpError{Op: "reserve put", Peer: b.part, Err: err}
	}
	return nil
}
