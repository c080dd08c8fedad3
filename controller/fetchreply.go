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
// key does (the key spent), logged as one, and is an error: asked again,
// the fetch would answer the same too-large meta, and the rows would be
// lost to its task.
//
// kept is the batch the fetch took that its sampler keeps for the fetch's
// DP group (nil: none). Giving the fetch back would leave it kept, and
// every fetch of the group's batch index, by the rank or its peers and
// whatever the batch size, would answer the same meta: instead the batch
// is given back as one its group left behind (keptbatches.go): the sampler
// drops it, its rows are fetchable again for the task, the group no longer
// follows it and the keyed fetches that took it are spent (this one too),
// in one record. The group's next ask of the batch index makes a batch
// afresh from the rows ready then (a smaller one, asked for so), and its
// peers get that one. A peer that took the dropped batch before (asking
// for fewer fields, or through the Go API) keeps what it got, and its rows
// may go to another group. p is locked.
func (c *Controller) replyFetch(p *partition, req *engine.FetchRequest, m *engine.BatchMeta, back []uint64, kept *keptRef, out *fetchReply, now time.Time) (*engine.BatchMeta, error) {
	if out == nil {
		return m, nil
	}
	drop := kept != nil && p.follows(*kept)
	pb, err := wire.MetaToPB(m)
	if err == nil {
		var gen uint64 // as fetch gives it
		if !p.pending.Load() {
			gen = p.gen
		}
		if n := proto.Size(&wirepb.MetaReply{Meta: pb, PartitionGen: gen}); n > out.max {
			how := "the rows were given back (as by UNCONSUME of the fetch's key)"
			if drop {
				how = fmt.Sprintf("batch %d kept for DP rank %d was dropped and its rows given back", kept.batch, kept.group.rank)
			}
			err = fmt.Errorf("%d rows for task %q: a meta of %d bytes (the rows' keys and tags), beyond the %d of a reply; %s: fetch a smaller batch: %w",
				m.Len(), req.Task, n, out.max, how, engine.ErrInvalid)
		}
	}
	if err != nil {
		var ops []*wirepb.LogOp
		given := false // the fetch given back already
		if drop {
			p.forget(*kept)
			if c.logging() {
				ops = append(ops, &wirepb.LogOp{Op: &wirepb.LogOp_Consume{Consume: &wirepb.ConsumeOp{
					Partition: p.id, Gen: p.gen, Task: req.Task, SamplerSpec: kept.group.spec, AtUnixMs: now.UnixMilli(),
					Forgot: kept.pb(),
				}}})
			}
			// Spends the fetch's key too (its entry took the batch),
			// unless the sampler had nothing left to drop.
			ops, _ = c.giveBackKept(p, kept.group, kept.batch, now, ops)
			if req.Key == "" {
				given = true
			} else if e := p.fetches.get(req.Key, now); e != nil && e.spent {
				given = true
			}
		}
		if !given {
			p.unconsume(req.Task, req.Key, back, now)
			if c.logging() && (req.Key != "" || len(back) > 0) {
				ops = append(ops, &wirepb.LogOp{Op: &wirepb.LogOp_Unconsume{Unconsume: &wirepb.UnconsumeOp{
					Partition: p.id, Gen: p.gen, Task: req.Task, Key: []byte(req.Key), Indexes: back, AtUnixMs: now.UnixMilli(),
				}}})
			}
		}
		if len(ops) > 0 {
			c.log(ops...)
		}
		return nil, err
	}
	out.meta = pb
	return m, nil
}
