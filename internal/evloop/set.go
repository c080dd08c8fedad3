package evloop

import (
	"errors"
	"sync"
	"sync/atomic"
)

// ErrStopped is Set.Add's refusal once the set has stopped.
var ErrStopped = errors.New("evloop: the loop has stopped")

// errNoSocket is Set.Add's refusal when attach finds nothing to watch.
var errNoSocket = errors.New("evloop: no socket to watch")

// Set is the connections one loop serves, by the descriptor it serves
// each through, and the Poller that watches them. The loop's goroutine
// waits, looks up and serves; the connections' own goroutines add them
// and ask for them to stop. Add, Lookup, Remove and Filter may be called
// from any goroutine, Close from the loop's once it ends.
//
// A stopped set refuses Add, and the check and the addition are made
// under the lock Close takes its snapshot under: a connection added
// while the loop stops is either in that snapshot, and closed, or
// refused, never left on a loop that has gone.
type Set[C comparable] struct {
	Poller  *Poller
	stopped atomic.Bool

	mu    sync.Mutex
	conns map[int]C
}

// NewSet returns an empty set with its Poller, or the system's refusal.
func NewSet[C comparable]() (*Set[C], error) {
	p, err := NewPoller()
	if err != nil {
		return nil, err
	}
	return &Set[C]{Poller: p, conns: map[int]C{}}, nil
}

// Add runs attach, then watches the descriptor it returns and files c
// under it, all under the set's lock: whatever attach sets is seen by
// the loop that finds c. It returns ErrStopped without running attach
// once the set has stopped; an error, c not added, when attach returns
// ok false or the descriptor cannot be watched (attach has run then).
func (s *Set[C]) Add(c C, attach func() (fd int, ok bool)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped.Load() {
		return ErrStopped
	}
	fd, ok := attach()
	if !ok {
		return errNoSocket
	}
	if err := s.Poller.Add(fd); err != nil {
		return err
	}
	s.conns[fd] = c
	return nil
}

// Lookup returns the connection served through fd.
func (s *Set[C]) Lookup(fd int) (C, bool) {
	s.mu.Lock()
	c, ok := s.conns[fd]
	s.mu.Unlock()
	return c, ok
}

// Has reports whether c is served through fd (it has not left the loop,
// and fd was not reused since).
func (s *Set[C]) Has(fd int, c C) bool {
	got, ok := s.Lookup(fd)
	return ok && got == c
}

// Remove stops serving fd's connection (the descriptor stays open).
func (s *Set[C]) Remove(fd int) {
	s.mu.Lock()
	delete(s.conns, fd)
	s.mu.Unlock()
	s.Poller.Del(fd)
}

// Len returns how many connections the set holds.
func (s *Set[C]) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// Filter returns the connections for which keep is true; keep runs under
// the set's lock, and must not call the set.
func (s *Set[C]) Filter(keep func(C) bool) []C {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []C
	for _, c := range s.conns {
		if keep(c) {
			out = append(out, c)
		}
	}
	return out
}

// Stop marks the set stopped and wakes its loop's Wait.
func (s *Set[C]) Stop() {
	s.stopped.Store(true)
	s.Poller.Poke()
}

// Stopped reports whether Stop or Close was called.
func (s *Set[C]) Stopped() bool { return s.stopped.Load() }

// Close stops the set, runs drop for every connection it still holds
// (drop removes it) and releases the Poller.
func (s *Set[C]) Close(drop func(C)) {
	s.stopped.Store(true)
	for _, c := range s.Filter(func(C) bool { return true }) {
		drop(c)
	}
	s.Poller.Close()
}
