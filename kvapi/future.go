package kvapi

import (
	"context"
	"runtime"
	"sync"

	"github.com/tqgo/tq/engine"
)

// Future is the result of an asynchronous call. Wait for it with a context;
// the call itself runs to completion even if a waiter gives up.
//
// A batch no Wait handed out (its waiters gave up, or none asked, and the
// future was dropped) is released once the future is garbage: its views
// would otherwise hold their cells' memory for good. One a Wait returned
// is the caller's to release.
type Future[T any] struct {
	s *result[T]
}

// result is a Future's state, apart from the Future so that a cleanup of
// the Future can reach it.
type result[T any] struct {
	done chan struct{}
	val  T
	err  error

	mu      sync.Mutex
	handed  bool // a Wait returned val
	dropped bool // the Future is garbage: release val when it comes
	release func(T)
}

func start[T any](fn func() (T, error)) *Future[T] {
	return startReleasing(fn, nil)
}

// startBatch is start for a call whose result is a batch to release.
func startBatch(fn func() (*engine.Batch, error)) *Future[*engine.Batch] {
	return startReleasing(fn, func(b *engine.Batch) {
		if b != nil {
			b.Release()
		}
	})
}

func startReleasing[T any](fn func() (T, error), release func(T)) *Future[T] {
	s := &result[T]{done: make(chan struct{}), release: release}
	f := &Future[T]{s: s}
	if release != nil {
		runtime.AddCleanup(f, (*result[T]).drop, s)
	}
	go func() {
		v, err := fn()
		s.mu.Lock()
		s.val, s.err = v, err
		orphan := s.dropped && err == nil
		// Done under the lock: a drop sees the result there (and
		// releases it) or sees dropped set here (this releases it).
		close(s.done)
		s.mu.Unlock()
		if orphan {
			release(v)
		}
	}()
	return f
}

// drop runs once the Future is garbage: a value no Wait handed out is
// released now, or when it comes.
func (s *result[T]) drop() {
	s.mu.Lock()
	s.dropped = true
	var orphan bool
	select {
	case <-s.done:
		orphan = !s.handed && s.err == nil
	default: // the call's goroutine releases it
	}
	s.mu.Unlock()
	if orphan {
		s.release(s.val)
	}
}

// Done is closed when the result is available.
func (f *Future[T]) Done() <-chan struct{} { return f.s.done }

// Wait returns the result, or ctx's error if ctx ends first. A result
// that is already there is returned even when ctx has ended too.
func (f *Future[T]) Wait(ctx context.Context) (T, error) {
	select {
	case <-f.s.done:
	default:
		select {
		case <-f.s.done:
		case <-ctx.Done():
			// Both may be ready: select picks either, and a call that
			// ended first (an acknowledged put) must not read as cancelled.
			select {
			case <-f.s.done:
			default:
				var zero T
				return zero, ctx.Err()
			}
		}
	}
	f.s.mu.Lock()
	f.s.handed = true
	f.s.mu.Unlock()
	return f.s.val, f.s.err
}
