// Package leaktest fails a test binary whose tests leave goroutines
// running TQ code behind. Use it from a package's TestMain:
//
//	func TestMain(m *testing.M) { leaktest.Main(m) }
package leaktest

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

const module = "github.com/tqgo/tq/"

// Main runs the tests, then waits up to a second for goroutines running
// TQ code (outside the testing framework's own) to exit, and fails the run
// listing those that did not.
func Main(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if leaked := Leaked(time.Second); leaked != "" {
			fmt.Fprintf(os.Stderr, "goroutines leaked by the tests:\n%s\n", leaked)
			code = 1
		}
	}
	os.Exit(code)
}

// Leaked returns the stacks of goroutines executing TQ code, other than
// the caller's, after waiting up to d for them to end.
func Leaked(d time.Duration) string {
	deadline := time.Now().Add(d)
	for {
		buf := make([]byte, 4<<20)
		buf = buf[:runtime.Stack(buf, true)]
		var leaked []string
		for i, g := range strings.Split(string(buf), "\n\n") {
			if i == 0 || !strings.Contains(g, module) {
				continue // the first stack is ours
			}
			if strings.Contains(g, "testing.tRunner") || strings.Contains(g, "testing.(*M)") {
				continue
			}
			leaked = append(leaked, g)
		}
		if len(leaked) == 0 || time.Now().After(deadline) {
			return strings.Join(leaked, "\n\n")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
