package controller

// KV_PUT and KV_GET: a KV put or get in one round trip, bytes included,
// for a controller that shares its process with storage units (tq serve
// --role all). The controller hands the bytes to units of its process
// through KVData; a client whose values are small uses these ops, and
// falls back to the controller-then-unit path when a controller has no
// KVData (CODE_NOT_SUPPORTED) or the values are large.

import (
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
	// this process, reads them: a batch of views to release once sent.
	// Otherwise the batch is nil.
	GetKeys(ctx context.Context, partition string, keys, fields []string, maxBytes int) (*engine.BatchMeta, *engine.Batch, error)
}

// ServeKV makes the server answer KV_PUT and KV_GET through kv: call it
// once storage units of this process have registered. Until then (and in
// a controller without units) both are answered CODE_NOT_SUPPORTED.
func (s *Server) ServeKV(kv KVData) { s.kv.Store(&kv) }

func (s *Server) kvData() KVData {
	if p := s.kv.Load(); p != nil {
		return *p
	}
	return nil
}

// kvPut serves KV_PUT.
func (s *Server) kvPut(ctx context.Context, req *wire.Request, rw *wire.ReplyWriter) {
	reply, err := s.kvPutReply(ctx, req)
	if derr := s.durable(ctx, nil); derr != nil && err == nil {
		reply, err = nil, derr
	}
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
	b, err := kvBatch(put.GetFields(), p.RowLens, n, data)
	if err != nil {
		return nil, opErr("kv put", put.GetPartition(), err)
	}
	var tags []engine.Tags
	if put.GetHasTags() {
		if len(put.Tags) != n {
			return nil, opErr("kv put", put.Partition, fmt.Errorf("%d tag maps for %d keys: %w", len(put.Tags), n, engine.ErrInvalid))
		}
		if tags, err = wire.TagsFromPB(put.Tags); err != nil {
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

// kvBatch rebuilds a put's columns over data: each field's schema from
// fs, its rows in order, field after field.
func kvBatch(fs []*wirepb.CommitField, lens []*wirepb.RowLens, n int, data []byte) (*engine.Batch, error) {
	if len(fs) == 0 {
		if len(data) > 0 {
			return nil, fmt.Errorf("%d payload bytes and no fields: %w", len(data), engine.ErrInvalid)
		}
		return nil, nil
	}
	if len(lens) != len(fs) {
		return nil, fmt.Errorf("%d row length lists for %d fields: %w", len(lens), len(fs), engine.ErrInvalid)
	}
	cfs, err := wire.CommitFieldsFromPB(fs, n)
	if err != nil {
		return nil, err
	}
	fields := make([]engine.Field, len(cfs))
	at := 0
	for i, cf := range cfs {
		var size int
		left := len(data) - at
		switch cf.Kind {
		case engine.Dense:
			row, ok := shapeBytes(cf.Shape, cf.DType.Size(), left)
			if !ok || (row > 0 && n > left/row) {
				return nil, fmt.Errorf("field %q: %d rows of shape %v exceed the %d payload bytes left: %w", cf.Name, n, cf.Shape, left, engine.ErrInvalid)
			}
			size = n * row
		case engine.Ragged:
			for r, sh := range cf.Shapes {
				row, ok := shapeBytes(sh, cf.DType.Size(), left-size)
				if !ok {
					return nil, fmt.Errorf("field %q: row %d of shape %v exceeds the %d payload bytes left: %w", cf.Name, r, sh, left-size, engine.ErrInvalid)
				}
				size += row
			}
		case engine.Opaque:
			if len(lens[i].Lens) != n {
				return nil, fmt.Errorf("field %q: %d row lengths for %d keys: %w", cf.Name, len(lens[i].Lens), n, engine.ErrInvalid)
			}
			for _, l := range lens[i].Lens {
				if l > uint64(len(data)) {
					return nil, fmt.Errorf("field %q: a row of %d bytes in a payload of %d: %w", cf.Name, l, len(data), engine.ErrInvalid)
				}
				size += int(l)
			}
		default:
			return nil, fmt.Errorf("field %q of kind %v: %w", cf.Name, cf.Kind, engine.ErrInvalid)
		}
		if size < 0 || size > len(data)-at {
			return nil, fmt.Errorf("field %q needs %d bytes, %d left in the payload: %w", cf.Name, size, len(data)-at, engine.ErrInvalid)
		}
		part := data[at : at+size : at+size]
		at += size
		var col *engine.Column
		switch cf.Kind {
		case engine.Dense:
			col, err = engine.NewDense(cf.DType, n, cf.Shape, part)
		case engine.Ragged:
			col, err = engine.NewRagged(cf.DType, cf.Shapes, part)
		default:
			offs := make([]int, n+1)
			for r, l := range lens[i].Lens {
				offs[r+1] = offs[r] + int(l)
			}
			col, err = engine.NewOpaque(offs, part)
		}
		if err != nil {
			return nil, fmt.Errorf("field %q: %w", cf.Name, err)
		}
		fields[i] = engine.Field{Name: cf.Name, Col: col}
	}
	if at != len(data) {
		return nil, fmt.Errorf("the fields take %d of %d payload bytes: %w", at, len(data), engine.ErrInvalid)
	}
	return engine.NewBatch(fields...)
}

// shapeBytes returns the bytes of one row of shape, false when they would
// exceed limit (counted without overflow).
func shapeBytes(shape engine.Shape, elem, limit int) (int, bool) {
	n := elem
	for _, d := range shape {
		if d < 0 || (d > 0 && n > limit/d) {
			return 0, false
		}
		n *= d
	}
	return n, n <= limit
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
	payload := make(net.Buffers, 0, len(reply.Fields))
	for _, f := range reply.Fields {
		if d := b.Col(f).Data(); len(d) > 0 {
			payload = append(payload, d)
		}
	}
	rw.Reply(reply, payload, b.Release)
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
	pm, err := wire.MetaToPB(meta)
	if err != nil {
		if b != nil {
			b.Release()
		}
		return nil, nil, err
	}
	reply := &wirepb.KVGetReply{Meta: pm}
	if b != nil {
		reply.HasData, reply.Fields = true, b.Names()
	}
	return reply, b, nil
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
