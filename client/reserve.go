package client

// A reserved put moves no bytes through the client: the storage unit
// reserves one extent per field, the caller fills the extents in place
// through columns that alias them, and Commit makes them readable and
// tells the controller, as step 3 and 4 of a put (see put.go).

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"time"

	"github.com/tqgo/tq/engine"
)

// FieldSpec describes one field of a reserved put (see [Client.ReservePut])
// in exactly one of three layouts:
//
//   - dense: Shapes and RowBytes are nil; every row has shape Shape (nil or
//     empty for a scalar) of DType;
//   - ragged: Shapes holds one shape per row of DType;
//   - opaque: RowBytes holds the byte length of each row; DType is
//     [engine.Bytes] or left invalid (zero).
//
// ReservePut copies what it keeps; the caller may reuse the spec after.
type FieldSpec struct {
	Name     string
	DType    engine.DType
	Shape    engine.Shape   // dense: per-row shape
	Shapes   []engine.Shape // ragged: one per row
	RowBytes []int          // opaque: byte length per row
}

// layout checks the spec against n rows and returns its kind and its size
// in bytes.
func (f FieldSpec) layout(n int) (engine.Kind, int64, error) {
	if f.Name == "" {
		return 0, 0, fmt.Errorf("field without a name: %w", engine.ErrInvalid)
	}
	if err := checkUTF8(nameField, f.Name); err != nil {
		return 0, 0, err
	}
	switch {
	case f.Shapes != nil && f.RowBytes != nil, f.Shape != nil && (f.Shapes != nil || f.RowBytes != nil):
		return 0, 0, fmt.Errorf("field %q sets more than one layout: %w", f.Name, engine.ErrInvalid)
	case f.RowBytes != nil:
		if f.DType != engine.InvalidDType && f.DType != engine.Bytes {
			return 0, 0, fmt.Errorf("opaque field %q of dtype %v: %w", f.Name, f.DType, engine.ErrInvalid)
		}
		if len(f.RowBytes) != n {
			return 0, 0, fmt.Errorf("opaque field %q has %d row lengths, meta has %d rows: %w", f.Name, len(f.RowBytes), n, engine.ErrInvalid)
		}
		var size int64
		for i, b := range f.RowBytes {
			if b < 0 || int64(b) > maxFieldBytes-size {
				return 0, 0, fmt.Errorf("opaque field %q row %d of %d bytes: %w", f.Name, i, b, errFieldSize(size))
			}
			size += int64(b)
		}
		return engine.Opaque, size, nil
	}
	if !f.DType.Valid() || f.DType == engine.Bytes {
		return 0, 0, fmt.Errorf("field %q of dtype %v: %w", f.Name, f.DType, engine.ErrInvalid)
	}
	if f.Shapes != nil {
		if len(f.Shapes) != n {
			return 0, 0, fmt.Errorf("ragged field %q has %d shapes, meta has %d rows: %w", f.Name, len(f.Shapes), n, engine.ErrInvalid)
		}
		var size int64
		for i, s := range f.Shapes {
			b, err := s.CellBytes(f.DType)
			if err != nil {
				return 0, 0, fmt.Errorf("field %q row %d: %w", f.Name, i, err)
			}
			if int64(b) > maxFieldBytes-size {
				return 0, 0, fmt.Errorf("field %q row %d of %d bytes: %w", f.Name, i, b, errFieldSize(size))
			}
			size += int64(b)
		}
		return engine.Ragged, size, nil
	}
	b, err := f.Shape.CellBytes(f.DType)
	if err != nil {
		return 0, 0, fmt.Errorf("field %q: %w", f.Name, err)
	}
	if b > 0 && int64(n) > maxFieldBytes/int64(b) {
		return 0, 0, fmt.Errorf("field %q: %d rows of %d bytes exceed %d bytes: %w", f.Name, n, b, maxFieldBytes, engine.ErrInvalid)
	}
	return engine.Dense, int64(n) * int64(b), nil
}

// maxFieldBytes bounds the bytes one field of a reservation spans: the
// largest payload a frame carries.
const maxFieldBytes = engine.MaxCellBytes

// errFieldSize is the error of a field whose rows, after size bytes,
// exceed maxFieldBytes (or of a negative row length).
func errFieldSize(size int64) error {
	return fmt.Errorf("negative, or past %d bytes after %d: %w", int64(maxFieldBytes), size, engine.ErrInvalid)
}

// column builds the field's column over data, which it aliases.
func (f FieldSpec) column(kind engine.Kind, n int, data []byte) (*engine.Column, error) {
	switch kind {
	case engine.Opaque:
		offs := make([]int, n+1)
		for i, b := range f.RowBytes {
			offs[i+1] = offs[i] + b
		}
		return engine.NewOpaque(offs, data)
	case engine.Ragged:
		return engine.NewRagged(f.DType, f.Shapes, data)
	}
	return engine.NewDense(f.DType, n, f.Shape, data)
}

// reserved is what both kinds of reserved put share: extents on one
// unit and the columns over them, which end in exactly one commit or
// abort.
type reserved struct {
	c       *Client
	unit    DataUnit
	cluster string // of the table unit was picked from, for the commit
	res     Reserved
	fields  []engine.Field // columns aliasing res, in spec order

	mu      sync.Mutex
	ended   bool
	cleanup runtime.Cleanup // aborts res if the buffer is dropped open
}

// checkSpecs checks fields for n rows and returns each one's layout and
// size, and its dtype.
func checkSpecs(fields []FieldSpec, n int) ([]engine.Kind, []int64, []engine.DType, error) {
	if len(fields) == 0 {
		return nil, nil, nil, fmt.Errorf("put with no fields: %w", engine.ErrInvalid)
	}
	kinds := make([]engine.Kind, len(fields))
	sizes := make([]int64, len(fields))
	dtypes := make([]engine.DType, len(fields))
	seen := make(map[string]bool, len(fields))
	for i, f := range fields {
		if seen[f.Name] {
			return nil, nil, nil, fmt.Errorf("field %q given twice: %w", f.Name, engine.ErrInvalid)
		}
		seen[f.Name] = true
		kind, size, err := f.layout(n)
		if err != nil {
			return nil, nil, nil, err
		}
		dtypes[i] = f.DType
		if kind == engine.Opaque {
			dtypes[i] = engine.Bytes
		}
		kinds[i], sizes[i] = kind, size
	}
	return kinds, sizes, dtypes, nil
}

// reserve reserves the extents of fields for n rows on u and builds the
// columns over them.
func (c *Client) reserve(ctx context.Context, u DataUnit, fields []FieldSpec, n int, kinds []engine.Kind, sizes []int64) (*reserved, error) {
	rv, ok := u.(Reserver)
	switch {
	case !ok && c.closed.Load():
		// Not the transport: no put of any kind goes out from a closed
		// client, and the caller must hear why.
		return nil, fmt.Errorf("reserve on storage unit %d: the client was closed: %w", u.ID(), engine.ErrClosed)
	case !ok:
		return nil, fmt.Errorf("unit %d (%s) cannot reserve memory for a put: %w", u.ID(), u.Transport(), engine.ErrNotSupported)
	}
	// Under watchDead: a unit gone silent with its connections open and
	// reported dead since ends the reservation as unreachable, and the
	// put reserves on another unit (see deadwatch.go).
	var res Reserved
	err := c.watchDead(ctx, u.ID(), func(ctx context.Context) error {
		var err error
		res, err = rv.ReserveExtents(ctx, sizes)
		return err
	})
	if err != nil {
		settle(ctx)
		if ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
			// Cut by ctx's deadline (a dial's timeout), not by the unit.
			return nil, fmt.Errorf("reserve on unit %d: %w; ctx ended: %w", u.ID(), err, context.Cause(ctx))
		}
		return nil, fmt.Errorf("reserve on unit %d: %w", u.ID(), err)
	}
	b := &reserved{c: c, unit: u, res: res, fields: make([]engine.Field, len(fields))}
	for i, f := range fields {
		col, err := f.column(kinds[i], n, res.Buf(i))
		if err != nil {
			// layout checked everything column checks: a unit that
			// reserved the wrong size.
			err = fmt.Errorf("field %q over reserved extent: %w", f.Name, err)
			return nil, errors.Join(err, res.Abort(context.WithoutCancel(ctx)))
		}
		b.fields[i] = engine.Field{Name: f.Name, Col: col}
	}
	// A buffer dropped without Commit or Abort gives its extents back
	// once collected: the unit holds them until the reservation ends (a
	// slow filler must never write into another put's memory), so nothing
	// else would.
	b.cleanup = runtime.AddCleanup(b, abortDropped, res)
	return b, nil
}

// abortDropped aborts the reservation of a buffer that was collected
// without ending, off the runtime's cleanup goroutine: over shared memory
// it is a round trip.
func abortDropped(res Reserved) {
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), droppedAbortTimeout)
		defer cancel()
		res.Abort(ctx)
	}()
}

// droppedAbortTimeout bounds the abort of a dropped buffer's reservation.
const droppedAbortTimeout = 10 * time.Second

// Unit returns the storage unit the buffer's extents are reserved on.
func (b *reserved) Unit() DataUnit { return b.unit }

// Column returns the column of field name, in the layout its spec asked
// for, aliasing the reserved memory: write it (through [engine.Values],
// [engine.Row] or Data) to fill the field. Storage units align extents,
// so engine.Values returns a view of the memory, not a copy. The column
// is valid until Commit or Abort; Column returns nil for a name not
// reserved or once the buffer has ended.
func (b *reserved) Column(name string) *engine.Column {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ended {
		return nil
	}
	for _, f := range b.fields {
		if f.Name == name {
			return f.Col
		}
	}
	return nil
}

// end marks the buffer ended and reports whether it was open.
func (b *reserved) end() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ended {
		return false
	}
	b.ended = true
	b.cleanup.Stop()
	return true
}

// commitUnit makes the extents readable on the unit and returns the cells
// of each field for the controller (in runs where runs allows, see
// extentFields), with the filled columns as a batch. On failure the
// extents are given back.
func (b *reserved) commitUnit(ctx context.Context, runs bool) ([]engine.CommitField, *engine.Batch, error) {
	exts := make([]engine.RemoteAddr, len(b.fields))
	for i := range exts {
		exts[i] = b.res.Addr(i)
	}
	cfs := extentFields(b.fields, b.unit.ID(), exts, runs)
	batch, err := engine.NewBatch(b.fields...)
	if err != nil {
		return nil, nil, errors.Join(err, b.abortExtents(context.WithoutCancel(ctx)))
	}
	// Under watchDead, as the reservation was: a unit gone silent since
	// ends the commit (and the abort after it) as unreachable rather than
	// at the caller's deadline; the unit frees the extents after its
	// reserve timeout once it answers again.
	if err := b.c.watchDead(ctx, b.unit.ID(), b.res.Commit); err != nil {
		err = fmt.Errorf("commit on unit %d: %w", b.unit.ID(), err)
		return nil, nil, errors.Join(err, b.abortExtents(context.WithoutCancel(ctx)))
	}
	return cfs, batch, nil
}

// readBack copies the buffer's bytes, committed on the unit but named by
// no cell (the controller refused them as lost), from the unit into a
// batch of the same columns that the client owns, for the put to be
// written again elsewhere: the columns over the extents must not be read
// after the unit's commit.
func (b *reserved) readBack(ctx context.Context) (*engine.Batch, error) {
	var addrs []engine.RemoteAddr
	var dst [][]byte
	fields := make([]engine.Field, len(b.fields))
	for i, f := range b.fields {
		data := make([]byte, f.Col.Size())
		if len(data) > 0 {
			addrs, dst = append(addrs, b.res.Addr(i)), append(dst, data)
		}
		var col *engine.Column
		var err error
		switch f.Col.Kind() {
		case engine.Opaque:
			col, err = engine.NewOpaque(f.Col.Offsets(), data)
		case engine.Ragged:
			col, err = engine.NewRagged(f.Col.DType(), f.Col.Shapes(), data)
		default:
			col, err = engine.NewDense(f.Col.DType(), f.Col.Len(), f.Col.Shape(), data)
		}
		if err != nil {
			return nil, err
		}
		fields[i] = engine.Field{Name: f.Name, Col: col}
	}
	if err := b.unit.ReadInto(ctx, addrs, dst); err != nil {
		return nil, fmt.Errorf("read back from unit %d: %w", b.unit.ID(), err)
	}
	return engine.NewBatch(fields...)
}

// writeAgain is how a reserved put whose commit the controller refused
// ends: the cells freed, and, when the refusal was CODE_LOST (the unit
// was marked draining after the reservation, or its generation fenced),
// the bytes read back and handed to put, which writes them elsewhere
// after the client listed the units again. err is the refusal; the
// result is put's, or err (with why) when the bytes cannot be read back.
func (b *reserved) writeAgain(ctx context.Context, err error, cfs []engine.CommitField, put func(*engine.Batch) error) error {
	var batch *engine.Batch
	var rerr error
	if errors.Is(err, engine.ErrLost) && ctx.Err() == nil {
		b.c.placeAgain(ctx, err) // a client that lists the units lists them
		batch, rerr = b.readBack(ctx)
	}
	if ferr := b.free(ctx, cfs); ferr != nil || batch == nil {
		return errors.Join(err, rerr, ferr)
	}
	return put(batch)
}

// free gives back the cells of a unit commit the controller refused.
func (b *reserved) free(ctx context.Context, cfs []engine.CommitField) error {
	return b.c.freeOn(context.WithoutCancel(ctx), b.unit, fieldAddrs(cfs))
}

// abort gives the extents back if the buffer is still open.
func (b *reserved) abort(ctx context.Context) error {
	if !b.end() {
		return nil
	}
	return b.abortExtents(ctx)
}

// abortExtents gives the extents back under watchDead: an abort after a
// failure runs WithoutCancel, with no deadline, and a unit gone silent
// would hold it until the data connection's liveness check.
func (b *reserved) abortExtents(ctx context.Context) error {
	return b.c.watchDead(ctx, b.unit.ID(), b.res.Abort)
}

// PutBuffer is a put in progress whose bytes the caller writes straight
// into memory a storage unit reserved for it (see [Client.ReservePut]).
// The unit owns that memory. The columns of [PutBuffer.Column] alias it and
// may be written until Commit or Abort; afterwards they must not be used at
// all, since the bytes belong to the unit (and, over shm, may be unmapped).
// Nobody can read the rows before Commit. A PutBuffer must end in exactly
// one Commit or Abort; one dropped without either is aborted when the
// garbage collector finds it (and, over shared memory, when the client's
// connection to the unit closes), and until then its extents stay
// reserved. A buffer filled for longer than the unit's reserve timeout
// (storage.Config.ReserveTimeout, 30 s by default) can no longer commit:
// Commit fails with [engine.ErrInvalid] and gives the extents back, and
// the unit kept them for it meanwhile, so its bytes never land in another
// put's memory. Its methods are safe for concurrent use, but it is meant
// to be filled by one put.
type PutBuffer struct {
	*reserved
	meta *engine.BatchMeta // the caller's rows, cloned
	part string
}

// ReservePut reserves, on one storage unit, one extent per field for the
// rows of meta (row i of each field goes to row i of meta) and returns a
// buffer whose columns alias them for the caller to fill; nothing is
// copied on the way to the unit. The rows all go to one unit: the first
// that placement (see place.go) finds room on for all of them. The unit must implement [Reserver]; ReservePut never falls
// back to copying. meta is not retained.
//
// Errors: [engine.ErrInvalid] for no fields, a duplicate name, a spec with
// no or several layouts, a row-count mismatch, an empty meta or rows of
// more than one partition; [engine.ErrDTypeMismatch] when a field already
// has another dtype; [engine.ErrNotSupported] when the chosen unit cannot
// reserve; [engine.ErrCapacity] when storage stays full until ctx ends
// (a reserved put waits for room as long as ctx allows, as for
// [Client.Put]).
// On error nothing stays reserved.
func (c *Client) ReservePut(ctx context.Context, meta *engine.BatchMeta, fields ...FieldSpec) (*PutBuffer, error) {
	b, err := c.reservePut(ctx, meta, fields)
	if err != nil {
		return nil, &engine.OpError{Op: "reserve put", Err: err}
	}
	return b, nil
}

func (c *Client) reservePut(ctx context.Context, meta *engine.BatchMeta, fields []FieldSpec) (*PutBuffer, error) {
	if meta.Len() == 0 {
		return nil, fmt.Errorf("put into an empty meta: %w", engine.ErrInvalid)
	}
	if err := meta.Validate(); err != nil {
		return nil, err
	}
	n := meta.Len()
	part := meta.Partitions[0]
	for _, p := range meta.Partitions {
		if p != part {
			return nil, fmt.Errorf("reserved put spans partitions %q and %q: %w", part, p, engine.ErrInvalid)
		}
	}
	kinds, sizes, dtypes, err := checkSpecs(fields, n)
	if err != nil {
		return nil, err
	}
	for i, f := range fields {
		if s, ok := meta.Schema[f.Name]; ok && s.DType != engine.InvalidDType && s.DType != dtypes[i] {
			return nil, fmt.Errorf("field %q is %v, put has %v: %w", f.Name, s.DType, dtypes[i], engine.ErrDTypeMismatch)
		}
	}
	lowest := meta.Indexes[0]
	for _, i := range meta.Indexes {
		lowest = min(lowest, i)
	}
	r, err := c.reservePlaced(ctx, lowest, fields, n, kinds, sizes)
	if err != nil {
		return nil, err
	}
	if err := sameRows(meta.Cluster, r.cluster); err != nil {
		return nil, errors.Join(err, r.abort(context.WithoutCancel(ctx)))
	}
	return &PutBuffer{reserved: r, meta: meta.Clone(), part: part}, nil
}

// reservePlaced reserves the extents of a put that goes to one unit
// (its sizes, n rows) on the unit placement picks for it (see place.go),
// seeded by seed: without waiting where the estimate says there is room,
// on another unit when that one refuses or cannot be reached (see
// [unreachable]; each unit is left out at most once), and waiting for
// room only when no unit has it, until ctx ends: after a unit in another
// process waited out its reserve wait, placed anew (see [planner.again]).
func (c *Client) reservePlaced(ctx context.Context, seed uint64, fields []FieldSpec, n int, kinds []engine.Kind, sizes []int64) (*reserved, error) {
	var total int64
	for _, s := range sizes {
		total += s
	}
	p := c.newPlanner(seed)
	if err := p.noUnit(); err != nil {
		return nil, err
	}
	if most := p.largest(); most > 0 && total > most {
		return nil, fmt.Errorf("a reserved put of %d bytes goes to one unit, more than the largest storage unit's capacity (%d bytes): %w", total, most, engine.ErrCapacity)
	}
	var full error // the refusal of the last reservation that waited out its unit's reserve wait
	for {
		began := time.Now()
		s, room := p.pickOne(total, seed)
		u := p.slots[s].u
		rctx := ctx
		if room {
			rctx = engine.WithoutWait(ctx)
		}
		r, err := c.reserve(rctx, u, fields, n, kinds, sizes)
		if err == nil {
			c.room.wrote(u.ID(), total)
			r.cluster = p.cluster
			return r, nil
		}
		switch {
		case unreachable(ctx, err):
			// The unit may have died after the client listed it, or be
			// down with every other (see writable): nothing was reserved
			// there, so the put goes to another unit, as writePlaced's do.
			// Each unit is left out at most once.
			p.exclude([]int{s}, []error{err})
			if err := p.noUnit(); err != nil {
				return nil, err
			}
		case !room && outwaitedReserve(ctx, u, err):
			// A unit in another process waited out its reserve wait: the
			// put waits again, placed anew (see place.go).
			full = err
			if err := p.again(ctx, began, full); err != nil {
				return nil, err
			}
		case (!room || full != nil || errors.Is(err, engine.ErrCapacity)) && ctx.Err() != nil:
			// Refused for room as ctx ended, too: ErrCapacity with
			// ctx's error, as writePlaced's.
			return nil, waitedOut(ctx, err, n)
		case !room || ctx.Err() != nil:
			return nil, err
		case errors.Is(err, engine.ErrCapacity):
			p.refused(s, total)
		case errors.Is(err, engine.ErrNotSupported):
			// A unit reached over tcp cannot lend its memory: not a
			// place for this put, though it has room.
			p.slots[s].free, p.slots[s].refused = 0, true
		default:
			return nil, err
		}
	}
}

// Commit makes the filled extents readable on the unit, commits the cells
// to the controller (which flips the rows' production bits), frees the
// cells the commit replaced, and returns the meta with the fields added
// and ready (a fresh meta the caller owns). The columns of
// [PutBuffer.Column] must not be used after Commit starts. On failure the
// extents are given back and the controller was never told about them.
// A commit the controller refuses as lost (the unit was marked draining,
// or its generation fenced, after the reservation) is not a failure: the
// bytes are read back from the unit and put again elsewhere.
// A Commit whose ctx ends fares as a put's commit does (see [Client.Put]):
// only where the error says that the put may have happened do the
// extents stay, for the cells that may name them.
// A second Commit, or Commit after Abort, fails with [engine.ErrInvalid].
func (b *PutBuffer) Commit(ctx context.Context) (*engine.BatchMeta, error) {
	out, err := b.commit(ctx)
	if err != nil {
		return nil, &engine.OpError{Op: "reserve put", Peer: b.part, Err: err}
	}
	return out, nil
}

func (b *PutBuffer) commit(ctx context.Context) (*engine.BatchMeta, error) {
	if !b.end() {
		return nil, fmt.Errorf("put buffer ended already: %w", engine.ErrInvalid)
	}
	cfs, batch, err := b.commitUnit(ctx, false) // the meta it returns lists every cell
	if err != nil {
		return nil, err
	}
	req := engine.CommitRequest{Partition: b.part, Indexes: b.meta.Indexes, Fields: cfs, Cluster: b.cluster}
	if maybe, err := b.c.commit(ctx, req); err != nil {
		if maybe {
			return nil, err // the commit may have happened: the cells stay
		}
		// The extents are committed on the unit but no row points at
		// them: free their cells (and write them again where CODE_LOST
		// says to).
		var out *engine.BatchMeta
		err = b.writeAgain(ctx, err, cfs, func(again *engine.Batch) (err error) {
			out, err = b.c.Put(ctx, again, b.meta)
			return err
		})
		return out, err
	}
	out := b.meta.Clone()
	if len(b.meta.Cells) == 0 {
		out.Cluster = b.cluster // the new cells' (see engine.BatchMeta); the rows' too (ReservePut checked)
	}
	if out.Cells == nil {
		out.Cells = map[string][]engine.CellLoc{}
	}
	for _, cf := range cfs {
		out.Cells[cf.Name] = cf.Locs
	}
	if err := out.AddFields(batch); err != nil {
		return nil, err
	}
	return out, nil
}

// Abort gives the reserved extents back; nothing was written to the
// controller. The columns of [PutBuffer.Column] must not be used after
// Abort starts. Abort does nothing after Commit or a first Abort. The
// rows of the meta stay as they were (fresh rows from an insert stay
// allocated and not ready).
func (b *PutBuffer) Abort(ctx context.Context) error {
	if err := b.abort(ctx); err != nil {
		return &engine.OpError{Op: "reserve put", Peer: b.part, Err: err}
	}
	return nil
}
