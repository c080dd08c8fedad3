package kvapi

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
)

// KV is the Redis-style API over a TQ client: string keys within a
// partition, each holding a set of fields (columns) and a tag map. It is
// safe for concurrent use.
type KV struct {
	c *client.Client
}

// New returns the KV API over c.
func New(c *client.Client) *KV { return &KV{c: c} }

// Client returns the underlying low-level client.
func (kv *KV) Client() *client.Client { return kv.c }

// Put writes one key: the fields of a one-row batch, a tag merged into the
// key's tags, or both. The key is created if needed. It returns the key's
// meta with its merged tags and every field it now holds.
func (kv *KV) Put(ctx context.Context, partition, key string, fields *engine.Batch, tag engine.Tags) (*engine.KVMeta, error) {
	var tags []engine.Tags
	if tag != nil {
		tags = []engine.Tags{tag}
	}
	// A batch of no fields has no rows: BatchPut says what is wrong.
	if fields != nil && fields.NumFields() > 0 && fields.Rows() != 1 {
		return nil, opErr("put", partition, fmt.Errorf("put of one key with a %d-row batch (use BatchPut): %w", fields.Rows(), engine.ErrInvalid))
	}
	return kv.BatchPut(ctx, partition, []string{key}, fields, tags)
}

// BatchPut writes row i of fields to keys[i] and merges tags[i] into its
// tags; either fields or tags may be nil, not both. Keys are created as
// needed. Bad input (no keys, duplicate keys, a key, partition or field
// name that is empty or not valid UTF-8, row or tag count mismatch, a
// field whose dtype differs from the partition's, tags that would make a
// key's larger than [engine.MaxTagsBytes] as JSON, or keys whose tags
// after the put take more than 32 MiB together, too much for one answer)
// changes nothing; names
// are refused ([engine.ErrInvalid], quoting them) before anything is
// sent.
//
// The returned meta lists the fields every key holds after the put: those
// all keys already had plus the ones written.
//
// A put's fields and tags become visible together, in one step of the
// controller: a reader never sees the one without the other. A put of
// tags alone makes tag-only keys (no fields), which [KV.List] lists,
// [KV.Clear] clears and [KV.Changes] reports like any other.
//
// A put whose ctx ends before its commit changes nothing and frees what
// it wrote (the error wraps ctx's); one whose ctx ends while the
// controller commits it waits up to a second more for the answer and
// reports what happened. Only when none comes, the connection breaks, or
// the controller is in this process and ctx ended its wait for the
// commit's record, may a failed put have happened (the error says so):
// read the keys and decide.
func (kv *KV) BatchPut(ctx context.Context, partition string, keys []string, fields *engine.Batch, tags []engine.Tags) (*engine.KVMeta, error) {
	if err := checkKeys(partition, keys); err != nil {
		return nil, opErr("batch put", partition, err)
	}
	done, err := kv.c.PutKeys(ctx, partition, keys, fields, tags)
	if err != nil {
		return nil, err
	}
	return engine.NewKVMeta(partition, keys, done.Tags, done.Fields)
}

// checkKeys rejects an empty partition id, no keys, an empty key or a key
// given twice.
func checkKeys(partition string, keys []string) error {
	switch {
	case partition == "":
		return fmt.Errorf("empty partition id: %w", engine.ErrInvalid)
	case len(keys) == 0:
		return fmt.Errorf("empty key list: %w", engine.ErrInvalid)
	}
	for _, k := range keys {
		if k == "" {
			return fmt.Errorf("empty key: %w", engine.ErrInvalid)
		}
	}
	if dups := engine.RepeatedKeys(keys); dups != nil {
		return fmt.Errorf("key %q appears twice: %w", dups[0], engine.ErrInvalid)
	}
	return nil
}

// BatchGet reads keys' fields, rows in key order. With no fields named it
// reads the fields every key holds. Unknown keys or fields are an error
// naming them ([engine.ErrNotFound]); a named field some key has not
// produced is [engine.ErrNotReady] naming the keys; a key or a field
// named twice is [engine.ErrInvalid] naming it.
//
// Over shared memory the result is read-only views into storage (no copy)
// until [engine.Batch.Release] (a unit's part of at most 16 KiB comes in
// its answer instead, as a copy); elsewhere it is a copy the caller owns
// (see [client.Client.Get]). Calling Release when done is right either way.
func (kv *KV) BatchGet(ctx context.Context, partition string, keys []string, fields ...string) (*engine.Batch, error) {
	return reread(func() (*engine.Batch, error) { return kv.batchGet(ctx, partition, keys, fields) })
}

// reread runs a read again when it failed because the cells it resolved
// were gone when it went to lease them: a put that replaced them, and
// freed them, in between (see client.Reread).
func reread[T any](read func() (T, error)) (T, error) {
	var v T
	err := client.Reread(func() (err error) {
		v, err = read()
		return err
	})
	return v, err
}

func (kv *KV) batchGet(ctx context.Context, partition string, keys, fields []string) (*engine.Batch, error) {
	if len(keys) == 0 {
		return nil, opErr("batch get", partition, fmt.Errorf("empty key list: %w", engine.ErrInvalid))
	}
	var sel []string
	if len(fields) > 0 {
		sel = fields
	}
	// Small values of a controller with units of its own come with the
	// keys' meta, in one round trip.
	meta, b, err := kv.c.GetKeys(ctx, partition, keys, sel)
	if err != nil || b != nil {
		return b, err
	}
	if err := notProduced(partition, keys, sel, meta); err != nil {
		return nil, err
	}
	return kv.c.Get(ctx, meta)
}

// BatchGetCopy is [KV.BatchGet] into fresh columns the caller owns and may
// modify, whatever the transport.
func (kv *KV) BatchGetCopy(ctx context.Context, partition string, keys []string, fields ...string) (*engine.Batch, error) {
	return reread(func() (*engine.Batch, error) {
		meta, err := kv.resolve(ctx, partition, keys, fields)
		if err != nil {
			return nil, err
		}
		return kv.c.GetCopy(ctx, meta)
	})
}

// BatchGetView is [KV.BatchGet] returning views into storage where
// possible (no copy). Release the view when done.
func (kv *KV) BatchGetView(ctx context.Context, partition string, keys []string, fields ...string) (*client.View, error) {
	return reread(func() (*client.View, error) {
		meta, err := kv.resolve(ctx, partition, keys, fields)
		if err != nil {
			return nil, err
		}
		return kv.c.GetView(ctx, meta)
	})
}

// BatchGetInto is [KV.BatchGet] into a buffer the caller owns and reuses
// (see [client.Client.GetInto]); [KV.SizeOf] tells how big it must be.
func (kv *KV) BatchGetInto(ctx context.Context, partition string, keys []string, buf []byte, fields ...string) (*engine.Batch, error) {
	return reread(func() (*engine.Batch, error) {
		meta, err := kv.resolve(ctx, partition, keys, fields)
		if err != nil {
			return nil, err
		}
		return kv.c.GetInto(ctx, meta, buf)
	})
}

// SizeOf returns the bytes a BatchGetInto of these keys and fields needs.
func (kv *KV) SizeOf(ctx context.Context, partition string, keys []string, fields ...string) (int, error) {
	meta, err := kv.resolve(ctx, partition, keys, fields)
	if err != nil {
		return 0, err
	}
	return client.SizeOf(meta), nil
}

// BatchGetByMeta reads the keys of a meta returned by a put; with fields it
// reads that selection, which must be among the meta's fields.
func (kv *KV) BatchGetByMeta(ctx context.Context, meta *engine.KVMeta, fields ...string) (*engine.Batch, error) {
	if meta == nil || meta.Partition == "" {
		return nil, opErr("batch get", "", fmt.Errorf("meta without a partition: %w", engine.ErrInvalid))
	}
	if len(fields) == 0 {
		fields = meta.Fields
	} else {
		var unknown []string
		for _, f := range fields {
			if !slices.Contains(meta.Fields, f) {
				unknown = append(unknown, f)
			}
		}
		if len(unknown) > 0 {
			return nil, opErr("batch get", meta.Partition, fmt.Errorf("fields %s are not in the meta's fields %s: %w", engine.QuoteKeys(unknown), engine.QuoteKeys(meta.Fields), engine.ErrNotFound))
		}
	}
	return kv.BatchGet(ctx, meta.Partition, meta.Keys, fields...)
}

func (kv *KV) resolve(ctx context.Context, partition string, keys, fields []string) (*engine.BatchMeta, error) {
	if len(keys) == 0 {
		return nil, opErr("batch get", partition, fmt.Errorf("empty key list: %w", engine.ErrInvalid))
	}
	var sel []string
	if len(fields) > 0 {
		sel = fields
	}
	meta, err := kv.c.MetaByKeys(ctx, partition, keys, sel, false)
	if err != nil {
		return nil, err
	}
	if err := notProduced(partition, keys, sel, meta); err != nil {
		return nil, err
	}
	return meta, nil
}

// notProduced names the keys whose selected fields are not produced
// ([engine.ErrNotReady]), or returns nil.
func notProduced(partition string, keys, sel []string, meta *engine.BatchMeta) error {
	if sel != nil && !meta.IsReady() {
		var missing []string
		for _, f := range sel {
			var ks []string
			for i, l := range meta.Cells[f] {
				if !l.Stored() {
					ks = append(ks, keys[i])
				}
			}
			if len(ks) > 0 {
				missing = append(missing, fmt.Sprintf("%s for keys %s", f, engine.QuoteKeys(ks)))
			}
		}
		return opErr("batch get", partition, fmt.Errorf("not produced: %s: %w", strings.Join(missing, "; "), engine.ErrNotReady))
	}
	return nil
}

// Entry is a key with its tags.
type Entry struct {
	Key  string
	Tags engine.Tags
}

// List returns, per partition, its keys in creation order with their tags:
// one partition, or all when partition is "". An unknown partition gives an
// empty map.
func (kv *KV) List(ctx context.Context, partition string) (map[string][]Entry, error) {
	all, err := kv.c.Meta().ListKeys(ctx, partition)
	if err != nil {
		return nil, err
	}
	return entries(all), nil
}

// entries converts a listing of keys.
func entries(all map[string][]engine.KeyInfo) map[string][]Entry {
	out := make(map[string][]Entry, len(all))
	for p, infos := range all {
		es := make([]Entry, len(infos))
		for i, k := range infos {
			es[i] = Entry{Key: k.Key, Tags: k.Tags}
		}
		out[p] = es
	}
	return out
}

// Clear removes keys and frees their storage. Unknown keys and partitions
// are ignored, so clearing twice is harmless.
func (kv *KV) Clear(ctx context.Context, partition string, keys []string) error {
	return kv.c.ClearKeys(ctx, partition, keys)
}

// PutAsync runs [KV.Put] in the background.
func (kv *KV) PutAsync(ctx context.Context, partition, key string, fields *engine.Batch, tag engine.Tags) *Future[*engine.KVMeta] {
	return start(func() (*engine.KVMeta, error) { return kv.Put(ctx, partition, key, fields, tag) })
}

// BatchPutAsync runs [KV.BatchPut] in the background.
func (kv *KV) BatchPutAsync(ctx context.Context, partition string, keys []string, fields *engine.Batch, tags []engine.Tags) *Future[*engine.KVMeta] {
	return start(func() (*engine.KVMeta, error) { return kv.BatchPut(ctx, partition, keys, fields, tags) })
}

// BatchGetAsync runs [KV.BatchGet] in the background.
func (kv *KV) BatchGetAsync(ctx context.Context, partition string, keys []string, fields ...string) *Future[*engine.Batch] {
	return startBatch(func() (*engine.Batch, error) { return kv.BatchGet(ctx, partition, keys, fields...) })
}

// BatchGetByMetaAsync runs [KV.BatchGetByMeta] in the background.
func (kv *KV) BatchGetByMetaAsync(ctx context.Context, meta *engine.KVMeta, fields ...string) *Future[*engine.Batch] {
	return startBatch(func() (*engine.Batch, error) { return kv.BatchGetByMeta(ctx, meta, fields...) })
}

// ListAsync runs [KV.List] in the background.
func (kv *KV) ListAsync(ctx context.Context, partition string) *Future[map[string][]Entry] {
	return start(func() (map[string][]Entry, error) { return kv.List(ctx, partition) })
}

// ClearAsync runs [KV.Clear] in the background.
func (kv *KV) ClearAsync(ctx context.Context, partition string, keys []string) *Future[struct{}] {
	return start(func() (struct{}, error) { return struct{}{}, kv.Clear(ctx, partition, keys) })
}

func opErr(op, partition string, err error) error {
	var oe *engine.OpError
	if errors.As(err, &oe) {
		return err
	}
	return &engine.OpError{Op: op, Peer: partition, Err: err}
}
