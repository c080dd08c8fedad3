package client

// A put, step by step:
//
//  1. group the meta's rows by partition, then by the storage unit the
//     placement picks for them;
//  2. per unit group, write one extent per field (the column slice of
//     those rows), handing the unit the column's bytes as few pieces as the
//     rows allow; the unit commits the extents before it answers;
//  3. commit the cells to the controller, which flips their production
//     bits;
//  4. free the cells the commit replaced.
//
// If any step fails, the extents written so far are freed and the
// controller was never told about them: no cell is half written. A put
// whose rows span partitions commits them partition by partition, in
// name order; if one fails, those before it stay committed, and the
// error names them.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/tqgo/tq/engine"
)

// Put writes b's columns into the rows of meta (row i of b goes to row i of
// meta) and returns meta with the written fields added and ready. Writing
// fields the rows already have overwrites them; other fields stay.
//
// The rows of each partition are committed together; a meta spanning
// partitions commits them one after another in name order, and an error
// names the partitions committed before it.
//
// A put whose ctx ends before its commit changes nothing and frees what
// it wrote (the error wraps ctx's); one whose ctx ends while the
// controller commits it waits up to a second more for the answer and
// reports what happened. The outcome is unknown only when no answer comes
// by then, the connection breaks, or a controller in this process took
// the commit and ctx ended its wait for the commit's record: the error
// then says the put may have happened, and what it wrote stays.
//
// Errors: [engine.ErrInvalid] for a row-count mismatch or an empty batch,
// [engine.ErrDTypeMismatch] when a field already has another dtype,
// [engine.ErrCapacity] (with ctx's error) when storage stays full until
// ctx ends: a unit refused the put's rows for room, or they waited for
// it; a put whose ctx ends before it learned whether a unit had room (at
// its call to the controller, or with its write on the way) fails with
// ctx's error alone. A put waits for room as long as ctx allows: a unit in another
// process answers a waiting write after its reserve wait (5 s by default,
// storage.ServerConfig.ReserveWait), and the put then lists the units
// again and places its rows anew, on a unit that joined or one where
// frees made room (see place.go), at most once a second.
func (c *Client) Put(ctx context.Context, b *engine.Batch, meta *engine.BatchMeta) (*engine.BatchMeta, error) {
	if err := c.checkPut(b, meta); err != nil {
		return nil, &engine.OpError{Op: "put", Err: err}
	}
	out := meta.Clone()
	if out.Cells == nil {
		out.Cells = map[string][]engine.CellLoc{}
	}
	for _, f := range b.Fields() {
		out.Cells[f.Name] = make([]engine.CellLoc, meta.Len())
	}
	var done []string
	for i, g := range groupByPartition(meta) {
		cluster, err := c.putPartition(ctx, b, meta, g.part, g.pos, out.Cells)
		if c.placeAgain(ctx, err) {
			cluster, err = c.putPartition(ctx, b, meta, g.part, g.pos, out.Cells)
		}
		if err != nil {
			return nil, &engine.OpError{Op: "put", Peer: g.part, Err: committedBefore(err, done)}
		}
		done = append(done, g.part)
		// The cells are of the cluster the commit named (see
		// engine.BatchMeta); of several, not noted.
		switch {
		case i == 0 && len(meta.Cells) == 0:
			out.Cluster = cluster
		case out.Cluster != cluster:
			out.Cluster = ""
		}
	}
	if err := out.AddFields(b); err != nil {
		return nil, &engine.OpError{Op: "put", Err: err}
	}
	return out, nil
}

// placeAgain reports whether a put that failed with err is worth one more
// try, after listing the units: a commit refused the cells it wrote
// ([engine.ErrLost]: a unit marked draining since the client last listed
// the units, or a generation its unit fenced), or a unit it wrote to
// restarted. The failed try gave back what it wrote and changed nothing,
// and the next one places the bytes on the units as they are now. A
// client that does not list the units tries again only where it asks
// its metadata service which units drain on every placement (see
// [Client.drainReporter]): the next try sees the drain.
func (c *Client) placeAgain(ctx context.Context, err error) bool {
	if err == nil || !errors.Is(err, engine.ErrLost) || ctx.Err() != nil {
		return false
	}
	if c.disc == nil {
		return c.drainReporter() != nil
	}
	c.disc.learn(ctx, c, false)
	return true
}

// PutNew allocates len(b) new rows in a partition and writes b into them
// as [Client.Put] does; a put that fails (its ctx ended included) gives
// the rows back.
func (c *Client) PutNew(ctx context.Context, partition string, b *engine.Batch) (*engine.BatchMeta, error) {
	if b == nil || b.NumFields() == 0 || b.Rows() == 0 {
		return nil, &engine.OpError{Op: "put", Peer: partition, Err: fmt.Errorf("put of an empty batch: %w", engine.ErrInvalid)}
	}
	meta, err := c.meta.Insert(ctx, partition, b.Rows(), b.Names())
	if err != nil {
		return nil, err
	}
	out, err := c.Put(ctx, b, meta)
	if err != nil {
		// The fresh rows hold nothing: give them back, even when the
		// caller gave up (the likeliest reason the put failed): rows never
		// produced would keep a consumer of the partition's end waiting.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), clearTimeout)
		defer cancel()
		if cerr := c.meta.ClearRows(cctx, partition, meta.Indexes); cerr != nil {
			err = errors.Join(err, fmt.Errorf("the put's fresh rows %s stay in partition %q: %w", engine.RowList(meta.Indexes), partition, cerr))
		}
		return nil, err
	}
	return out, nil
}

// clearTimeout bounds the clear of a failed PutNew's rows.
const clearTimeout = 10 * time.Second

func (c *Client) checkPut(b *engine.Batch, meta *engine.BatchMeta) error {
	switch {
	case b == nil || b.NumFields() == 0:
		return fmt.Errorf("put with no fields: %w", engine.ErrInvalid)
	case meta.Len() == 0:
		return fmt.Errorf("put into an empty meta: %w", engine.ErrInvalid)
	case b.Rows() != meta.Len():
		return fmt.Errorf("batch has %d rows, meta has %d: %w", b.Rows(), meta.Len(), engine.ErrInvalid)
	}
	if err := meta.Validate(); err != nil {
		return err
	}
	if err := checkBatchNames(b); err != nil {
		return err
	}
	for _, f := range b.Fields() {
		s, ok := meta.Schema[f.Name]
		if !ok || s.DType == engine.InvalidDType {
			continue
		}
		if s.DType != f.Col.DType() {
			return fmt.Errorf("field %q is %v, batch has %v: %w", f.Name, s.DType, f.Col.DType(), engine.ErrDTypeMismatch)
		}
	}
	return nil
}

// partRows are the positions of a meta's rows in one partition.
type partRows struct {
	part string
	pos  []int
}

// groupByPartition returns, per partition in name order, the positions of
// its rows.
func groupByPartition(m *engine.BatchMeta) []partRows {
	at := map[string]int{}
	var out []partRows
	for i, p := range m.Partitions {
		j, ok := at[p]
		if !ok {
			j = len(out)
			at[p] = j
			out = append(out, partRows{part: p})
		}
		out[j].pos = append(out[j].pos, i)
	}
	slices.SortFunc(out, func(a, b partRows) int { return strings.Compare(a.part, b.part) })
	return out
}

// committedBefore adds to the error of a change that spans partitions the
// partitions it changed before it failed (done): those changes stand.
func committedBefore(err error, done []string) error {
	if len(done) == 0 {
		return err
	}
	return fmt.Errorf("%w (the rows of partitions %s before it were committed)", err, engine.QuoteKeys(done))
}

// indexPlanner returns the planner of a put into rows pos of meta: its
// seed is the lowest row index, and each row's seed its index.
func (c *Client) indexPlanner(meta *engine.BatchMeta, pos []int) (*planner, []uint64) {
	lowest := meta.Indexes[pos[0]]
	for _, p := range pos {
		lowest = min(lowest, meta.Indexes[p])
	}
	return c.newPlanner(lowest), meta.Indexes
}

// written is what one unit group put down: the rows whose cells to free
// if a later step fails.
type written struct {
	unit DataUnit
	rows []int
}

// sameRows refuses a put into the rows of a meta of another cluster than
// the units' (see [engine.BatchMeta]): a controller that started anew
// without its state may give those row indexes to other rows.
func sameRows(metaCluster, cluster string) error {
	if metaCluster == "" || cluster == "" || metaCluster == cluster {
		return nil
	}
	return fmt.Errorf("the rows are of cluster %s, whose controller started anew as cluster %s without its state: %w", metaCluster, cluster, engine.ErrLost)
}

// It returns the cluster its commit named.
func (c *Client) putPartition(ctx context.Context, b *engine.Batch, meta *engine.BatchMeta, part string, pos []int, cells map[string][]engine.CellLoc) (cluster string, err error) {
	fields := b.Fields()
	locs := make([][]engine.CellLoc, len(fields))
	for i, f := range fields {
		locs[i] = cells[f.Name]
	}
	var done []written
	defer func() {
		if err != nil {
			err = errors.Join(err, c.freeWritten(context.WithoutCancel(ctx), done, locs))
		}
	}()
	p, seeds := c.indexPlanner(meta, pos)
	if err := sameRows(meta.Cluster, p.cluster); err != nil {
		return "", err
	}
	if done, err = c.writePlaced(ctx, p, fields, pos, seeds, locs); err != nil {
		return "", err
	}
	req := engine.CommitRequest{Partition: part, Indexes: make([]uint64, len(pos)), Cluster: p.cluster}
	for i, p := range pos {
		req.Indexes[i] = meta.Indexes[p]
	}
	req.Fields = commitFields(fields, pos, locs)
	if maybe, err := c.commit(ctx, req); err != nil {
		if maybe {
			done = nil // the commit may have happened: the cells stay
		}
		return "", err
	}
	done = nil
	return p.cluster, nil
}

// commit asks the controller to commit the cells of a put whose bytes
// are written, as [commitWritten] does.
func (c *Client) commit(ctx context.Context, req engine.CommitRequest) (maybe bool, _ error) {
	_, maybe, err := commitWritten(ctx, "put", func(ctx context.Context) (struct{}, error) { return struct{}{}, c.meta.Commit(ctx, req) })
	return maybe, err
}

// commitGrace is how long a put (or a drain's move) whose context ended
// while the controller commits it keeps waiting for the answer.
const commitGrace = time.Second

// commitWritten asks the controller, through commit, to commit a put
// whose bytes are written, and reports whether, on error, the commit may
// have happened (what the put wrote must then stay; otherwise the caller
// frees it at once rather than leave it allocated, named by no cell,
// until the units' reconciliation). what names the change in its errors
// ("put"; a drain's copies, committed the same way, are a "move").
//
// A put whose ctx ended before (a unit's write waits out its grace for
// the answer) is asked all the same: a controller in this process takes
// the change whatever ctx says (an event loop's is ended already) and
// waits for its record with ctx, so its ctx's error means the put may
// have happened; a remote one is sent nothing ([errNotSent]), and the put
// changed nothing. One whose ctx ends while the commit is on its way
// waits up to commitGrace more for the answer, so that it learns whether
// the put happened: committed, it succeeds (an acknowledged put is not
// reported as canceled); refused, the caller frees. Only without an
// answer by then is the outcome unknown, and the error says so.
func commitWritten[T any](ctx context.Context, what string, commit func(context.Context) (T, error)) (_ T, maybe bool, _ error) {
	var zero T
	if ctx.Err() != nil {
		out, err := commit(ctx)
		switch {
		case err == nil:
			return out, false, nil
		case errors.Is(err, errNotSent):
			return zero, false, fmt.Errorf("canceled before its commit, the %s changed nothing: %w", what, err)
		case refused(err):
			return zero, false, err
		}
		return zero, true, fmt.Errorf("canceled before its commit, which the controller may have taken: the %s may have happened: %w", what, err)
	}
	gctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	stop := context.AfterFunc(ctx, func() { time.AfterFunc(commitGrace, cancel) })
	defer stop()
	out, err := commit(gctx)
	switch {
	case err == nil:
		return out, false, nil
	case refused(err):
		return zero, false, err
	case gctx.Err() != nil && ctx.Err() != nil:
		return zero, true, fmt.Errorf("canceled during its commit, with no answer from the controller %v later: the %s may have happened: %w", commitGrace, what, context.Cause(ctx))
	}
	return zero, true, err
}

// writeRows writes rows of fields to unit u, one extent per field, and
// returns the extents; with locs, it sets locs[i][r] to where row r of
// field i went.
func (c *Client) writeRows(ctx context.Context, u DataUnit, fields []engine.Field, rows []int, locs [][]engine.CellLoc) ([]engine.RemoteAddr, error) {
	extents := make([][][]byte, len(fields))
	for i, f := range fields {
		extents[i] = pieces(f.Col, rows)
	}
	var addrs []engine.RemoteAddr
	err := c.watchDead(ctx, u.ID(), func(ctx context.Context) error {
		var err error
		addrs, err = u.Write(ctx, extents)
		return err
	})
	if err != nil {
		settle(ctx)
	}
	if err != nil && ctx.Err() == nil && !errors.Is(err, engine.ErrCapacity) {
		c.unreachable() // the unit may be dead: placement asks which are alive
	}
	switch {
	case err != nil && ctx.Err() != nil && !errors.Is(err, ctx.Err()):
		// Cut by ctx's deadline (a dial's timeout), not by the unit.
		return nil, fmt.Errorf("write to unit %d: %w; ctx ended: %w", u.ID(), err, context.Cause(ctx))
	case errors.Is(err, engine.ErrUnavailable) && ctx.Err() == nil:
		return nil, fmt.Errorf("storage unit %d is unreachable, nothing was written: %w", u.ID(), err)
	case err != nil:
		return nil, fmt.Errorf("write to unit %d: %w", u.ID(), err)
	}
	for i, f := range fields {
		if locs != nil {
			setLocs(locs[i], u.ID(), addrs[i], f.Col, rows)
		}
	}
	return addrs, nil
}

// setLocs sets locs[r], for each of rows in turn, to where row r of col
// lies in ext, the extent its rows were written to back to back.
func setLocs(locs []engine.CellLoc, unit engine.UnitID, ext engine.RemoteAddr, col *engine.Column, rows []int) {
	off := ext.Offset
	cell := func(r int, n uint64) {
		locs[r] = engine.CellLoc{Unit: unit, Addr: engine.RemoteAddr{Segment: ext.Segment, Gen: ext.Gen, Offset: off, Len: n}}
		off += n
	}
	if col.Kind() == engine.Dense {
		n := uint64(col.Size() / max(col.Len(), 1)) // every row has the same size
		for _, r := range rows {
			cell(r, n)
		}
		return
	}
	offs := col.Offsets()
	for _, r := range rows {
		cell(r, uint64(offs[r+1]-offs[r]))
	}
}

// extentFields describes, for a commit, the cells of fields whose rows
// were written back to back, all of them, into exts[i] on unit. With
// runs, a dense field is one run (see [engine.CellRun]); other fields,
// and every field without runs, list their cells one by one.
func extentFields(fields []engine.Field, unit engine.UnitID, exts []engine.RemoteAddr, runs bool) []engine.CommitField {
	n := fields[0].Col.Len()
	all := allRows(n)
	locs := make([][]engine.CellLoc, len(fields))
	var slab []engine.CellLoc
	for i, f := range fields {
		if runs && f.Col.Kind() == engine.Dense {
			continue
		}
		if slab == nil {
			slab = make([]engine.CellLoc, n*len(fields))
		}
		locs[i] = slab[i*n : (i+1)*n : (i+1)*n]
		setLocs(locs[i], unit, exts[i], f.Col, all)
	}
	cfs := commitFields(fields, all, locs)
	for i, f := range fields {
		if locs[i] == nil {
			first := exts[i]
			first.Len = uint64(f.Col.Size() / max(n, 1))
			cfs[i].Locs, cfs[i].Runs = nil, []engine.CellRun{{Unit: unit, First: first, Count: n}}
		}
	}
	return cfs
}

// allRows is the positions 0…n-1: every row of a batch, in order.
func allRows(n int) []int {
	all := make([]int, n)
	for i := range all {
		all[i] = i
	}
	return all
}

// fieldAddrs lists the byte ranges of commit fields' cells, a run as one.
func fieldAddrs(cfs []engine.CommitField) []engine.RemoteAddr {
	var addrs []engine.RemoteAddr
	for _, cf := range cfs {
		for _, r := range cf.Runs {
			addrs = append(addrs, r.Span())
		}
		for _, l := range cf.Locs {
			addrs = append(addrs, l.Addr)
		}
	}
	return addrs
}

// freeWritten frees the cells a failed put wrote, on every unit at once.
func (c *Client) freeWritten(ctx context.Context, done []written, locs [][]engine.CellLoc) error {
	return errors.Join(c.parallel(ctx, len(done), func(i int) error {
		w := done[i]
		addrs := make([]engine.RemoteAddr, 0, len(w.rows)*len(locs))
		for _, fl := range locs {
			for _, r := range w.rows {
				addrs = append(addrs, fl[r].Addr)
			}
		}
		if err := c.freeOn(ctx, w.unit, addrs); err != nil {
			return fmt.Errorf("free what a failed put wrote to unit %d: %w", w.unit.ID(), err)
		}
		return nil
	})...)
}

// freeOn frees cells on u under watchDead: a free after a failed put runs
// WithoutCancel, with no deadline, and a unit gone silent would hold it
// until the data connection's liveness check (its reconciliation frees
// the cells once it answers again).
func (c *Client) freeOn(ctx context.Context, u DataUnit, cells []engine.RemoteAddr) error {
	return c.watchDead(ctx, u.ID(), func(ctx context.Context) error { return u.Free(ctx, cells) })
}

// commitFields describes the cells of rows pos of fields, whose locations
// are locs[field][row], for a commit; a field whose locs are nil gets
// none.
func commitFields(fields []engine.Field, pos []int, locs [][]engine.CellLoc) []engine.CommitField {
	identity := true
	for i, p := range pos {
		identity = identity && p == i
	}
	out := make([]engine.CommitField, len(fields))
	for fi, f := range fields {
		cf := engine.CommitField{Name: f.Name, DType: f.Col.DType(), Kind: f.Col.Kind()}
		switch {
		case locs[fi] == nil:
		case identity && len(pos) == len(locs[fi]):
			cf.Locs = locs[fi] // the controller copies what it keeps
		default:
			cf.Locs = make([]engine.CellLoc, len(pos))
			for i, p := range pos {
				cf.Locs[i] = locs[fi][p]
			}
		}
		switch f.Col.Kind() {
		case engine.Dense:
			cf.Shape = f.Col.Shape()
		case engine.Ragged:
			cf.Shapes = make([]engine.Shape, len(pos))
			for i, p := range pos {
				cf.Shapes[i] = f.Col.RowShape(p)
			}
		}
		out[fi] = cf
	}
	return out
}

// pieces returns the bytes of rows of col, in order, as few slices as the
// rows allow: one per run of consecutive rows. The slices alias col.
func pieces(col *engine.Column, rows []int) [][]byte {
	data := col.Data()
	offs := col.Offsets()
	var out [][]byte
	for i := 0; i < len(rows); {
		j := i + 1
		for j < len(rows) && rows[j] == rows[j-1]+1 {
			j++
		}
		lo, hi := offs[rows[i]], offs[rows[j-1]+1]
		out = append(out, data[lo:hi:hi])
		i = j
	}
	return out
}
