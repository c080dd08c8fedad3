package storage

import (
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/tqgo/tq/internal/leaktest"
)

// TestMain fails the run if any goroutine of a unit, a unit server or a
// membership outlives the tests.
func TestMain(m *testing.M) { leaktest.Main(m) }

// leakedGoroutines returns the stacks of unit reapers still running,
// waiting up to d for them to exit.
func leakedGoroutines(d time.Duration) string {
	deadline := time.Now().Add(d)
	for {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		var leaked []string
		for g := range strings.SplitSeq(string(buf), "\n\n") {
			if strings.Contains(g, "storage.(*Unit).reap") {
				leaked = append(leaked, g)
			}
		}
		if len(leaked) == 0 || time.Now().After(deadline) {
			return strings.Join(leaked, "\n\n")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
