package controller

// Handlers of the control ops (wire/ops.go, wire/proto/control.proto and
// cluster.proto) and the conversions between wire messages and the
// controller's types. Every handler decodes its body, checks each count
// against wire.MaxSegments before it allocates by it, and fails with an
// error wrapping an engine sentinel, which the wire layer turns into a
// typed error reply.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

func (s *Server) handlerTable() map[wire.Op]handler {
	return map[wire.Op]handler{
		wire.OpInsert:            s.insert,
		wire.OpFetch:             s.fetch,
		wire.OpForceFetch:        s.forceFetch,
		wire.OpRowsMeta:          s.rowsMeta,
		wire.OpCommit:            s.commit,
		wire.OpResolveKeys:       s.resolveKeys,
		wire.OpKeysOf:            s.keysOf,
		wire.OpSetTags:           s.setTags,
		wire.OpListKeys:          s.listKeys,
		wire.OpProductionStatus:  s.productionStatus,
		wire.OpConsumptionStatus: s.consumptionStatus,
		wire.OpResetConsumption:  s.resetConsumption,
		wire.OpClearRows:         s.clearRows,
		wire.OpClearKeys:         s.clearKeys,
		wire.OpClearPartition:    s.clearPartition,
		wire.OpPartitions:        s.partitions,
		wire.OpStats:             s.stats,
		wire.OpStatsPage:         s.statsPage,
		wire.OpFields:            s.fields,
		wire.OpUnits:             s.listUnits,
		wire.OpSaveCheckpoint:    s.saveCheckpoint,
		wire.OpLoadCheckpoint:    s.loadCheckpoint,
		wire.OpCommitKeys:        s.commitKeys,
		wire.OpUnconsume:         s.unconsume,
		wire.OpAcknowledge:       s.acknowledge,
		wire.OpMarkDone:          s.markDone,
		wire.OpClusterInfo:       s.clusterInfo,
		wire.OpCheckpoints:       s.listCheckpoints,
		wire.OpDeleteTags:        s.deleteTags,
		wire.OpCompareAndSetTag:  s.compareAndSetTag,
		wire.OpKeyChanges:        s.keyChanges,
		wire.OpRegister:          s.register,
		wire.OpHeartbeat:         s.heartbeat,
		wire.OpUnitSync:          s.unitSync,
		wire.OpReconcile:         s.reconcile,
		wire.OpDrainUnit:         s.drainUnit,
		wire.OpUnitCells:         s.unitCells,
		wire.OpMoveCells:         s.moveCells,
		wire.OpMoved:             s.moved,
	}
}

// decode unmarshals a request body into a fresh *M.
func decode[M any, P interface {
	*M
	proto.Message
}](op wire.Op, body []byte) (P, error) {
	m := P(new(M))
	if err := proto.Unmarshal(body, m); err != nil {
		return nil, fmt.Errorf("decode %v request: %v: %w", op, err.Error(), engine.ErrInvalid)
	}
	return m, nil
}

// count converts a count from the wire, rejecting one above
// wire.MaxSegments. Non-positive counts pass through for the controller to
// reject with its own message.
func count(what string, n int64) (int, error) {
	if n > wire.MaxSegments {
		return 0, fmt.Errorf("%d %s exceed the limit of %d: %w", n, what, wire.MaxSegments, engine.ErrInvalid)
	}
	return int(n), nil
}

// selection decodes a field selection: all (or an absent selection) is the
// Go API's nil, every produced field; otherwise the names, possibly none.
func selection(fs *wirepb.FieldSelection) ([]string, error) {
	if fs == nil {
		return nil, nil
	}
	if fs.All {
		if len(fs.Names) > 0 {
			return nil, fmt.Errorf("field selection names %d fields and asks for all: %w", len(fs.Names), engine.ErrInvalid)
		}
		return nil, nil
	}
	if err := wire.CheckCount("fields", len(fs.Names)); err != nil {
		return nil, err
	}
	if fs.Names == nil {
		return []string{}, nil
	}
	return fs.Names, nil
}

func metaReply(m *engine.BatchMeta) (proto.Message, error) {
	p, err := wire.MetaToPB(m)
	if err != nil {
		return nil, err
	}
	return &wirepb.MetaReply{Meta: p}, nil
}

// cells leaves the cells a change dropped to be freed once it is durable,
// and answers with an empty CellsReply.
func (fx *effects) cells(locs []engine.CellLoc, err error) (proto.Message, error) {
	if err != nil {
		return nil, err
	}
	fx.freed = locs
	return &wirepb.CellsReply{}, nil
}

func (s *Server) insert(_ context.Context, body []byte, _ *effects) (proto.Message, error) {
	req, err := decode[wirepb.InsertRequest](wire.OpInsert, body)
	if err != nil {
		return nil, err
	}
	if err := wire.CheckCount("fields", len(req.Fields)); err != nil {
		return nil, err
	}
	n, err := count("rows", req.N)
	if err != nil {
		return nil, err
	}
	// An insert whose answer could not be sent is refused before its
	// rows are made, not after.
	m, err := s.c.insert(req.Partition, n, req.Fields, wire.MaxBodyLen)
	if err != nil {
		return nil, err
	}
	return metaReply(m)
}

// distinct is how many different names names holds.
func distinct(names []string) int {
	if len(names) < 2 {
		return len(names)
	}
	seen := make(map[string]struct{}, len(names))
	for _, n := range names {
		seen[n] = struct{}{}
	}
	return len(seen)
}

func optionsFromPB(p *wirepb.SamplingOptions) (engine.SamplingOptions, error) {
	if p == nil {
		return engine.SamplingOptions{}, nil
	}
	params, err := wire.JSONFromPB(p.Params)
	if err != nil {
		return engine.SamplingOptions{}, fmt.Errorf("sampling params: %w", err)
	}
	return engine.SamplingOptions{HasRank: p.HasRank, DPRank: int(p.DpRank), BatchIndex: int(p.BatchIndex), Params: params}, nil
}

func (s *Server) fetch(ctx context.Context, body []byte, fx *effects) (proto.Message, error) {
	req, err := decode[wirepb.FetchRequest](wire.OpFetch, body)
	if err != nil {
		return nil, err
	}
	if err := wire.CheckCount("fields", len(req.Fields)); err != nil {
		return nil, err
	}
	n, err := count("rows", req.BatchSize)
	if err != nil {
		return nil, err
	}
	opts, err := optionsFromPB(req.Options)
	if err != nil {
		return nil, err
	}
	// A batch whose answer could not be sent is refused before its rows
	// are consumed, not after. Every row fetched has every named field.
	if err := checkMetaFields(n, req.Partition, req.Fields, distinct, wire.MaxBodyLen); err != nil {
		return nil, opErr("fetch", req.Partition, err)
	}
	fr := engine.FetchRequest{Partition: req.Partition, Task: req.Task, Fields: req.Fields, BatchSize: n, Options: opts, Wait: req.Wait, Key: string(req.Key),
		TokenBudget: req.TokenBudget, Sampler: wire.SamplerSpecFromPB(req.Sampler), EndWhenConsumed: req.EndWhenConsumed, Hold: req.Hold,
		PartitionMustExist: req.PartitionMustExist, PartitionGen: req.PartitionGen, Cluster: req.ClusterId, HolderPID: fx.peerPID}
	if req.Hold {
		fr.HolderClient, fr.HoldGroup = clientID(fx.peer), string(req.HoldGroup)
	}
	if req.Wait {
		var cancel context.CancelFunc
		ctx, cancel = s.waitCtx(ctx, req.TimeoutMs)
		defer cancel()
	}
	// The rows' keys and tags may still make a meta too large: the
	// controller encodes it, and gives back rows it could not answer.
	out := fetchReply{max: wire.MaxBodyLen}
	m, err := s.c.fetch(ctx, fr, &out)
	if err != nil {
		if cause := context.Cause(ctx); cause == errShuttingDown {
			return nil, opErr("fetch", req.Partition, cause)
		}
		return nil, err
	}
	p := out.meta
	if p == nil { // no rows taken (an empty meta)
		if p, err = wire.MetaToPB(m); err != nil {
			return nil, err
		}
	}
	return &wirepb.MetaReply{Meta: p, PartitionGen: m.PartitionGen}, nil
}

func (s *Server) forceFetch(_ context.Context, body []byte, _ *effects) (proto.Message, error) {
	req, err := decode[wirepb.ForceFetchRequest](wire.OpForceFetch, body)
	if err != nil {
		return nil, err
	}
	fields, err := selection(req.Fields)
	if err != nil {
		return nil, err
	}
	m, err := s.c.ForceFetch(req.Partition, fields)
	if err != nil {
		return nil, err
	}
	return metaReply(m)
}

func (s *Server) rowsMeta(_ context.Context, body []byte, _ *effects) (proto.Message, error) {
	req, err := decode[wirepb.RowsMetaRequest](wire.OpRowsMeta, body)
	if err != nil {
		return nil, err
	}
	if err := wire.CheckCount("rows", len(req.Indexes)); err != nil {
		return nil, err
	}
	fields, err := selection(req.Fields)
	if err != nil {
		return nil, err
	}
	m, err := s.c.RowsMeta(req.Partition, req.Indexes, fields)
	if err != nil {
		return nil, err
	}
	return metaReply(m)
}

// commitFromPB decodes a commit, checking that every per-row array (ragged
// shapes, locations) has one entry per index.
func commitFromPB(p *wirepb.CommitRequest) (engine.CommitRequest, error) {
	n := len(p.Indexes)
	if err := errors.Join(wire.CheckCount("rows", n), wire.CheckCount("fields", len(p.Fields))); err != nil {
		return engine.CommitRequest{}, err
	}
	fields, err := wire.CommitFieldsFromPB(p.Fields, n)
	if err != nil {
		return engine.CommitRequest{}, err
	}
	return engine.CommitRequest{Partition: p.Partition, Indexes: p.Indexes, Fields: fields, Cluster: p.ClusterId}, nil
}

func (s *Server) commit(_ context.Context, body []byte, fx *effects) (proto.Message, error) {
	p, err := decode[wirepb.CommitRequest](wire.OpCommit, body)
	if err != nil {
		return nil, err
	}
	req, err := commitFromPB(p)
	if err != nil {
		return nil, opErr("commit", p.Partition, err)
	}
	return fx.cells(s.c.Commit(req))
}

func (s *Server) commitKeys(_ context.Context, body []byte, fx *effects) (proto.Message, error) {
	p, err := decode[wirepb.CommitKeysRequest](wire.OpCommitKeys, body)
	if err != nil {
		return nil, err
	}
	n := len(p.Keys)
	if err := errors.Join(wire.CheckCount("keys", n), wire.CheckCount("fields", len(p.Fields))); err != nil {
		return nil, err
	}
	req := engine.KeysCommit{Partition: p.Partition, Keys: p.Keys, Cluster: p.ClusterId}
	if req.Fields, err = wire.CommitFieldsFromPB(p.Fields, n); err != nil {
		return nil, opErr("commit keys", p.Partition, err)
	}
	if p.HasTags {
		if len(p.Tags) != n {
			return nil, opErr("commit keys", p.Partition, fmt.Errorf("%d tag maps for %d keys: %w", len(p.Tags), n, engine.ErrInvalid))
		}
		if req.Tags, err = wire.TagsFromPBShared(p.Tags); err != nil {
			return nil, opErr("commit keys", p.Partition, err)
		}
	}
	done, err := s.c.commitKeys(req, true)
	if err != nil {
		return nil, err
	}
	fx.freed = done.Replaced
	fx.read = &keysRead{req.Partition, req.Keys}
	tags, err := wire.TagsToPB(done.Tags)
	if err != nil {
		return nil, err
	}
	return &wirepb.CommitKeysReply{Tags: tags, Fields: done.Fields}, nil
}

func (s *Server) resolveKeys(_ context.Context, body []byte, fx *effects) (proto.Message, error) {
	req, err := decode[wirepb.ResolveKeysRequest](wire.OpResolveKeys, body)
	if err != nil {
		return nil, err
	}
	if err := wire.CheckCount("keys", len(req.Keys)); err != nil {
		return nil, err
	}
	fields, err := selection(req.Fields)
	if err != nil {
		return nil, err
	}
	if !req.Create {
		fx.read = &keysRead{req.Partition, req.Keys}
	} else {
		// Keys whose answer could not be sent are refused before they
		// get rows, not after. The meta holds each row's key, and each
		// named field (every one produced, or the call fails); with all
		// fields, the fields every row has: none, once one is new.
		keyBytes := 0
		for _, k := range req.Keys {
			keyBytes += len(k)
		}
		if err := checkMetaReply(len(req.Keys), req.Partition, distinct(fields), keyBytes, wire.MaxBodyLen); err != nil {
			return nil, opErr("resolve keys", req.Partition, err)
		}
	}
	m, created, err := s.c.resolveKeys(req.Partition, req.Keys, fields, req.Create, true)
	if err != nil {
		return nil, err
	}
	pm, err := wire.MetaToPB(m)
	if err != nil {
		return nil, err
	}
	r := &wirepb.ResolveKeysReply{Meta: pm, Created: make([]int64, len(created))}
	for i, c := range created {
		r.Created[i] = int64(c)
	}
	return r, nil
}

func (s *Server) keysOf(_ context.Context, body []byte, _ *effects) (proto.Message, error) {
	req, err := decode[wirepb.KeysOfRequest](wire.OpKeysOf, body)
	if err != nil {
		return nil, err
	}
	if err := wire.CheckCount("rows", len(req.Indexes)); err != nil {
		return nil, err
	}
	keys, err := s.c.KeysOf(req.Partition, req.Indexes)
	if err != nil {
		return nil, err
	}
	return &wirepb.KeysReply{Keys: keys}, nil
}

func (s *Server) setTags(_ context.Context, body []byte, _ *effects) (proto.Message, error) {
	req, err := decode[wirepb.SetTagsRequest](wire.OpSetTags, body)
	if err != nil {
		return nil, err
	}
	if err := errors.Join(wire.CheckCount("rows", len(req.Indexes)), wire.CheckCount("tag maps", len(req.Tags))); err != nil {
		return nil, err
	}
	if len(req.Tags) != len(req.Indexes) {
		return nil, opErr("set tags", req.Partition, fmt.Errorf("%d tag maps for %d rows: %w", len(req.Tags), len(req.Indexes), engine.ErrInvalid))
	}
	tags, err := wire.TagsFromPBShared(req.Tags) // SetTags copies what it keeps
	if err != nil {
		return nil, opErr("set tags", req.Partition, err)
	}
	return nil, s.c.SetTags(req.Partition, req.Indexes, tags)
}

func (s *Server) listKeys(_ context.Context, body []byte, _ *effects) (proto.Message, error) {
	req, err := decode[wirepb.ListKeysRequest](wire.OpListKeys, body)
	if err != nil {
		return nil, err
	}
	limit, err := count("keys", req.Limit)
	if err != nil {
		return nil, err
	}
	where, err := wire.TagFilterFromPB(req.Where)
	if err != nil {
		return nil, opErr("list keys", req.Partition, err)
	}
	page, next, err := s.c.listKeysPage(req.Partition, where, req.Cursor, limit, true)
	if err != nil {
		return nil, err
	}
	r := &wirepb.ListKeysReply{Partitions: make([]*wirepb.PartitionKeys, len(page)), Next: next}
	var run runTags // keys put in one batch share their tags' map
	for i, pk := range page {
		out := &wirepb.PartitionKeys{Partition: pk.Partition, Keys: make([]*wirepb.KeyInfo, len(pk.Keys))}
		for j, k := range pk.Keys {
			tags, err := run.encode(k.Tags)
			if err != nil {
				return nil, fmt.Errorf("tags of key %q: %w", k.Key, err)
			}
			out.Keys[j] = &wirepb.KeyInfo{Key: k.Key, Index: k.Index, Tags: tags}
		}
		r.Partitions[i] = out
	}
	return r, nil
}

func (s *Server) deleteTags(_ context.Context, body []byte, _ *effects) (proto.Message, error) {
	req, err := decode[wirepb.DeleteTagsRequest](wire.OpDeleteTags, body)
	if err != nil {
		return nil, err
	}
	if err := errors.Join(wire.CheckCount("keys", len(req.Keys)), wire.CheckCount("tag names", len(req.Names))); err != nil {
		return nil, err
	}
	tags, err := s.c.DeleteTags(req.Partition, req.Keys, req.Names)
	if err != nil {
		return nil, err
	}
	b, err := wire.TagsToPB(tags)
	if err != nil {
		return nil, err
	}
	return &wirepb.DeleteTagsReply{Tags: b}, nil
}

func (s *Server) compareAndSetTag(_ context.Context, body []byte, _ *effects) (proto.Message, error) {
	req, err := decode[wirepb.CompareAndSetTagRequest](wire.OpCompareAndSetTag, body)
	if err != nil {
		return nil, err
	}
	swap := engine.TagSwap{Partition: req.Partition, Key: req.Key, Name: req.Name}
	if swap.Old, err = wire.TagValueFromPB(req.OldValue); err != nil {
		return nil, opErr("compare and set tag", req.Partition, fmt.Errorf("old value: %w", err))
	}
	if swap.New, err = wire.TagValueFromPB(req.NewValue); err != nil {
		return nil, opErr("compare and set tag", req.Partition, fmt.Errorf("new value: %w", err))
	}
	done, err := s.c.CompareAndSetTag(swap)
	if err != nil {
		return nil, err
	}
	cur, err := wire.TagValueToPB(done.Current)
	if err != nil {
		return nil, err
	}
	return &wirepb.CompareAndSetTagReply{Swapped: done.Swapped, Current: cur}, nil
}

func (s *Server) keyChanges(ctx context.Context, body []byte, _ *effects) (proto.Message, error) {
	req, err := decode[wirepb.KeyChangesRequest](wire.OpKeyChanges, body)
	if err != nil {
		return nil, err
	}
	limit, err := count("changes", req.Limit)
	if err != nil {
		return nil, err
	}
	if req.Wait {
		var cancel context.CancelFunc
		ctx, cancel = s.waitCtx(ctx, req.TimeoutMs)
		defer cancel()
	}
	ch, err := s.c.keyChanges(ctx, engine.ChangesRequest{Partition: req.Partition, Cursor: req.Cursor, Limit: limit, Wait: req.Wait}, true)
	if err != nil {
		if cause := context.Cause(ctx); cause == errShuttingDown {
			return nil, opErr("key changes", req.Partition, cause)
		}
		return nil, err
	}
	r := &wirepb.KeyChangesReply{Changes: make([]*wirepb.KeyChange, len(ch.Changes)), Cursor: ch.Cursor, Reset_: ch.Reset, More: ch.More}
	var run runTags // keys put in one batch share their tags' map
	for i, kc := range ch.Changes {
		tags, err := run.encode(kc.Tags)
		if err != nil {
			return nil, fmt.Errorf("tags of key %q: %w", kc.Key, err)
		}
		r.Changes[i] = &wirepb.KeyChange{Key: kc.Key, Index: kc.Index, Tags: tags, Cleared: kc.Cleared}
	}
	return r, nil
}

func (s *Server) productionStatus(_ context.Context, body []byte, _ *effects) (proto.Message, error) {
	req, err := decode[wirepb.ProductionStatusRequest](wire.OpProductionStatus, body)
	if err != nil {
		return nil, err
	}
	if err := wire.CheckCount("fields", len(req.Fields)); err != nil {
		return nil, err
	}
	// A packed bool a cell: a status of more cells than a frame's bytes
	// could not be answered.
	st, err := s.c.productionStatus(req.Partition, req.Fields, wire.MaxBodyLen)
	if err != nil {
		return nil, err
	}
	r := &wirepb.ProductionStatusReply{Indexes: st.Indexes, Fields: st.Fields, Produced: make([]bool, 0, len(st.Indexes)*len(st.Fields))}
	for _, row := range st.Produced {
		r.Produced = append(r.Produced, row...)
	}
	return r, nil
}

func (s *Server) consumptionStatus(_ context.Context, body []byte, _ *effects) (proto.Message, error) {
	req, err := decode[wirepb.ConsumptionStatusRequest](wire.OpConsumptionStatus, body)
	if err != nil {
		return nil, err
	}
	st, err := s.c.ConsumptionStatus(req.Partition, req.Task)
	if err != nil {
		return nil, err
	}
	return &wirepb.ConsumptionStatusReply{Indexes: st.Indexes, Consumed: st.Consumed, Held: st.Held}, nil
}

func (s *Server) resetConsumption(_ context.Context, body []byte, _ *effects) (proto.Message, error) {
	req, err := decode[wirepb.ResetConsumptionRequest](wire.OpResetConsumption, body)
	if err != nil {
		return nil, err
	}
	return nil, s.c.ResetConsumption(req.Partition, req.Task)
}

func (s *Server) clearRows(_ context.Context, body []byte, fx *effects) (proto.Message, error) {
	req, err := decode[wirepb.ClearRowsRequest](wire.OpClearRows, body)
	if err != nil {
		return nil, err
	}
	if err := wire.CheckCount("rows", len(req.Indexes)); err != nil {
		return nil, err
	}
	return fx.cells(s.c.ClearRows(req.Partition, req.Indexes))
}

func (s *Server) clearKeys(_ context.Context, body []byte, fx *effects) (proto.Message, error) {
	req, err := decode[wirepb.ClearKeysRequest](wire.OpClearKeys, body)
	if err != nil {
		return nil, err
	}
	if err := wire.CheckCount("keys", len(req.Keys)); err != nil {
		return nil, err
	}
	return fx.cells(s.c.ClearKeys(req.Partition, req.Keys))
}

func (s *Server) clearPartition(_ context.Context, body []byte, fx *effects) (proto.Message, error) {
	req, err := decode[wirepb.ClearPartitionRequest](wire.OpClearPartition, body)
	if err != nil {
		return nil, err
	}
	return fx.cells(s.c.ClearPartition(req.Partition))
}

func (s *Server) partitions(_ context.Context, body []byte, _ *effects) (proto.Message, error) {
	if _, err := decode[wirepb.Empty](wire.OpPartitions, body); err != nil {
		return nil, err
	}
	return &wirepb.PartitionsReply{Partitions: s.c.Partitions()}, nil
}

func fieldStatsToPB(f engine.FieldStats) *wirepb.FieldStats {
	return &wirepb.FieldStats{Name: f.Name, Dtype: wire.DTypeToPB(f.DType), Kind: wire.KindToPB(f.Kind), Shape: wire.ShapeToPB(f.Shape), Produced: int64(f.Produced)}
}

func (s *Server) stats(_ context.Context, body []byte, _ *effects) (proto.Message, error) {
	req, err := decode[wirepb.PartitionRequest](wire.OpStats, body)
	if err != nil {
		return nil, err
	}
	st, err := s.c.Stats(req.Partition)
	if err != nil {
		return nil, err
	}
	return partitionStatsToPB(st), nil
}

// maxStatsPage bounds the partitions of one STATS_PAGE reply.
const maxStatsPage = 4096

// statsPageBytes bounds the encoded entries of one STATS_PAGE reply, far
// below wire.MaxBodyLen (a partition with many fields or tasks takes
// kilobytes).
const statsPageBytes = 8 << 20

// testStatsPageBytes, when not 0 (tests only, while a server runs),
// replaces statsPageBytes.
var testStatsPageBytes atomic.Int64

// statsPage answers STATS_PAGE: the stats of the partitions named after
// req.after, by name, as many as fit the page. It looks the names up a
// few at a time from req.after on (the controller's lock, briefly: a
// search of the sorted ids, so a page costs its entries, not the count of
// partitions), then takes each partition's stats under that partition's
// lock alone, as STATS does: no lock is held across the page, so the page
// is no snapshot of one instant — each entry is of its own. A partition
// cleared between the listing and its stats is left out. A goroutine of
// its own: it takes the stats of up to 4096 partitions.
func (s *Server) statsPage(_ context.Context, body []byte, _ *effects) (proto.Message, error) {
	req, err := decode[wirepb.StatsPageRequest](wire.OpStatsPage, body)
	if err != nil {
		return nil, err
	}
	limit := int(req.Limit)
	if limit == 0 || limit > maxStatsPage {
		limit = maxStatsPage
	}
	r := &wirepb.StatsPageReply{}
	size, maxBytes := 0, int64(statsPageBytes)
	if n := testStatsPageBytes.Load(); n != 0 {
		maxBytes = n
	}
	full := func() (proto.Message, error) {
		r.NextAfter = r.Partitions[len(r.Partitions)-1].Partition
		return r, nil
	}
	for name := range s.c.partitionsFrom(req.After, true) {
		if len(r.Partitions) >= limit {
			return full()
		}
		st, err := s.c.Stats(name)
		if errors.Is(err, engine.ErrNotFound) {
			continue // cleared since the listing
		}
		if err != nil {
			return nil, err
		}
		pb := partitionStatsToPB(st)
		n := proto.Size(pb) + 8 // with its tag and length
		if len(r.Partitions) > 0 && int64(size+n) > maxBytes {
			return full()
		}
		r.Partitions = append(r.Partitions, pb)
		size += n
	}
	return r, nil
}

// partitionStatsToPB encodes a partition's stats for STATS and STATS_PAGE.
func partitionStatsToPB(st engine.PartitionStats) *wirepb.PartitionStats {
	r := &wirepb.PartitionStats{
		Partition: st.Partition, CreatedUnixMs: st.Created.UnixMilli(),
		Rows: int64(st.Rows), Reserved: int64(st.Reserved), Keys: int64(st.Keys), Produced: int64(st.Produced),
		Progress: st.Progress, IndexesInUse: int64(st.IndexesUse), IndexesFree: int64(st.IndexesFree), Done: st.Done,
	}
	for _, f := range st.Fields {
		r.Fields = append(r.Fields, fieldStatsToPB(f))
	}
	for _, t := range st.Tasks {
		r.Tasks = append(r.Tasks, &wirepb.TaskStats{Task: t.Task, Consumed: int64(t.Consumed), Progress: t.Progress, Held: int64(t.Held)})
	}
	return r
}

func (s *Server) fields(_ context.Context, body []byte, _ *effects) (proto.Message, error) {
	req, err := decode[wirepb.PartitionRequest](wire.OpFields, body)
	if err != nil {
		return nil, err
	}
	fs, err := s.c.Fields(req.Partition)
	if err != nil {
		return nil, err
	}
	r := &wirepb.FieldsReply{Fields: make([]*wirepb.FieldStats, len(fs))}
	for i, f := range fs {
		r.Fields[i] = fieldStatsToPB(f)
	}
	return r, nil
}

// unitInfoToPB encodes a unit's description for a UNITS reply.
func unitInfoToPB(u engine.UnitInfo) *wirepb.UnitInfo {
	p := &wirepb.UnitInfo{
		UnitId: uint32(u.ID), Incarnation: u.Incarnation, HostId: u.Host, Addrs: u.Addrs, Name: u.Name, Alive: u.Alive,
		Capacity: u.Capacity, Used: u.Used, Segments: u.Segments, HugePages: u.HugePages, PageSize: u.PageSize,
		Draining: u.Draining,
	}
	if !u.LastHeartbeat.IsZero() {
		p.LastHeartbeatUnixMs = u.LastHeartbeat.UnixMilli()
	}
	return p
}

func (s *Server) listUnits(_ context.Context, body []byte, _ *effects) (proto.Message, error) {
	if _, err := decode[wirepb.Empty](wire.OpUnits, body); err != nil {
		return nil, err
	}
	us := s.c.units.Units()
	r := &wirepb.UnitsReply{Units: make([]*wirepb.UnitInfo, 0, len(us))}
	for _, u := range us {
		// A unit that registered no address yet is asking for its id
		// (its sockets are named after it): nobody can reach it, and a
		// client that listed it would keep the address-less entry once
		// the unit registers its addresses (it knows the id).
		if len(u.Addrs) == 0 {
			continue
		}
		r.Units = append(r.Units, unitInfoToPB(u))
	}
	return r, nil
}

func (s *Server) saveCheckpoint(ctx context.Context, body []byte, _ *effects) (proto.Message, error) {
	req, err := decode[wirepb.CheckpointRequest](wire.OpSaveCheckpoint, body)
	if err != nil {
		return nil, err
	}
	if req.Dir != "" {
		return nil, opErr("save checkpoint", req.Dir, fmt.Errorf("checkpoints are named, not given a path (name %q, dir %q): %w", req.Name, req.Dir, engine.ErrInvalid))
	}
	info, err := s.SaveCheckpoint(ctx, req.Name, req.Metadata)
	if err != nil {
		return nil, err
	}
	return info.pb(), nil
}

func (s *Server) loadCheckpoint(ctx context.Context, body []byte, fx *effects) (proto.Message, error) {
	req, err := decode[wirepb.CheckpointRequest](wire.OpLoadCheckpoint, body)
	if err != nil {
		return nil, err
	}
	if req.Dir != "" {
		return nil, opErr("load checkpoint", req.Dir, fmt.Errorf("checkpoints are named, not given a path (name %q, dir %q): %w", req.Name, req.Dir, engine.ErrInvalid))
	}
	if len(req.Metadata) > 0 {
		return nil, opErr("load checkpoint", req.Name, fmt.Errorf("metadata is saved with a checkpoint, not given to a load: %w", engine.ErrInvalid))
	}
	var info CheckpointInfo
	info, fx.freed, err = s.loadCheckpointFreed(ctx, req.Name)
	if err != nil {
		return nil, err
	}
	return info.pb(), nil
}

func (s *Server) listCheckpoints(_ context.Context, body []byte, _ *effects) (proto.Message, error) {
	req, err := decode[wirepb.CheckpointsRequest](wire.OpCheckpoints, body)
	if err != nil {
		return nil, err
	}
	limit := int(req.Limit)
	if limit == 0 || limit > maxCheckpointsPage {
		limit = maxCheckpointsPage
	}
	infos, next, err := s.checkpointsPage(req.After, limit, checkpointsPageBytes)
	if err != nil {
		return nil, err
	}
	r := &wirepb.CheckpointsReply{NextAfter: next}
	for _, ci := range infos {
		r.Checkpoints = append(r.Checkpoints, ci.pb())
	}
	return r, nil
}

func (ci CheckpointInfo) pb() *wirepb.CheckpointInfo {
	return &wirepb.CheckpointInfo{
		Name: ci.Name, SavedUnixMs: ci.Saved.UnixMilli(), Bytes: ci.Bytes, Cells: ci.Cells, LostCells: ci.Lost, Metadata: ci.Metadata, Unusable: ci.Unusable,
	}
}

func (s *Server) register(_ context.Context, body []byte, _ *effects) (proto.Message, error) {
	req, err := decode[wirepb.RegisterRequest](wire.OpRegister, body)
	if err != nil {
		return nil, err
	}
	if err := wire.CheckCount("addresses", len(req.Addrs)); err != nil {
		return nil, err
	}
	u := engine.UnitInfo{ID: engine.UnitID(req.UnitId), Incarnation: req.Incarnation, Host: req.HostId, Addrs: req.Addrs, Name: req.Name, Capacity: req.Capacity}
	id, err := s.c.units.Register(u, req.ClusterId == s.c.cluster)
	if err != nil {
		return nil, opErr("register", req.Name, err)
	}
	if req.UnitId != 0 && engine.UnitID(req.UnitId) != id {
		// The unit is new here: what was queued for the id it had is for
		// a unit that is gone.
		if old, ok := s.c.units.Unit(engine.UnitID(req.UnitId)); ok && old.Incarnation != req.Incarnation {
			s.frees.drop(old.ID)
		}
	}
	return &wirepb.RegisterReply{
		UnitId: uint32(id), HeartbeatIntervalMs: uint64(s.cfg.HeartbeatInterval / time.Millisecond),
		ClusterId: s.c.cluster, Epoch: s.c.epoch,
	}, nil
}

func (s *Server) heartbeat(_ context.Context, body []byte, _ *effects) (proto.Message, error) {
	req, err := decode[wirepb.HeartbeatRequest](wire.OpHeartbeat, body)
	if err != nil {
		return nil, err
	}
	if req.UnitId == 0 {
		return nil, fmt.Errorf("heartbeat without a unit id: %w", engine.ErrInvalid)
	}
	err = s.c.units.Heartbeat(engine.UnitInfo{ID: engine.UnitID(req.UnitId), Incarnation: req.Incarnation, Capacity: req.Capacity, Used: req.Used, Segments: req.Segments, HugePages: req.HugePages, PageSize: req.PageSize})
	if err != nil {
		return nil, opErr("heartbeat", fmt.Sprint("unit ", req.UnitId), err)
	}
	return nil, nil
}

// checkUnitBound refuses a unit op from a unit not registered with that
// incarnation (it must register again).
func (s *Server) checkUnitBound(op string, id uint32, inc uint64) error {
	if id == 0 || !s.c.units.bound(engine.UnitID(id), inc) {
		return opErr(op, fmt.Sprint("unit ", id), fmt.Errorf("storage unit %d (incarnation %x) is not registered: %w", id, inc, engine.ErrNotFound))
	}
	return nil
}

func (s *Server) unitSync(ctx context.Context, body []byte, _ *effects) (proto.Message, error) {
	req, err := decode[wirepb.UnitSyncRequest](wire.OpUnitSync, body)
	if err != nil {
		return nil, err
	}
	if err := s.checkUnitBound("unit sync", req.UnitId, req.Incarnation); err != nil {
		return nil, err
	}
	wait := min(time.Duration(min(req.WaitMs, uint64(maxUnitSyncWait/time.Millisecond)))*time.Millisecond, maxUnitSyncWait)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(s.stop, cancel)
	defer stop()
	ranges, seq, reconcile := s.frees.take(ctx, engine.UnitID(req.UnitId), req.Ack, wait)
	return &wirepb.UnitSyncReply{Free: wire.RangesToPB(ranges), Reconcile: reconcile, Seq: seq}, nil
}

func (s *Server) reconcile(_ context.Context, body []byte, _ *effects) (proto.Message, error) {
	req, err := decode[wirepb.ReconcileRequest](wire.OpReconcile, body)
	if err != nil {
		return nil, err
	}
	if err := errors.Join(wire.CheckCount("segments", len(req.Segments)), wire.CheckCount("fences", len(req.Fences)),
		wire.CheckCount("live segments", len(req.LiveSegments))); err != nil {
		return nil, err
	}
	extents, err := wire.RangesFromPB(req.Extents)
	if err != nil {
		return nil, err
	}
	rr := ReconcileRequest{
		Unit: engine.UnitID(req.UnitId), Incarnation: req.Incarnation, Full: req.Full, Segments: req.Segments,
		Extents: extents, Last: req.Last, LiveSegments: req.LiveSegments, NextSegment: req.NextSegment,
	}
	for _, f := range req.Fences {
		rr.Fences = append(rr.Fences, SegmentFence{Segment: f.Segment, Gen: f.Gen})
	}
	res, err := s.c.Reconcile(rr)
	if err != nil {
		return nil, opErr("reconcile", fmt.Sprint("unit ", req.UnitId), err)
	}
	return &wirepb.ReconcileReply{Free: wire.RangesToPB(res.Free), Keep: wire.RangesToPB(res.Keep), LostCells: int64(res.Lost)}, nil
}

func (s *Server) unconsume(_ context.Context, body []byte, _ *effects) (proto.Message, error) {
	req, err := decode[wirepb.UnconsumeRequest](wire.OpUnconsume, body)
	if err != nil {
		return nil, err
	}
	if len(req.Indexes) > 0 {
		return nil, s.c.UnconsumeRows(req.Partition, req.Task, string(req.Key), req.Indexes)
	}
	return nil, s.c.Unconsume(req.Partition, req.Task, string(req.Key))
}

func (s *Server) acknowledge(_ context.Context, body []byte, _ *effects) (proto.Message, error) {
	req, err := decode[wirepb.AcknowledgeRequest](wire.OpAcknowledge, body)
	if err != nil {
		return nil, err
	}
	return nil, s.c.Acknowledge(req.Partition, req.Task, string(req.Key))
}

func (s *Server) markDone(_ context.Context, body []byte, _ *effects) (proto.Message, error) {
	req, err := decode[wirepb.MarkDoneRequest](wire.OpMarkDone, body)
	if err != nil {
		return nil, err
	}
	return nil, s.c.MarkDone(req.Partition)
}

func (s *Server) clusterInfo(_ context.Context, body []byte, _ *effects) (proto.Message, error) {
	if _, err := decode[wirepb.Empty](wire.OpClusterInfo, body); err != nil {
		return nil, err
	}
	ci := s.c.Info()
	return &wirepb.ClusterInfoReply{
		ClusterId: ci.ClusterID, Epoch: ci.Epoch, Durable: ci.Durable, Fsync: ci.Fsync,
		LogIndex: ci.LogIndex, SnapshotIndex: ci.SnapshotIndex, LogBytes: ci.LogBytes,
		Metrics: s.metricsAddrs(),
	}, nil
}

// metricsAddrs lists the controller's metrics endpoints, then those the
// live units list among their addresses (http:// ones), each once.
func (s *Server) metricsAddrs() []string {
	out := slices.Clone(s.cfg.MetricsAddrs)
	for _, u := range s.c.units.Units() {
		if !u.Alive {
			continue
		}
		for _, a := range u.Addrs {
			if strings.HasPrefix(a, "http://") && !slices.Contains(out, a) {
				out = append(out, a)
			}
		}
	}
	return out
}

func (s *Server) drainUnit(_ context.Context, body []byte, _ *effects) (proto.Message, error) {
	req, err := decode[wirepb.DrainUnitRequest](wire.OpDrainUnit, body)
	if err != nil {
		return nil, err
	}
	u, err := s.c.DrainUnit(engine.UnitID(req.UnitId), req.Draining)
	if err != nil {
		return nil, err
	}
	return unitInfoToPB(u), nil
}

func (s *Server) unitCells(_ context.Context, body []byte, _ *effects) (proto.Message, error) {
	req, err := decode[wirepb.UnitCellsRequest](wire.OpUnitCells, body)
	if err != nil {
		return nil, err
	}
	if req.Limit > MaxUnitCellsPage {
		return nil, fmt.Errorf("unit cells page of %d cells, at most %d: %w", req.Limit, MaxUnitCellsPage, engine.ErrInvalid)
	}
	cells, next, err := s.c.UnitCells(engine.UnitID(req.UnitId), req.Cursor, int(req.Limit), req.MaxBytes)
	if err != nil {
		return nil, err
	}
	r := &wirepb.UnitCellsReply{
		Partitions: make([]string, len(cells)), Indexes: make([]uint64, len(cells)), Fields: make([]string, len(cells)), Next: next,
	}
	locs := make([]engine.CellLoc, len(cells))
	for i, c := range cells {
		r.Partitions[i], r.Indexes[i], r.Fields[i], locs[i] = c.Partition, c.Index, c.Field, c.Loc
	}
	r.Locs = wire.AddrsToPB(locs)
	return r, nil
}

func (s *Server) moveCells(_ context.Context, body []byte, fx *effects) (proto.Message, error) {
	req, err := decode[wirepb.MoveCellsRequest](wire.OpMoveCells, body)
	if err != nil {
		return nil, err
	}
	n := len(req.Indexes)
	if err := wire.CheckCount("cells", n); err != nil {
		return nil, err
	}
	if err := s.c.checkCluster(req.ClusterId); err != nil {
		return nil, opErr("move cells", req.Partition, err)
	}
	from, err := wire.AddrsFromPB(req.From)
	if err != nil {
		return nil, opErr("move cells", req.Partition, err)
	}
	to, err := wire.AddrsFromPB(req.To)
	if err != nil {
		return nil, opErr("move cells", req.Partition, err)
	}
	if len(req.Fields) != n || len(from) != n || len(to) != n {
		return nil, opErr("move cells", req.Partition, fmt.Errorf("%d rows, %d fields, %d old and %d new locations: %w", n, len(req.Fields), len(from), len(to), engine.ErrInvalid))
	}
	moves := make([]engine.CellMove, n)
	for i := range moves {
		moves[i] = engine.CellMove{Index: req.Indexes[i], Field: req.Fields[i], From: from[i], To: to[i]}
	}
	moved, freed, err := s.c.MoveCells(req.Partition, moves)
	if err != nil {
		return nil, err
	}
	fx.freed = freed
	return &wirepb.MoveCellsReply{Moved: moved}, nil
}

func (s *Server) moved(_ context.Context, body []byte, _ *effects) (proto.Message, error) {
	req, err := decode[wirepb.MovedRequest](wire.OpMoved, body)
	if err != nil {
		return nil, err
	}
	from, err := wire.AddrsFromPB(req.From)
	if err != nil {
		return nil, err
	}
	if err := wire.CheckCount("cells", len(from)); err != nil {
		return nil, err
	}
	return &wirepb.MovedReply{To: wire.AddrsToPB(s.c.Moved(from))}, nil
}
