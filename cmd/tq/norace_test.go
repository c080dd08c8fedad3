//go:build !race

package main

// raceEnabled reports a test binary built with the race detector.
const raceEnabled = false
