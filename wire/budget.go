package wire

import (
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// budget is a counting semaphore of bytes: acquire takes n of them,
// waiting while fewer are left, and release gives them back. Taking and
// giving back cost an atomic operation or two when nobody waits; waiters
// are woken all at once by closing a channel, and each tries again. It
// is not fair: a large acquirer may wait while smaller ones get through.
type budget struct {
	avail   atomic.Int64
	waiters atomic.Int32
	mu      sync.Mutex
	wake    chan struct{} // closed and replaced by release when someone waits
}

func (b *budget) init(n int64) {
	b.avail.Store(n)
	b.wake = make(chan struct{})
}

func (b *budget) tryAcquire(n int64) bool {
	for {
		a := b.avail.Load()
		if a < n {
			return false
		}
		if b.avail.CompareAndSwap(a, a-n) {
			return true
		}
	}
}

// acquire takes n bytes, waiting until they are free. It gives up and
// returns false when timeout passes (0: never) or done closes.
func (b *budget) acquire(n int64, timeout time.Duration, done <-chan struct{}) bool {
	if b.tryAcquire(n) {
		return true
	}
	// A release adds to avail, then wakes if it sees a waiter; a waiter
	// counts itself, takes the current wake channel, then tries. Either
	// the try sees the bytes, or the release sees the waiter and closes
	// that channel (or a later one, closed by a later release).
	b.waiters.Add(1)
	defer b.waiters.Add(-1)
	var expired <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		expired = t.C
	}
	for {
		b.mu.Lock()
		wake := b.wake
		b.mu.Unlock()
		if b.tryAcquire(n) {
			return true
		}
		select {
		case <-wake:
		case <-expired:
			return false
		case <-done:
			return false
		}
	}
}

func (b *budget) release(n int64) {
	b.avail.Add(n)
	if b.waiters.Load() > 0 {
		b.mu.Lock()
		close(b.wake)
		b.wake = make(chan struct{})
		b.mu.Unlock()
	}
}

// episode logs a recurring condition (accept failing, connections
// refused) once when it starts and once when it ends, never once per
// occurrence. It ends at the first all-clear that comes at least quiet
// after the last occurrence.
type episode struct {
	log   *slog.Logger
	quiet time.Duration

	on    atomic.Bool // read without the lock by clear, on hot paths
	mu    sync.Mutex
	count int
	since time.Time
	last  time.Time
}

// hit records an occurrence; the first of an episode logs msg and args.
func (e *episode) hit(msg string, args ...any) {
	now := time.Now()
	e.mu.Lock()
	defer e.mu.Unlock()
	e.last = now
	if e.on.Load() {
		e.count++
		return
	}
	e.on.Store(true)
	e.count, e.since = 1, now
	e.log.Warn(msg, args...)
}

// clear ends the episode, if one is on and has been quiet long enough,
// logging msg with how many occurrences it saw and how long it lasted.
func (e *episode) clear(msg string, args ...any) {
	if !e.on.Load() {
		return
	}
	now := time.Now()
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.on.Load() || now.Sub(e.last) < e.quiet {
		return
	}
	e.on.Store(false)
	e.log.Info(msg, append(args, "occurrences", e.count, "lasted", e.last.Sub(e.since).Round(time.Millisecond))...)
}
