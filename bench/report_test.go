package bench

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// A CPU time too short for /proc's clock ticks, or a ratio whose
// baseline row did not run, is left out of the results (and said so in
// the log) rather than reported as 0 or dropped without a word.
func TestReportLeavesOutWhatItCannotMeasure(t *testing.T) {
	var logged []string
	r := testing.Benchmark(func(b *testing.B) {
		reportCPU(b, 0, 2*b.N, "idle_us/op")
		reportCPU(b, (minCPUTicks-1)*clockTick, 2*b.N, "short_us/op")
		reportCPU(b, minCPUTicks*clockTick, 10, "long_us/op")
		reportRatio(b, 50, 0, "missing/redis", "store=redis/x")
		reportRatio(b, 50, 100, "present/redis", "store=redis/y")
		logged = append(logged, "ran")
	})
	assert.NotEmpty(t, logged)
	assert.NotContains(t, r.Extra, "idle_us/op")
	assert.NotContains(t, r.Extra, "short_us/op")
	assert.NotContains(t, r.Extra, "missing/redis")
	assert.InDelta(t, float64(minCPUTicks*clockTick.Microseconds())/10, r.Extra["long_us/op"], 1e-9)
	assert.InDelta(t, 0.5, r.Extra["present/redis"], 1e-9)
}
