package resp

import (
	"context"
	"errors"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/kvapi"
)

// store is what the commands do to TQ: puts and gets through the client
// (its placement, its checks, its views), key existence and listing
// straight from the controller.
type store struct {
	ctrl *controller.Controller
	cl   *client.Client
	kv   *kvapi.KV
}

// absent reports an error that a Redis client hears as a missing key or
// field (nil), not as an error.
func absent(err error) bool {
	return errors.Is(err, engine.ErrNotFound) || errors.Is(err, engine.ErrNotReady)
}

// put writes fields[j] = vals[j][i] for each keys[i], and merges tags[i]
// into the key's tags (tags may be nil; fields may be empty when tags are
// given). Values are opaque bytes; a field the partition holds with
// another dtype is refused (engine.ErrDTypeMismatch, naming it).
func (st *store) put(ctx context.Context, partition string, keys, fields []string, vals [][][]byte, tags []engine.Tags) error {
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
	err := st.getInto(ctx, v, partition, keys, fields, 0)
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
		if err := st.getInto(ctx, v, partition, []string{k}, have, i); err != nil && !absent(err) {
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

func (st *store) exists(ctx context.Context, partition string, keys []string) ([]bool, error) {
	has := st.ctrl.HasKeys(partition, keys)
	return has, st.ctrl.WaitDurable(ctx)
}

// del clears keys and returns how many existed.
func (st *store) del(ctx context.Context, partition string, keys []string) (int, error) {
	n := 0
	for _, ok := range st.ctrl.HasKeys(partition, keys) {
		if ok {
			n++
		}
	}
	if n == 0 {
		return 0, st.ctrl.WaitDurable(ctx)
	}
	return n, st.cl.Meta().ClearKeys(ctx, partition, keys)
}
