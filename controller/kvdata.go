package controller

// KV_PUT and KV_GET: a KV put or get in one round trip, bytes included,
// for a controller that shares its process with storage units (tq serve
// --role all); KV_SET and KV_GET_VALUE: the same for one value of one
// key, without the batch around it. The controller hands the bytes to
// units of its process through KVData; a client whose values are small
// uses these ops, and falls back to the controller-then-unit path when a
// controller has no KVData (CODE_NOT_SUPPORTED) or the values are large.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"runtime/debug"

	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// MaxKVPayload bounds a KV_PUT's bytes and a KV_GET's answer: values
// larger than this go to the units directly, where shared memory and
// striping serve them better.
const MaxKVPayload = 1 << 20

// KVData puts and gets keys' bytes on storage units in the controller's
// process.
type KVData interface {
	// PutKeys is a KV put, as a client's (the controller commit
	// included), once durable.
	PutKeys(ctx context.Context, partition string, keys []string, b *engine.Batch, tags []engine.Tags) (engine.KeysCommitted, error)
	// GetKeys resolves keys (fields nil: every field all of them hold)
	// and, when their cells hold at most maxBytes and lie on units of
	// this process, reads them: a batch of views to release once sent
	// (the meta may then be nil: the reply carries only the batch).
	// Otherwise the batch is nil.
	GetKeys(ctx context.Context, partition string, keys, fields []string, maxBytes int) (*engine.BatchMeta, *engine.Batch, error)
}

// ValueReader fills a KV_SET's value: a *[wire.Request], whose payload
// it is, or a [ReadFunc]. (An interface, where a function would be a
// closure allocated per request.)
type ValueReader interface {
	// ReadPayloadTo fills dst, the value's size.
	ReadPayloadTo(dst []byte) error
}

// ReadFunc is a function as a ValueReader.
type ReadFunc func(dst []byte) error

func (f ReadFunc) ReadPayloadTo(dst []byte) error { return f(dst) }

// ValueKV is a KVData that also puts and gets one value of one key with
// nothing general built (KV_SET, KV_GET_VALUE).
type ValueKV interface {
	KVData
	// SetValue puts size bytes, which read fills, as the opaque field
	// field of key, once durable. read is called once, unless an error
	// comes first; an error from it is the put's.
	SetValue(ctx context.Context, partition, key, field string, size int, read ValueReader) (engine.KeysCommitted, error)
	// GetValue returns the bytes of field of key, a view to release once
	// sent, and its schema, when its cell is produced, lies on a unit of
	// this process and holds at most maxBytes; ok is false otherwise.
	// The schema's kind is Opaque or Dense: one row of a ragged field is
	// dense, of its own shape (as a batch of one row reports it).
	GetValue(ctx context.Context, partition, key, field string, maxBytes int) (val []byte, schema engine.CommitField, release func(), ok bool, err error)
}

// ServeKV makes the server answer KV_PUT and KV_GET through kv (and
// KV_SET and KV_GET_VALUE when it is a ValueKV): call it
// once storage units of this process have registered. Until then (and in
// a controller without units) they are answered CODE_NOT_SUPPORTED.
func (s *Server) ServeKV(kv KVData) { s.kv.Store(&kv) }

func (s *Server) kvData() KVData {
	if p := s.kv.Load(); p != nil {
		return *p
	}
	return nil
}

// noWait is a context that has ended, marked engine.WithoutWait: an
// in-memory controller's KV_PUT runs on the connection's read loop with
// it, so it takes room that is free now or fails at once
// (engine.ErrCapacity), and the client puts through the units, where
// waiting for room blocks nobody else. A put with a body too large to
// run inline (wire.DefaultInlineMaxBody) runs in a goroutine of its own
// with it all the same: it fails for want of room as a small one does,
// and, never waiting, loses nothing by not seeing a CANCEL.
var noWait = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return engine.WithoutWait(ctx)
}()

// kvPut serves KV_PUT.
func (s *Server) kvPut(ctx context.Context, req *wire.Request, rw *wire.ReplyWriter) {
	// KVData's put returns once its commit is durable: nothing more to
	// wait for (waiting for the log's last record now would wait for the
	// next group's fsync, records other requests appended meanwhile).
	reply, err := s.kvPutReply(ctx, req)
	if err != nil {
		rw.Error(err)
		return
	}
	rw.Reply(reply, nil, nil)
}

func (s *Server) kvPutReply(ctx context.Context, req *wire.Request) (_ proto.Message, err error) {
	defer s.recoverInto(wire.OpKVPut, &err)
	kv := s.kvData()
	if kv == nil {
		req.DiscardPayload()
		return nil, fmt.Errorf("KV_PUT: this controller shares its process with no storage unit: %w", engine.ErrNotSupported)
	}
	if req.PayloadLen > MaxKVPayload {
		req.DiscardPayload()
		return nil, fmt.Errorf("KV_PUT of %d bytes exceeds %d (write large values to the units): %w", req.PayloadLen, MaxKVPayload, engine.ErrInvalid)
	}
	p, err := decode[wirepb.KVPutRequest](wire.OpKVPut, req.Body)
	if err != nil {
		req.DiscardPayload()
		return nil, err
	}
	data := make([]byte, req.PayloadLen)
	if err := req.ReadPayload([][]byte{data}); err != nil {
		return nil, err
	}
	put := p.GetPut()
	n := len(put.GetKeys())
	if err := errors.Join(wire.CheckCount("keys", n), wire.CheckCount("fields", len(put.GetFields()))); err != nil {
		return nil, err
	}
	b, err := wire.BatchFromPB(put.GetFields(), p.RowLens, n, data)
	if err != nil {
		return nil, opErr("kv put", put.GetPartition(), err)
	}
	var tags []engine.Tags
	if put.GetHasTags() {
		if len(put.Tags) != n {
			return nil, opErr("kv put", put.Partition, fmt.Errorf("%d tag maps for %d keys: %w", len(put.Tags), n, engine.ErrInvalid))
		}
		if tags, err = wire.TagsFromPBShared(put.Tags); err != nil { // the commit copies what it keeps
			return nil, opErr("kv put", put.Partition, err)
		}
	}
	done, err := kv.PutKeys(ctx, put.GetPartition(), put.GetKeys(), b, tags)
	if err != nil {
		return nil, err
	}
	pbTags, err := wire.TagsToPB(done.Tags)
	if err != nil {
		return nil, err
	}
	return &wirepb.CommitKeysReply{Tags: pbTags, Fields: done.Fields}, nil
}

// kvGet serves KV_GET.
func (s *Server) kvGet(ctx context.Context, req *wire.Request, rw *wire.ReplyWriter) {
	if req.PayloadLen != 0 {
		req.DiscardPayload()
		rw.Error(fmt.Errorf("KV_GET request with %d payload bytes: %w", req.PayloadLen, engine.ErrInvalid))
		return
	}
	// KVData's lookup waits for what it saw to be durable.
	reply, b, err := s.kvGetReply(ctx, req)
	kvGetSend(rw, reply, b, err)
}

// kvGetSend answers a KV_GET with what kvGetReply returned.
func kvGetSend(rw *wire.ReplyWriter, reply *wirepb.KVGetReply, b *engine.Batch, err error) {
	if err != nil {
		if b != nil {
			b.Release()
		}
		rw.Error(err)
		return
	}
	if b == nil {
		rw.Reply(reply, nil, nil)
		return
	}
	var payload net.Buffers
	reply.HasData = true
	reply.Fields, reply.RowLens, payload = wire.BatchToPB(b)
	rw.Reply(reply, payload, b.Release)
}

// tryKVGet serves KV_GET where it was read, unless what it read is not
// durable yet: then it answers nothing and kvGet runs it in a goroutine.
func (s *Server) tryKVGet(_ context.Context, req *wire.Request, rw *wire.ReplyWriter) bool {
	if req.PayloadLen != 0 {
		return false // kvGet says what is wrong
	}
	reply, b, err := s.kvGetReply(noWait, req)
	if errors.Is(err, context.Canceled) {
		if b != nil {
			b.Release()
		}
		return false
	}
	kvGetSend(rw, reply, b, err)
	return true
}

func (s *Server) kvGetReply(ctx context.Context, req *wire.Request) (_ *wirepb.KVGetReply, _ *engine.Batch, err error) {
	defer s.recoverInto(wire.OpKVGet, &err)
	kv := s.kvData()
	if kv == nil {
		return nil, nil, fmt.Errorf("KV_GET: this controller shares its process with no storage unit: %w", engine.ErrNotSupported)
	}
	p, err := decode[wirepb.KVGetRequest](wire.OpKVGet, req.Body)
	if err != nil {
		return nil, nil, err
	}
	if err := wire.CheckCount("keys", len(p.Keys)); err != nil {
		return nil, nil, err
	}
	fields, err := selection(p.Fields)
	if err != nil {
		return nil, nil, err
	}
	meta, b, err := kv.GetKeys(ctx, p.Partition, p.Keys, fields, int(min(p.MaxBytes, MaxKVPayload)))
	if err != nil {
		return nil, nil, err
	}
	if b != nil {
		// The bytes say it all: no meta to encode.
		return &wirepb.KVGetReply{}, b, nil
	}
	pm, err := wire.MetaToPB(meta)
	if err != nil {
		return nil, nil, err
	}
	return &wirepb.KVGetReply{Meta: pm}, nil, nil
}

// recoverInto turns a panic of op's handler into an error wrapping
// errInternal, as call does for the other ops.
func (s *Server) recoverInto(op wire.Op, err *error) {
	if v := recover(); v != nil {
		if s.cfg.Logf != nil {
			s.cfg.Logf("controller: %v handler panicked: %v\n%s", op, v, debug.Stack())
		}
		*err = fmt.Errorf("%v handler panicked: %v: %w", op, v, errInternal)
	}
}

// kvSet serves KV_SET: a KV_PUT of one opaque value, whose bytes go
// straight from the connection to where they are stored.
func (s *Server) kvSet(ctx context.Context, req *wire.Request, rw *wire.ReplyWriter) {
	reply, err := s.kvSetReply(ctx, req)
	if err != nil {
		rw.Error(err)
		return
	}
	rw.Reply(reply, nil, nil)
}

func (s *Server) kvSetReply(ctx context.Context, req *wire.Request) (_ proto.Message, err error) {
	defer s.recoverInto(wire.OpKVSet, &err)
	kv, _ := s.kvData().(ValueKV)
	if kv == nil {
		req.DiscardPayload()
		return nil, fmt.Errorf("KV_SET: this controller shares its process with no storage unit: %w", engine.ErrNotSupported)
	}
	if req.PayloadLen > MaxKVPayload {
		req.DiscardPayload()
		return nil, fmt.Errorf("KV_SET of %d bytes exceeds %d (write large values to the units): %w", req.PayloadLen, MaxKVPayload, engine.ErrInvalid)
	}
	partition, key, field, err := wire.DecodeKVSet(req.Body)
	if err != nil {
		req.DiscardPayload()
		return nil, fmt.Errorf("decode %v request: %v: %w", wire.OpKVSet, err.Error(), engine.ErrInvalid)
	}
	done, err := kv.SetValue(ctx, partition, key, field, int(req.PayloadLen), req)
	if err != nil {
		req.DiscardPayload() // when SetValue failed before reading
		return nil, err
	}
	pbTags, err := wire.TagsToPB(done.Tags)
	if err != nil {
		return nil, err
	}
	return &wirepb.CommitKeysReply{Tags: pbTags, Fields: done.Fields}, nil
}

// errTakeKVGet answers a KV_GET_VALUE the controller does not answer
// with the bytes: the client asks KV_GET, which says why.
var errTakeKVGet = fmt.Errorf("KV_GET_VALUE: not answered with its bytes here; ask KV_GET: %w", engine.ErrNotFound)

// kvGetValue serves KV_GET_VALUE: one field of one key, its bytes sent
// from where they lie.
func (s *Server) kvGetValue(ctx context.Context, req *wire.Request, rw *wire.ReplyWriter) {
	if req.PayloadLen != 0 {
		req.DiscardPayload()
		rw.Error(fmt.Errorf("KV_GET_VALUE request with %d payload bytes: %w", req.PayloadLen, engine.ErrInvalid))
		return
	}
	schema, val, release, err := s.kvGetValueReply(ctx, req)
	if err != nil {
		rw.Error(err)
		return
	}
	rw.ReplyBytes(schema, val, release)
}

// tryKVGetValue serves KV_GET_VALUE where it was read, unless what it
// read is not durable yet: then it answers nothing and kvGetValue runs
// it in a goroutine.
func (s *Server) tryKVGetValue(_ context.Context, req *wire.Request, rw *wire.ReplyWriter) bool {
	if req.PayloadLen != 0 {
		return false // kvGetValue says what is wrong
	}
	schema, val, release, err := s.kvGetValueReply(noWait, req)
	switch {
	case errors.Is(err, context.Canceled):
		return false
	case err != nil:
		rw.Error(err)
	default:
		rw.ReplyBytes(schema, val, release)
	}
	return true
}

// opaqueSchema is the schema of most values, shared (and never changed)
// by their replies.
var opaqueSchema = &wirepb.FieldSchema{Dtype: engine.Bytes.String(), Kind: engine.Opaque.String()}

func (s *Server) kvGetValueReply(ctx context.Context, req *wire.Request) (_ *wirepb.FieldSchema, _ []byte, _ func(), err error) {
	defer s.recoverInto(wire.OpKVGetValue, &err)
	kv, _ := s.kvData().(ValueKV)
	if kv == nil {
		return nil, nil, nil, fmt.Errorf("KV_GET_VALUE: this controller shares its process with no storage unit: %w", engine.ErrNotSupported)
	}
	partition, key, field, maxBytes, err := wire.DecodeKVGetValue(req.Body)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("decode %v request: %v: %w", wire.OpKVGetValue, err.Error(), engine.ErrInvalid)
	}
	val, cf, release, ok, err := kv.GetValue(ctx, partition, key, field, int(min(maxBytes, MaxKVPayload)))
	if err != nil || !ok {
		return nil, nil, nil, cmp.Or(err, errTakeKVGet)
	}
	if cf.Kind == engine.Opaque && cf.DType == engine.Bytes {
		return opaqueSchema, val, release, nil
	}
	schema := &wirepb.FieldSchema{Dtype: cf.DType.String(), Kind: cf.Kind.String()}
	if cf.Kind == engine.Dense {
		schema.Shape = wire.ShapeToPB(cf.Shape)
	}
	return schema, val, release, nil
}
