package client

// The client's table of storage units. A connected client (see Connect)
// keeps it current: units come and go while a job runs (a unit that is
// restarted comes back under a new id), and a client that knew only the
// units of its Connect would write to dead units for ever and read the
// cells of a new unit as lost. So the table is replaced whole (copy on
// write) when the client learns from the controller of a unit that
// joined or died:
//
//   - a read that meets cells on a unit it does not know asks at once,
//     unless a list asked for since it met them is enough (many such
//     reads at once share a list), and fails with engine.ErrLost only if
//     the controller does not know the unit either;
//   - placement asks in the background at most once per learnEvery, and
//     at once after a write found a unit unreachable; a unit the
//     controller reports not alive takes no writes;
//   - a unit the controller reports draining takes no writes (placement
//     learns it within learnEvery; a put placed on it meanwhile is moved
//     off by the drain, which lists the unit's cells until none is left)
//     and stays readable;
//   - a table listed by another cluster than the one the controller's
//     last handshake names (a controller that started without the last
//     one's state hands unit ids out again) is listed again before a read
//     looks a unit up by id, and a unit listed under a known id with
//     another incarnation replaces the one the table held; a commit names
//     the cluster of the table its units were picked from, and a
//     controller of another cluster refuses it (the put is placed again);
//   - a unit the controller reports dead stays in the table, dialed only
//     when a read needs its cells: it may just have missed heartbeats (a
//     restarted controller waits for its units to come back), and as
//     long as it answers under its incarnation its bytes are there. Its
//     cells read as lost (engine.ErrLost) when it cannot be reached, or
//     when it does not answer a read within deadCheck and the controller
//     reports it dead (a unit silent with its connections open, see
//     deadwatch.go).

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/tqgo/tq/engine"
)

const learnEvery = time.Second // placement asks no more often

// unitTable is an immutable view of the units.
type unitTable struct {
	units   []DataUnit // sorted by id
	byID    map[engine.UnitID]DataUnit
	local   []DataUnit             // units on the client's host
	dead    map[engine.UnitID]bool // the controller reports them not alive
	redials bool                   // some units may be down (see redialUnit)

	// draining are the units the controller reports draining: no writes.
	draining map[engine.UnitID]bool

	// cluster is the cluster whose controller listed the units (as the
	// client knew it before it asked), and inc each listed unit's
	// incarnation: a unit id names one unit within one cluster only.
	cluster string
	inc     map[engine.UnitID]uint64
	// caps is the capacity each listed unit registered with (absent: none
	// reported, or a unit not listed by a controller). A unit hands out
	// no extent past it, so a read refuses a cell that ends past it
	// before allocating its bytes (see checkCapacity).
	caps map[engine.UnitID]uint64
}

// checkCapacity refuses a read of addrs on unit id, before anything is
// allocated for it, when one ends past the unit's capacity: no unit holds
// such a cell, and a reader over TCP would allocate its length (a cell of
// 1 TiB, committed by a broken or hostile client, killed every reader of
// it for lack of memory). Units of unknown capacity are not checked.
func (t *unitTable) checkCapacity(id engine.UnitID, addrs []engine.RemoteAddr) error {
	capacity, ok := t.caps[id]
	if !ok {
		return nil
	}
	return checkCapacity(id, capacity, addrs)
}

func checkCapacity(id engine.UnitID, capacity uint64, addrs []engine.RemoteAddr) error {
	for _, a := range addrs {
		if a.Len > capacity || a.Offset > capacity-a.Len {
			return fmt.Errorf("cell of %d bytes from offset %d of segment %d on storage unit %d ends past the unit's capacity of %d bytes: %w",
				a.Len, a.Offset, a.Segment, id, capacity, engine.ErrCorrupt)
		}
	}
	return nil
}

// capsOf returns the capacities infos report.
func capsOf(infos []engine.UnitInfo) map[engine.UnitID]uint64 {
	caps := make(map[engine.UnitID]uint64, len(infos))
	for _, u := range infos {
		if u.Capacity > 0 {
			caps[u.ID] = uint64(u.Capacity)
		}
	}
	return caps
}

func newUnitTable(units []DataUnit, host string, dead map[engine.UnitID]bool) (*unitTable, error) {
	t := &unitTable{byID: make(map[engine.UnitID]DataUnit, len(units)), dead: dead}
	for _, u := range units {
		if u.ID() == 0 {
			return nil, fmt.Errorf("storage unit id 0 is reserved: %w", engine.ErrInvalid)
		}
		if _, dup := t.byID[u.ID()]; dup {
			return nil, fmt.Errorf("storage unit %d given twice: %w", u.ID(), engine.ErrInvalid)
		}
		t.byID[u.ID()] = u
		t.units = append(t.units, u)
		if _, ok := u.(*redialUnit); ok {
			t.redials = true
		}
	}
	slices.SortFunc(t.units, func(a, b DataUnit) int { return int(a.ID()) - int(b.ID()) })
	for _, u := range t.units {
		if u.Host() == host {
			t.local = append(t.local, u)
		}
	}
	return t, nil
}

// writable returns the units a put may go to, and those of them on this
// host: every unit but those the controller reports dead or draining, and those
// [Connect] could not reach that are still down. If that leaves none,
// every unit that is not draining (the put then fails naming one), and
// none when every unit is draining. It also returns the cluster of the
// table they are from, for the commit of what is written to them, and
// the units left out for draining (for the error of a put that has no
// unit left).
func (c *Client) writable() (units, local []DataUnit, cluster string, draining []engine.UnitID) {
	c.learnSoon(false)
	t := c.tbl.Load()
	dr := c.drainReporter()
	if !t.redials && len(t.dead) == 0 && len(t.draining) == 0 && dr == nil {
		return t.units, t.local, t.cluster, nil
	}
	isDraining := func(id engine.UnitID) bool { return t.draining[id] || dr != nil && dr.Draining(id) }
	for _, u := range t.units {
		if isDraining(u.ID()) {
			draining = append(draining, u.ID())
			continue
		}
		if t.dead[u.ID()] {
			continue
		}
		if r, ok := u.(*redialUnit); ok && !r.Available() {
			continue
		}
		units = append(units, u)
		if u.Host() == c.cfg.Host {
			local = append(local, u)
		}
	}
	if len(units) == 0 {
		// Those reported dead may just have missed heartbeats, and those
		// down may be back: the put tries them, never a draining one.
		for _, u := range t.units {
			if !isDraining(u.ID()) {
				units = append(units, u)
				if u.Host() == c.cfg.Host {
					local = append(local, u)
				}
			}
		}
	}
	return units, local, t.cluster, draining
}

// unit returns the unit with id, asking the controller about units that
// joined when the client does not know it. A unit the controller does not
// know either is an error wrapping [engine.ErrLost] (so is
// [engine.LostUnit]); one the controller could not be asked about, the
// error of asking.
//
// A table listed by another cluster than the one the controller now
// answers for is listed again first: a controller that started without
// the state of the last hands unit ids out again, and id names another
// unit in the cells it gives out now. Cells named by a meta of another
// cluster than the table's (cluster, when not "": see
// [engine.BatchMeta]) are lost: their controller's state is gone, and id
// may name another unit now.
func (c *Client) unit(ctx context.Context, id engine.UnitID, cluster string) (DataUnit, error) {
	t := c.tbl.Load()
	if c.disc != nil && c.disc.stale(t) {
		if err := c.disc.learn(ctx, c, true); err != nil {
			return nil, fmt.Errorf("cells on storage unit %d of a controller that started without the last one's state, whose units could not be listed: %w", id, err)
		}
		if t = c.tbl.Load(); c.disc.stale(t) {
			return nil, fmt.Errorf("cells on storage unit %d: the controller started anew while its units were listed: %w", id, engine.ErrUnavailable)
		}
	}
	if cluster != "" && c.disc != nil && cluster != t.cluster {
		return nil, fmt.Errorf("cells on storage unit %d named by the controller of cluster %s, which started anew as cluster %s without its state: %w",
			id, cluster, t.cluster, engine.ErrLost)
	}
	if u, ok := t.byID[id]; ok {
		return u, nil
	}
	if id != engine.LostUnit && c.disc != nil {
		err := c.disc.learn(ctx, c, true)
		if u, ok := c.tbl.Load().byID[id]; ok {
			return u, nil
		}
		if err != nil {
			return nil, fmt.Errorf("cells on storage unit %d, which the controller could not be asked about: %w", id, err)
		}
	}
	return nil, fmt.Errorf("cells on unknown storage unit %d: %w", id, engine.ErrLost)
}

// unreachable tells the client that a write found u unreachable: the
// next placement asks the controller which units are alive.
func (c *Client) unreachable() {
	if c.disc != nil {
		c.learnSoon(true)
	}
}

// relearn lists the units for a put that waited out a unit's reserve
// wait (see [planner.again]), so that it sees a unit that joined and the
// room the units report, unless the last list is younger than learnEvery
// when its turn comes: many puts waiting at once share one list (each
// listing after the other's, they listed the units several times a
// second). A list that fails leaves the table as it was.
func (c *Client) relearn(ctx context.Context) {
	d := c.disc
	if d == nil {
		return
	}
	d.learnAfter(ctx, c, time.Now().Add(-learnEvery))
}

// discovery is how a connected client learns of units.
type discovery struct {
	list func(ctx context.Context) ([]engine.UnitInfo, error)
	// cluster is the cluster the controller answers for now.
	cluster func() string
	dial    unitDialer

	learning sync.Mutex // one learn at a time

	mu     sync.Mutex // guards the fields below; never held across a call
	last   time.Time  // when the last learn's list was asked for
	due    bool       // a write found a unit unreachable: ask at once
	busy   bool       // a background learn is running
	closed bool
	wg     sync.WaitGroup // the background learn, the dead watcher
	watch  deadWatch      // see deadwatch.go
}

// stale reports whether t was listed by another cluster than the one the
// controller answers for now.
func (d *discovery) stale(t *unitTable) bool {
	return d.cluster != nil && t.cluster != d.cluster()
}

// learnTimeout bounds a learn's question to the controller: while it is
// unreachable, reads fail as they would have and placement asks again
// later, rather than waiting out the controller's retries.
const learnTimeout = 2 * time.Second

// learnSoon starts a background learn when one is due: learnEvery after
// the last, or at once with now.
func (c *Client) learnSoon(now bool) {
	d := c.disc
	if d == nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if now {
		d.due = true
	}
	if d.busy || d.closed || (!d.due && time.Since(d.last) < learnEvery) {
		return
	}
	d.busy = true
	d.wg.Go(func() {
		ctx, cancel := context.WithTimeout(context.Background(), redialTimeout)
		defer cancel()
		d.learn(ctx, c, false)
		d.mu.Lock()
		d.busy = false
		d.mu.Unlock()
	})
}

// learn asks the controller for its units and replaces the client's
// table: units that joined are added (dialed), those not alive are marked
// dead. With read, a learn whose list was asked for after this call began
// is enough: it knows every unit the read's cells could name (a read that
// waited for another's learn does not ask again). A list asked for before
// is not: the read's unit may have registered after it (a learn a moment
// earlier made reads of a new unit's cells fail as lost).
func (d *discovery) learn(ctx context.Context, c *Client, read bool) error {
	if read {
		return d.learnAfter(ctx, c, time.Now())
	}
	return d.learnAfter(ctx, c, time.Time{})
}

// learnAfter is learn where a list asked for at or after after (zero:
// none) is enough, unless the controller started anew since.
func (d *discovery) learnAfter(ctx context.Context, c *Client, after time.Time) error {
	d.learning.Lock()
	defer d.learning.Unlock()
	d.mu.Lock()
	skip := d.closed || (!after.IsZero() && !d.last.Before(after) && !d.stale(c.tbl.Load()))
	d.mu.Unlock()
	if skip {
		return nil
	}
	listed := time.Now()
	var cluster string
	if d.cluster != nil {
		cluster = d.cluster() // before the list: a table is never younger than its stamp
	}
	lctx, cancel := context.WithTimeout(ctx, learnTimeout)
	infos, err := d.list(lctx)
	cancel()
	if err != nil {
		// Placement asks again later; a read that needed the list fails
		// with its error (the controller unreachable, the caller gone),
		// not as if the unit were lost.
		if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("list storage units: no answer in %v: %w: %w", learnTimeout, engine.ErrUnavailable, err)
		}
		return err
	}
	d.mu.Lock()
	d.last, d.due = listed, false
	d.mu.Unlock()
	c.room.learn(infos)
	old := c.tbl.Load()
	same := old.cluster == cluster
	listedAs := make(map[engine.UnitID]engine.UnitInfo, len(infos))
	for _, u := range infos {
		listedAs[u.ID] = u
	}
	dead := map[engine.UnitID]bool{}
	inc := map[engine.UnitID]uint64{}
	var units, added, gone []DataUnit
	for _, u := range old.units {
		id := u.ID()
		l, ok := listedAs[id]
		switch {
		case ok && (l.Incarnation == old.inc[id] || same && old.inc[id] == 0):
			// The same unit: its redialUnit dials it again if its
			// connection ended (see redial.go).
			if !l.Alive {
				dead[id] = true
			}
		case !ok && same:
			dead[id] = true // dead, or gone from the controller's list
		default:
			// Another unit under its id now (a controller that started
			// without the last one's state hands ids out again), or an
			// id of the other cluster, which may name a unit later.
			gone = append(gone, u)
			continue
		}
		units = append(units, u)
		inc[id] = old.inc[id]
		delete(listedAs, id)
	}
	var joined []engine.UnitInfo
	for _, u := range infos {
		if _, ok := listedAs[u.ID]; !ok {
			continue // kept
		}
		inc[u.ID] = u.Incarnation
		if !u.Alive {
			dead[u.ID] = true
			added = append(added, d.dial.deferred(u)) // see Connect
			continue
		}
		joined = append(joined, u)
	}
	dus, errs := d.dial.dialAll(ctx, joined)
	for i, u := range joined {
		if errs[i] != nil && ctx.Err() != nil {
			// The caller gave up, not the unit: its error must not be
			// every other call's until the next try (see redialUnit.get).
			r := d.dial.redial(u, fmt.Errorf("not dialed yet, the call that listed it gave up: %w", engine.ErrUnavailable))
			r.next = time.Time{} // the first call needing it dials it
			added = append(added, r)
			continue
		}
		if du := d.dial.orRedial(u, dus[i], errs[i]); du != nil {
			added = append(added, du)
		}
	}
	t, err := newUnitTable(append(units, added...), c.cfg.Host, dead)
	if err != nil {
		return err // cannot happen: the ids are new
	}
	t.draining = drainingOf(infos)
	t.cluster, t.inc = cluster, inc
	t.caps = capsOf(infos)
	for id, n := range old.caps {
		if _, ok := t.caps[id]; !ok && inc[id] != 0 && inc[id] == old.inc[id] {
			t.caps[id] = n // kept, and not listed now
		}
	}
	d.mu.Lock()
	closed := d.closed
	if !closed {
		c.tbl.Store(t)
	}
	d.mu.Unlock()
	// Their connections belong to the client's transports, which close
	// them (a view of a unit's shared memory may be in use yet).
	if closed {
		closeUnits(added) // Close took the old table's
		return nil
	}
	// A call that still holds one of gone reads it as having left the
	// cluster, not as the client closed.
	leaveUnits(gone)
	return nil
}

// close stops learning, waits for a background learn, and closes the
// redials of the units it added.
func (d *discovery) close(c *Client) error {
	d.mu.Lock()
	d.closed = true
	if d.watch.stop != nil {
		d.watch.stop()
	}
	d.mu.Unlock()
	d.wg.Wait()
	closeUnits(c.tbl.Load().units)
	return nil
}

// dialAll connects to units at once: one that does not answer costs the
// dial timeout once, not once per unit.
func (d unitDialer) dialAll(ctx context.Context, units []engine.UnitInfo) ([]DataUnit, []error) {
	dus := make([]DataUnit, len(units))
	errs := make([]error, len(units))
	var wg sync.WaitGroup
	for i, u := range units {
		wg.Go(func() {
			dctx, cancel := context.WithTimeout(ctx, redialTimeout)
			defer cancel()
			dus[i], errs[i] = d.dial(dctx, u)
		})
	}
	wg.Wait()
	return dus, errs
}

// orRedial is what the table holds for u after a dial returned (du, err):
// du (in a redialUnit when it is reached over shared memory, whose
// connection does not dial again by itself); nil when u has no address
// this client could ever dial; else a redialUnit, reachable later.
func (d unitDialer) orRedial(u engine.UnitInfo, du DataUnit, err error) DataUnit {
	switch {
	case err == nil:
		if _, ok := du.(broken); ok {
			r := d.redial(u, nil)
			r.du = du
			return r
		}
		return du
	case errors.Is(err, errNoAddr):
		return nil
	default:
		return d.redial(u, err)
	}
}

// redial returns a redialUnit for u, down with err.
func (d unitDialer) redial(u engine.UnitInfo, err error) *redialUnit {
	return newRedialUnit(u.ID, u.Host, err, func(ctx context.Context) (DataUnit, error) { return d.dial(ctx, u) })
}

// deferred is what the table holds for a unit the controller reports
// dead: a redialUnit that the first call needing it dials.
func (d unitDialer) deferred(u engine.UnitInfo) *redialUnit {
	r := d.redial(u, fmt.Errorf("the controller reports it dead: %w", engine.ErrUnavailable))
	r.next = time.Time{}
	return r
}

// drainingOf returns the units of infos that are draining, nil if none.
func drainingOf(infos []engine.UnitInfo) map[engine.UnitID]bool {
	var m map[engine.UnitID]bool
	for _, u := range infos {
		if u.Draining {
			if m == nil {
				m = map[engine.UnitID]bool{}
			}
			m[u.ID] = true
		}
	}
	return m
}

// drainReporter is a metadata service in this process that says which
// units are draining, for a client that does not list the units (see
// [New]): it asks on every placement.
type drainReporter interface {
	Draining(id engine.UnitID) bool
}

func (c *Client) drainReporter() drainReporter {
	if c.disc != nil {
		return nil // it learns from the unit list
	}
	m := c.meta
	if cm, ok := m.(checkedMeta); ok {
		m = cm.m
	}
	dr, _ := m.(drainReporter)
	return dr
}
