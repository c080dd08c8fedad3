package embedded

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/controller/journal"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/storage"
)

// Meta adapts an in-process controller to [client.MetaService]. The cells
// a commit or a clear drops are freed on the units among units that hold
// them (as a controller server frees them on its units). A controller with
// a journal (as in tq serve) answers each call once what it changed and
// saw is durable, and frees dropped cells only then, as its server does.
//
// The controller makes a change (a commit, insert, clear, tag change…)
// whatever ctx says, even if it has ended: ctx bounds only the wait for
// the change's record to be durable (in memory there is none, and a
// change with an ended ctx succeeds). A change whose call returns ctx's
// error was made all the same and stands, its dropped cells freed once
// its record is durable; a put's error says it may have happened (see
// [client.Client.PutKeys] and [OneKey.Commit]). A fetch is the
// exception: ctx bounds its wait for rows too, and one whose wait for
// its record fails gives back the rows it took.
func Meta(c *controller.Controller, units ...*storage.Unit) client.MetaService {
	l := localMeta{c: c, units: map[engine.UnitID]*storage.Unit{}}
	for _, u := range units {
		l.units[u.ID()] = u
	}
	l.freeOn = func(locs []engine.CellLoc) { freeOn(l.units, locs) }
	return l
}

type localMeta struct {
	c     *controller.Controller
	units map[engine.UnitID]*storage.Unit
	// sharedTags: metas carry the rows' own tag maps (ResolveKeysShared),
	// for KVData's client, whose metas a server encodes at once.
	sharedTags bool
	// freeOn frees locs on units (made once: no closure per free).
	freeOn func([]engine.CellLoc)
	// closed, for a Cluster's service, is set by its Close (nil: none).
	closed *atomic.Bool
}

// errClusterClosed is what the meta service of a closed [Cluster] answers.
var errClusterClosed = fmt.Errorf("embedded cluster closed: %w", engine.ErrClosed)

// open returns errClusterClosed once the service's Cluster is closed:
// its controller would answer from the memory Close let go of (a fetch
// taking rows no read can get, a MarkDone that marks nothing anyone
// sees).
func (l localMeta) open() error {
	if l.closed != nil && l.closed.Load() {
		return errClusterClosed
	}
	return nil
}

// Draining reports whether the controller reports unit id draining: a
// client over this service places no cell on it (see
// [github.com/tqgo/tq/client.Client.Drain]).
func (l localMeta) Draining(id engine.UnitID) bool { return l.c.Units().Draining(id) }

// free frees cells the controller no longer references on their units,
// once everything logged so far is durable. A unit that refuses (the
// cells are gone already) loses nothing.
func (l localMeta) free(ctx context.Context, locs []engine.CellLoc, err error) error {
	if err != nil {
		return err
	}
	return l.freeAfter(ctx, locs, l.c.WaitDurable)
}

// freeAfterKeys frees locs, which a change of keys of partition dropped,
// once the keys' last change is durable (that change's record, or a later
// one's): not every record appended meanwhile.
func (l localMeta) freeAfterKeys(ctx context.Context, partition string, keys []string, locs []engine.CellLoc) error {
	if !l.c.Durable() {
		l.freeNow(locs) // nothing to wait for
		return nil
	}
	return l.freeAfter(ctx, locs, func(ctx context.Context) error { return l.c.WaitRead(ctx, partition, keys) })
}

// freeAfter frees locs once wait, which waits for the change that dropped
// them to be durable, returns.
func (l localMeta) freeAfter(ctx context.Context, locs []engine.CellLoc, wait func(context.Context) error) error {
	if err := wait(ctx); err != nil {
		if len(locs) > 0 && !errors.Is(err, journal.ErrFailed) {
			// The change may yet be durable: its frees wait for that.
			go func() {
				if wait(context.Background()) == nil {
					l.freeAfter(context.Background(), locs, wait)
				}
			}()
		}
		return err
	}
	l.freeNow(locs)
	return nil
}

// freeNow frees the bytes of locs on the units of this process, or once
// no checkpoint is being saved (it reads them).
func (l localMeta) freeNow(locs []engine.CellLoc) {
	l.c.FreeLocal(locs, l.freeOn)
}

// freeOn frees the bytes of locs on those of units that hold them.
func freeOn(units map[engine.UnitID]*storage.Unit, locs []engine.CellLoc) {
	freeable := func(loc engine.CellLoc) bool { return loc.Stored() && !loc.Lost() && loc.Addr.Len > 0 }
	if len(locs) == 1 {
		// A put of one cell replaced one: no grouping by unit.
		if u := units[locs[0].Unit]; u != nil && freeable(locs[0]) {
			u.FreeRanges([]engine.RemoteAddr{locs[0].Addr})
		}
		return
	}
	by := map[engine.UnitID][]engine.RemoteAddr{}
	for _, loc := range locs {
		if freeable(loc) {
			by[loc.Unit] = append(by[loc.Unit], loc.Addr)
		}
	}
	for id, addrs := range by {
		if u := units[id]; u != nil {
			u.FreeRanges(engine.CoalesceRanges(addrs))
		}
	}
}

var (
	_ client.MetaService   = localMeta{}
	_ client.KeyService    = localMeta{}
	_ client.StreamService = localMeta{}
)

// Unconsume gives a fetch's rows back; after its Cluster's Close it does
// nothing: no one can fetch them again (a loader stopped by the Close
// gives back what it fetched, with nothing to report).
func (l localMeta) Unconsume(ctx context.Context, partition, task, key string) error {
	if l.open() != nil {
		return nil
	}
	_, err := seen(ctx, l, struct{}{}, l.c.Unconsume(partition, task, key))
	return err
}

// UnconsumeRows gives some of a fetch's rows back; after its Cluster's
// Close it does nothing, as Unconsume.
func (l localMeta) UnconsumeRows(ctx context.Context, partition, task, key string, indexes []uint64) error {
	if l.open() != nil {
		return nil
	}
	_, err := seen(ctx, l, struct{}{}, l.c.UnconsumeRows(partition, task, key, indexes))
	return err
}

func (l localMeta) Acknowledge(ctx context.Context, partition, task, key string) error {
	if err := l.open(); err != nil {
		return err
	}
	_, err := seen(ctx, l, struct{}{}, l.c.Acknowledge(partition, task, key))
	return err
}

func (l localMeta) MarkDone(ctx context.Context, partition string) error {
	if err := l.open(); err != nil {
		return err
	}
	_, err := seen(ctx, l, struct{}{}, l.c.MarkDone(partition))
	return err
}

// seen returns v and err once everything the controller logged so far is
// durable: what a call saw is never lost after it was heard of.
func seen[T any](ctx context.Context, l localMeta, v T, err error) (T, error) {
	if err == nil {
		err = l.c.WaitDurable(ctx)
	}
	if err != nil {
		var zero T
		return zero, err
	}
	return v, nil
}

func (l localMeta) Insert(ctx context.Context, partition string, n int, fields []string) (*engine.BatchMeta, error) {
	if err := l.open(); err != nil {
		return nil, err
	}
	m, err := l.c.Insert(partition, n, fields)
	return seen(ctx, l, m, err)
}

// Fetch fetches, and gives the rows back when it took some but fails
// waiting for its record to be durable (the caller gave up): the caller
// never sees them, and they would stay consumed for the task. A fetch
// without a key gets one of its own for that, as a remote client's does.
func (l localMeta) Fetch(ctx context.Context, req engine.FetchRequest) (*engine.BatchMeta, error) {
	if err := l.open(); err != nil {
		return nil, err
	}
	if req.Key == "" && l.c.Durable() {
		var k [16]byte
		rand.Read(k[:])
		req.Key = string(k[:])
	}
	m, err := l.c.Fetch(ctx, req)
	if err != nil {
		return nil, err
	}
	if err := l.c.WaitDurable(ctx); err != nil {
		if m.Len() > 0 {
			if gerr := l.c.Unconsume(req.Partition, req.Task, req.Key); gerr != nil {
				err = fmt.Errorf("%w (and giving back its %d rows: %w)", err, m.Len(), gerr)
			}
		}
		return nil, err
	}
	return m, nil
}

func (l localMeta) ForceFetch(ctx context.Context, partition string, fields []string) (*engine.BatchMeta, error) {
	if err := l.open(); err != nil {
		return nil, err
	}
	m, err := l.c.ForceFetch(partition, fields)
	return seen(ctx, l, m, err)
}

func (l localMeta) RowsMeta(ctx context.Context, partition string, indexes []uint64, fields []string) (*engine.BatchMeta, error) {
	if err := l.open(); err != nil {
		return nil, err
	}
	m, err := l.c.RowsMeta(partition, indexes, fields)
	return seen(ctx, l, m, err)
}

func (l localMeta) Commit(ctx context.Context, req engine.CommitRequest) error {
	if err := l.open(); err != nil {
		return err
	}
	locs, err := l.c.Commit(req)
	return l.free(ctx, locs, err)
}

func (l localMeta) ResolveKeys(ctx context.Context, partition string, keys, fields []string, create bool) (*engine.BatchMeta, []int, error) {
	if err := l.open(); err != nil {
		return nil, nil, err
	}
	resolve := l.c.ResolveKeysCreated
	if l.sharedTags {
		resolve = l.c.ResolveKeysShared
	}
	m, created, err := resolve(partition, keys, fields, create)
	if !create {
		// A read: what it saw (rows, or keys absent) is durable, and
		// nothing else need be.
		if werr := l.c.WaitRead(ctx, partition, keys); werr != nil && (err == nil || !errors.Is(err, engine.ErrInvalid)) {
			return nil, nil, werr
		}
		if err != nil {
			return nil, nil, err
		}
		return m, created, nil
	}
	if m, err = seen(ctx, l, m, err); err != nil {
		return nil, nil, err
	}
	return m, created, nil
}

func (l localMeta) CommitKeys(ctx context.Context, req engine.KeysCommit) (engine.KeysCommitted, error) {
	if err := l.open(); err != nil {
		return engine.KeysCommitted{}, err
	}
	out, err := l.c.CommitKeys(req)
	if err != nil {
		return out, err
	}
	replaced := out.Replaced
	out.Replaced = nil
	return out, l.freeAfterKeys(ctx, req.Partition, req.Keys, replaced)
}

func (l localMeta) KeysOf(ctx context.Context, partition string, indexes []uint64) ([]string, error) {
	if err := l.open(); err != nil {
		return nil, err
	}
	keys, err := l.c.KeysOf(partition, indexes)
	return seen(ctx, l, keys, err)
}

func (l localMeta) SetTags(ctx context.Context, partition string, indexes []uint64, tags []engine.Tags) error {
	if err := l.open(); err != nil {
		return err
	}
	_, err := seen(ctx, l, struct{}{}, l.c.SetTags(partition, indexes, tags))
	return err
}

func (l localMeta) ListKeys(ctx context.Context, partition string) (map[string][]engine.KeyInfo, error) {
	if err := l.open(); err != nil {
		return nil, err
	}
	return seen(ctx, l, l.c.ListKeys(partition), nil)
}

func (l localMeta) ListKeysWhere(ctx context.Context, partition string, where engine.TagFilter) (map[string][]engine.KeyInfo, error) {
	if err := l.open(); err != nil {
		return nil, err
	}
	keys, err := l.c.ListKeysWhere(partition, where)
	return seen(ctx, l, keys, err)
}

func (l localMeta) DeleteTags(ctx context.Context, partition string, keys, names []string) ([]engine.Tags, error) {
	if err := l.open(); err != nil {
		return nil, err
	}
	tags, err := l.c.DeleteTags(partition, keys, names)
	return seen(ctx, l, tags, err)
}

func (l localMeta) CompareAndSetTag(ctx context.Context, req engine.TagSwap) (engine.TagSwapped, error) {
	if err := l.open(); err != nil {
		return engine.TagSwapped{}, err
	}
	done, err := l.c.CompareAndSetTag(req)
	return seen(ctx, l, done, err)
}

func (l localMeta) KeyChanges(ctx context.Context, req engine.ChangesRequest) (engine.KeyChanges, error) {
	if err := l.open(); err != nil {
		return engine.KeyChanges{}, err
	}
	ch, err := l.c.KeyChanges(ctx, req)
	return seen(ctx, l, ch, err)
}

func (l localMeta) ProductionStatus(ctx context.Context, partition string, fields []string) (engine.ProductionStatus, error) {
	if err := l.open(); err != nil {
		return engine.ProductionStatus{}, err
	}
	st, err := l.c.ProductionStatus(partition, fields)
	return seen(ctx, l, st, err)
}

func (l localMeta) ConsumptionStatus(ctx context.Context, partition, task string) (engine.ConsumptionStatus, error) {
	if err := l.open(); err != nil {
		return engine.ConsumptionStatus{}, err
	}
	st, err := l.c.ConsumptionStatus(partition, task)
	return seen(ctx, l, st, err)
}

func (l localMeta) ResetConsumption(ctx context.Context, partition, task string) error {
	if err := l.open(); err != nil {
		return err
	}
	_, err := seen(ctx, l, struct{}{}, l.c.ResetConsumption(partition, task))
	return err
}

func (l localMeta) ClearRows(ctx context.Context, partition string, indexes []uint64) error {
	if err := l.open(); err != nil {
		return err
	}
	locs, err := l.c.ClearRows(partition, indexes)
	return l.free(ctx, locs, err)
}

func (l localMeta) ClearKeys(ctx context.Context, partition string, keys []string) error {
	if err := l.open(); err != nil {
		return err
	}
	locs, err := l.c.ClearKeys(partition, keys)
	return l.free(ctx, locs, err)
}

func (l localMeta) ClearPartition(ctx context.Context, partition string) error {
	if err := l.open(); err != nil {
		return err
	}
	locs, err := l.c.ClearPartition(partition)
	return l.free(ctx, locs, err)
}

func (l localMeta) Partitions(ctx context.Context) ([]string, error) {
	if err := l.open(); err != nil {
		return nil, err
	}
	return seen(ctx, l, l.c.Partitions(), nil)
}

func (l localMeta) Stats(ctx context.Context, partition string) (engine.PartitionStats, error) {
	if err := l.open(); err != nil {
		return engine.PartitionStats{}, err
	}
	st, err := l.c.Stats(partition)
	return seen(ctx, l, st, err)
}

func (l localMeta) Fields(ctx context.Context, partition string) ([]engine.FieldStats, error) {
	if err := l.open(); err != nil {
		return nil, err
	}
	fs, err := l.c.Fields(partition)
	return seen(ctx, l, fs, err)
}

// LocalClient returns a client of a controller and storage units in this
// process (registered with it), calling them directly: [Meta] and [Unit].
func LocalClient(c *controller.Controller, units ...*storage.Unit) (*client.Client, error) {
	return localClient(Meta(c, units...).(localMeta), units)
}

func localClient(meta localMeta, units []*storage.Unit) (*client.Client, error) {
	dus := make([]client.DataUnit, len(units))
	for i, u := range units {
		dus[i] = Unit(u)
	}
	return client.New(meta, dus, client.DefaultConfig())
}

// Freer returns what frees cells that a change of keys of partition
// dropped (a commit that replaced them, a clear of fields), on the units
// among units that hold them, once the keys' last change is durable (as
// [Meta] does for the changes it makes).
func Freer(c *controller.Controller, units ...*storage.Unit) func(ctx context.Context, partition string, keys []string, locs []engine.CellLoc) error {
	l := Meta(c, units...).(localMeta)
	return l.freeAfterKeys
}

// KVData serves a controller's KV_PUT and KV_GET (see
// [controller.KVData]) with units of this process: a put or get of one
// key through [OneKey], others (and those OneKey leaves) through a client
// of those units: its puts and reads, views of the arena for the bytes
// sent.
func KVData(c *controller.Controller, units ...*storage.Unit) (controller.KVData, error) {
	// The server encodes the metas of its gets at once: they may carry the
	// rows' own tag maps rather than copies.
	meta := Meta(c, units...).(localMeta)
	meta.sharedTags = true
	cl, err := localClient(meta, units)
	if err != nil {
		return nil, err
	}
	return kvData{cl: cl, one: NewOneKey(c, units...)}, nil
}

var _ controller.ValueKV = kvData{}

type kvData struct {
	cl  *client.Client
	one *OneKey // its units by id are the units of this process
}

func (k kvData) PutKeys(ctx context.Context, partition string, keys []string, b *engine.Batch, tags []engine.Tags) (engine.KeysCommitted, error) {
	if out, ok, err := k.putOne(ctx, partition, keys, b, tags); ok {
		if err != nil {
			return engine.KeysCommitted{}, &engine.OpError{Op: "put keys", Peer: partition, Err: err}
		}
		return out, nil
	}
	return k.cl.PutKeys(ctx, partition, keys, b, tags)
}

// putOne puts one row to one key through OneKey when it can: on the unit
// the key picks, if it has room now. ok is false when the client must.
func (k kvData) putOne(ctx context.Context, partition string, keys []string, b *engine.Batch, tags []engine.Tags) (_ engine.KeysCommitted, ok bool, _ error) {
	if len(keys) != 1 || b == nil || b.Rows() != 1 || b.NumFields() == 0 || (tags != nil && len(tags) != 1) || !Name(partition) || !Name(keys[0]) {
		return engine.KeysCommitted{}, false, nil
	}
	if tags != nil && tags[0].Check() != nil {
		// Refused by the client, with its error, before a byte is
		// written.
		return engine.KeysCommitted{}, false, nil
	}
	fs := b.Fields()
	sizes := make([]int64, len(fs))
	cfs := make([]engine.CommitField, len(fs))
	for i, f := range fs {
		if !Name(f.Name) {
			return engine.KeysCommitted{}, false, nil
		}
		sizes[i] = int64(f.Col.Size())
		cfs[i] = engine.CommitField{Name: f.Name, DType: f.Col.DType(), Kind: f.Col.Kind()}
		switch f.Col.Kind() {
		case engine.Dense:
			cfs[i].Shape = f.Col.Shape()
		case engine.Ragged:
			cfs[i].Shapes = []engine.Shape{f.Col.RowShape(0)}
		}
	}
	u := k.one.UnitFor(keys[0])
	if u == nil {
		return engine.KeysCommitted{}, false, nil
	}
	r, err := u.Reserve(engine.WithoutWait(ctx), sizes)
	if err != nil {
		return engine.KeysCommitted{}, false, nil // full: the client spills or waits
	}
	for i, f := range fs {
		copy(r.Buf(i), f.Col.Data())
	}
	var t engine.Tags
	if tags != nil {
		t = tags[0]
	}
	out, err := k.one.Commit(ctx, u, r, partition, keys[0], cfs, t)
	if _, ok := errors.AsType[*DrainRefused](err); ok {
		return engine.KeysCommitted{}, false, nil // the client puts b, waiting for room
	}
	return out, true, err
}

// SetValue puts one opaque value (KV_SET): reserved on the unit the key
// picks, read there straight from the connection, committed through
// OneKey, as KV_PUT's one-key put is; when OneKey cannot (a name it does
// not take, every unit draining, no room now, a commit refused for a
// drain begun meanwhile with no room elsewhere at once) the bytes go in
// a batch of their own the general way.
func (k kvData) SetValue(ctx context.Context, partition, key, field string, size int, read controller.ValueReader) (engine.KeysCommitted, error) {
	if Name(partition) && Name(key) && Name(field) {
		if u := k.one.UnitFor(key); u != nil {
			// Held: a client slower than the unit's reserve timeout must
			// not write into extents handed to another put meanwhile.
			// Every path below ends r (Abort here, OneKey.Commit).
			if r, err := u.ReserveHeld(engine.WithoutWait(ctx), []int64{int64(size)}); err == nil {
				if err := read.ReadPayloadTo(r.Buf(0)); err != nil {
					r.Abort()
					return engine.KeysCommitted{}, err
				}
				out, err := k.one.Commit(ctx, u, r, partition, key, []engine.CommitField{{Name: field, DType: engine.Bytes, Kind: engine.Opaque}}, nil)
				if dr, ok := errors.AsType[*DrainRefused](err); ok {
					return k.setGeneral(ctx, partition, key, field, dr.Bytes[0])
				}
				if err != nil {
					return engine.KeysCommitted{}, &engine.OpError{Op: "put keys", Peer: partition, Err: err}
				}
				return out, nil
			}
		}
	}
	data := make([]byte, size)
	if err := read.ReadPayloadTo(data); err != nil {
		return engine.KeysCommitted{}, err
	}
	return k.setGeneral(ctx, partition, key, field, data)
}

// setGeneral puts data as field of key the general way (a batch of one
// opaque cell through PutKeys).
func (k kvData) setGeneral(ctx context.Context, partition, key, field string, data []byte) (engine.KeysCommitted, error) {
	size := len(data)
	col, err := engine.NewOpaque([]int{0, size}, data)
	if err != nil {
		return engine.KeysCommitted{}, err
	}
	b, err := engine.NewBatch(engine.Field{Name: field, Col: col})
	if err != nil {
		return engine.KeysCommitted{}, err
	}
	return k.PutKeys(ctx, partition, []string{key}, b, nil)
}

// GetValue reads one field of one key (KV_GET_VALUE) through OneKey: a
// view of the cell, with its schema. ok is false where OneKey would leave
// the get to the general path.
func (k kvData) GetValue(ctx context.Context, partition, key, field string, maxBytes int) (val []byte, cf engine.CommitField, release func(), ok bool, err error) {
	var kc controller.KeyCell
	err = client.Reread(func() (err error) {
		val, kc, release, ok, err = k.one.Value(ctx, partition, key, field, maxBytes)
		return err
	})
	if err != nil || !ok {
		return nil, cf, nil, false, err
	}
	cf = engine.CommitField{Name: field, DType: kc.DType, Kind: kc.Kind}
	if kc.Kind == engine.Dense {
		cf.Shape = kc.Shape
	}
	return val, cf, release, true, nil
}

func (k kvData) GetKeys(ctx context.Context, partition string, keys, fields []string, maxBytes int) (*engine.BatchMeta, *engine.Batch, error) {
	// A put may replace the cells, and free them, between the lookup and
	// the lease: look again.
	var meta *engine.BatchMeta
	var b *engine.Batch
	err := client.Reread(func() (err error) {
		if len(keys) == 1 && len(fields) > 0 {
			var ok bool
			if b, ok, err = k.one.Get(ctx, partition, keys[0], fields, maxBytes); ok {
				meta = nil // the batch says it all
				return err
			}
		}
		meta, b, err = k.getKeys(ctx, partition, keys, fields, maxBytes)
		return err
	})
	return meta, b, err
}

func (k kvData) getKeys(ctx context.Context, partition string, keys, fields []string, maxBytes int) (*engine.BatchMeta, *engine.Batch, error) {
	meta, err := k.cl.MetaByKeys(ctx, partition, keys, fields, false)
	if err != nil {
		return nil, nil, err
	}
	if !meta.IsReady() {
		return meta, nil, nil // the client names what is missing
	}
	total := 0
	for _, locs := range meta.Cells {
		for _, l := range locs {
			if k.one.meta.units[l.Unit] == nil {
				return meta, nil, nil
			}
			total += int(l.Addr.Len)
		}
	}
	if total > maxBytes {
		return meta, nil, nil
	}
	v, err := k.cl.GetView(ctx, meta)
	if err != nil {
		return nil, nil, err
	}
	return meta, v.Batch.Views(v.Release), nil
}
