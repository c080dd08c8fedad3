package controller

import (
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// fetchReply is the server's FETCH's meta, encoded while the partition is
// locked, so that a meta too large to answer gives back the rows the fetch
// took before anyone can see them consumed. The rows' keys (up to 64 KiB
// each) and tags are known only once the sampler chose them: the bound
// the server puts on a batch's size (checkMetaReply) does not count them.
type fetchReply struct {
	max  int               // bytes of the MetaReply, at most
	meta *wirepb.BatchMeta // the encoded meta, once a fetch answers
}

// replyFetch encodes m, the meta of a fetch that took back (the rows
// giving the fetch back would give back) into out (nil: the Go API's
// Fetch, which has no frame). A meta that cannot be encoded, or whose
// reply is over out.max bytes, gives the fetch back as UNCONSUME of its
// key does (the key spent; a batch kept for a DP group stays the
// group's), logged as one, and is an error: asked again, the fetch would
// answer the same too-large meta, and the rows would be lost to its task.
// p is locked.
func (c *Controller) replyFetch(p *partition, req *engine.FetchRequest, m *engine.BatchMeta, back []uint64, out *fetchReply, now time.Time) (*engine.BatchMeta, error) {
	if out == nil {
		return m, nil
	}
	pb, err := wire.MetaToPB(m)
	if err == nil {
		var gen uint64 // as fetch gives it
		if !p.pending.Load() {
			gen = p.gen
		}
		if n := proto.Size(&wirepb.MetaReply{Meta: pb, PartitionGen: gen}); n > out.max {
			err = fmt.Errorf("%d rows for task %q: a meta of %d bytes (the rows' keys and tags), beyond the %d of a reply; the rows were given back (as by UNCONSUME of the fetch's key): fetch a smaller batch: %w",
				m.Len(), req.Task, n, out.max, engine.ErrInvalid)
		}
	}
	if err != nil {
		p.unconsume(req.Task, req.Key, back, now)
		if c.logging() && (req.Key != "" || len(back) > 0) {
			c.log(&wirepb.LogOp{Op: &wirepb.LogOp_Unconsume{Unconsume: &wirepb.UnconsumeOp{
				Partition: p.id, Gen: p.gen, Task: req.Task, Key: []byte(req.Key), Indexes: back, AtUnixMs: now.UnixMilli(),
			}}})
		}
		return nil, err
	}
	out.meta = pb
	return m, nil
}
