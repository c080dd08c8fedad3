package controller

// Keyed fetches. A remote client names each fetch with a random key
// (engine.FetchRequest.Key). The partition remembers, for a while, what a
// keyed fetch took, so that
//
//   - the same fetch asked again (its reply was lost with a broken
//     connection, or the controller restarted before the client read it)
//     returns the same rows instead of consuming more, and
//   - a fetch its caller gave up on can be undone (Unconsume): the rows go
//     back to the task, and a fetch with that key that has not happened
//     yet never will (the key is spent).
//
// Entries live fetchKeyTTL, at most maxFetchKeys per partition (the oldest
// go first). They are part of the durable state: consume and unconsume
// records carry the key, and snapshots hold the table.

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire/wirepb"
)

const (
	// fetchKeyTTL is how long a keyed fetch can be asked again or undone.
	fetchKeyTTL = 10 * time.Minute
	// maxFetchKeys bounds a partition's table.
	maxFetchKeys = 1 << 16
	// maxFetchKeyLen bounds a key.
	maxFetchKeyLen = 64
)

type fetchEntry struct {
	key      string
	task     string
	sampled  []uint64
	consumed []uint64
	spent    bool // given back (or refused before it happened)
	at       time.Time
	kept     *keptRef // the kept batch it took, while followed (keptbatches.go)
}

// fetchTable is a partition's recent keyed fetches, guarded by the
// partition's lock.
type fetchTable struct {
	m     map[string]*fetchEntry
	order []*fetchEntry // by insertion: the oldest first
}

func (t *fetchTable) get(key string, now time.Time) *fetchEntry {
	e := t.m[key]
	if e == nil || now.Sub(e.at) > fetchKeyTTL {
		return nil
	}
	return e
}

func (t *fetchTable) add(e *fetchEntry) {
	if t.m == nil {
		t.m = make(map[string]*fetchEntry)
	}
	// Forget expired entries and, past the bound, the oldest.
	drop := 0
	for drop < len(t.order) && (len(t.order)-drop >= maxFetchKeys || e.at.Sub(t.order[drop].at) > fetchKeyTTL) {
		if t.m[t.order[drop].key] == t.order[drop] {
			delete(t.m, t.order[drop].key)
		}
		drop++
	}
	if drop > 0 {
		t.order = slices.Delete(t.order, 0, drop)
	}
	if old := t.m[e.key]; old != nil {
		t.order = slices.DeleteFunc(t.order, func(x *fetchEntry) bool { return x == old })
	}
	t.m[e.key] = e
	t.order = append(t.order, e)
}

func (t *fetchTable) copyState() []*wirepb.StateFetch {
	out := make([]*wirepb.StateFetch, 0, len(t.order))
	for _, e := range t.order {
		if t.m[e.key] != e {
			continue
		}
		out = append(out, &wirepb.StateFetch{
			Key: []byte(e.key), Task: e.task, Sampled: e.sampled, Consumed: e.consumed, Spent: e.spent, AtUnixMs: e.at.UnixMilli(),
		})
	}
	return out
}

func (p *partition) loadFetches(fs []*wirepb.StateFetch) error {
	for _, f := range fs {
		if len(f.Key) == 0 || len(f.Key) > maxFetchKeyLen || f.Task == "" {
			return corrupt("partition %q: a fetch key of %d bytes for task %q", p.id, len(f.Key), f.Task)
		}
		p.fetches.add(&fetchEntry{key: string(f.Key), task: f.Task, sampled: f.Sampled, consumed: f.Consumed, spent: f.Spent, at: time.UnixMilli(f.AtUnixMs)})
	}
	return nil
}

func checkFetchKey(key string) error {
	if len(key) > maxFetchKeyLen {
		return fmt.Errorf("fetch key of %d bytes, at most %d: %w", len(key), maxFetchKeyLen, engine.ErrInvalid)
	}
	return nil
}

// errFetchGivenBack is the answer to a keyed fetch repeated after its rows
// were given back (or after an unconsume came first).
var errFetchGivenBack = fmt.Errorf("fetch was given back by its caller: %w", context.Canceled)

// unconsume marks the rows indexes (those still here) not consumed by task
// and spends key (none for ""). p is locked.
func (p *partition) unconsume(task, key string, indexes []uint64, at time.Time) {
	t := p.taskSlot(task)
	for _, gi := range indexes {
		if r, ok := p.rows.get(gi); ok {
			p.setConsumed(r, t, false)
			if len(p.views) > 0 {
				p.refreshRow(r)
			}
		}
	}
	if key == "" {
		// Rows given back by the controller (keptbatches.go).
	} else if e := p.fetches.m[key]; e != nil && e.task == task {
		e.spent = true
	} else {
		p.fetches.add(&fetchEntry{key: key, task: task, spent: true, at: at})
	}
	if len(indexes) > 0 {
		p.notify()
	}
}

// spentKeys remembers keys given back for a partition that did not exist
// yet: a keyed fetch still waiting for the partition to be created must
// not take rows once it is. Entries live fetchKeyTTL, at most
// maxFetchKeys; they are not durable (a restart ends the fetch that could
// have used one along with its connection).
type spentKeys struct {
	mu    sync.Mutex
	m     map[string]time.Time
	order []string
}

func (s *spentKeys) add(key string, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = make(map[string]time.Time)
	}
	for len(s.order) > 0 && (len(s.order) >= maxFetchKeys || now.Sub(s.m[s.order[0]]) > fetchKeyTTL) {
		delete(s.m, s.order[0])
		s.order = s.order[1:]
	}
	if _, ok := s.m[key]; !ok {
		s.order = append(s.order, key)
	}
	s.m[key] = now
}

func (s *spentKeys) has(key string, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	at, ok := s.m[key]
	return ok && now.Sub(at) <= fetchKeyTTL
}
