package kvapi

import (
	"context"
	"slices"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
)

// PutBuffer is a KV put whose bytes the caller writes in place, into
// memory a storage unit reserved for it: over shared memory (or to a unit
// in this process) nothing is copied on the way to storage. Fill the
// columns of [client.KeysPutBuffer.Column], then Commit or Abort; see
// [client.PutBuffer] for the rules on the columns.
type PutBuffer struct {
	*client.KeysPutBuffer
	partition string
	keys      []string
}

// ReservePut reserves storage for keys' rows of the given fields, one
// extent per field on one unit; row i belongs to keys[i]. The keys,
// missing ones created, become readable, all at once, at Commit.
//
// Errors as for [KV.BatchPut] and [client.Client.ReservePutKeys]; in
// particular [engine.ErrNotSupported] when the unit is reached over a
// transport that cannot lend memory (tcp). On error nothing stays reserved
// and no key is created.
func (kv *KV) ReservePut(ctx context.Context, partition string, keys []string, fields ...client.FieldSpec) (*PutBuffer, error) {
	if err := checkKeys(partition, keys); err != nil {
		return nil, opErr("reserve put", partition, err)
	}
	b, err := kv.c.ReservePutKeys(ctx, partition, keys, nil, fields...)
	if err != nil {
		return nil, err
	}
	return &PutBuffer{KeysPutBuffer: b, partition: partition, keys: slices.Clone(keys)}, nil
}

// Commit makes the rows readable and returns the keys' meta: the fields
// every key holds after the put. On failure nothing is readable and the
// keys the put created are gone. A second Commit, or Commit after Abort,
// fails with [engine.ErrInvalid] and changes nothing.
func (b *PutBuffer) Commit(ctx context.Context) (*engine.KVMeta, error) {
	done, err := b.KeysPutBuffer.Commit(ctx)
	if err != nil {
		return nil, err
	}
	return engine.NewKVMeta(b.partition, b.keys, done.Tags, done.Fields)
}
