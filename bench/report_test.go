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

// Under -count the testing package runs each sub-benchmark's runs one
// after another, so all of a redis row's runs come before those of the
// TQ rows compared with it. Each TQ run is compared with the redis run
// of the same number (the last call of that run, which the testing
// package makes with growing b.N), not every one with the last redis
// run: of redis runs at 100k, 200k and 300k ops/s the three TQ runs'
// ratios were all over 300k. A TQ run past the redis row's runs takes
// its latest.
func TestBaselineRunsPairsEachRunWithItsOwn(t *testing.T) {
	var r baselineRuns
	redis := []*testing.B{new(testing.B), new(testing.B), new(testing.B)}
	r.set("store=redis/x", redis[0], 1) // the run's first call, b.N = 1
	r.set("store=redis/x", redis[0], 100e3)
	r.set("store=redis/x", redis[1], 200e3)
	r.set("store=redis/x", redis[2], 300e3)
	tq := []*testing.B{new(testing.B), new(testing.B), new(testing.B), new(testing.B)}
	for i, want := range []float64{100e3, 200e3, 300e3, 300e3} {
		assert.Equal(t, want, r.of("store=redis/x", tq[i]), "TQ run %d", i)
		assert.Equal(t, want, r.of("store=redis/x", tq[i]), "TQ run %d, called again with a larger b.N", i)
	}
	assert.Zero(t, r.of("store=redis/y", tq[0]), "a baseline that did not run")
}
