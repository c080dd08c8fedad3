package controller

// The unit registry. Storage units register with the controller and send
// heartbeats. An id is bound to one incarnation (one run of one unit
// process) for good: ids start at 1, are never handed out twice (the
// counter is part of the durable state), and a unit that comes back with
// another incarnation, or from another cluster, is a new unit under a new
// id — the old id's cells are lost, never served from the new memory.
//
// Liveness is computed when the registry is read, not by a timer: a unit
// whose last heartbeat is older than the timeout is reported with Alive
// false, and stays listed so that readers of its cells learn it is gone. A
// heartbeat or a re-registration brings it back, unless a full registry
// evicted it meanwhile (MaxUnits; recorded in the log like a
// registration). Units known from the durable state count as heard from
// when the controller finished recovering, so they have one timeout to
// come back before their cells read as lost.
//
// A unit may be marked draining (SetDraining, durable like its
// registration): clients place no new cells on it, and a mover relocates
// the ones it holds (drain.go). It stays registered and readable.

import (
	"cmp"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire/wirepb"
)

// Registry limits, enforced before anything is stored.
const (
	// MaxUnits bounds the registry. When it is full, registering evicts
	// the unit that has been silent longest among the dead ones (durably,
	// like a registration); with no dead unit to evict it fails with
	// [engine.ErrCapacity]. An evicted unit's id is not handed out again;
	// its cells keep naming it and read as lost, as those of any unit not
	// registered.
	MaxUnits = 1 << 16
	// maxUnitAddrs bounds the addresses one unit may advertise.
	maxUnitAddrs = 64
	// maxUnitString bounds a unit's host id, name and each address.
	maxUnitString = 4096
)

// cloneUnit returns a copy of u that shares no memory with it.
func cloneUnit(u *engine.UnitInfo) engine.UnitInfo {
	c := *u
	c.Addrs = slices.Clone(u.Addrs)
	return c
}

// Registry tracks storage units and their liveness. It is safe for
// concurrent use and owns no goroutine.
type Registry struct {
	timeout time.Duration
	// maxUnits is MaxUnits; tests lower it.
	maxUnits int
	// log, when set, records a registration or an eviction in the
	// controller's log; it is called with mu held, so records follow the
	// changes' order.
	log func(*wirepb.LogOp)
	// closed, when set, refuses registrations, heartbeats and drains
	// once the controller is closed (its error).
	closed func() error

	mu      sync.Mutex
	next    engine.UnitID // the next id to assign; ids below it are taken
	units   map[engine.UnitID]*engine.UnitInfo
	started time.Time // units known from the durable state were last heard of then
	// draining counts the units marked draining (changed under mu, by
	// drainingChange): a commit checks its cells' units against the
	// registry only when some unit is, or when gone is set.
	draining atomic.Int32
	// gone is set once some unit was evicted: an id below next that is
	// not registered.
	gone atomic.Bool
	// view is what a commit checks its cells' units against without mu
	// (see [Registry.bounds]); nil once a change under mu made it stale.
	view atomic.Pointer[unitBounds]
	// evictWatch are told each unit evicted, in evictLocked or in replay,
	// with mu held: what is kept per unit elsewhere goes with it (see
	// watchEvictions).
	evictWatch map[*func(engine.UnitID)]struct{}
}

// watchEvictions calls fn with the id of each unit evicted from now on,
// with the registry's lock held (fn may take only locks ordered after it:
// the fences', the free queue's); stop ends it.
func (r *Registry) watchEvictions(fn func(engine.UnitID)) (stop func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.evictWatch == nil {
		r.evictWatch = map[*func(engine.UnitID)]struct{}{}
	}
	r.evictWatch[&fn] = struct{}{}
	return func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		delete(r.evictWatch, &fn)
	}
}

// evictedLocked records that unit id left the registry for good.
func (r *Registry) evictedLocked(id engine.UnitID) {
	r.gone.Store(true)
	for fn := range r.evictWatch {
		(*fn)(id)
	}
}

// NewRegistry returns an empty registry in which a unit with no heartbeat
// for timeout is not alive. A non-positive timeout means 5 s.
func NewRegistry(timeout time.Duration) *Registry {
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	return &Registry{timeout: timeout, maxUnits: MaxUnits, next: 1, units: make(map[engine.UnitID]*engine.UnitInfo), started: time.Now()}
}

// Timeout returns the liveness timeout.
func (r *Registry) Timeout() time.Duration { return r.timeout }

// refuse returns the controller's error once it is closed: a
// registration, heartbeat or drain of a closed controller would change a
// state no one serves (and log it to a closed journal).
func (r *Registry) refuse() error {
	if r.closed == nil {
		return nil
	}
	return r.closed()
}

func checkUnit(u *engine.UnitInfo) error {
	switch {
	case len(u.Host) > maxUnitString || len(u.Name) > maxUnitString:
		return fmt.Errorf("unit host id or name longer than %d bytes: %w", maxUnitString, engine.ErrInvalid)
	case len(u.Addrs) > maxUnitAddrs:
		return fmt.Errorf("unit advertises %d addresses, at most %d: %w", len(u.Addrs), maxUnitAddrs, engine.ErrInvalid)
	case u.Capacity < 0 || u.Used < 0 || u.Segments < 0 || u.PageSize < 0:
		return fmt.Errorf("unit reports negative figures: %w", engine.ErrInvalid)
	}
	for _, a := range u.Addrs {
		if a == "" || len(a) > maxUnitString {
			return fmt.Errorf("unit address of %d bytes: %w", len(a), engine.ErrInvalid)
		}
	}
	return nil
}

// Register records a unit and returns its id.
//
//   - With u.ID zero, or an id this registry does not bind to
//     u.Incarnation, or with known false (the unit's id was assigned by
//     another cluster), the unit is new: it gets a fresh id. Its old id,
//     if the registry knows it, stays bound to the old incarnation, whose
//     cells are lost.
//   - With an id bound to u.Incarnation, the unit re-registers after a
//     reconnect: its host, addresses, name and capacity are replaced.
//
// Errors: [engine.ErrInvalid] for a zero incarnation or malformed figures
// or addresses; [engine.ErrCapacity] when the registry is full of live
// units or the ids ran out.
func (r *Registry) Register(u engine.UnitInfo, known bool) (engine.UnitID, error) {
	if err := r.refuse(); err != nil {
		return 0, fmt.Errorf("register storage unit %q: %w", u.Name, err)
	}
	if err := checkUnit(&u); err != nil {
		return 0, err
	}
	if u.Incarnation == 0 {
		return 0, fmt.Errorf("unit registers without an incarnation: %w", engine.ErrInvalid)
	}
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if old, ok := r.units[u.ID]; ok && known && u.ID != 0 && old.Incarnation == u.Incarnation {
		changed := old.Host != u.Host || old.Name != u.Name || old.Capacity != u.Capacity || !slices.Equal(old.Addrs, u.Addrs)
		if old.Capacity != u.Capacity {
			r.view.Store(nil)
		}
		old.Host, old.Name, old.Capacity, old.Addrs = u.Host, u.Name, u.Capacity, slices.Clone(u.Addrs)
		old.LastHeartbeat = now
		if changed {
			r.record(old)
		}
		return u.ID, nil
	}
	if r.next >= engine.LostUnit {
		return 0, fmt.Errorf("unit ids exhausted: %w", engine.ErrCapacity)
	}
	if len(r.units) >= r.maxUnits && !r.evictLocked(now) {
		return 0, fmt.Errorf("%d live storage units registered: %w", len(r.units), engine.ErrCapacity)
	}
	e := cloneUnit(&u)
	e.ID, e.LastHeartbeat = r.next, now
	r.next++
	r.units[e.ID] = &e
	r.view.Store(nil)
	r.drainingChange(nil, &e)
	r.record(&e)
	return e.ID, nil
}

func (r *Registry) record(u *engine.UnitInfo) {
	if r.log != nil {
		r.log(&wirepb.LogOp{Op: &wirepb.LogOp_Unit{Unit: unitOp(u)}})
	}
}

func unitOp(u *engine.UnitInfo) *wirepb.UnitOp {
	return &wirepb.UnitOp{UnitId: uint32(u.ID), Incarnation: u.Incarnation, HostId: u.Host, Addrs: u.Addrs, Name: u.Name, Capacity: u.Capacity, Draining: u.Draining}
}

// apply records a unit from the durable state (a log record or a
// snapshot).
func (r *Registry) apply(op *wirepb.UnitOp) error {
	id := engine.UnitID(op.UnitId)
	if id == 0 || id >= engine.LostUnit || op.Incarnation == 0 {
		return corrupt("unit %d with incarnation %d", op.UnitId, op.Incarnation)
	}
	u := engine.UnitInfo{ID: id, Incarnation: op.Incarnation, Host: op.HostId, Addrs: slices.Clone(op.Addrs), Name: op.Name, Capacity: op.Capacity, Draining: op.Draining}
	if err := checkUnit(&u); err != nil {
		return corrupt("unit %d: %s", id, err.Error())
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if old, ok := r.units[id]; ok && old.Incarnation != u.Incarnation {
		return corrupt("unit %d bound to incarnations %x and %x", id, old.Incarnation, u.Incarnation)
	}
	u.LastHeartbeat = r.started
	r.drainingChange(r.units[id], &u)
	r.units[id] = &u
	r.next = max(r.next, id+1)
	r.view.Store(nil)
	return nil
}

// recovered marks the end of recovery at now: units known from the
// durable state count as heard from then (recovery may have taken a while
// of their timeout).
func (r *Registry) recovered(now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, u := range r.units {
		if u.LastHeartbeat.Equal(r.started) {
			u.LastHeartbeat = now
		}
	}
	r.started = now
}

// copyLocked returns the next id and every unit, for a state file. The
// caller holds mu.
func (r *Registry) copyLocked() (uint32, []*wirepb.UnitOp) {
	out := make([]*wirepb.UnitOp, 0, len(r.units))
	for _, u := range r.units {
		out = append(out, unitOp(u))
	}
	slices.SortFunc(out, func(a, b *wirepb.UnitOp) int { return cmp.Compare(a.UnitId, b.UnitId) })
	return uint32(r.next), out
}

// restore replaces the registry's content with a state file's.
func (r *Registry) restore(next uint32, units []*wirepb.UnitOp) error {
	fresh := &Registry{timeout: r.timeout, next: 1, units: make(map[engine.UnitID]*engine.UnitInfo), started: r.started}
	for _, op := range units {
		if _, dup := fresh.units[engine.UnitID(op.UnitId)]; dup {
			return corrupt("unit %d appears twice", op.UnitId)
		}
		if err := fresh.apply(op); err != nil {
			return err
		}
	}
	if engine.UnitID(next) < fresh.next {
		return corrupt("next unit id %d, but unit %d is registered", next, fresh.next-1)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.units, r.next = fresh.units, max(engine.UnitID(next), 1)
	r.view.Store(nil)
	r.draining.Store(fresh.draining.Load())
	// Ids are handed out in turn and never again: one below next that is
	// missing was evicted.
	r.gone.Store(len(r.units) < int(r.next)-1)
	return nil
}

// evictLocked drops the dead unit silent longest; false if none is dead.
func (r *Registry) evictLocked(now time.Time) bool {
	var victim *engine.UnitInfo
	for _, u := range r.units {
		if r.alive(u, now) {
			continue
		}
		if victim == nil || u.LastHeartbeat.Before(victim.LastHeartbeat) {
			victim = u
		}
	}
	if victim == nil {
		return false
	}
	delete(r.units, victim.ID)
	r.view.Store(nil)
	r.drainingChange(victim, nil)
	r.evictedLocked(victim.ID)
	// Recorded like a registration: a restart that replayed the unit's
	// registration and not this would list it again, alive for a
	// timeout, with the registry over its bound.
	if r.log != nil {
		r.log(&wirepb.LogOp{Op: &wirepb.LogOp_UnitEvicted{UnitEvicted: &wirepb.UnitEvictedOp{UnitId: uint32(victim.ID), Incarnation: victim.Incarnation}}})
	}
	return true
}

// applyEvicted drops a unit evicted in a log record.
func (r *Registry) applyEvicted(op *wirepb.UnitEvictedOp) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	id := engine.UnitID(op.UnitId)
	u, ok := r.units[id]
	if !ok || u.Incarnation != op.Incarnation {
		return corrupt("unit %d (incarnation %x) evicted, but it is not registered", op.UnitId, op.Incarnation)
	}
	delete(r.units, id)
	r.view.Store(nil)
	r.drainingChange(u, nil)
	r.evictedLocked(id)
	return nil
}

// Heartbeat records that unit hb.ID (of incarnation hb.Incarnation) is
// alive and takes its Capacity, Used, Segments, PageSize and HugePages
// figures; other fields of hb are ignored. An unknown id, or one bound to
// another incarnation, is an error wrapping [engine.ErrNotFound]: the unit
// should register again.
func (r *Registry) Heartbeat(hb engine.UnitInfo) error {
	if err := r.refuse(); err != nil {
		return fmt.Errorf("heartbeat of storage unit %d: %w", hb.ID, err)
	}
	if err := checkUnit(&engine.UnitInfo{Capacity: hb.Capacity, Used: hb.Used, Segments: hb.Segments, PageSize: hb.PageSize}); err != nil {
		return err
	}
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	u, ok := r.units[hb.ID]
	if !ok || u.Incarnation != hb.Incarnation {
		return fmt.Errorf("storage unit %d (incarnation %x) is not registered: %w", hb.ID, hb.Incarnation, engine.ErrNotFound)
	}
	if u.Capacity != hb.Capacity {
		r.view.Store(nil)
	}
	u.Capacity, u.Used, u.Segments, u.PageSize, u.HugePages = hb.Capacity, hb.Used, hb.Segments, hb.PageSize, hb.HugePages
	u.LastHeartbeat = now
	return nil
}

func (r *Registry) alive(u *engine.UnitInfo, now time.Time) bool {
	return now.Sub(u.LastHeartbeat) <= r.timeout
}

// Units lists every registered unit by id, dead ones included (Alive
// false), as of now. The slices it returns belong to the caller.
func (r *Registry) Units() []engine.UnitInfo {
	now := time.Now()
	r.mu.Lock()
	out := make([]engine.UnitInfo, 0, len(r.units))
	for _, u := range r.units {
		c := cloneUnit(u)
		c.Alive = r.alive(u, now)
		out = append(out, c)
	}
	r.mu.Unlock()
	slices.SortFunc(out, func(a, b engine.UnitInfo) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// Unit returns one unit as of now; false if it is not registered.
func (r *Registry) Unit(id engine.UnitID) (engine.UnitInfo, bool) {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	u, ok := r.units[id]
	if !ok {
		return engine.UnitInfo{}, false
	}
	c := cloneUnit(u)
	c.Alive = r.alive(u, now)
	return c, true
}

// Alive reports whether unit id is registered and heard from within the
// timeout.
func (r *Registry) Alive(id engine.UnitID) bool {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	u, ok := r.units[id]
	return ok && r.alive(u, now)
}

// SetDraining marks unit id draining (it takes no new placements) or
// returns it to service, records the change in the log, and returns the
// unit as it is now. With draining, some other live unit that is not
// draining must exist: the cells would have nowhere to go.
//
// Errors: [engine.ErrNotFound] for an id not registered;
// [engine.ErrCapacity] when no other live unit takes placements.
func (r *Registry) SetDraining(id engine.UnitID, draining bool) (engine.UnitInfo, error) {
	if err := r.refuse(); err != nil {
		return engine.UnitInfo{}, fmt.Errorf("drain of storage unit %d: %w", id, err)
	}
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	u, ok := r.units[id]
	if !ok {
		return engine.UnitInfo{}, fmt.Errorf("storage unit %d is not registered: %w", id, engine.ErrNotFound)
	}
	if draining && !u.Draining {
		other := false
		for _, o := range r.units {
			other = other || (o.ID != id && !o.Draining && r.alive(o, now))
		}
		if !other {
			return engine.UnitInfo{}, fmt.Errorf("storage unit %d is the only live unit that is not draining: its cells would have nowhere to go: %w", id, engine.ErrCapacity)
		}
	}
	if u.Draining != draining {
		was := *u
		u.Draining = draining
		r.drainingChange(&was, u)
		r.record(u)
	}
	c := cloneUnit(u)
	c.Alive = r.alive(u, now)
	return c, nil
}

// drainingChange counts a unit's entry replaced from old to now (either
// may be nil: added, removed) in the units marked draining. The caller
// holds mu.
func (r *Registry) drainingChange(old, now *engine.UnitInfo) {
	var d int32
	if old != nil && old.Draining {
		d--
	}
	if now != nil && now.Draining {
		d++
	}
	if d != 0 {
		r.draining.Add(d)
	}
}

// Draining reports whether unit id is registered and draining.
func (r *Registry) Draining(id engine.UnitID) bool {
	draining, _ := r.refusing(id)
	return draining
}

// refusing reports whether a commit naming unit id must be refused: it is
// draining, or it was evicted (its id was handed out and is no longer
// registered). It takes the lock only while some unit is draining or was
// evicted.
func (r *Registry) refusing(id engine.UnitID) (draining, evicted bool) {
	if r.draining.Load() == 0 && !r.gone.Load() {
		return false, false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	u, ok := r.units[id]
	return ok && u.Draining, !ok && id < r.next
}

// unitBounds is an immutable copy of what a commit checks its cells'
// units against (checkLocs): the capacity each registered unit
// reported. A unit's segments, and so any extent it
// hands out, lie within its capacity (storage: mapped bytes never exceed
// Config.Capacity).
type unitBounds struct {
	caps map[engine.UnitID]uint64 // registered units with a capacity (absent: none reported, unchecked)
}

// bounds returns the registry's unitBounds as of now. It takes the lock
// only to make a new copy, the first time it is asked after a unit was
// registered or evicted or reported another capacity (all rare), so a
// commit takes no lock for it.
func (r *Registry) bounds() *unitBounds {
	if b := r.view.Load(); b != nil {
		return b
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if b := r.view.Load(); b != nil {
		return b
	}
	b := &unitBounds{caps: make(map[engine.UnitID]uint64, len(r.units))}
	for id, u := range r.units {
		if u.Capacity > 0 {
			b.caps[id] = uint64(u.Capacity)
		}
	}
	// Under mu: a change made after this copy (under mu too) stores nil
	// after it, never before.
	r.view.Store(b)
	return b
}

// takeLocked checks that the units of locs still take cells: each is
// registered, alive and not draining. The caller holds mu.
func (r *Registry) takeLocked(locs []engine.CellLoc) error {
	now := time.Now()
	var last engine.UnitID
	for _, l := range locs {
		if l.Unit == last || !l.Stored() || l.Lost() {
			continue
		}
		last = l.Unit
		switch u, ok := r.units[l.Unit]; {
		case !ok:
			return fmt.Errorf("storage unit %d left the registry while cells were written to it: %w", l.Unit, engine.ErrUnavailable)
		case u.Draining:
			return fmt.Errorf("storage unit %d was marked draining while cells were written to it: %w", l.Unit, engine.ErrUnavailable)
		case !r.alive(u, now):
			return fmt.Errorf("storage unit %d was not heard from within its timeout while cells were written to it: %w", l.Unit, engine.ErrUnavailable)
		}
	}
	return nil
}

// bound reports whether id is registered with incarnation inc.
func (r *Registry) bound(id engine.UnitID, inc uint64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	u, ok := r.units[id]
	return ok && u.Incarnation == inc
}
