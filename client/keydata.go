package client

// One round trip for small KV puts and gets: a controller that shares its
// process with storage units (tq serve's default) takes a put's bytes
// with it (KV_PUT) and answers a get with them (KV_GET). A client uses
// these for values of at most KVInlineMax bytes, and goes to the units
// itself otherwise, or when the controller has no units of its own
// (which it learns once).

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"

	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// KVInlineMax is the most bytes a KV put or get sends through the
// controller in one round trip; larger values go to the units directly.
const KVInlineMax = 64 << 10

// KeyDataService is a metadata service that can carry a KV put's or get's
// bytes itself. A RemoteMeta implements it; Supported reports false once
// the controller said it cannot (then the calls are not tried again).
type KeyDataService interface {
	PutKeysData(ctx context.Context, req engine.KeysCommit, b *engine.Batch) (engine.KeysCommitted, error)
	// GetKeysData resolves keys as ResolveKeys does (never creating
	// them); the batch is nil when the cells hold more than maxBytes or
	// lie elsewhere: read them from the units with the meta.
	GetKeysData(ctx context.Context, partition string, keys, fields []string, maxBytes int) (*engine.BatchMeta, *engine.Batch, error)
	KeyDataSupported() bool
}

var (
	_ KeyDataService = (*RemoteMeta)(nil)
	_ KeyDataService = checkedMeta{}
)

// keyDataState marks a RemoteMeta whose controller answered a KV_PUT or
// KV_GET with CODE_NOT_SUPPORTED.
type keyDataState struct{ unsupported atomic.Bool }

func (r *RemoteMeta) KeyDataSupported() bool { return !r.kd.unsupported.Load() }

// learn notes a controller without units of its own.
func (r *RemoteMeta) learn(err error) error {
	if errors.Is(err, engine.ErrNotSupported) {
		r.kd.unsupported.Store(true)
	}
	return err
}

// PutKeysData sends a KV put with its bytes (KV_PUT): the controller
// writes them to a unit of its process and commits, in one round trip.
func (r *RemoteMeta) PutKeysData(ctx context.Context, req engine.KeysCommit, b *engine.Batch) (engine.KeysCommitted, error) {
	if err := checkCommitKeys(req); err != nil {
		return engine.KeysCommitted{}, r.opErr("kv put", err)
	}
	put := &wirepb.CommitKeysRequest{Partition: req.Partition, Keys: req.Keys}
	p := &wirepb.KVPutRequest{Put: put}
	var payload net.Buffers
	if b != nil {
		for _, f := range b.Fields() {
			cf := engine.CommitField{Name: f.Name, DType: f.Col.DType(), Kind: f.Col.Kind()}
			lens := &wirepb.RowLens{}
			switch f.Col.Kind() {
			case engine.Dense:
				cf.Shape = f.Col.Shape()
			case engine.Ragged:
				cf.Shapes = f.Col.Shapes()
			case engine.Opaque:
				offs := f.Col.Offsets()
				lens.Lens = make([]uint64, len(offs)-1)
				for i := range lens.Lens {
					lens.Lens[i] = uint64(offs[i+1] - offs[i])
				}
			}
			put.Fields = append(put.Fields, wire.CommitFieldsToPB([]engine.CommitField{cf})...)
			p.RowLens = append(p.RowLens, lens)
			if d := f.Col.Data(); len(d) > 0 {
				payload = append(payload, d)
			}
		}
	}
	if req.Tags != nil {
		var err error
		if put.Tags, err = wire.TagsToPB(req.Tags); err != nil {
			return engine.KeysCommitted{}, r.opErr("kv put", err)
		}
		put.HasTags = true
	}
	var reply wirepb.CommitKeysReply
	c, err := r.connect(ctx)
	if err == nil {
		err = c.Do(ctx, wire.OpKVPut, p, payload, &reply, nil)
	}
	if err != nil {
		return engine.KeysCommitted{}, r.opErr("kv put", r.learn(err))
	}
	var out engine.KeysCommitted
	if len(reply.Tags) != len(req.Keys) {
		return out, r.opErr("kv put", corruptReply(fmt.Errorf("%d tag maps for %d keys", len(reply.Tags), len(req.Keys))))
	}
	if out.Tags, err = wire.TagsFromPB(reply.Tags); err != nil {
		return out, r.opErr("kv put", corruptReply(err))
	}
	out.Fields = reply.Fields
	return out, nil
}

// GetKeysData resolves keys and reads their cells in one round trip
// (KV_GET) when they are small and on the controller's own units.
func (r *RemoteMeta) GetKeysData(ctx context.Context, partition string, keys, fields []string, maxBytes int) (*engine.BatchMeta, *engine.Batch, error) {
	if err := checkPartKeys(partition, keys, fields); err != nil {
		return nil, nil, r.opErr("kv get", err)
	}
	req := &wirepb.KVGetRequest{Partition: partition, Keys: keys, Fields: selectionToPB(fields), MaxBytes: uint64(maxBytes)}
	var reply wirepb.KVGetReply
	var data []byte
	into := func(h wire.Header, _ proto.Message) ([][]byte, error) {
		if h.PayloadLen > uint64(maxBytes) {
			return nil, fmt.Errorf("a KV_GET answer of %d bytes, %d asked at most: %w", h.PayloadLen, maxBytes, engine.ErrCorrupt)
		}
		data = make([]byte, h.PayloadLen)
		return [][]byte{data}, nil
	}
	c, err := r.connect(ctx)
	if err == nil {
		err = c.Do(ctx, wire.OpKVGet, req, nil, &reply, into)
	}
	if err != nil {
		return nil, nil, r.opErr("kv get", r.learn(err))
	}
	m, err := r.meta("kv get", reply.Meta)
	if err != nil {
		return nil, nil, err
	}
	if m.Len() != len(keys) {
		return nil, nil, r.opErr("kv get", corruptReply(fmt.Errorf("%d rows for %d keys", m.Len(), len(keys))))
	}
	if !reply.HasData {
		return m, nil, nil
	}
	b, err := batchOver(m, reply.Fields, data)
	if err != nil {
		return nil, nil, r.opErr("kv get", corruptReply(err))
	}
	return m, b, nil
}

// batchOver builds the columns of fields over data, each field's cells
// back to back in row order, field after field, as meta's cells say.
func batchOver(meta *engine.BatchMeta, fields []string, data []byte) (*engine.Batch, error) {
	out := make([]engine.Field, len(fields))
	at := uint64(0)
	for i, name := range fields {
		locs, ok := meta.Cells[name]
		if !ok {
			return nil, fmt.Errorf("field %q is not in the meta", name)
		}
		var size uint64
		for _, l := range locs {
			size += l.Addr.Len
		}
		if size > uint64(len(data))-at {
			return nil, fmt.Errorf("field %q needs %d bytes, %d left", name, size, uint64(len(data))-at)
		}
		col, err := columnOver(meta, name, data[at:at+size:at+size])
		if err != nil {
			return nil, err
		}
		at += size
		out[i] = engine.Field{Name: name, Col: col}
	}
	if at != uint64(len(data)) {
		return nil, fmt.Errorf("the fields take %d of %d bytes", at, len(data))
	}
	return engine.NewBatch(out...)
}

func (c checkedMeta) KeyDataSupported() bool {
	kd, ok := c.m.(KeyDataService)
	return ok && kd.KeyDataSupported()
}

func (c checkedMeta) PutKeysData(ctx context.Context, req engine.KeysCommit, b *engine.Batch) (engine.KeysCommitted, error) {
	return c.m.(KeyDataService).PutKeysData(ctx, req, b)
}

func (c checkedMeta) GetKeysData(ctx context.Context, partition string, keys, fields []string, maxBytes int) (*engine.BatchMeta, *engine.Batch, error) {
	if err := checkPartKeys(partition, keys, fields); err != nil {
		return nil, nil, invalid("kv get", err)
	}
	return c.m.(KeyDataService).GetKeysData(ctx, partition, keys, fields, maxBytes)
}

// keyData returns the client's metadata service as a KeyDataService when
// it can carry bytes.
func (c *Client) keyData() KeyDataService {
	if kd, ok := c.meta.(KeyDataService); ok && kd.KeyDataSupported() {
		return kd
	}
	return nil
}

// GetKeys resolves keys (fields nil: every field all of them hold) and
// reads them: in one round trip when the controller carries the bytes,
// else as [Client.MetaByKeys] then [Client.Get]. It also returns the meta
// (for callers that name what is not produced). Release the batch when
// done, as after Get.
func (c *Client) GetKeys(ctx context.Context, partition string, keys, fields []string) (*engine.BatchMeta, *engine.Batch, error) {
	if kd := c.keyData(); kd != nil {
		meta, b, err := kd.GetKeysData(ctx, partition, keys, fields, KVInlineMax)
		if err == nil || !errors.Is(err, engine.ErrNotSupported) {
			return meta, b, err
		}
	}
	meta, err := c.MetaByKeys(ctx, partition, keys, fields, false)
	return meta, nil, err
}
