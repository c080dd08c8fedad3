package wire

import (
	"strings"
	"sync"
	"testing"
	"time"
)

func TestBudget(t *testing.T) {
	var b budget
	b.init(10)
	never := make(chan struct{})
	if !b.acquire(7, 0, never) || !b.acquire(3, 0, never) {
		t.Fatal("acquire within the budget failed")
	}
	if b.acquire(1, 20*time.Millisecond, never) {
		t.Fatal("acquire past the budget succeeded")
	}
	closed := make(chan struct{})
	close(closed)
	if b.acquire(1, 0, closed) {
		t.Fatal("acquire past the budget succeeded after done closed")
	}
	// Waiters get what releases give back, however they interleave.
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				if !b.acquire(4, 0, never) {
					t.Error("acquire without a timeout gave up")
					return
				}
				b.release(4)
			}
		})
	}
	time.Sleep(10 * time.Millisecond)
	b.release(10)
	wg.Wait()
	if got := b.avail.Load(); got != 10 {
		t.Fatalf("avail %d after every release, want 10", got)
	}
}

func TestEpisodeLogsStartAndEndOnce(t *testing.T) {
	var logs logBuffer
	e := episode{log: logs.logger(), quiet: 50 * time.Millisecond}
	e.clear("over") // nothing on: nothing logged
	for range 5 {
		e.hit("trouble")
		e.clear("over") // too soon after a hit
	}
	time.Sleep(60 * time.Millisecond)
	e.clear("over")
	e.clear("over")
	got := logs.String()
	if n, m := strings.Count(got, "msg=trouble"), strings.Count(got, "msg=over"); n != 1 || m != 1 {
		t.Fatalf("logged trouble %d and over %d times, want once each:\n%s", n, m, got)
	}
	if !strings.Contains(got, "occurrences=5") {
		t.Errorf("end of the episode does not count 5 occurrences:\n%s", got)
	}
}
