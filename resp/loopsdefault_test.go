package resp

import (
	"runtime"
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestLoopsDefault holds --resp-loops to wire/resp.md and the README: 0
// is half the CPUs (GOMAXPROCS), at least one; -1 (a goroutine per
// connection) and a given count are kept.
func TestLoopsDefault(t *testing.T) {
	for _, procs := range []int{1, 2, 3, 8} {
		old := runtime.GOMAXPROCS(procs)
		got := Config{}.withDefaults().Loops
		runtime.GOMAXPROCS(old)
		assert.Equal(t, max(1, procs/2), got, "GOMAXPROCS %d", procs)
	}
	assert.Equal(t, -1, Config{Loops: -1}.withDefaults().Loops)
	assert.Equal(t, 3, Config{Loops: 3}.withDefaults().Loops)
}
