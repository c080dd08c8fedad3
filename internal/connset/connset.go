// Package connset tracks the connections a transport has made, so that
// closing the transport closes them all and no Dial succeeds afterwards.
package connset

import (
	"errors"
	"io"
	"sync"
)

// Conn is what a Set holds.
type Conn interface {
	comparable
	io.Closer
}

// Set is a set of open connections. The zero value is ready to use; it is
// safe for concurrent use.
type Set[C Conn] struct {
	mu     sync.Mutex
	closed bool
	m      map[C]struct{}
}

// Add records c; it reports false, recording nothing, once the set is
// closed.
func (s *Set[C]) Add(c C) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	if s.m == nil {
		s.m = make(map[C]struct{})
	}
	s.m[c] = struct{}{}
	return true
}

// Remove forgets c (a connection closing itself).
func (s *Set[C]) Remove(c C) {
	s.mu.Lock()
	delete(s.m, c)
	s.mu.Unlock()
}

// Close marks the set closed and closes every connection in it, outside
// the lock (a connection's Close may call Remove). It is idempotent.
func (s *Set[C]) Close() error {
	s.mu.Lock()
	s.closed = true
	conns := make([]C, 0, len(s.m))
	for c := range s.m {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	var errs []error
	for _, c := range conns {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}
