package rdma

import (
	"fmt"
	"os"
	"testing"

	"github.com/tqgo/tq/internal/leaktest"
)

func TestMain(m *testing.M) {
	if os.Getenv(unitProcEnv) != "" {
		os.Exit(runUnitProc())
	}
	if os.Getenv(clientProcEnv) != "" {
		os.Exit(runClientProc())
	}
	TrackHandles(true)
	leaktest.Main(&leakChecked{m})
}

// leakChecked fails the run when a verbs handle or an emulated object is
// left open.
type leakChecked struct{ m *testing.M }

func (l *leakChecked) Run() int {
	code := l.m.Run()
	if code != 0 {
		return code
	}
	if live := LiveHandles(); len(live) > 0 {
		for _, h := range live {
			fmt.Fprintln(os.Stderr, h)
		}
		return 1
	}
	if c := EmulatedCounts(); c != (EmuCounts{}) {
		fmt.Fprintf(os.Stderr, "emulated verbs objects left open: %+v\n", c)
		return 1
	}
	return 0
}
