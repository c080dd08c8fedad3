package client

// Placement: which storage unit each row of a put goes to. One planner
// serves every put (batch, KV, reserved), so that they all spill and
// balance the same way:
//
//   - Local-first: the units on this host first (the first one chosen by a
//     seed, the put's lowest row index or its first key's hash, so that
//     clients spread over several local units), then the others by most
//     free bytes. Each row goes to the first unit in that order with room
//     for it. A put that fits the local unit stays there; one that does
//     not spills its rows to the next units with room.
//   - Hash (by bytes): the put's rows, in order, are cut into one
//     contiguous stretch per unit, sized so that after the put every unit
//     is as full as the others (water filling: the fill is used bytes over
//     capacity), within one row; units fuller than that level get none.
//     The units take their stretches in the order of a rendezvous hash of
//     the put's seed, so that puts do not all begin on the same unit. This
//     keeps each unit within about one row's bytes of the others, whatever
//     the rows' sizes, and follows the fill the units report for what
//     other clients wrote. Hashing each row's index balances rows, not
//     bytes (a run of large rows can land on one unit); rendezvous weighted
//     by free bytes balances only in expectation; and both scatter a
//     unit's rows over the batch, so a get reads one range per row where
//     a contiguous stretch is one range per field.
//
// "Room" is an estimate: the free bytes each unit last reported (an
// in-process unit answers at once; a remote one through the controller's
// unit list, which the client reads at most once a second, see units.go),
// less what this client wrote there since. The unit corrects it: a write
// placed on an estimate goes without waiting ([engine.WithoutWait]), and
// a unit without room refuses it at once (engine.ErrCapacity), which
// halves the estimate for that unit and places the refused rows again.
// Rows that no unit has room for by the estimate are first offered, again
// without waiting, to the units that have not refused this put (their
// figures may be stale: frees reach the unit list a heartbeat later).
// Only rows that every unit refused are written to their first choice in
// the ordinary way, waiting there for room: a put waits only while no
// unit has room. A unit in this process waits until the put's ctx ends;
// one in another process answers ErrCapacity after its reserve wait
// (storage.ServerConfig.ReserveWait), and then, while ctx has time, the
// put lists the units again (a unit may have joined, or frees made room
// on one) and places the rows it has left as at first, at most once per
// learnEvery, until they are written or ctx ends (see [planner.again]).

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tqgo/tq/engine"
)

// roomer is a data unit that reports its capacity and used bytes itself
// (a unit in this process: the figures cost a lock, not a round trip).
type roomer interface {
	Room() (capacity, used int64)
}

// roomBook is the client's estimate of each unit's free bytes. It is safe
// for concurrent use.
type roomBook struct {
	mu   sync.Mutex
	cap  map[engine.UnitID]int64 // capacity as reported; absent: unknown
	free map[engine.UnitID]int64 // estimated free bytes; absent: unknown
	sent map[engine.UnitID]int64 // bytes this client wrote, for units of unknown capacity
}

// learn takes the units' reported figures, replacing the estimates.
func (b *roomBook) learn(infos []engine.UnitInfo) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cap == nil {
		b.cap, b.free = map[engine.UnitID]int64{}, map[engine.UnitID]int64{}
	}
	for _, u := range infos {
		if u.Capacity <= 0 {
			continue // a unit that reported nothing yet
		}
		b.cap[u.ID] = u.Capacity
		b.free[u.ID] = max(u.Capacity-u.Used, 0)
	}
}

// wrote notes n bytes written to unit id.
func (b *roomBook) wrote(id engine.UnitID, n int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if f, ok := b.free[id]; ok {
		b.free[id] = max(f-n, 0)
	}
	if b.sent == nil {
		b.sent = map[engine.UnitID]int64{}
	}
	b.sent[id] += n
}

// refused notes that unit id had no room for n bytes.
func (b *roomBook) refused(id engine.UnitID, n int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.free == nil {
		b.cap, b.free = map[engine.UnitID]int64{}, map[engine.UnitID]int64{}
	}
	if f, ok := b.free[id]; !ok || f > n/2 {
		b.free[id] = n / 2
	}
}

// slot is one unit as a put's planner sees it.
type slot struct {
	u    DataUnit
	cap  int64 // 0: unknown
	free int64 // estimated free bytes (math.MaxInt64: unknown)
	fill int64 // used bytes (known capacity) or bytes sent (unknown), plus what the plan put there
	// refused: the unit refused a write of this put for lack of room, so
	// its estimate is its own word, not a figure that may be stale.
	refused bool
}

// planner places the rows of one put. It works on a snapshot of the
// client's estimates, which its refusals lower, so that a put's retries
// end even when a unit keeps reporting room it cannot give (fragmented
// memory); the client's book learns the same.
type planner struct {
	c     *Client
	slots []slot // local-first: in the order rows try them
	hash  bool   // place by bytes (Hash, or LocalFirst without a local unit)
	// cluster is the cluster of the units' table, for the commit (see
	// [engine.CommitRequest]).
	cluster string
	// gone is the error of each unit this put left out of its plan
	// (see [planner.exclude]), in order.
	gone []error
	// draining are the units left out of the plan for draining.
	draining []engine.UnitID
	// seed chooses among local units (see [Client.newPlanner]), kept for
	// a plan made again (see [planner.again]).
	seed uint64
	// left are the units of gone: a plan made again leaves them out too.
	left map[engine.UnitID]bool
}

// unreachable reports whether a write that failed with err certainly
// wrote nothing the put could reference because its unit could not be
// reached (see [Client.writeRows]): its rows may be placed again on the
// other units. A write cut short by ctx is not: the put ends.
func unreachable(ctx context.Context, err error) bool {
	return err != nil && ctx.Err() == nil && errors.Is(err, engine.ErrUnavailable) && !errors.Is(err, engine.ErrClosed)
}

// settle waits, after a call to a unit failed, for ctx to end when its
// deadline has passed: the call may have been cut by that deadline (a
// dial's or a read's own timer) a moment before ctx's timer set
// ctx.Err(), and the put would take the end of its own time for a unit
// that cannot be reached (leaving a live unit out, and failing with
// [engine.ErrUnavailable] rather than [engine.ErrCapacity] and ctx's
// error).
func settle(ctx context.Context) {
	if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) {
		// Not for long: a Context of another kind may report a deadline
		// and never end (a nil Done).
		t := time.NewTimer(settleMax)
		defer t.Stop()
		select {
		case <-ctx.Done():
		case <-t.C:
		}
	}
}

// settleMax bounds settle's wait: ctx's own timer fires well within
// it; one that never ends costs a failed call this much.
const settleMax = time.Second

// exclude leaves the units of slots (indexes, any order, repeats allowed)
// out of the plan for the rest of the put, each with the error its write
// met: each unit is left out at most once, so a put's re-placements end.
func (p *planner) exclude(slots []int, errs []error) {
	drop := make(map[int]bool, len(slots))
	for i, s := range slots {
		if !drop[s] {
			drop[s] = true
			p.gone = append(p.gone, errs[i])
		}
	}
	if p.left == nil {
		p.left = map[engine.UnitID]bool{}
	}
	kept := p.slots[:0]
	for i, s := range p.slots {
		if drop[i] {
			p.left[s.u.ID()] = true
		} else {
			kept = append(kept, s)
		}
	}
	clear(p.slots[len(kept):])
	p.slots = kept
}

// newPlanner snapshots the writable units for a put whose seed chooses
// among local units.
func (c *Client) newPlanner(seed uint64) *planner {
	units, local, cluster, draining := c.writable()
	p := &planner{c: c, hash: c.cfg.Placement == Hash || len(local) == 0, cluster: cluster, draining: draining, seed: seed}
	c.room.mu.Lock()
	snap := func(u DataUnit) slot {
		s := slot{u: u, free: math.MaxInt64}
		if r, ok := u.(roomer); ok {
			// Fresh figures: a refusal lives in this put's plan only.
			if cp, used := r.Room(); cp > 0 {
				s.cap, s.fill, s.free = cp, used, max(cp-used, 0)
			}
		} else {
			if cp, ok := c.room.cap[u.ID()]; ok {
				s.cap, s.fill = cp, cp-c.room.free[u.ID()]
			}
			if f, ok := c.room.free[u.ID()]; ok {
				s.free = f // reported, less what was written since, or lowered by a refusal
			}
		}
		if s.cap == 0 {
			s.fill = c.room.sent[u.ID()]
		}
		return s
	}
	if p.hash {
		for _, u := range units {
			p.slots = append(p.slots, snap(u))
		}
		c.room.mu.Unlock()
		return p
	}
	first := int(seed % uint64(len(local)))
	isLocal := make(map[engine.UnitID]bool, len(local))
	for i := range local {
		p.slots = append(p.slots, snap(local[(first+i)%len(local)]))
		isLocal[local[i].ID()] = true
	}
	var others []slot
	for _, u := range units {
		if !isLocal[u.ID()] {
			others = append(others, snap(u))
		}
	}
	c.room.mu.Unlock()
	slices.SortStableFunc(others, func(a, b slot) int {
		switch {
		case a.free > b.free:
			return -1
		case a.free < b.free:
			return 1
		}
		return 0
	})
	p.slots = append(p.slots, others...)
	return p
}

// group is rows placed on one slot; wait marks rows no unit had room for,
// written to their first choice as an ordinary (waiting) write.
type group struct {
	slot  int
	rows  []int
	bytes int64
	wait  bool
}

// place assigns rows (positions, with sizes[r] bytes each and seeds[r]
// for tie-breaks) to slots, lowering the plan's free bytes as it goes.
func (p *planner) place(rows []int, sizes []int64, seeds []uint64) []group {
	type key struct {
		slot int
		wait bool
	}
	at := map[key]int{}
	var out []group
	add := func(s int, r int, wait bool) {
		k := key{s, wait}
		i, ok := at[k]
		if !ok {
			i = len(out)
			at[k] = i
			out = append(out, group{slot: s, wait: wait})
		}
		out[i].rows = append(out[i].rows, r)
		out[i].bytes += sizes[r]
		p.slots[s].free = max(p.slots[s].free-sizes[r], 0)
		p.slots[s].fill += sizes[r]
	}
	var share []int // hash: each row's slot by the water level, -1: none
	if p.hash {
		share = p.shares(rows, sizes, seeds[rows[0]])
	}
	for i, r := range rows {
		if share != nil && share[i] >= 0 && p.slots[share[i]].free >= sizes[r] {
			add(share[i], r, false)
		} else if s := p.pick(sizes[r], seeds[r], withRoom); s >= 0 {
			add(s, r, false)
		} else if s := p.pick(sizes[r], seeds[r], unrefused); s >= 0 {
			add(s, r, false) // the estimate may be stale: ask the unit
		} else {
			// No unit has room: wait on the first choice that could
			// ever hold the row.
			add(max(p.pick(sizes[r], seeds[r], anyCapacity), 0), r, true)
		}
	}
	for i := range out {
		slices.Sort(out[i].rows) // back in batch order: fewer pieces
	}
	return out
}

// shares splits rows (in order) into one contiguous stretch per slot, so
// that after the put every slot with room is as full as the others (the
// water level: used bytes over capacity, or bytes alone while a unit's
// capacity is unknown), within one row. A slot whose fill is above the
// level gets nothing. Slots take their stretches in the order of their
// rendezvous hash with seed, so that puts do not all begin on one unit.
// It returns each row's slot, -1 for rows past every stretch (not enough
// room by the estimate).
func (p *planner) shares(rows []int, sizes []int64, seed uint64) []int {
	known := true
	for _, s := range p.slots {
		known = known && s.cap > 0
	}
	capOf := func(s slot) float64 {
		if known {
			return float64(s.cap)
		}
		return 1
	}
	var total int64
	for _, r := range rows {
		total += sizes[r]
	}
	// x(level) is what the slots take to reach level, each at most its
	// free bytes; find the level at which they take the put (bisection:
	// x grows with level).
	take := func(level float64, s slot) float64 {
		return min(max(level*capOf(s)-float64(s.fill), 0), float64(s.free))
	}
	x := func(level float64) float64 {
		var sum float64
		for _, s := range p.slots {
			sum += take(level, s)
		}
		return sum
	}
	lo, hi := 0.0, 1.0
	for x(hi) < float64(total) && hi < 1e30 {
		hi *= 2
	}
	for range 64 {
		mid := (lo + hi) / 2
		if x(mid) < float64(total) {
			lo = mid
		} else {
			hi = mid
		}
	}
	order := make([]int, len(p.slots))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int {
		ha, hb := rendezvous(seed, p.slots[a].u.ID()), rendezvous(seed, p.slots[b].u.ID())
		switch {
		case ha > hb:
			return -1
		case ha < hb:
			return 1
		}
		return 0
	})
	// Stretch k ends at the sum of the first k slots' shares; a row goes
	// to the stretch its middle byte falls in.
	ends := make([]float64, len(order))
	var end float64
	for k, s := range order {
		end += take(hi, p.slots[s])
		ends[k] = end
	}
	out := make([]int, len(rows))
	var at int64
	k := 0
	for i, r := range rows {
		mid := float64(at) + float64(sizes[r])/2
		at += sizes[r]
		for k < len(ends) && mid >= ends[k] {
			k++
		}
		out[i] = -1
		if k < len(ends) {
			out[i] = order[k]
		}
	}
	return out
}

// Which slots pick considers.
const (
	withRoom    = iota // room for the row by the estimate
	unrefused          // not refused this put: its estimate may be stale
	anyCapacity        // capacity for the row, full or not
)

// pick returns the slot for a row of n bytes among those the filter
// admits: the first in order (local-first) or the least full after it
// (hash). It returns -1 when none qualifies.
func (p *planner) pick(n int64, seed uint64, filter int) int {
	best, bestScore, bestTie := -1, math.Inf(1), uint64(0)
	for i, s := range p.slots {
		switch {
		// A slot that refused this put with no room left by the estimate
		// has none even for n = 0 (which a unit refuses too, say one
		// that cannot reserve: picking it again would loop).
		case filter == withRoom && (s.free < n || s.refused && s.free == 0),
			filter == unrefused && s.refused,
			filter == anyCapacity && s.cap > 0 && s.cap < n:
			continue
		}
		if !p.hash {
			return i
		}
		score := float64(s.fill + n)
		if s.cap > 0 {
			score /= float64(s.cap)
		}
		tie := rendezvous(seed, s.u.ID())
		if score < bestScore || score == bestScore && tie > bestTie {
			best, bestScore, bestTie = i, score, tie
		}
	}
	return best
}

var rendezvousSeed = maphash.MakeSeed()

// rendezvous is the weight of unit id for a row's seed.
func rendezvous(seed uint64, id engine.UnitID) uint64 {
	var h maphash.Hash
	h.SetSeed(rendezvousSeed)
	var b [12]byte
	for i := range 8 {
		b[i] = byte(seed >> (8 * i))
	}
	for i := range 4 {
		b[8+i] = byte(id >> (8 * i))
	}
	h.Write(b[:])
	return h.Sum64()
}

// refused notes that slot s had no room for n bytes.
func (p *planner) refused(s int, n int64) {
	p.slots[s].free = min(p.slots[s].free, n/2)
	p.slots[s].refused = true
	p.c.room.refused(p.slots[s].u.ID(), n)
}

// noUnit is the error of a plan with no unit to place on: the client
// listed the units of a controller that started without the last one's
// state (see units.go) before any unit joined it.
func (p *planner) noUnit() error {
	if len(p.slots) > 0 {
		return nil
	}
	if len(p.draining) > 0 && len(p.gone) == 0 {
		return fmt.Errorf("no storage unit to place the put on: every storage unit is draining (units %s); `tq unit undrain` returns one to service: %w", unitList(p.draining), engine.ErrUnavailable)
	}
	if len(p.gone) > 0 {
		var drains string
		if len(p.draining) > 0 {
			drains = fmt.Sprintf(", and every other is draining (units %s; `tq unit undrain` returns one to service)", unitList(p.draining))
		}
		return fmt.Errorf("no storage unit left to place the put on: every one it tried is unreachable, nothing was written%s: %w", drains, errors.Join(p.gone...))
	}
	return fmt.Errorf("no storage unit to place the put on: the controller lists none: %w", engine.ErrUnavailable)
}

// unitList is ids as "1, 2, 3".
func unitList(ids []engine.UnitID) string {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = strconv.FormatUint(uint64(id), 10)
	}
	return strings.Join(s, ", ")
}

// largest returns the largest known capacity of the slots, or 0 when
// some slot's capacity is unknown.
func (p *planner) largest() int64 {
	var most int64
	for _, s := range p.slots {
		if s.cap == 0 {
			return 0
		}
		most = max(most, s.cap)
	}
	return most
}

// rowSizes returns the bytes of each row of fields, all fields together:
// a row's cells all go to one unit.
func rowSizes(fields []engine.Field, n int) []int64 {
	sizes := make([]int64, n)
	for _, f := range fields {
		offs := f.Col.Offsets()
		for r := range n {
			sizes[r] += int64(offs[r+1] - offs[r])
		}
	}
	return sizes
}

// tooBig names a row that no storage unit could ever hold.
func tooBig(p *planner, rows []int, sizes []int64) error {
	most := p.largest()
	if most == 0 {
		return nil
	}
	for _, r := range rows {
		if sizes[r] > most {
			return fmt.Errorf("row %d holds %d bytes, more than the largest storage unit's capacity (%d bytes): %w", r, sizes[r], most, engine.ErrCapacity)
		}
	}
	return nil
}

// writePlaced writes rows of fields (positions) to the units p places
// them on, every unit's share at once (bounded by [Config.MaxUnitIO]),
// placing again the rows a unit refused for lack of room and those of a
// unit that could not be reached (left out of the plan from then on; see
// [unreachable]). It returns
// what was written, for the caller to free if a later step fails (and
// what it wrote before failing, with the error); with locs it sets
// locs[i][r] for every row written.
func (c *Client) writePlaced(ctx context.Context, p *planner, fields []engine.Field, rows []int, seeds []uint64, locs [][]engine.CellLoc) ([]written, error) {
	if err := p.noUnit(); err != nil {
		return nil, err
	}
	sizes := rowSizes(fields, fields[0].Col.Len())
	if err := tooBig(p, rows, sizes); err != nil {
		return nil, err
	}
	var done []written
	var full error // the refusal of the last write that waited out its unit's reserve wait
	pending := rows
	for len(pending) > 0 {
		began := time.Now()
		groups := p.place(pending, sizes, seeds)
		// A write that waits in its unit for room (no unit has any) takes
		// no I/O slot: held while it waits, the slots would starve this
		// client's reads and frees, among them those that make the room.
		waits := func(i int) bool { return groups[i].wait }
		errs := c.parallelSlots(ctx, len(groups), waits, func(i int) error {
			g := groups[i]
			wctx := ctx
			if !g.wait {
				wctx = engine.WithoutWait(ctx)
			}
			_, err := c.writeRows(wctx, p.slots[g.slot].u, fields, g.rows, locs)
			return err
		})
		pending = nil
		var failed, goneErrs []error
		var gone []int
		outwaited := false
		for i, g := range groups {
			u := p.slots[g.slot].u
			switch err := errs[i]; {
			case err == nil:
				done = append(done, written{unit: u, rows: g.rows})
				c.room.wrote(u.ID(), g.bytes)
			case !g.wait && errors.Is(err, engine.ErrCapacity) && ctx.Err() == nil:
				p.refused(g.slot, g.bytes)
				pending = append(pending, g.rows...)
			case g.wait && outwaitedReserve(ctx, u, err):
				// A unit in another process waited out its reserve wait
				// and wrote nothing: the rows wait again, placed anew.
				full, outwaited = err, true
				pending = append(pending, g.rows...)
			case ctx.Err() != nil && (g.wait || full != nil || errors.Is(err, engine.ErrCapacity)):
				// Cut short by ctx while no unit had room (or just
				// after), or refused for room as ctx ended.
				failed = append(failed, waitedOut(ctx, err, len(g.rows)))
			case errors.Is(err, engine.ErrTooLarge):
				// The unit could not hold the rows even empty: waiting
				// for room, or placing them again, does not help.
				failed = append(failed, tooLargeFor(u, p.slots[g.slot].cap, g.rows, sizes, err))
			case unreachable(ctx, err):
				// The unit may have died after the client listed it (the
				// controller counts it alive until its UnitTimeout), or
				// gone silent and been reported dead since (watchDead):
				// its write wrote nothing the put will commit, so its
				// rows go to the other units.
				gone, goneErrs = append(gone, g.slot), append(goneErrs, err)
				pending = append(pending, g.rows...)
			default:
				failed = append(failed, err)
			}
		}
		if len(failed) > 0 {
			return done, errors.Join(append(failed, goneErrs...)...)
		}
		if len(gone) > 0 {
			p.exclude(gone, goneErrs)
			if err := p.noUnit(); err != nil {
				return done, err
			}
		}
		if outwaited {
			if err := p.again(ctx, began, full); err != nil {
				return done, err
			}
		}
		slices.Sort(pending)
	}
	return done, nil
}

// outwaitedReserve reports whether err, the ErrCapacity of a write or
// reservation that was to wait on u for room, is the refusal of a unit in
// another process whose reserve wait ended while the caller may still
// wait (ctx has time left and is not [engine.WithoutWait]): the put may
// then be placed again. A unit in this process waits as long as ctx
// allows, so its ErrCapacity with ctx alive is final (the request cannot
// fit), as is any unit's for a caller that may not wait.
// A unit's refusal of a request it could not hold even empty
// ([engine.ErrTooLarge], CODE_TOO_LARGE over the wire) is final wherever
// the unit is: the put waited for room until ctx ended.
func outwaitedReserve(ctx context.Context, u DataUnit, err error) bool {
	if _, local := u.(roomer); local || engine.NoWait(ctx) || ctx.Err() != nil {
		return false
	}
	return errors.Is(err, engine.ErrCapacity) && !errors.Is(err, engine.ErrTooLarge)
}

// tooLargeFor is the error of a write of rows (of sizes) that unit u, of
// capacity bytes (0: unknown), refused as more than it could hold even
// empty (err, [engine.ErrTooLarge]): the rows' bytes fit the capacity, but
// not once the unit rounds each extent up to its blocks.
func tooLargeFor(u DataUnit, capacity int64, rows []int, sizes []int64, err error) error {
	var total int64
	big := rows[0]
	for _, r := range rows {
		total += sizes[r]
		if sizes[r] > sizes[big] {
			big = r
		}
	}
	of := fmt.Sprintf("storage unit %d", u.ID())
	if capacity > 0 {
		of = fmt.Sprintf("storage unit %d (capacity %d bytes)", u.ID(), capacity)
	}
	if len(rows) == 1 {
		return fmt.Errorf("row %d of %d bytes is more than %s could ever hold, its extents rounded to the unit's blocks: %w", big, total, of, err)
	}
	return fmt.Errorf("%d rows of %d bytes (row %d the largest, %d bytes) are more than %s could ever hold at once, their extents rounded to the unit's blocks: %w", len(rows), total, big, sizes[big], of, err)
}

// waitedOut is the error of a write that waited for room (no unit had
// any), or came after such a wait, and failed with err once ctx ended: it
// wraps [engine.ErrCapacity] and ctx's error, whichever of them err
// lacks (a unit in another process cut short answers ctx's alone; one
// whose reserve wait ended as ctx did, ErrCapacity alone).
func waitedOut(ctx context.Context, err error, rows int) error {
	capacity, ended := errors.Is(err, engine.ErrCapacity), errors.Is(err, ctx.Err())
	switch {
	case capacity && !ended:
		return fmt.Errorf("%w; ctx ended while the put waited for room: %w", err, context.Cause(ctx))
	case ended && !capacity:
		return fmt.Errorf("no storage unit had room for %d rows before ctx ended: %w: %w", rows, engine.ErrCapacity, err)
	}
	return err
}

// again makes the plan again for a put whose write, begun at began,
// waited out the reserve wait of a unit in another process (full is its
// refusal) while ctx has time left: no unit had room then, but one may
// have joined since, or frees made room. It lets learnEvery pass since
// began (a unit that refuses at once, or one whose reserve wait is short,
// is not asked again and again, nor is the controller), lists the units
// (see [Client.relearn]) and places on them as a new put would: this
// put's refusals are forgotten. When ctx ends first, the error wraps full
// and ctx's. A controller that started anew meanwhile refuses the commit
// of what the put wrote: the error wraps [engine.ErrLost], and the put
// is placed again from the start (see [Client.placeAgain]).
func (p *planner) again(ctx context.Context, began time.Time, full error) error {
	t := time.NewTimer(learnEvery - time.Since(began))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return fmt.Errorf("%w; ctx ended while the put waited for room: %w", full, context.Cause(ctx))
	case <-t.C:
	}
	p.c.relearn(ctx)
	q := p.c.newPlanner(p.seed)
	if q.cluster != p.cluster {
		return fmt.Errorf("the controller started anew as cluster %s while the put waited for room on the units of cluster %s: %w", q.cluster, p.cluster, engine.ErrLost)
	}
	p.slots = slices.DeleteFunc(q.slots, func(s slot) bool { return p.left[s.u.ID()] })
	p.hash, p.draining = q.hash, q.draining
	return p.noUnit()
}

// parallel runs fn(0) … fn(n-1), at most [Config.MaxUnitIO] of this
// client's at once (counting every call's), and returns each one's
// error. Every fn runs to its end: a put needs to know what each unit
// wrote to free it on failure, so one error does not cancel the rest
// (errgroup's first-error model does not fit). A fn that cannot get a
// slot before ctx ends returns ctx's error.
func (c *Client) parallel(ctx context.Context, n int, fn func(i int) error) []error {
	return c.parallelSlots(ctx, n, nil, fn)
}

// parallelSlots is parallel where fn(i) takes no I/O slot when
// unbounded(i) (nil: every fn takes one).
func (c *Client) parallelSlots(ctx context.Context, n int, unbounded func(i int) bool, fn func(i int) error) []error {
	errs := make([]error, n)
	run := func(i int) {
		if unbounded != nil && unbounded(i) {
			errs[i] = fn(i)
			return
		}
		if errs[i] = c.acquireIO(ctx); errs[i] != nil {
			return
		}
		defer c.releaseIO()
		errs[i] = fn(i)
	}
	if n == 1 {
		run(0)
		return errs
	}
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { run(i) })
	}
	wg.Wait()
	return errs
}

func (c *Client) acquireIO(ctx context.Context) error {
	select {
	case c.io <- struct{}{}:
		return nil
	default:
	}
	select {
	case c.io <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for one of this client's %d unit I/O slots: %w", cap(c.io), context.Cause(ctx))
	}
}

func (c *Client) releaseIO() { <-c.io }

// pickOne places n bytes that must go to one unit (a reserved put) and
// reports whether the unit had room by the estimate (else the caller
// waits there).
func (p *planner) pickOne(n int64, seed uint64) (int, bool) {
	if s := p.pick(n, seed, withRoom); s >= 0 {
		return s, true
	}
	if s := p.pick(n, seed, unrefused); s >= 0 {
		return s, true
	}
	return max(p.pick(n, seed, anyCapacity), 0), false
}

// whole returns the slot that takes a put of n bytes whole, if the plan
// would: under local-first the first choice when it has room for all of
// it, or the only unit there is.
func (p *planner) whole(n int) (int, bool) {
	if len(p.slots) == 1 || !p.hash && p.slots[0].free >= int64(n) {
		return 0, true
	}
	return 0, false
}
