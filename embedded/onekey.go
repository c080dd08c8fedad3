package embedded

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"unicode/utf8"

	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/storage"
)

// OneKey puts and gets one key's fields on storage units of the
// controller's process with nothing general built: the fast paths of
// KV_PUT and KV_GET of a single key, of KV_SET and KV_GET_VALUE (Value:
// one field's bytes, no batch) and of the Redis endpoint's SET (its GET
// has a lean one of its own). A put reserves on one unit, the caller
// copies (or reads the bytes there), one commit follows; a get looks the
// cells up under one lock and leases them. What
// they do not cover (several keys, a full or draining unit, a cell on a
// unit of another process, a key not ready) the caller answers the
// general way, through a client of the same controller and units. Both
// keep the general path's guarantees: a put is answered once its record
// is durable and frees what it replaced only then; a get waits for what
// it saw to be durable and leases cells the unit checks (incarnation,
// generation), so a cell replaced meanwhile is an error to read again
// ([github.com/tqgo/tq/client.CellsGone]), never other bytes.
type OneKey struct {
	c     *controller.Controller
	meta  localMeta
	units []*storage.Unit
}

// NewOneKey returns the one-key paths over c and units of this process
// (registered with it).
func NewOneKey(c *controller.Controller, units ...*storage.Unit) *OneKey {
	return &OneKey{c: c, meta: Meta(c, units...).(localMeta), units: units}
}

// Name reports a partition, key or field name the fast paths take as it
// is; the general path refuses the others with its errors (before a byte
// is written).
func Name(s string) bool { return s != "" && len(s) <= engine.MaxNameBytes && utf8.ValidString(s) }

// UnitFor returns the unit a put of key writes to: one picked by the
// key's hash among the units not draining, nil when every unit is.
func (o *OneKey) UnitFor(key string) *storage.Unit {
	n := len(o.units)
	var h uint64
	if n > 1 {
		f := fnv.New64a()
		f.Write([]byte(key))
		h = f.Sum64()
	}
	for i := range n {
		u := o.units[(h+uint64(i))%uint64(n)]
		if !o.meta.Draining(u.ID()) {
			return u
		}
	}
	return nil
}

// Commit commits r, reserved on u with one extent per field and filled by
// the caller, as key's fields (each with its dtype, kind and shape; Locs
// are set here) and merges tags (may be nil) into its tags. It returns
// once the commit's record is durable, then frees the cells it replaced.
// A commit the controller refuses (a dtype the partition holds otherwise)
// frees the extents and changes nothing. r is ended either way. The
// controller in this process takes a change whatever ctx says; ctx bounds
// the wait for its record only, so a commit whose ctx ends (or whose log
// fails) before that record is durable returns an error saying that the
// put may have happened, as the general path's
// ([github.com/tqgo/tq/client.Client.PutKeys]) does.
//
// A commit refused because u was marked draining after [OneKey.UnitFor]
// picked it is made once more: on u, if the drain was lifted meanwhile,
// else on the unit the key picks now, with the bytes copied there (when
// it has room at once), so that a put during a drain does not fail for
// any client: none of them sees the unit chosen. Where that is refused
// too, or no unit has room at once, the error is a [*DrainRefused]
// holding the bytes, for the caller to put the general way (which waits
// for room as its context allows).
func (o *OneKey) Commit(ctx context.Context, u *storage.Unit, r *storage.Reservation, partition, key string, fields []engine.CommitField, tags engine.Tags) (engine.KeysCommitted, error) {
	out, _, err := o.commit(ctx, u, r, partition, key, fields, tags, true, nil)
	return out, err
}

// CommitHeld is [OneKey.Commit] that also answers how many of fields
// (each named once) the key held before, counted by the controller in
// the step that replaced their cells: of callers writing one new field at
// once, one hears that it was new (what Redis's HSET answers).
func (o *OneKey) CommitHeld(ctx context.Context, u *storage.Unit, r *storage.Reservation, partition, key string, fields []engine.CommitField, tags engine.Tags) (int, error) {
	_, held, err := o.commit(ctx, u, r, partition, key, fields, tags, true, nil)
	return held, err
}

// CommitOwed is [OneKey.Commit] that returns as soon as the controller
// took the change, before its record is durable: it returns the cells
// the change replaced, which the caller frees, with [Freer], once the
// key's change is durable ([controller.Controller.ReadIndex] names the
// record to wait for). Nothing it acknowledges may reach a client
// before then. A connection serving a pipeline of writes thus waits for
// the log once for all of them.
// It also answers, as [OneKey.CommitHeld] does, how many of fields the
// key held before.
func (o *OneKey) CommitOwed(ctx context.Context, u *storage.Unit, r *storage.Reservation, partition, key string, fields []engine.CommitField) (held int, replaced []engine.CellLoc, err error) {
	_, held, err = o.commit(ctx, u, r, partition, key, fields, nil, true, &replaced)
	return held, replaced, err
}

// commit is Commit; with owed, the cells the change replaced are
// returned there, not freed once it is durable, and it returns at once.
func (o *OneKey) commit(ctx context.Context, u *storage.Unit, r *storage.Reservation, partition, key string, fields []engine.CommitField, tags engine.Tags, again bool, owed *[]engine.CellLoc) (engine.KeysCommitted, int, error) {
	addrs := make([]engine.RemoteAddr, len(fields))
	for i := range fields {
		addrs[i] = r.Addr(i)
	}
	if err := r.Commit(); err != nil {
		r.Abort()
		return engine.KeysCommitted{}, 0, err
	}
	// The key and one field's location in one allocation.
	mem := &struct {
		keys [1]string
		locs [1]engine.CellLoc
	}{keys: [1]string{key}}
	locs := mem.locs[:]
	if len(fields) > len(locs) {
		locs = make([]engine.CellLoc, len(fields))
	}
	for i := range fields {
		locs[i] = engine.CellLoc{Unit: u.ID(), Addr: addrs[i]}
		fields[i].Locs = locs[i : i+1 : i+1]
	}
	req := engine.KeysCommit{Partition: partition, Keys: mem.keys[:], Fields: fields}
	if tags != nil {
		req.Tags = []engine.Tags{tags}
	}
	out, err := o.c.CommitKeys(req)
	if err != nil && again && errors.Is(err, controller.ErrDraining) && !o.meta.Draining(u.ID()) {
		// The drain was lifted since the refusal: the cells may stay.
		out, err = o.c.CommitKeys(req)
	}
	if err != nil {
		// In this process a refused commit changed nothing. One refused
		// for a drain is made elsewhere: on the unit the key picks now
		// (once), or by the caller the general way, with the bytes.
		var nu *storage.Unit
		var nr *storage.Reservation
		var saved [][]byte
		if errors.Is(err, controller.ErrDraining) {
			if again {
				nu, nr = o.moveOff(ctx, u, addrs, key)
			}
			if nr == nil {
				saved = copyOut(u, addrs)
			}
		}
		u.FreeRanges(addrs)
		if nr != nil {
			return o.commit(ctx, nu, nr, partition, key, fields, tags, false, owed)
		}
		if saved != nil {
			return engine.KeysCommitted{}, 0, &DrainRefused{Bytes: saved, Err: err}
		}
		return engine.KeysCommitted{}, 0, err
	}
	// Each cell replaced is one of fields the key held.
	replaced := out.Replaced
	out.Replaced = nil
	if owed != nil {
		*owed = replaced
		return out, len(replaced), nil
	}
	if err := o.meta.freeAfterKeys(ctx, partition, req.Keys, replaced); err != nil {
		// The controller took the change whatever ctx says: only its
		// record is not known durable.
		return engine.KeysCommitted{}, 0, fmt.Errorf("key %q: the controller took the put, whose record is not known to be durable: the put may have happened: %w", key, err)
	}
	return out, len(replaced), nil
}

// moveOff copies the extents at addrs, committed on from (a draining
// unit) but named by no cell, into a reservation on the unit key picks
// now; nil when there is none but from, it has no room at once, or the
// extents cannot be read.
func (o *OneKey) moveOff(ctx context.Context, from *storage.Unit, addrs []engine.RemoteAddr, key string) (*storage.Unit, *storage.Reservation) {
	to := o.UnitFor(key)
	if to == nil || to == from {
		return nil, nil
	}
	sizes := make([]int64, len(addrs))
	for i, a := range addrs {
		sizes[i] = int64(a.Len)
	}
	l, err := from.Acquire(addrs)
	if err != nil {
		return nil, nil
	}
	defer l.Release()
	r, err := to.Reserve(engine.WithoutWait(ctx), sizes)
	if err != nil {
		return nil, nil
	}
	for i := range addrs {
		copy(r.Buf(i), l.Bytes(i))
	}
	return to, r
}

// DrainRefused is [OneKey.Commit]'s error when the controller refused the
// commit because the unit had started draining and no other unit had
// room at once: Bytes holds each field's bytes, copied out before the
// extents were freed, for the caller to put the general way. It wraps
// the refusal ([engine.ErrLost]).
type DrainRefused struct {
	Bytes [][]byte
	Err   error
}

func (e *DrainRefused) Error() string {
	return fmt.Sprintf("no unit has room at once for a put refused on a draining unit: %v", e.Err)
}

func (e *DrainRefused) Unwrap() error { return e.Err }

// copyOut copies the extents at addrs on u to the heap; nil when they
// cannot be read.
func copyOut(u *storage.Unit, addrs []engine.RemoteAddr) [][]byte {
	l, err := u.Acquire(addrs)
	if err != nil {
		return nil
	}
	defer l.Release()
	out := make([][]byte, len(addrs))
	for i := range addrs {
		out[i] = bytes.Clone(l.Bytes(i))
		if out[i] == nil {
			out[i] = []byte{}
		}
	}
	return out
}

// Value reads one field of key as Get does, without the batch around
// it: a view of the cell's bytes, released by release, and the cell
// (its dtype, kind and shape, as a batch of one row would report them).
func (o *OneKey) Value(ctx context.Context, partition, key, field string, maxBytes int) (val []byte, kc controller.KeyCell, release func(), ok bool, err error) {
	var buf [1]controller.KeyCell
	cells, found := o.c.KeyCells(partition, key, []string{field}, buf[:0])
	if !found || len(cells) != 1 {
		return nil, kc, nil, false, nil
	}
	kc = cells[0]
	u := o.meta.units[kc.Loc.Unit]
	if kc.Loc.Lost() || u == nil || int(kc.Loc.Addr.Len) > maxBytes {
		return nil, kc, nil, false, nil
	}
	if err := o.c.WaitRead(ctx, partition, []string{key}); err != nil {
		return nil, kc, nil, true, err
	}
	l, err := u.Acquire([]engine.RemoteAddr{kc.Loc.Addr})
	if err != nil {
		return nil, kc, nil, true, fmt.Errorf("key %q field %q of partition %q: %w", key, field, partition, errors.Join(err, engine.ErrLost))
	}
	data := l.Bytes(0)
	if want := kc.Shape.NumElems() * kc.DType.Size(); kc.Kind != engine.Opaque && len(data) != want {
		l.Release()
		return nil, kc, nil, true, fmt.Errorf("key %q field %q holds %d bytes, %v%v needs %d: %w", key, field, len(data), kc.DType, kc.Shape, want, engine.ErrCorrupt)
	}
	return data, kc, l.Release, true, nil
}

// Get reads fields of key when every one of them is produced and lies on
// a unit of this process, holding at most maxBytes in all: a batch of one
// row whose columns are views of the units' memory, released with the
// batch. ok is false when the caller must take the general path: the key
// absent, a field missing or not produced, a cell lost or on another
// process's unit, or more than maxBytes. A cell freed between the lookup
// and the lease (a put replaced it) is an error wrapping
// [engine.ErrLost] and [engine.ErrNotFound]: look again.
func (o *OneKey) Get(ctx context.Context, partition, key string, fields []string, maxBytes int) (_ *engine.Batch, ok bool, err error) {
	var buf [4]controller.KeyCell
	cells, found := o.c.KeyCells(partition, key, fields, buf[:0])
	if !found {
		return nil, false, nil
	}
	total := 0
	for _, kc := range cells {
		if kc.Loc.Lost() || o.meta.units[kc.Loc.Unit] == nil {
			return nil, false, nil
		}
		total += int(kc.Loc.Addr.Len)
	}
	if total > maxBytes {
		return nil, false, nil
	}
	if err := o.c.WaitRead(ctx, partition, []string{key}); err != nil {
		return nil, true, err
	}
	leases := make([]*storage.Lease, 0, len(cells))
	release := func() {
		for _, l := range leases {
			l.Release()
		}
	}
	cols := make([]engine.Field, len(cells))
	for i, kc := range cells {
		l, err := o.meta.units[kc.Loc.Unit].Acquire([]engine.RemoteAddr{kc.Loc.Addr})
		if err != nil {
			release()
			return nil, true, fmt.Errorf("key %q field %q of partition %q: %w", key, kc.Field, partition, errors.Join(err, engine.ErrLost))
		}
		leases = append(leases, l)
		data := l.Bytes(0)
		var col *engine.Column
		if kc.Kind == engine.Opaque {
			col, err = engine.NewOpaque([]int{0, len(data)}, data)
		} else if want := kc.Shape.NumElems() * kc.DType.Size(); len(data) != want {
			err = fmt.Errorf("key %q field %q holds %d bytes, %v%v needs %d: %w", key, kc.Field, len(data), kc.DType, kc.Shape, want, engine.ErrCorrupt)
		} else {
			col, err = engine.NewDense(kc.DType, 1, kc.Shape, data)
		}
		if err != nil {
			release()
			return nil, true, err
		}
		cols[i] = engine.Field{Name: kc.Field, Col: col}
	}
	b, err := engine.NewBatch(cols...)
	if err != nil {
		release() // a field named twice: the general path says so
		return nil, false, nil
	}
	return b.Views(release), true, nil
}
