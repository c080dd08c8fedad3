package resp

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/embedded"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/kvapi"
	"github.com/tqgo/tq/storage"
)

// store is what the commands do to TQ: puts and gets through the client
// (its placement, its checks, its views), key existence and listing
// straight from the controller.
type store struct {
	ctrl  *controller.Controller
	cl    *client.Client
	kv    *kvapi.KV
	units []*storage.Unit
	byID  map[engine.UnitID]*storage.Unit
	// wait bounds how long a write waits for room in a full unit before
	// it is refused (OOM).
	wait time.Duration
	// free frees cells a change of keys dropped once that is durable.
	free func(ctx context.Context, partition string, keys []string, locs []engine.CellLoc) error
	one  *embedded.OneKey
}

func newStore(ctrl *controller.Controller, units []*storage.Unit, wait time.Duration) (*store, error) {
	if len(units) == 0 {
		return nil, fmt.Errorf("a Redis-protocol endpoint needs a storage unit in its process: %w", engine.ErrInvalid)
	}
	st := &store{ctrl: ctrl, units: units, byID: map[engine.UnitID]*storage.Unit{}, wait: wait, free: embedded.Freer(ctrl, units...), one: embedded.NewOneKey(ctrl, units...)}
	for _, u := range units {
		st.byID[u.ID()] = u
	}
	cl, err := embedded.LocalClient(ctrl, units...)
	if err != nil {
		return nil, err
	}
	st.cl, st.kv = cl, kvapi.New(cl)
	return st, nil
}

// set writes one value to one field of one key: the steps of a client's
// put of one key (reserve on a unit of this process, copy, commit on the
// unit, commit the cell on the controller, free what it replaced once
// that is durable) with nothing else built ([embedded.OneKey]). Names
// the fast path does not take, a cluster whose units all drain, and a
// set refused because its unit started draining with no other unit
// having room at once, go the general way. A set that may not wait (on
// a loop) returns errWouldWait, having changed nothing, where it would
// wait for room or go the general way. With owe (not nil), a set the
// fast path makes on a durable controller does not wait for its record:
// owe takes what its reply must wait for (see owed).
func (st *store) set(ctx context.Context, partition, key, field string, val []byte, mayWait bool, owe *owed) error {
	if !mayWait && st.ctrl.Durable() {
		return errWouldWait // the commit waits for the log
	}
	u := st.one.UnitFor(key)
	if u == nil || !embedded.Name(partition) || !embedded.Name(key) || !embedded.Name(field) {
		if !mayWait {
			return errWouldWait
		}
		return st.put(ctx, partition, []string{key}, []string{field}, [][][]byte{{val}}, nil, owe)
	}
	var r *storage.Reservation
	var err error
	if mayWait {
		r, err = st.reserve(ctx, u, int64(len(val)), owe)
	} else if r, err = u.Reserve(noWait, []int64{int64(len(val))}); errors.Is(err, context.Canceled) {
		return errWouldWait
	}
	if err != nil {
		return err
	}
	copy(r.Buf(0), val)
	if h := testHookCommit.Load(); h != nil {
		(*h)(u)
	}
	_, err = st.commitOne(ctx, u, r, partition, key, []engine.CommitField{{Name: field, DType: engine.Bytes, Kind: engine.Opaque}}, owe)
	if _, ok := errors.AsType[*embedded.DrainRefused](err); ok {
		// u started draining and no other unit had room at once: nothing
		// changed; the general way waits for room.
		if !mayWait {
			return errWouldWait
		}
		return st.put(ctx, partition, []string{key}, []string{field}, [][][]byte{{val}}, nil, owe)
	}
	return err
}

// commitOne commits r, reserved on u, as key's fields and answers how
// many of them the key held ([embedded.OneKey.CommitHeld]). With owe (not
// nil) on a durable controller it does not wait for the change's record:
// owe takes what the reply must wait for (see owed).
func (st *store) commitOne(ctx context.Context, u *storage.Unit, r *storage.Reservation, partition, key string, fields []engine.CommitField, owe *owed) (int, error) {
	if owe == nil || !st.ctrl.Durable() {
		return st.one.CommitHeld(ctx, u, r, partition, key, fields, nil)
	}
	held, replaced, err := st.one.CommitOwed(ctx, u, r, partition, key, fields)
	if err == nil {
		err = st.freeOwed(ctx, partition, []string{key}, replaced, owe)
	}
	return held, err
}

// freeOwed frees locs, which a change of keys of partition dropped, once
// that change is durable: before it returns (st.free), or, with owe on a
// durable controller, when the connection's replies go out (see owed).
func (st *store) freeOwed(ctx context.Context, partition string, keys []string, locs []engine.CellLoc, owe *owed) error {
	if owe == nil || !st.ctrl.Durable() {
		return st.free(ctx, partition, keys, locs)
	}
	owe.add(st.ctrl.ReadIndex(partition, keys), partition, keys, locs)
	return nil
}

// testHookCommit, if set, runs in set and hset between the values' copy
// into their reservation on u and its commit: tests start drains there.
var testHookCommit atomic.Pointer[func(u *storage.Unit)]

// errWouldWait is what a command run on a loop hears where it would
// wait: the connection leaves the loop and runs it again.
var errWouldWait = errors.New("resp: the command would wait")

// noWait is a context that has ended: a reservation with it takes room
// that is free now, or fails at once.
var noWait = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}()

// reserve reserves size bytes on u, waiting up to st.wait for room (the
// timer is only set up when the unit is full). With owe holding cells to
// free, they are freed first (owed.settle): the room waited for may be
// theirs, which only this connection gives back.
func (st *store) reserve(ctx context.Context, u *storage.Unit, size int64, owe *owed) (*storage.Reservation, error) {
	return st.reserveAll(ctx, u, []int64{size}, owe)
}

// reserveAll is reserve of one extent per size.
func (st *store) reserveAll(ctx context.Context, u *storage.Unit, sizes []int64, owe *owed) (*storage.Reservation, error) {
	r, err := u.Reserve(noWait, sizes)
	if err == nil || !errors.Is(err, context.Canceled) {
		return r, err
	}
	if owe != nil && len(owe.frees) > 0 {
		if err := owe.settle(ctx, st); err != nil {
			return nil, err
		}
		if r, err = u.Reserve(noWait, sizes); err == nil || !errors.Is(err, context.Canceled) {
			return r, err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, st.wait)
	defer cancel()
	ctx, unwatch := whileWaiting(ctx)
	defer unwatch()
	return u.Reserve(ctx, sizes)
}

// connKey is the key under which a connection's commands' context holds
// the connection (see whileWaiting).
type connKey struct{}

// whileWaiting returns ctx, ended also once the client of the connection
// whose command waits (the one ctx holds, on its own goroutine) closes
// it or it is reset: a write waiting for room, up to CommandTimeout,
// would otherwise wait on, and may then write, for a client gone (see
// conn.watchGone). A reservation is watched only once it would wait; the
// general way's put throughout, as the client's put waits inside. Call
// unwatch before the connection is read or written again; a client gone
// ends the connection.
func whileWaiting(ctx context.Context) (_ context.Context, unwatch func()) {
	c, _ := ctx.Value(connKey{}).(*conn)
	if c == nil || c.lp != nil {
		return ctx, func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	var gone atomic.Bool
	stop := c.watchGone(func() {
		gone.Store(true)
		cancel()
	})
	return ctx, func() {
		stop()
		cancel()
		if gone.Load() {
			c.quit = true
		}
	}
}

// hset writes fields (each named once) of one key, vals[j][0] the value
// of field j, and answers how many of them are new to the key, counted
// in the controller's step that writes them (so of clients setting one
// new field at once, one hears 1). A commit refused because its unit
// started draining, with no other unit having room at once, changed
// nothing: the put is made again the same way on the unit the key picks
// now, waiting for room there as the general way would, so its count is
// still the commit's. Only where that path is not taken (every unit of
// this process draining, so that the put goes to another process's unit;
// or drains refusing it hsetTries times) does the put go the general
// way, where the count is read before the write (a concurrent write of
// the same field may be counted new twice there). owe as for set.
func (st *store) hset(ctx context.Context, partition, key string, fields []string, vals [][][]byte, owe *owed) (int, error) {
	if !embedded.Name(partition) || !embedded.Name(key) {
		return st.hsetGeneral(ctx, partition, key, fields, vals, owe)
	}
	sizes := make([]int64, len(fields))
	cfs := make([]engine.CommitField, len(fields))
	for j, f := range fields {
		if !embedded.Name(f) {
			return st.hsetGeneral(ctx, partition, key, fields, vals, owe)
		}
		sizes[j] = int64(len(vals[j][0]))
		cfs[j] = engine.CommitField{Name: f, DType: engine.Bytes, Kind: engine.Opaque}
	}
	for range hsetTries {
		u := st.one.UnitFor(key)
		if u == nil {
			break
		}
		r, err := st.reserveAll(ctx, u, sizes, owe)
		if err != nil {
			return 0, err
		}
		for j := range fields {
			copy(r.Buf(j), vals[j][0])
		}
		if h := testHookCommit.Load(); h != nil {
			(*h)(u)
		}
		held, err := st.commitOne(ctx, u, r, partition, key, cfs, owe)
		if _, ok := errors.AsType[*embedded.DrainRefused](err); ok {
			continue // nothing changed
		}
		return len(fields) - held, err
	}
	return st.hsetGeneral(ctx, partition, key, fields, vals, owe)
}

// hsetTries bounds how many drains, each starting between an HSET's
// reservation and its commit, the one-key path outlasts.
const hsetTries = 4

// hsetGeneral is hset through the client: it counts the fields the key
// held before it writes (owe as for put).
func (st *store) hsetGeneral(ctx context.Context, partition, key string, fields []string, vals [][][]byte, owe *owed) (int, error) {
	meta, err := st.keyMeta(ctx, partition, key)
	if err != nil {
		return 0, err
	}
	before := 0
	if meta != nil {
		for _, f := range fields {
			if c := meta.Cells[f]; len(c) > 0 && c[0].Stored() { // as held, a look-up each
				before++
			}
		}
	}
	if err := st.put(ctx, partition, []string{key}, fields, vals, nil, owe); err != nil {
		return 0, err
	}
	return len(fields) - before, nil
}

// getOne reads one field of one key from where it lies: a view into a
// unit's arena, to release once written. ok is false when the key or the
// field is absent; a cell on a unit of another process goes the general
// way. A put that replaces the cell between the lookup and the lease
// (its old extent freed meanwhile) makes it look again. A get that may
// not wait returns errWouldWait where it would go the general way.
func (st *store) getOne(ctx context.Context, partition, key, field string, mayWait bool) (val []byte, release func(), ok bool, err error) {
	for attempt := 0; ; attempt++ {
		loc, ok := st.ctrl.KeyCell(partition, key, field)
		u := st.byID[loc.Unit]
		if ok && (loc.Lost() || u == nil) {
			if !mayWait {
				return nil, nil, false, errWouldWait
			}
			v, err := st.get(ctx, partition, []string{key}, []string{field})
			if err != nil || v.rows[0] == nil || v.rows[0][0] == nil {
				return nil, nil, false, err
			}
			return v.rows[0][0], v.release, true, nil
		}
		if err := st.waitRead(ctx, partition, []string{key}, mayWait); err != nil || !ok {
			return nil, nil, false, err
		}
		ls, err := u.Acquire([]engine.RemoteAddr{loc.Addr})
		if err == nil {
			return ls.Bytes(0), ls.Release, true, nil
		}
		if now, still := st.ctrl.KeyCell(partition, key, field); attempt < 16 && (!still || now != loc) {
			continue // replaced or cleared meanwhile
		}
		return nil, nil, false, fmt.Errorf("key %q field %q of partition %q: %w", key, field, partition, errors.Join(err, engine.ErrLost))
	}
}

// absent reports an error that a Redis client hears as a missing key or
// field (nil), not as an error.
func absent(err error) bool {
	if errors.Is(err, engine.ErrLost) {
		return false // cells gone from their unit wrap ErrNotFound too
	}
	return errors.Is(err, engine.ErrNotFound) || errors.Is(err, engine.ErrNotReady)
}

// put writes fields[j] = vals[j][i] for each keys[i], and merges tags[i]
// into the key's tags (tags may be nil; fields may be empty when tags are
// given). Values are opaque bytes; a field the partition holds with
// another dtype is refused (engine.ErrDTypeMismatch, naming it). With
// owe holding cells to free, they are freed first (owed.settle), as
// before a reservation waits for room (see reserve): the put may need
// their room.
func (st *store) put(ctx context.Context, partition string, keys, fields []string, vals [][][]byte, tags []engine.Tags, owe *owed) error {
	if owe != nil && len(owe.frees) > 0 && len(fields) > 0 {
		if err := owe.settle(ctx, st); err != nil {
			return err
		}
	}
	var b *engine.Batch
	if len(fields) > 0 {
		fs := make([]engine.Field, len(fields))
		for j, name := range fields {
			col, err := opaque(vals[j])
			if err != nil {
				return err
			}
			fs[j] = engine.Field{Name: name, Col: col}
		}
		var err error
		if b, err = engine.NewBatch(fs...); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, st.wait)
	defer cancel()
	ctx, unwatch := whileWaiting(ctx)
	defer unwatch()
	_, err := st.kv.BatchPut(ctx, partition, keys, b, tags)
	return err
}

// opaque builds an opaque column over vals: one value is aliased, several
// are copied back to back.
func opaque(vals [][]byte) (*engine.Column, error) {
	if len(vals) == 1 {
		return engine.NewOpaque([]int{0, len(vals[0])}, vals[0])
	}
	return engine.BytesOf(vals), nil
}

// values holds what a get read: rows[i][j] is field j of key i, nil when
// the key or its field is absent. Call release when the bytes are
// written: they may be views into storage.
type values struct {
	rows     [][][]byte
	releases []func()
}

func (v *values) release() {
	for _, r := range v.releases {
		r()
	}
}

// get reads fields of keys. The common case (every key holds every field)
// is one metadata lookup and one read; when some are absent, each key is
// read on its own.
func (st *store) get(ctx context.Context, partition string, keys, fields []string) (*values, error) {
	v := &values{rows: make([][][]byte, len(keys))}
	// A put may replace the cells, and free them, between the lookup and
	// the lease: look again.
	err := client.Reread(func() error { return st.getInto(ctx, v, partition, keys, fields, 0) })
	if err == nil || !absent(err) {
		return v, err
	}
	if len(keys) == 1 && len(fields) == 1 {
		return v, nil
	}
	// Slow path: each key alone, with the fields it holds.
	for i, k := range keys {
		meta, err := st.cl.MetaByKeys(ctx, partition, []string{k}, nil, false)
		if absent(err) {
			continue
		}
		if err != nil {
			v.release()
			return nil, err
		}
		var have []string
		for _, f := range fields {
			if locs, ok := meta.Cells[f]; ok && locs[0].Stored() {
				have = append(have, f)
			}
		}
		if len(have) == 0 {
			continue
		}
		err = client.Reread(func() error { return st.getInto(ctx, v, partition, []string{k}, have, i) })
		if err != nil && !absent(err) {
			v.release()
			return nil, err
		}
		// Spread the fields read to their places among the asked.
		got := v.rows[i]
		v.rows[i] = make([][]byte, len(fields))
		for j, f := range fields {
			for h, name := range have {
				if name == f && got != nil {
					v.rows[i][j] = got[h]
				}
			}
		}
	}
	return v, nil
}

// getInto reads fields of keys into v.rows[at:].
func (st *store) getInto(ctx context.Context, v *values, partition string, keys, fields []string, at int) error {
	meta, err := st.cl.MetaByKeys(ctx, partition, keys, fields, false)
	if err != nil {
		return err
	}
	// Views into the arena where the units lend them: a value is written
	// to the socket from where it lies.
	view, err := st.cl.GetView(ctx, meta)
	if err != nil {
		return err
	}
	v.releases = append(v.releases, view.Release)
	b := view.Batch
	cols := make([]*engine.Column, len(fields))
	for j, f := range fields {
		cols[j] = b.Col(f)
	}
	for i := range keys {
		row := make([][]byte, len(fields))
		for j, col := range cols {
			row[j] = col.RowBytes(i)
		}
		v.rows[at+i] = row
	}
	return nil
}

// keyMeta returns a key's meta over every field it holds, nil when the
// key is absent.
func (st *store) keyMeta(ctx context.Context, partition, key string) (*engine.BatchMeta, error) {
	meta, err := st.cl.MetaByKeys(ctx, partition, []string{key}, nil, false)
	if absent(err) {
		return nil, nil
	}
	return meta, err
}

// held returns the fields a key's meta holds, in the partition's order.
func held(meta *engine.BatchMeta) []string {
	var out []string
	for _, f := range meta.FieldNames() {
		if meta.Cells[f][0].Stored() {
			out = append(out, f)
		}
	}
	return out
}

func (st *store) exists(ctx context.Context, partition string, keys []string, mayWait bool) ([]bool, error) {
	has := st.ctrl.HasKeys(partition, keys)
	return has, st.waitRead(ctx, partition, keys, mayWait)
}

// waitRead waits until what a read of keys saw is durable. One that may
// not wait returns errWouldWait when it is not durable yet.
func (st *store) waitRead(ctx context.Context, partition string, keys []string, mayWait bool) error {
	if mayWait {
		return st.ctrl.WaitRead(ctx, partition, keys)
	}
	err := st.ctrl.WaitRead(noWait, partition, keys)
	if errors.Is(err, context.Canceled) {
		return errWouldWait
	}
	return err
}

// del clears keys and returns how many existed, counted in the
// controller's step that clears them (so of clients deleting one key at
// once, one hears 1). The cells the keys held are freed once that is
// durable (owe as for freeOwed).
func (st *store) del(ctx context.Context, partition string, keys []string, owe *owed) (int, error) {
	n, freed, err := st.ctrl.ClearKeysCounted(partition, keys)
	if err != nil {
		return 0, err
	}
	return n, st.freeOwed(ctx, partition, keys, freed, owe)
}

// deleteTags removes tag names from a key and answers how many of them
// it had, counted in the controller's step that removes them; 0 for a key
// that does not exist.
func (st *store) deleteTags(ctx context.Context, partition, key string, names []string) (int, error) {
	_, had, err := st.ctrl.DeleteTagsCounted(partition, []string{key}, names)
	if absent(err) {
		return 0, st.ctrl.WaitRead(ctx, partition, []string{key})
	}
	if err != nil {
		return 0, err
	}
	return had[0], st.ctrl.WaitRead(ctx, partition, []string{key})
}

// clearFields drops fields from a key (HDEL) and answers how many it
// held; their cells are freed once that is durable (owe as for
// freeOwed).
func (st *store) clearFields(ctx context.Context, partition, key string, fields []string, owe *owed) (int, error) {
	n, freed, err := st.ctrl.ClearFields(partition, []string{key}, fields)
	if err != nil {
		return 0, err
	}
	return n, st.freeOwed(ctx, partition, []string{key}, freed, owe)
}
