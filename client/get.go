package client

// A get leases every cell it reads, grouped by unit. Cells of one field
// that sit back to back in one segment (the common case: a put's column
// slice) are leased as one range, so a field usually becomes one range:
// a view get builds the column straight over it (no copy); a copying get
// does one memcpy into a fresh buffer. Scattered fields are gathered.

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/tqgo/tq/engine"
)

// View is a batch whose columns may alias storage memory. The memory stays
// valid (and unchanged, even if the rows are cleared or overwritten) until
// Release. The caller must not write to the columns.
type View struct {
	*engine.Batch
	leases []Lease
}

// Release ends the view; its columns must not be used afterwards. Release
// is idempotent.
func (v *View) Release() {
	for _, l := range v.leases {
		l.Release()
	}
	v.leases = nil
}

// Get reads the meta's fields for its rows. Every row must be ready for
// every field.
//
// Over shared memory it returns views into the units' arenas, moving no
// bytes: the columns are read-only (a write through them faults) and stay
// valid, unchanged even if the rows are cleared, until the caller calls
// [engine.Batch.Release]. Elsewhere, or with [Config.CopyGets], the
// columns are fresh copies the caller owns and Release does nothing. So
// are a unit's cells of at most [shm.InlineMax] bytes in all: it sends
// those in its answer, in one round trip, where a view needs a lease taken
// and given back.
// [Client.GetCopy] always copies; [Client.GetInto] copies into the caller's
// buffer.
//
// Errors: [engine.ErrNotReady] naming unproduced cells, [engine.ErrLost]
// when a unit no longer holds the cells (it closed, cannot be reached,
// or lost them), [engine.ErrClosed] without ErrLost when this client was
// closed (the cells are not known lost).
func (c *Client) Get(ctx context.Context, meta *engine.BatchMeta) (*engine.Batch, error) {
	if c.cfg.CopyGets || !c.lendsViews(meta) {
		return c.GetCopy(ctx, meta)
	}
	v, err := c.get(ctx, meta, preferViews)
	if err != nil {
		return nil, err
	}
	if len(v.leases) == 0 {
		return v.Batch, nil
	}
	return v.Batch.Views(v.Release), nil
}

// GetCopy is [Client.Get] into freshly allocated columns the caller owns,
// whatever the transport.
func (c *Client) GetCopy(ctx context.Context, meta *engine.BatchMeta) (*engine.Batch, error) {
	v, err := c.get(ctx, meta, copies)
	if err != nil {
		return nil, err
	}
	v.Release()
	return v.Batch, nil
}

// lendsViews reports whether every cell of meta is on a unit reached over
// shared memory, the transport whose gets are views by default.
func (c *Client) lendsViews(meta *engine.BatchMeta) bool {
	last := engine.UnitID(0)
	for _, locs := range meta.Cells {
		for _, l := range locs {
			if l.Unit == last {
				continue
			}
			u, ok := c.tbl.Load().byID[l.Unit]
			if !ok || u.Transport() != "shm" {
				return false
			}
			last = l.Unit
		}
	}
	return last != 0
}

// GetView reads the meta's fields as views into storage where the cells
// allow it (no copy); release the view when done.
func (c *Client) GetView(ctx context.Context, meta *engine.BatchMeta) (*View, error) {
	return c.get(ctx, meta, views)
}

// run is a stretch of back-to-back cells of one field on one unit.
type run struct {
	unit  engine.UnitID
	addr  engine.RemoteAddr
	first int // first row position
	n     int // rows in the run
	lease int // index of the range in its unit's lease
}

// getMode is what a get returns.
type getMode int

const (
	copies      getMode = iota // columns the caller owns
	views                      // views into storage wherever a unit lends them
	preferViews                // views, but small reads copied where that is cheaper (see inliner)
)

// inliner is a unit that answers a read of at most some bytes in one
// round trip, with no lease (shm over a control ring).
type inliner interface {
	Inline(n uint64) bool
}

func (c *Client) get(ctx context.Context, meta *engine.BatchMeta, mode getMode) (*View, error) {
	v, err := c.getOnce(ctx, meta, mode)
	// Cells gone from their unit may have been moved (a drain): read them
	// where they went. A cell moved again between the answer and the read
	// is asked for again; cells overwritten or cleared have no forwarding,
	// and the read fails as it would have.
	for try := 0; try < 3 && CellsGone(err) && ctx.Err() == nil; try++ {
		moved := c.movedMeta(ctx, meta)
		if moved == nil {
			break
		}
		meta = moved
		v, err = c.getOnce(ctx, meta, mode)
	}
	return v, err
}

func (c *Client) getOnce(ctx context.Context, meta *engine.BatchMeta, mode getMode) (*View, error) {
	v, err := c.getRuns(ctx, meta, mode, true)
	if errors.Is(err, errMergedRange) {
		// Back-to-back cells can straddle two extents (two puts placed side
		// by side); lease them cell by cell.
		v, err = c.getRuns(ctx, meta, mode, false)
	}
	return v, err
}

// forwarder is a metadata service that knows where moved cells went (see
// [RemoteMeta.Moved]).
type forwarder interface {
	Moved(ctx context.Context, from []engine.CellLoc) ([]engine.CellLoc, error)
}

// movedChunk bounds the cells of one MOVED request.
const movedChunk = 1 << 16

// movedMeta returns meta with the cells the controller reports moved at
// their new locations; nil when none moved (or it cannot tell).
func (c *Client) movedMeta(ctx context.Context, meta *engine.BatchMeta) *engine.BatchMeta {
	fw, ok := c.meta.(forwarder)
	if !ok {
		return nil
	}
	var out *engine.BatchMeta
	for _, name := range meta.FieldNames() {
		locs := meta.Cells[name]
		for lo := 0; lo < len(locs); lo += movedChunk {
			part := locs[lo:min(lo+movedChunk, len(locs))]
			to, err := fw.Moved(ctx, part)
			if err != nil {
				return nil
			}
			for i, l := range to {
				if !l.Stored() {
					continue
				}
				if out == nil {
					out = meta.Clone()
				}
				out.Cells[name][lo+i] = l
			}
		}
	}
	return out
}

// rangesLen is the bytes of addrs.
func rangesLen(addrs []engine.RemoteAddr) uint64 {
	var n uint64
	for _, a := range addrs {
		n += a.Len
	}
	return n
}

// errMergedRange reports that a merged lease range was refused.
var errMergedRange = errors.New("client: merged range refused")

func (c *Client) getRuns(ctx context.Context, meta *engine.BatchMeta, mode getMode, merge bool) (*View, error) {
	if meta.Len() == 0 {
		b, _ := engine.NewBatch()
		return &View{Batch: b}, nil
	}
	if err := meta.Validate(); err != nil {
		return nil, &engine.OpError{Op: "get", Err: err}
	}
	names := meta.FieldNames()
	if err := checkReady(meta, names); err != nil {
		return nil, &engine.OpError{Op: "get", Peer: meta.Partitions[0], Err: err}
	}
	if err := checkLens(meta, names); err != nil {
		return nil, &engine.OpError{Op: "get", Peer: meta.Partitions[0], Err: err}
	}
	runs := make(map[string][]run, len(names))
	ranges := map[engine.UnitID][]engine.RemoteAddr{}
	for _, name := range names {
		rs := splitRuns(meta.Cells[name], merge)
		for i := range rs {
			rs[i].lease = len(ranges[rs[i].unit])
			ranges[rs[i].unit] = append(ranges[rs[i].unit], rs[i].addr)
		}
		runs[name] = rs
	}
	v := &View{}
	leases, err := c.leaseAll(ctx, meta.Cluster, ranges, mode, merge)
	for _, l := range leases {
		v.leases = append(v.leases, l)
	}
	if err != nil {
		v.Release()
		return nil, err
	}
	fields := make([]engine.Field, 0, len(names))
	aliased := false
	for _, name := range names {
		col, alias, err := buildColumn(meta, name, runs[name], leases, mode != copies)
		if err != nil {
			v.Release()
			return nil, &engine.OpError{Op: "get", Err: fmt.Errorf("field %q: %w", name, err)}
		}
		aliased = aliased || alias
		fields = append(fields, engine.Field{Name: name, Col: col})
	}
	b, err := engine.NewBatch(fields...)
	if err != nil {
		v.Release()
		return nil, &engine.OpError{Op: "get", Err: err}
	}
	v.Batch = b
	if !aliased {
		v.Release() // nothing points into storage: let it go now
	}
	return v, nil
}

// readErr says why a read of storage unit id's cells failed with err
// (the caller's context still live). When this client was closed the
// read failed for that, and the cells are not known lost: the error
// wraps [engine.ErrClosed], not [engine.ErrLost]. Otherwise the cells
// are lost to this read (engine.ErrLost) whatever the reason, but a unit
// that answered is not called unreachable, nor is one that closed (its
// memory went with it).
func (c *Client) readErr(id engine.UnitID, err error) error {
	switch {
	case c.closed.Load():
		if errors.Is(err, engine.ErrClosed) {
			return fmt.Errorf("read of storage unit %d's cells stopped: the client was closed: %w", id, err)
		}
		return fmt.Errorf("read of storage unit %d's cells stopped: the client was closed: %w: %w", id, engine.ErrClosed, err)
	case errors.Is(err, engine.ErrNotFound):
		return fmt.Errorf("cells are gone from storage unit %d: %w: %w", id, engine.ErrLost, err)
	case errors.Is(err, engine.ErrInvalid), errors.Is(err, engine.ErrCorrupt):
		// The request named bytes the unit does not hold as asked (an
		// RDMA completion that says the request was wrong, a reply that
		// does not fit it).
		return fmt.Errorf("storage unit %d refused the read of its cells, lost to this read: %w: %w", id, engine.ErrLost, err)
	case errors.Is(err, engine.ErrClosed):
		return fmt.Errorf("storage unit %d is closed (its memory went with it), its cells are lost to this read: %w: %w", id, engine.ErrLost, err)
	default:
		return fmt.Errorf("storage unit %d is unreachable, its cells are lost to this read: %w: %w", id, engine.ErrLost, err)
	}
}

// errLostCells is the error of a read of n cells (or runs of them) at
// [engine.LostUnit], which names no unit.
func errLostCells(n int) error {
	return fmt.Errorf("%d cells whose bytes are lost (their storage unit came back without them): %w", n, engine.ErrLost)
}

// leaseAll leases (or reads, see inliner) the ranges of every unit at
// once, bounded by [Config.MaxUnitIO]. On error it returns the leases it
// took, for the caller to release, and the first unit's error in id
// order (errMergedRange when a merged range was refused).
func (c *Client) leaseAll(ctx context.Context, cluster string, ranges map[engine.UnitID][]engine.RemoteAddr, mode getMode, merge bool) (map[engine.UnitID]Lease, error) {
	ids := make([]engine.UnitID, 0, len(ranges))
	for id := range ranges {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	got := make([]Lease, len(ids))
	errs := c.parallel(ctx, len(ids), func(i int) error {
		id, addrs := ids[i], ranges[ids[i]]
		if id == engine.LostUnit {
			return &engine.OpError{Op: "get", Err: errLostCells(len(addrs))}
		}
		u, err := c.unit(ctx, id, cluster)
		if err != nil {
			return &engine.OpError{Op: "get", Err: err}
		}
		// Before a read over TCP allocates the cells' bytes.
		if err := c.tbl.Load().checkCapacity(id, addrs); err != nil {
			return &engine.OpError{Op: "get", Transport: u.Transport(), Peer: fmt.Sprint(id), Err: err}
		}
		err = c.watchDead(ctx, id, func(ctx context.Context) error {
			var err error
			if in, ok := u.(inliner); ok && mode != views && in.Inline(rangesLen(addrs)) {
				got[i], err = readOwned(ctx, addrs, u.ReadInto)
			} else {
				got[i], err = u.Acquire(ctx, addrs)
			}
			return err
		})
		if err == nil {
			return nil
		}
		got[i] = nil
		switch {
		case errors.Is(err, engine.ErrNotFound) && merge:
			return errMergedRange
		case ctx.Err() != nil:
			// The caller gave up; nothing is known about the cells.
		default:
			err = c.readErr(id, err)
		}
		return &engine.OpError{Op: "get", Transport: u.Transport(), Peer: fmt.Sprint(id), Err: err}
	})
	leases := make(map[engine.UnitID]Lease, len(ids))
	var first error
	for i, id := range ids {
		if got[i] != nil {
			leases[id] = got[i]
		}
		if errs[i] != nil && (first == nil || errors.Is(errs[i], errMergedRange)) {
			// errMergedRange first: the get tries again cell by cell,
			// which may well succeed where another unit failed now.
			first = errs[i]
		}
	}
	if _, ok := first.(*engine.OpError); first != nil && !ok && !errors.Is(first, errMergedRange) {
		first = &engine.OpError{Op: "get", Err: first} // no I/O slot before ctx ended
	}
	return leases, first
}

// checkReady names the first unproduced cells, if any.
// checkLens refuses a meta whose cells hold other lengths than its schema
// gives them, before anything is sized or read by those lengths (and
// columnOver builds columns on them): a meta decoded wrongly or made by hand
// would size buffers, or slice them, past what any cell can hold.
func checkLens(meta *engine.BatchMeta, names []string) error {
	total := uint64(0)
	for _, name := range names {
		s := meta.Schema[name]
		dense := -1
		if s.Kind == engine.Dense {
			n, err := s.Shape.CellBytes(s.DType)
			if err != nil {
				return fmt.Errorf("field %q: %w", name, err)
			}
			dense = n
		}
		for i, l := range meta.Cells[name] {
			want := dense
			switch {
			case s.Kind == engine.Ragged && i < len(s.Shapes):
				n, err := s.Shapes[i].CellBytes(s.DType)
				if err != nil {
					return fmt.Errorf("field %q, row %d: %w", name, meta.Indexes[i], err)
				}
				want = n
			case s.Kind == engine.Opaque && l.Addr.Len > engine.MaxCellBytes:
				return fmt.Errorf("field %q, row %d: a cell of %d bytes, past the limit of %d: %w", name, meta.Indexes[i], l.Addr.Len, uint64(engine.MaxCellBytes), engine.ErrCorrupt)
			}
			if want >= 0 && l.Addr.Len != uint64(want) {
				return fmt.Errorf("field %q, row %d: the cell holds %d bytes, its schema %v%v gives %d: %w", name, meta.Indexes[i], l.Addr.Len, s.DType, s.Shape, want, engine.ErrCorrupt)
			}
			if total += l.Addr.Len; total > math.MaxInt {
				return fmt.Errorf("field %q: the cells hold more than %d bytes: %w", name, math.MaxInt, engine.ErrCorrupt)
			}
		}
	}
	return nil
}

func checkReady(meta *engine.BatchMeta, names []string) error {
	var missing []string
	for _, name := range names {
		for i, l := range meta.Cells[name] {
			if !l.Stored() {
				missing = append(missing, fmt.Sprintf("%s[row %d]", name, meta.Indexes[i]))
				if len(missing) == 8 {
					break
				}
			}
		}
		if len(meta.Cells[name]) != meta.Len() {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("cells %v are not produced: %w", missing, engine.ErrNotReady)
	}
	return nil
}

func splitRuns(locs []engine.CellLoc, merge bool) []run {
	var out []run
	for i, l := range locs {
		if n := len(out); n > 0 && merge {
			r := &out[n-1]
			if r.unit == l.Unit && r.addr.Segment == l.Addr.Segment && r.addr.Gen == l.Addr.Gen && r.addr.Offset+r.addr.Len == l.Addr.Offset {
				r.addr.Len += l.Addr.Len
				r.n++
				continue
			}
		}
		out = append(out, run{unit: l.Unit, addr: l.Addr, first: i, n: 1})
	}
	return out
}

// buildColumn assembles one field's column from its runs. With view and a
// single run the column aliases the lease (alias reports it).
func buildColumn(meta *engine.BatchMeta, name string, runs []run, leases map[engine.UnitID]Lease, view bool) (*engine.Column, bool, error) {
	var data []byte
	alias := false
	if ol, ok := leases[runs[0].unit].(owned); ok && consecutive(runs) {
		// Copied out of the unit into memory the caller owns, back to
		// back: hand it over as it is.
		data = ol.Span(runs[0].lease, runs[len(runs)-1].lease+1)
	} else if len(runs) == 1 && view {
		data = leases[runs[0].unit].Bytes(runs[0].lease)
		alias = true
	} else {
		total := 0
		for _, r := range runs {
			total += int(r.addr.Len)
		}
		data = make([]byte, 0, total)
		for _, r := range runs {
			data = append(data, leases[r.unit].Bytes(r.lease)...)
		}
	}
	col, err := columnOver(meta, name, data)
	return col, alias, err
}

// columnOver builds a field's column over data (its rows back to back),
// whose cell lengths checkLens checked against the field's schema before
// the read.
func columnOver(meta *engine.BatchMeta, name string, data []byte) (*engine.Column, error) {
	s := meta.Schema[name]
	locs := meta.Cells[name]
	n := meta.Len()
	switch s.Kind {
	case engine.Dense:
		return engine.NewDense(s.DType, n, s.Shape, data)
	case engine.Ragged:
		return engine.NewRagged(s.DType, s.Shapes, data)
	case engine.Opaque:
		offs := make([]int, n+1)
		for i, l := range locs {
			offs[i+1] = offs[i] + int(l.Addr.Len)
		}
		return engine.NewOpaque(offs, data)
	}
	return nil, fmt.Errorf("schema kind %v: %w", s.Kind, engine.ErrCorrupt)
}

// consecutive reports whether runs are on one unit at consecutive lease
// indexes (so an owned lease holds them back to back).
func consecutive(runs []run) bool {
	for i := 1; i < len(runs); i++ {
		if runs[i].unit != runs[0].unit || runs[i].lease != runs[0].lease+i {
			return false
		}
	}
	return true
}

// CellsGone reports the error of a read whose cells were gone from their
// unit when it went to lease them ([engine.ErrLost] for cells the unit no
// longer holds). Either a concurrent put replaced the key's cells and
// freed the old ones, and resolving the keys again finds the new ones; or
// the cells are lost for good, and reading again fails the same way.
func CellsGone(err error) bool {
	return errors.Is(err, engine.ErrLost) && errors.Is(err, engine.ErrNotFound)
}

// Reread runs read, which resolves keys and reads their cells, again
// while it fails because the cells were gone ([CellsGone]): a put of the
// same keys replaced them in between. From the second try on it waits a
// random moment first, up to a millisecond more each time, so that a
// reader that keeps meeting a writer's puts at the same point of its loop
// falls out of step with it. Cells lost for good fail every time; after
// 16 tries the error is returned.
func Reread(read func() error) error {
	err := read()
	for attempt := 0; attempt < 16 && CellsGone(err); attempt++ {
		if attempt > 0 {
			time.Sleep(rand.N(time.Duration(attempt) * time.Millisecond))
		}
		err = read()
	}
	return err
}
