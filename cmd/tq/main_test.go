package main

import (
	"os"
	"testing"

	"github.com/tqgo/tq/bench"
	"github.com/tqgo/tq/internal/auth"
	"github.com/tqgo/tq/internal/leaktest"
)

func TestMain(m *testing.M) {
	if os.Getenv(asTQ) != "" {
		main() // TestFaultMatrix's tq (buildTQRace)
		os.Exit(0)
	}
	bench.ChildMain() // the writer and reader processes of `tq bench`
	if role := os.Getenv("TQ_FM_ROLE"); role != "" {
		os.Exit(fmMain(role)) // a client process of TestFaultMatrix
	}
	// Nothing here uses this user's real data directory or token: a process
	// that is not given one finds no token, and a tq serve that is not
	// given a data directory fails to create this one. (Helper processes
	// get theirs from the test.)
	if os.Getenv("TQ_HELPER") == "" {
		os.Setenv(auth.EnvDataDir, "/dev/null/tq-tests-name-a-data-dir")
		os.Unsetenv(auth.EnvToken)
	}
	leaktest.Main(removingBins{m})
}

// removingBins runs the tests and then removes the binaries they built.
type removingBins struct{ m *testing.M }

func (r removingBins) Run() int {
	defer removeBinDir()
	return r.m.Run()
}
