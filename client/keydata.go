package client

// One round trip for small KV puts and gets: a controller that shares its
// process with storage units (tq serve's default) takes a put's bytes
// with it (KV_PUT) and answers a get with them (KV_GET); one value of one
// key goes without the batch around it (KV_SET, KV_GET_VALUE). A client
// uses these for values of at most KVInlineMax bytes, and goes to the
// units itself otherwise, or when the controller has no units of its own
// (which it learns once).

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
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
// bytes itself. A RemoteMeta implements it; KeyDataSupported reports false
// once the controller answered CODE_NOT_SUPPORTED (it has no units of its
// own), and the client stops trying.
type KeyDataService interface {
	PutKeysData(ctx context.Context, req engine.KeysCommit, b *engine.Batch) (engine.KeysCommitted, error)
	// GetKeysData resolves keys as ResolveKeys does (never creating
	// them) and returns their rows, or, when the cells hold more than
	// maxBytes, are not all produced or lie elsewhere, no batch and the
	// meta to read them from the units with.
	GetKeysData(ctx context.Context, partition string, keys, fields []string, maxBytes int) (*engine.BatchMeta, *engine.Batch, error)
	KeyDataSupported() bool
}

var (
	_ KeyDataService = (*RemoteMeta)(nil)
	_ KeyDataService = checkedMeta{}
)

// keyDataState marks a RemoteMeta whose controller answered a KV_PUT or
// KV_GET with CODE_NOT_SUPPORTED.
type keyDataState struct {
	unsupported atomic.Bool
	// noValue: the controller does not know KV_SET and KV_GET_VALUE;
	// KV_PUT and KV_GET serve every put and get.
	noValue atomic.Bool
}

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
	if field, val, ok := oneValue(req, b); ok && !r.kd.noValue.Load() {
		out, err := r.setValue(ctx, req, field, val)
		if !errors.Is(err, engine.ErrNotSupported) {
			return out, err
		}
	}
	put := &wirepb.CommitKeysRequest{Partition: req.Partition, Keys: req.Keys}
	p := &wirepb.KVPutRequest{Put: put}
	var payload net.Buffers
	if b != nil {
		put.Fields, p.RowLens, payload = wire.BatchToPB(b)
	}
	if req.Tags != nil {
		var err error
		if put.Tags, err = wire.TagsToPB(req.Tags); err != nil {
			return engine.KeysCommitted{}, r.opErr("kv put", err)
		}
		put.HasTags = true
	}
	var reply commitKeysReply
	c, l, err := r.kvLane(ctx)
	if err == nil {
		err = c.Do(ctx, wire.OpKVPut, p, payload, &reply, nil)
	}
	l.done()
	if err != nil {
		return engine.KeysCommitted{}, r.opErr("kv put", r.learn(err))
	}
	return r.committed(req, &reply.CommitKeysReply)
}

// oneValue returns the bytes of a put that is one opaque value of one
// key (KV_SET's shape): one key, one row, one opaque field, no tags.
func oneValue(req engine.KeysCommit, b *engine.Batch) (field string, val []byte, ok bool) {
	if len(req.Keys) != 1 || req.Tags != nil || b == nil || b.Rows() != 1 || b.NumFields() != 1 {
		return "", nil, false
	}
	f := b.At(0)
	if f.Col.Kind() != engine.Opaque || f.Col.DType() != engine.Bytes {
		return "", nil, false
	}
	return f.Name, f.Col.RowBytes(0), true
}

// setValue sends one value of one key (KV_SET). A controller that does
// not know KV_SET answers CODE_NOT_SUPPORTED, as one without units does:
// the client then keeps to KV_PUT, which tells them apart.
func (r *RemoteMeta) setValue(ctx context.Context, req engine.KeysCommit, field string, val []byte) (engine.KeysCommitted, error) {
	sc := valueSets.Get().(*valueSet)
	sc.req = wirepb.KVSetRequest{Partition: req.Partition, Key: req.Keys[0], Field: field}
	sc.bufs[0] = val
	c, l, err := r.kvLane(ctx)
	if err == nil {
		err = c.Do(ctx, wire.OpKVSet, &sc.req, sc.bufs[:], &sc.reply, nil)
	}
	l.done()
	if err != nil {
		// Not reused: a call that failed may still be the writer's.
		if errors.Is(err, engine.ErrNotSupported) {
			r.kd.noValue.Store(true)
		}
		return engine.KeysCommitted{}, r.opErr("kv put", err)
	}
	out, err := r.committed(req, &sc.reply.CommitKeysReply)
	// out keeps none of sc: the reply's fields and tags are slices and
	// maps of their own.
	sc.req, sc.reply, sc.bufs[0] = wirepb.KVSetRequest{}, commitKeysReply{}, nil
	valueSets.Put(sc)
	return out, err
}

// valueSet is one KV_SET call: its request, payload and reply, reused
// through valueSets once a call is answered.
type valueSet struct {
	req   wirepb.KVSetRequest
	reply commitKeysReply
	bufs  [1][]byte
}

var valueSets = sync.Pool{New: func() any { return new(valueSet) }}

// commitKeysReply is a KV put's answer, decoded by [wire.DecodeCommitKeysReply].
type commitKeysReply struct{ wirepb.CommitKeysReply }

func (r *commitKeysReply) DecodeBody(b []byte) error {
	return wire.DecodeCommitKeysReply(b, &r.CommitKeysReply)
}

// committed checks and converts a KV put's reply.
func (r *RemoteMeta) committed(req engine.KeysCommit, reply *wirepb.CommitKeysReply) (engine.KeysCommitted, error) {
	var out engine.KeysCommitted
	var err error
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
	if len(keys) == 1 && len(fields) == 1 && !r.kd.noValue.Load() {
		b, err := r.getValue(ctx, partition, keys[0], fields[0], maxBytes)
		switch {
		case err == nil:
			return nil, b, nil
		case errors.Is(err, engine.ErrNotSupported):
			r.kd.noValue.Store(true)
		case !errors.Is(err, engine.ErrNotFound):
			return nil, nil, err
		}
		// Not answered with its bytes: KV_GET answers, or says why not.
	}
	req := &wirepb.KVGetRequest{Partition: partition, Keys: keys, Fields: selectionToPB(fields), MaxBytes: uint64(maxBytes)}
	var reply wirepb.KVGetReply
	var data []byte
	before := r.cluster()
	// A get is safe to repeat: it is sent again over a new connection
	// while the controller cannot be reached, as the other reads are.
	for again := (repeater{}); ; {
		c, l, err := r.kvLane(ctx)
		if err == nil {
			err = c.Do(ctx, wire.OpKVGet, req, nil, &reply, intoBuffer(wire.OpKVGet, maxBytes, &data))
		}
		l.done()
		if err == nil {
			break
		}
		if err = r.waitToRepeat(ctx, "kv get", &again, r.learn(err)); err != nil {
			return nil, nil, err
		}
		reply.Reset()
		data = nil
	}
	if reply.HasData {
		b, err := wire.BatchFromPB(reply.Fields, reply.RowLens, len(keys), data)
		if err != nil {
			return nil, nil, r.opErr("kv get", corruptReply(err))
		}
		if b == nil {
			// Keys that share no field: the rows of no field, as a
			// get through the units answers (not "no batch, no meta").
			b = engine.MustBatch()
		}
		return nil, b, nil
	}
	m, err := r.meta("kv get", reply.Meta, before)
	if err != nil {
		return nil, nil, err
	}
	if m.Len() != len(keys) {
		return nil, nil, r.opErr("kv get", corruptReply(fmt.Errorf("%d rows for %d keys", m.Len(), len(keys))))
	}
	return m, nil, nil
}

// getValue reads one field of one key (KV_GET_VALUE): its bytes, or
// an error wrapping engine.ErrNotFound when the controller leaves the
// get to KV_GET.
func (r *RemoteMeta) getValue(ctx context.Context, partition, key, field string, maxBytes int) (*engine.Batch, error) {
	var g *valueGet
	for again := (repeater{}); ; {
		g = valueGets.Get().(*valueGet)
		g.req = wirepb.KVGetValueRequest{Partition: partition, Key: key, Field: field, MaxBytes: uint64(maxBytes)}
		c, l, err := r.kvLane(ctx)
		if err == nil {
			err = c.Do(ctx, wire.OpKVGetValue, &g.req, nil, &g.schema, g.intoFn)
		}
		l.done()
		if err == nil {
			break
		}
		// g is not reused: a call that failed may still be the reader's.
		// A lost connection sends the get again over a new one.
		if err = r.waitToRepeat(ctx, "kv get", &again, err); err != nil {
			return nil, err
		}
	}
	schema, data := &g.schema, g.buf[0]
	if schema.opaque {
		g.release()
		return engine.OneValue(field, data), nil
	}
	cf := &wirepb.CommitField{Name: field, Dtype: schema.Dtype, Kind: schema.Kind, Shape: schema.Shape, Shapes: schema.Shapes}
	b, err := wire.BatchFromPB([]*wirepb.CommitField{cf}, []*wirepb.RowLens{{Lens: []uint64{uint64(len(data))}}}, 1, data)
	if err != nil {
		return nil, r.opErr("kv get", corruptReply(err))
	}
	return b, nil
}

// valueGet is one KV_GET_VALUE call: its request, its reply, the buffer
// the value is read into and the function that reads it, reused through
// valueGets once a call is answered.
type valueGet struct {
	req    wirepb.KVGetValueRequest
	schema valueSchema
	buf    [1][]byte
	intoFn func(wire.Header, proto.Message) ([][]byte, error) // g.into, bound once
}

var valueGets = sync.Pool{New: func() any {
	g := new(valueGet)
	g.intoFn = g.into
	return g
}}

// release returns g, whose call was answered with an opaque value, to
// valueGets, keeping nothing of the call.
func (g *valueGet) release() {
	g.req = wirepb.KVGetValueRequest{}
	g.schema.opaque = false
	g.buf[0] = nil
	valueGets.Put(g)
}

// into reads the reply's payload, of at most req.MaxBytes, into a buffer
// of its own.
func (g *valueGet) into(h wire.Header, _ proto.Message) ([][]byte, error) {
	var err error
	g.buf[0], err = replyBuffer(wire.OpKVGetValue, h, g.req.MaxBytes)
	return g.buf[:], err
}

// valueSchema is KV_GET_VALUE's reply, the field's schema. Most values
// are opaque bytes, whose schema it recognizes by its encoding (which it
// then need not decode, nor the batch build from it); any other it
// decodes as protobuf.
type valueSchema struct {
	wirepb.FieldSchema
	opaque bool // the schema is opaqueBytesSchema
}

// opaqueBytesSchema is the encoding of an opaque bytes field's schema.
var opaqueBytesSchema = func() []byte {
	b, err := proto.Marshal(&wirepb.FieldSchema{Dtype: wire.DTypeToPB(engine.Bytes), Kind: wire.KindToPB(engine.Opaque)})
	if err != nil {
		panic(err)
	}
	return b
}()

func (s *valueSchema) DecodeBody(b []byte) error {
	if s.opaque = bytes.Equal(b, opaqueBytesSchema); s.opaque {
		return nil
	}
	return proto.Unmarshal(b, &s.FieldSchema)
}

// intoBuffer has a reply's payload, of at most maxBytes, read into a
// buffer of its own, set in *data.
func intoBuffer(op wire.Op, maxBytes int, data *[]byte) func(wire.Header, proto.Message) ([][]byte, error) {
	return func(h wire.Header, _ proto.Message) ([][]byte, error) {
		var err error
		*data, err = replyBuffer(op, h, uint64(maxBytes))
		return [][]byte{*data}, err
	}
}

// replyBuffer returns a buffer for a reply's payload of at most maxBytes.
func replyBuffer(op wire.Op, h wire.Header, maxBytes uint64) ([]byte, error) {
	if h.PayloadLen > maxBytes {
		return nil, fmt.Errorf("a %v answer of %d bytes, %d asked at most: %w", op, h.PayloadLen, maxBytes, engine.ErrCorrupt)
	}
	return make([]byte, h.PayloadLen), nil
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

// GetKeys reads keys' fields (nil: every field all of them hold) in one
// round trip when the controller carries the bytes: it returns the rows.
// Otherwise it returns the keys' meta (as [Client.MetaByKeys]) and no
// batch: read it with [Client.Get] (or name what is not produced).
// Release a batch when done, as after Get.
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
