package kvapi

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
)

// PutBuffer is a KV put whose bytes the caller writes in place, into
// memory a storage unit reserved for it: over shared memory (or to a unit
// in this process) nothing is copied on the way to storage. Fill the
// columns of [client.PutBuffer.Column], then Commit or Abort; see
// [client.PutBuffer] for the rules on the columns.
type PutBuffer struct {
	*client.PutBuffer
	kv        *KV
	partition string
	keys      []string
	tags      []engine.Tags

	mu      sync.Mutex
	ended   bool
	created []string // keys this put created, cleared unless it commits
}

// ReservePut reserves storage for keys' rows of the given fields, one
// extent per field on one unit, creating missing keys; row i belongs to
// keys[i]. The keys' rows become readable, all at once, at Commit.
//
// Errors as for [KV.BatchPut] and [client.Client.ReservePut]; in
// particular [engine.ErrNotSupported] when the unit is reached over a
// transport that cannot lend memory (tcp). On error nothing stays reserved
// and no key is created.
func (kv *KV) ReservePut(ctx context.Context, partition string, keys []string, fields ...client.FieldSpec) (*PutBuffer, error) {
	if err := checkKeys(partition, keys); err != nil {
		return nil, opErr("reserve put", partition, err)
	}
	if len(fields) == 0 {
		return nil, opErr("reserve put", partition, fmt.Errorf("put with no fields: %w", engine.ErrInvalid))
	}
	dtypes := make(map[string]engine.DType, len(fields))
	for _, f := range fields {
		dtypes[f.Name] = f.DType
		if f.RowBytes != nil {
			dtypes[f.Name] = engine.Bytes
		}
	}
	if err := kv.checkDTypes(ctx, partition, dtypes); err != nil {
		return nil, opErr("reserve put", partition, err)
	}
	kr, err := kv.c.MetaByKeysCreated(ctx, partition, keys)
	if err != nil {
		return nil, err
	}
	b := &PutBuffer{kv: kv, partition: partition, keys: keys, tags: kr.Meta.Tags}
	for _, p := range kr.Created {
		b.created = append(b.created, keys[p])
	}
	b.PutBuffer, err = kv.c.ReservePut(ctx, kr.Meta, fields...)
	if err != nil {
		return nil, errors.Join(err, b.forget(ctx))
	}
	return b, nil
}

// forget clears the keys the put created.
func (b *PutBuffer) forget(ctx context.Context) error {
	if len(b.created) == 0 {
		return nil
	}
	return b.kv.c.ClearKeys(context.WithoutCancel(ctx), b.partition, b.created)
}

// end marks the buffer ended and reports whether it was open.
func (b *PutBuffer) end() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ended {
		return false
	}
	b.ended = true
	return true
}

// Commit makes the rows readable and returns the keys' meta: the fields
// every key holds after the put. On failure nothing is readable and the
// keys the put created are gone. A second Commit, or Commit after Abort,
// fails with [engine.ErrInvalid] and changes nothing.
func (b *PutBuffer) Commit(ctx context.Context) (*engine.KVMeta, error) {
	if !b.end() {
		return nil, opErr("reserve put", b.partition, fmt.Errorf("put buffer ended already: %w", engine.ErrInvalid))
	}
	m, err := b.PutBuffer.Commit(ctx)
	if err != nil {
		return nil, errors.Join(err, b.forget(ctx))
	}
	return engine.NewKVMeta(b.partition, b.keys, b.tags, m.FieldNames())
}

// Abort gives the reserved memory back and clears the keys the put
// created; keys that existed keep what they held. Abort does nothing after
// Commit or a first Abort.
func (b *PutBuffer) Abort(ctx context.Context) error {
	if !b.end() {
		return nil
	}
	return errors.Join(b.PutBuffer.Abort(ctx), b.forget(ctx))
}
