package kvapi

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A future dropped (garbage, nobody waited) just as its call ends releases
// the call's result exactly once, whichever of the two goes first. (The
// call's goroutine decided it had no orphan to release, and only then
// marked the result done; a drop in between saw no result yet, left the
// release to the goroutine, and the result was never released.)
func TestFutureDroppedAsTheCallEndsReleasesOnce(t *testing.T) {
	const rounds = 20000
	var released, spin atomic.Int64
	// Kept alive: the real cleanup would drop each again.
	futures := make([]*Future[int], 0, rounds)
	for round := range rounds {
		var ready sync.WaitGroup
		ready.Add(1)
		gate := make(chan struct{})
		f := startReleasing(func() (int, error) {
			ready.Done()
			<-gate
			return 1, nil
		}, func(v int) { released.Add(int64(v)) })
		ready.Wait()
		// What the cleanup does once f is garbage, run here at the moment
		// the call ends.
		close(gate)
		for i := 0; i < round%64*8; i++ { // a little later each round
			spin.Add(1)
		}
		f.s.drop()
		<-f.s.done
		futures = append(futures, f)
	}
	// A release the goroutine owes comes after done is closed.
	require.Eventually(t, func() bool { return released.Load() >= rounds }, 5*time.Second, time.Millisecond,
		"%d of %d results released", released.Load(), rounds)
	time.Sleep(10 * time.Millisecond)
	require.Equal(t, int64(rounds), released.Load(), "each released once")
	runtime.KeepAlive(futures)
}
