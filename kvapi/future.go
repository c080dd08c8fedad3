package kvapi

import "context"

// Future is the result of an asynchronous call. Wait for it with a context;
// the call itself runs to completion even if a waiter gives up.
type Future[T any] struct {
	done chan struct{}
	val  T
	err  error
}

func start[T any](fn func() (T, error)) *Future[T] {
	f := &Future[T]{done: make(chan struct{})}
	go func() {
		defer close(f.done)
		f.val, f.err = fn()
	}()
	return f
}

// Done is closed when the result is available.
func (f *Future[T]) Done() <-chan struct{} { return f.done }

// Wait returns the result, or ctx's error if ctx ends first.
func (f *Future[T]) Wait(ctx context.Context) (T, error) {
	select {
	case <-f.done:
		return f.val, f.err
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
}
