package controller

// The unit registry. Storage units register with the controller (which
// assigns ids from 1 and never hands one out twice) and send heartbeats.
// Liveness is computed when the registry is read, not by a timer: a unit
// whose last heartbeat is older than the timeout is reported with Alive
// false, and stays listed so that readers of its cells learn it is gone.
// A heartbeat or a re-registration brings it back.

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/tqgo/tq/engine"
)

// Registry limits, enforced before anything is stored.
const (
	// MaxUnits bounds the registry. When it is full, registering evicts
	// the unit that has been silent longest among the dead ones; with no
	// dead unit to evict it fails with [engine.ErrCapacity].
	MaxUnits = 1 << 16
	// maxUnitAddrs bounds the addresses one unit may advertise.
	maxUnitAddrs = 64
	// maxUnitString bounds a unit's host id, name and each address.
	maxUnitString = 4096
)

func cloneUnit(u *engine.UnitInfo) engine.UnitInfo {
	c := *u
	c.Addrs = slices.Clone(u.Addrs)
	return c
}

// Registry tracks storage units and their liveness. It is safe for
// concurrent use and owns no goroutine.
type Registry struct {
	timeout time.Duration

	mu    sync.Mutex
	next  engine.UnitID // the next id to assign; ids below it are taken
	units map[engine.UnitID]*engine.UnitInfo
}

// NewRegistry returns an empty registry in which a unit with no heartbeat
// for timeout is not alive. A non-positive timeout means 5 s.
func NewRegistry(timeout time.Duration) *Registry {
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	return &Registry{timeout: timeout, next: 1, units: make(map[engine.UnitID]*engine.UnitInfo)}
}

// Timeout returns the liveness timeout.
func (r *Registry) Timeout() time.Duration { return r.timeout }

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

// Register records a unit and returns its id. With u.ID zero a new id is
// assigned (ids start at 1 and are never reused). With a nonzero u.ID the
// unit re-registers under that id after a reconnect: its host, addresses,
// name and capacity are replaced. An id the registry does not know (a
// controller restarted from a checkpoint that names it) is adopted, and
// later assignments skip past it. Re-registering an id that is alive on
// another host is refused: two units would share one id.
//
// Errors: [engine.ErrInvalid] for malformed figures or addresses or a
// conflicting id;
// [engine.ErrCapacity] when the registry is full of live units.
func (r *Registry) Register(u engine.UnitInfo) (engine.UnitID, error) {
	if err := checkUnit(&u); err != nil {
		return 0, err
	}
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	id := u.ID
	if id == 0 {
		if r.next == math.MaxUint32 {
			return 0, fmt.Errorf("unit ids exhausted: %w", engine.ErrCapacity)
		}
		id = r.next
	}
	old, known := r.units[id]
	if known && old.Host != "" && u.Host != "" && old.Host != u.Host && r.alive(old, now) {
		return 0, fmt.Errorf("storage unit %d is alive on host %s, re-registered from host %s: %w", id, old.Host, u.Host, engine.ErrInvalid)
	}
	if !known && len(r.units) >= MaxUnits && !r.evictLocked(now) {
		return 0, fmt.Errorf("%d live storage units registered: %w", len(r.units), engine.ErrCapacity)
	}
	if id >= r.next {
		r.next = id + 1
		if r.next == 0 { // adopted the largest id: nothing left to assign
			r.next = math.MaxUint32
		}
	}
	e := cloneUnit(&u)
	e.ID, e.LastHeartbeat, e.Alive = id, now, true
	r.units[id] = &e
	return id, nil
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
	return true
}

// Heartbeat records that unit hb.ID is alive and takes its Capacity, Used,
// Segments, PageSize and HugePages figures; other fields of hb are
// ignored. An unknown id is an error wrapping [engine.ErrNotFound]: the
// unit should register again.
func (r *Registry) Heartbeat(hb engine.UnitInfo) error {
	if err := checkUnit(&engine.UnitInfo{Capacity: hb.Capacity, Used: hb.Used, Segments: hb.Segments, PageSize: hb.PageSize}); err != nil {
		return err
	}
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	u, ok := r.units[hb.ID]
	if !ok {
		return fmt.Errorf("storage unit %d is not registered: %w", hb.ID, engine.ErrNotFound)
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
