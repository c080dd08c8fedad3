package kvapi

// Tags beyond a put's merge: removing them, compare-and-set, listing by
// tag, and waiting for keys that changed.

import (
	"context"
	"fmt"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
)

// keys returns the controller's tag and change-feed calls.
func (kv *KV) keys(op, partition string) (client.KeyService, error) {
	ks, ok := kv.c.Meta().(client.KeyService)
	if !ok {
		return nil, opErr(op, partition, fmt.Errorf("metadata service %T has no tag or change-feed calls: %w", kv.c.Meta(), engine.ErrNotSupported))
	}
	return ks, nil
}

// DeleteTags removes the tags names from every one of keys, atomically:
// a reader sees all of them gone or none. Names a key lacks are skipped,
// so deleting twice is harmless. It returns each key's tags after, in key
// order.
//
// Errors: [engine.ErrInvalid] for no keys, an empty or repeated key, no
// names or an empty one (nothing is sent); [engine.ErrNotFound] naming
// the keys the partition lacks, and then nothing changes.
func (kv *KV) DeleteTags(ctx context.Context, partition string, keys []string, names ...string) ([]engine.Tags, error) {
	if err := checkKeys(partition, keys); err != nil {
		return nil, opErr("delete tags", partition, err)
	}
	ks, err := kv.keys("delete tags", partition)
	if err != nil {
		return nil, err
	}
	return ks.DeleteTags(ctx, partition, keys, names)
}

// CompareAndSetTag sets tag name of key to new if it holds old, in one
// atomic step in the controller (under the partition's lock; durable
// before it returns, with a durable controller). nil stands for "absent"
// on both sides: old nil requires the tag to be absent (a tag holding
// null counts as absent), new nil deletes it. Values compare as JSON
// values: 1 equals 1.0, "1" does not (see [engine.TagValueEqual]).
//
// A key the partition lacks has no tags: with old nil and new set the
// swap creates it, a tag-only key (and the partition if needed), as
// [KV.Put] of that tag would; with old set it does not swap. It returns
// whether it swapped and the tag's value after the call: new when it
// swapped, else the value that did not match (nil: absent), which is
// what to pass as old when trying again. A swap to a value equal to the
// one there swaps and changes nothing: [KV.Changes] does not report it.
// Whole numbers come back as int64 through a remote controller.
//
// Over the network a swap whose connection breaks may or may not have
// happened (the error wraps [engine.ErrUnavailable]); read the tag and
// decide. Errors: [engine.ErrInvalid] for an empty partition, key or tag
// name, a value JSON cannot encode, or one that would make the key's tags
// larger than [engine.MaxTagsBytes]; nothing changes then.
func (kv *KV) CompareAndSetTag(ctx context.Context, partition, key, name string, old, new any) (swapped bool, current any, err error) {
	ks, err := kv.keys("compare and set tag", partition)
	if err != nil {
		return false, nil, err
	}
	done, err := ks.CompareAndSetTag(ctx, engine.TagSwap{Partition: partition, Key: key, Name: name, Old: old, New: new})
	if err != nil {
		return false, nil, err
	}
	return done.Swapped, done.Current, nil
}

// Eq is the condition "tag name is present and equals v".
func Eq(name string, v any) engine.TagCondition {
	return engine.TagCondition{Name: name, Test: engine.TagEquals, Values: []any{v}}
}

// In is the condition "tag name is present and equals one of vs".
func In(name string, vs ...any) engine.TagCondition {
	return engine.TagCondition{Name: name, Test: engine.TagIn, Values: vs}
}

// Exists is the condition "the key has tag name" (whatever its value).
func Exists(name string) engine.TagCondition {
	return engine.TagCondition{Name: name, Test: engine.TagExists}
}

// Absent is the condition "the key does not have tag name".
func Absent(name string) engine.TagCondition {
	return engine.TagCondition{Name: name, Test: engine.TagAbsent}
}

// ListWhere is [KV.List] of the keys whose tags pass every condition of
// where (see [Eq], [In], [Exists], [Absent]; none: every key). The
// controller filters, so only those keys cross the wire:
//
//	done, err := kv.ListWhere(ctx, "", kvapi.In("status", "finished", "failure"))
//
// Errors: [engine.ErrInvalid] for a malformed condition (an empty tag
// name, the wrong number of values, a value JSON cannot encode).
func (kv *KV) ListWhere(ctx context.Context, partition string, where ...engine.TagCondition) (map[string][]Entry, error) {
	if len(where) == 0 {
		return kv.List(ctx, partition)
	}
	f := engine.TagFilter(where)
	if err := f.Validate(); err != nil {
		return nil, opErr("list", partition, err)
	}
	ks, err := kv.keys("list", partition)
	if err != nil {
		return nil, err
	}
	all, err := ks.ListKeysWhere(ctx, partition, f)
	if err != nil {
		return nil, err
	}
	return entries(all), nil
}

// Change is a key that changed: as it is now, or cleared.
type Change struct {
	Key     string
	Tags    engine.Tags // its tags now; nil when cleared
	Cleared bool
}

// ChangeSet is one answer of [KV.Changes].
type ChangeSet struct {
	// Changes lists the keys changed after the cursor, each once, in the
	// order of their last change.
	Changes []Change
	// Cursor is what to pass to the next call.
	Cursor []byte
	// Reset says that the changes could not be told one by one (the
	// partition was cleared or made again, an in-memory controller
	// restarted, or more keys were cleared than the controller
	// remembers): Changes, with those of the calls that follow while
	// More is set, holds every key the partition now holds, and any other
	// key the caller knows is gone.
	Reset bool
	// More says that more changes are ready: the next call returns at
	// once.
	More bool
}

// Changes waits for keys of partition that changed after cursor (nil:
// from the beginning, which lists every key the partition holds) and
// returns them: keys created, written (fields or tags, by a put, a tag
// removal or a swap) and cleared (Cleared set; a key cleared and made
// again since the cursor comes once, as it is now). It returns at once
// when something changed after the cursor, else blocks until something
// does (the partition may not exist yet) or ctx ends, with an error
// wrapping ctx's (context.DeadlineExceeded for a timeout); through a
// controller server each wait is bounded by the server's limit and asked
// again, and a canceled ctx ends the wait on the server. A replay buffer
// runs:
//
//	var cursor []byte
//	for {
//		cs, err := kv.Changes(ctx, partition, cursor)
//		if err != nil { ... }
//		if cs.Reset { forget every key not listed from here on }
//		apply(cs.Changes)
//		cursor = cs.Cursor
//	}
//
// The cursor stays valid across restarts of a durable controller (tq
// serve --data-dir) unless the log lost changes it saw (then Reset).
// Errors: [engine.ErrInvalid] for an empty partition,
// a malformed cursor or another partition's.
func (kv *KV) Changes(ctx context.Context, partition string, cursor []byte) (*ChangeSet, error) {
	if partition == "" {
		return nil, opErr("changes", partition, fmt.Errorf("empty partition id: %w", engine.ErrInvalid))
	}
	ks, err := kv.keys("changes", partition)
	if err != nil {
		return nil, err
	}
	ch, err := ks.KeyChanges(ctx, engine.ChangesRequest{Partition: partition, Cursor: cursor, Wait: true})
	if err != nil {
		return nil, err
	}
	cs := &ChangeSet{Cursor: ch.Cursor, Reset: ch.Reset, More: ch.More}
	if len(ch.Changes) > 0 {
		cs.Changes = make([]Change, len(ch.Changes))
	}
	for i, kc := range ch.Changes {
		cs.Changes[i] = Change{Key: kc.Key, Tags: kc.Tags, Cleared: kc.Cleared}
	}
	return cs, nil
}
