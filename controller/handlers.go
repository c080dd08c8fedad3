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
	"io/fs"
	"path/filepath"
	"sort"
	"strings"
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
		wire.OpFields:            s.fields,
		wire.OpUnits:             s.listUnits,
		wire.OpSaveCheckpoint:    s.saveCheckpoint,
		wire.OpLoadCheckpoint:    s.loadCheckpoint,
		wire.OpCommitKeys:        s.commitKeys,
		wire.OpRegister:          s.register,
		wire.OpHeartbeat:         s.heartbeat,
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

func cellsReply(locs []engine.CellLoc, err error) (proto.Message, error) {
	if err != nil {
		return nil, err
	}
	return &wirepb.CellsReply{Cells: wire.AddrsToPB(locs)}, nil
}

func (s *Server) insert(_ context.Context, body []byte) (proto.Message, error) {
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
	m, err := s.c.Insert(req.Partition, n, req.Fields)
	if err != nil {
		return nil, err
	}
	return metaReply(m)
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

func (s *Server) fetch(ctx context.Context, body []byte) (proto.Message, error) {
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
	fr := engine.FetchRequest{Partition: req.Partition, Task: req.Task, Fields: req.Fields, BatchSize: n, Options: opts, Wait: req.Wait}
	if req.Wait {
		var cancel context.CancelFunc
		ctx, cancel = s.waitCtx(ctx, req.TimeoutMs)
		defer cancel()
	}
	m, err := s.c.Fetch(ctx, fr)
	if err != nil {
		if cause := context.Cause(ctx); cause == errShuttingDown {
			return nil, opErr("fetch", req.Partition, cause)
		}
		return nil, err
	}
	return metaReply(m)
}

func (s *Server) forceFetch(_ context.Context, body []byte) (proto.Message, error) {
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

func (s *Server) rowsMeta(_ context.Context, body []byte) (proto.Message, error) {
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
	fields, err := commitFieldsFromPB(p.Fields, n)
	if err != nil {
		return engine.CommitRequest{}, err
	}
	return engine.CommitRequest{Partition: p.Partition, Indexes: p.Indexes, Fields: fields}, nil
}

// commitFieldsFromPB decodes the fields of a commit of n rows.
func commitFieldsFromPB(fs []*wirepb.CommitField, n int) ([]engine.CommitField, error) {
	out := make([]engine.CommitField, len(fs))
	for i, f := range fs {
		cf, err := commitFieldFromPB(f, n)
		if err != nil {
			return nil, fmt.Errorf("commit field %d (%q): %w", i, f.GetName(), err)
		}
		out[i] = cf
	}
	return out, nil
}

func commitFieldFromPB(f *wirepb.CommitField, n int) (engine.CommitField, error) {
	cf := engine.CommitField{Name: f.GetName()}
	var err error
	if cf.DType, err = wire.DTypeFromPB(f.GetDtype()); err != nil {
		return cf, err
	}
	if cf.Kind, err = wire.KindFromPB(f.GetKind()); err != nil {
		return cf, err
	}
	shapes := f.GetShapes()
	switch cf.Kind {
	case engine.Dense:
		if cf.Shape, err = wire.ShapeFromPB(f.GetShape()); err != nil {
			return cf, err
		}
	case engine.Ragged:
		if len(shapes) != n {
			return cf, fmt.Errorf("ragged field has %d shapes for %d rows: %w", len(shapes), n, engine.ErrInvalid)
		}
		cf.Shapes = make([]engine.Shape, n)
		for i, sh := range shapes {
			if cf.Shapes[i], err = wire.ShapeFromPB(sh); err != nil {
				return cf, fmt.Errorf("row %d: %w", i, err)
			}
		}
	}
	if cf.Kind != engine.Ragged && len(shapes) != 0 {
		return cf, fmt.Errorf("%v field carries %d per-row shapes: %w", cf.Kind, len(shapes), engine.ErrInvalid)
	}
	locs := f.GetLocs()
	switch {
	case f.GetHasLocs():
		// Runs of equal cells stay runs: a column slice costs one entry.
		runs, ok, err := wire.RunsFromPB(locs)
		if err != nil {
			return cf, err
		}
		if ok {
			cf.Runs = runs
			return cf, nil // checkFields counts the runs' cells
		}
		if cf.Locs, err = wire.AddrsFromPB(locs); err != nil {
			return cf, err
		}
		if len(cf.Locs) != n {
			return cf, fmt.Errorf("%d locations for %d rows: %w", len(cf.Locs), n, engine.ErrInvalid)
		}
	case len(locs.GetOffset())+len(locs.GetUnit())+len(locs.GetSegment())+len(locs.GetGen())+len(locs.GetLen()) > 0:
		return cf, fmt.Errorf("locations without has_locs: %w", engine.ErrInvalid)
	}
	return cf, nil
}

func (s *Server) commit(_ context.Context, body []byte) (proto.Message, error) {
	p, err := decode[wirepb.CommitRequest](wire.OpCommit, body)
	if err != nil {
		return nil, err
	}
	req, err := commitFromPB(p)
	if err != nil {
		return nil, opErr("commit", p.Partition, err)
	}
	return cellsReply(s.c.Commit(req))
}

func (s *Server) commitKeys(_ context.Context, body []byte) (proto.Message, error) {
	p, err := decode[wirepb.CommitKeysRequest](wire.OpCommitKeys, body)
	if err != nil {
		return nil, err
	}
	n := len(p.Keys)
	if err := errors.Join(wire.CheckCount("keys", n), wire.CheckCount("fields", len(p.Fields))); err != nil {
		return nil, err
	}
	req := engine.KeysCommit{Partition: p.Partition, Keys: p.Keys}
	if req.Fields, err = commitFieldsFromPB(p.Fields, n); err != nil {
		return nil, opErr("commit keys", p.Partition, err)
	}
	if p.HasTags {
		if len(p.Tags) != n {
			return nil, opErr("commit keys", p.Partition, fmt.Errorf("%d tag maps for %d keys: %w", len(p.Tags), n, engine.ErrInvalid))
		}
		if req.Tags, err = wire.TagsFromPB(p.Tags); err != nil {
			return nil, opErr("commit keys", p.Partition, err)
		}
	}
	done, err := s.c.CommitKeys(req)
	if err != nil {
		return nil, err
	}
	tags, err := wire.TagsToPB(done.Tags)
	if err != nil {
		return nil, err
	}
	return &wirepb.CommitKeysReply{Replaced: wire.AddrsToPB(done.Replaced), Tags: tags, Fields: done.Fields}, nil
}

func (s *Server) resolveKeys(_ context.Context, body []byte) (proto.Message, error) {
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
	m, created, err := s.c.ResolveKeysCreated(req.Partition, req.Keys, fields, req.Create)
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

func (s *Server) keysOf(_ context.Context, body []byte) (proto.Message, error) {
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

func (s *Server) setTags(_ context.Context, body []byte) (proto.Message, error) {
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
	tags, err := wire.TagsFromPB(req.Tags)
	if err != nil {
		return nil, opErr("set tags", req.Partition, err)
	}
	return nil, s.c.SetTags(req.Partition, req.Indexes, tags)
}

func (s *Server) listKeys(_ context.Context, body []byte) (proto.Message, error) {
	req, err := decode[wirepb.ListKeysRequest](wire.OpListKeys, body)
	if err != nil {
		return nil, err
	}
	all := s.c.ListKeys(req.Partition)
	ids := make([]string, 0, len(all))
	for id := range all {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	r := &wirepb.ListKeysReply{Partitions: make([]*wirepb.PartitionKeys, len(ids))}
	for i, id := range ids {
		pk := &wirepb.PartitionKeys{Partition: id, Keys: make([]*wirepb.KeyInfo, len(all[id]))}
		for j, k := range all[id] {
			tags, err := wire.JSONToPB(k.Tags)
			if err != nil {
				return nil, fmt.Errorf("tags of key %q: %w", k.Key, err)
			}
			pk.Keys[j] = &wirepb.KeyInfo{Key: k.Key, Index: k.Index, Tags: tags}
		}
		r.Partitions[i] = pk
	}
	return r, nil
}

func (s *Server) productionStatus(_ context.Context, body []byte) (proto.Message, error) {
	req, err := decode[wirepb.ProductionStatusRequest](wire.OpProductionStatus, body)
	if err != nil {
		return nil, err
	}
	if err := wire.CheckCount("fields", len(req.Fields)); err != nil {
		return nil, err
	}
	st, err := s.c.ProductionStatus(req.Partition, req.Fields)
	if err != nil {
		return nil, err
	}
	r := &wirepb.ProductionStatusReply{Indexes: st.Indexes, Fields: st.Fields, Produced: make([]bool, 0, len(st.Indexes)*len(st.Fields))}
	for _, row := range st.Produced {
		r.Produced = append(r.Produced, row...)
	}
	return r, nil
}

func (s *Server) consumptionStatus(_ context.Context, body []byte) (proto.Message, error) {
	req, err := decode[wirepb.ConsumptionStatusRequest](wire.OpConsumptionStatus, body)
	if err != nil {
		return nil, err
	}
	st, err := s.c.ConsumptionStatus(req.Partition, req.Task)
	if err != nil {
		return nil, err
	}
	return &wirepb.ConsumptionStatusReply{Indexes: st.Indexes, Consumed: st.Consumed}, nil
}

func (s *Server) resetConsumption(_ context.Context, body []byte) (proto.Message, error) {
	req, err := decode[wirepb.ResetConsumptionRequest](wire.OpResetConsumption, body)
	if err != nil {
		return nil, err
	}
	return nil, s.c.ResetConsumption(req.Partition, req.Task)
}

func (s *Server) clearRows(_ context.Context, body []byte) (proto.Message, error) {
	req, err := decode[wirepb.ClearRowsRequest](wire.OpClearRows, body)
	if err != nil {
		return nil, err
	}
	if err := wire.CheckCount("rows", len(req.Indexes)); err != nil {
		return nil, err
	}
	return cellsReply(s.c.ClearRows(req.Partition, req.Indexes))
}

func (s *Server) clearKeys(_ context.Context, body []byte) (proto.Message, error) {
	req, err := decode[wirepb.ClearKeysRequest](wire.OpClearKeys, body)
	if err != nil {
		return nil, err
	}
	if err := wire.CheckCount("keys", len(req.Keys)); err != nil {
		return nil, err
	}
	return cellsReply(s.c.ClearKeys(req.Partition, req.Keys))
}

func (s *Server) clearPartition(_ context.Context, body []byte) (proto.Message, error) {
	req, err := decode[wirepb.ClearPartitionRequest](wire.OpClearPartition, body)
	if err != nil {
		return nil, err
	}
	return cellsReply(s.c.ClearPartition(req.Partition))
}

func (s *Server) partitions(_ context.Context, body []byte) (proto.Message, error) {
	if _, err := decode[wirepb.Empty](wire.OpPartitions, body); err != nil {
		return nil, err
	}
	return &wirepb.PartitionsReply{Partitions: s.c.Partitions()}, nil
}

func fieldStatsToPB(f engine.FieldStats) *wirepb.FieldStats {
	return &wirepb.FieldStats{Name: f.Name, Dtype: wire.DTypeToPB(f.DType), Kind: wire.KindToPB(f.Kind), Shape: wire.ShapeToPB(f.Shape), Produced: int64(f.Produced)}
}

func (s *Server) stats(_ context.Context, body []byte) (proto.Message, error) {
	req, err := decode[wirepb.PartitionRequest](wire.OpStats, body)
	if err != nil {
		return nil, err
	}
	st, err := s.c.Stats(req.Partition)
	if err != nil {
		return nil, err
	}
	r := &wirepb.PartitionStats{
		Partition: st.Partition, CreatedUnixMs: st.Created.UnixMilli(),
		Rows: int64(st.Rows), Reserved: int64(st.Reserved), Keys: int64(st.Keys), Produced: int64(st.Produced),
		Progress: st.Progress, IndexesInUse: int64(st.IndexesUse), IndexesFree: int64(st.IndexesFree),
	}
	for _, f := range st.Fields {
		r.Fields = append(r.Fields, fieldStatsToPB(f))
	}
	for _, t := range st.Tasks {
		r.Tasks = append(r.Tasks, &wirepb.TaskStats{Task: t.Task, Consumed: int64(t.Consumed), Progress: t.Progress})
	}
	return r, nil
}

func (s *Server) fields(_ context.Context, body []byte) (proto.Message, error) {
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
		UnitId: uint32(u.ID), HostId: u.Host, Addrs: u.Addrs, Name: u.Name, Alive: u.Alive,
		Capacity: u.Capacity, Used: u.Used, Segments: u.Segments, HugePages: u.HugePages, PageSize: u.PageSize,
	}
	if !u.LastHeartbeat.IsZero() {
		p.LastHeartbeatUnixMs = u.LastHeartbeat.UnixMilli()
	}
	return p
}

func (s *Server) listUnits(_ context.Context, body []byte) (proto.Message, error) {
	if _, err := decode[wirepb.Empty](wire.OpUnits, body); err != nil {
		return nil, err
	}
	us := s.units.Units()
	r := &wirepb.UnitsReply{Units: make([]*wirepb.UnitInfo, len(us))}
	for i, u := range us {
		r.Units[i] = unitInfoToPB(u)
	}
	return r, nil
}

// checkpointDir resolves a checkpoint directory named by a peer (see
// ServerConfig.CheckpointDir).
func (s *Server) checkpointDir(dir string) (string, error) {
	if strings.ContainsRune(dir, 0) {
		return "", fmt.Errorf("checkpoint directory %q contains a NUL byte: %w", dir, engine.ErrInvalid)
	}
	if root := s.cfg.CheckpointDir; root != "" {
		if !filepath.IsLocal(dir) || filepath.Clean(dir) == "." {
			return "", fmt.Errorf("checkpoint directory %q is not a relative path inside the server's checkpoint root: %w", dir, engine.ErrInvalid)
		}
		return filepath.Join(root, dir), nil
	}
	if !filepath.IsAbs(dir) {
		return "", fmt.Errorf("checkpoint directory %q is not an absolute path on the controller's host: %w", dir, engine.ErrInvalid)
	}
	return filepath.Clean(dir), nil
}

func (s *Server) saveCheckpoint(_ context.Context, body []byte) (proto.Message, error) {
	req, err := decode[wirepb.CheckpointRequest](wire.OpSaveCheckpoint, body)
	if err != nil {
		return nil, err
	}
	dir, err := s.checkpointDir(req.Dir)
	if err != nil {
		return nil, opErr("save checkpoint", req.Dir, err)
	}
	return nil, s.c.Save(dir)
}

func (s *Server) loadCheckpoint(_ context.Context, body []byte) (proto.Message, error) {
	req, err := decode[wirepb.CheckpointRequest](wire.OpLoadCheckpoint, body)
	if err != nil {
		return nil, err
	}
	dir, err := s.checkpointDir(req.Dir)
	if err != nil {
		return nil, opErr("load checkpoint", req.Dir, err)
	}
	if err := s.c.Load(dir); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("no checkpoint in %s: %w: %w", req.Dir, engine.ErrNotFound, err)
		}
		return nil, err
	}
	return nil, nil
}

func (s *Server) register(_ context.Context, body []byte) (proto.Message, error) {
	req, err := decode[wirepb.RegisterRequest](wire.OpRegister, body)
	if err != nil {
		return nil, err
	}
	if err := wire.CheckCount("addresses", len(req.Addrs)); err != nil {
		return nil, err
	}
	id, err := s.units.Register(engine.UnitInfo{ID: engine.UnitID(req.UnitId), Host: req.HostId, Addrs: req.Addrs, Name: req.Name, Capacity: req.Capacity})
	if err != nil {
		return nil, opErr("register", req.Name, err)
	}
	return &wirepb.RegisterReply{UnitId: uint32(id), HeartbeatIntervalMs: uint64(s.cfg.HeartbeatInterval / time.Millisecond)}, nil
}

func (s *Server) heartbeat(_ context.Context, body []byte) (proto.Message, error) {
	req, err := decode[wirepb.HeartbeatRequest](wire.OpHeartbeat, body)
	if err != nil {
		return nil, err
	}
	if req.UnitId == 0 {
		return nil, fmt.Errorf("heartbeat without a unit id: %w", engine.ErrInvalid)
	}
	err = s.units.Heartbeat(engine.UnitInfo{ID: engine.UnitID(req.UnitId), Capacity: req.Capacity, Used: req.Used, Segments: req.Segments, HugePages: req.HugePages, PageSize: req.PageSize})
	if err != nil {
		return nil, opErr("heartbeat", fmt.Sprint("unit ", req.UnitId), err)
	}
	return nil, nil
}
