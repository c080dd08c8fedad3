// Package leaktest fails a test binary whose tests leave goroutines
// running TQ code behind, or shared memory: a memfd of TQ's still open or
// mapped in the process, or a TQ name under /dev/shm. Use it from a
// package's TestMain:
//
//	func TestMain(m *testing.M) { leaktest.Main(m) }
package leaktest

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

const module = "github.com/tqgo/tq/"

// Main runs the tests, then waits up to a second for goroutines running
// TQ code (outside the testing framework's own) to exit, and fails the run
// listing those that did not.
func Main(m interface{ Run() int }) {
	code := m.Run()
	if code == 0 {
		if leaked := Leaked(time.Second); leaked != "" {
			fmt.Fprintf(os.Stderr, "goroutines leaked by the tests:\n%s\n", leaked)
			code = 1
		}
		if leaked := LeakedMemory(time.Second); leaked != "" {
			fmt.Fprintf(os.Stderr, "shared memory leaked by the tests:\n%s\n", leaked)
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

// memfdPrefix is how TQ names its memfds ("tq-segment-3" shows up as
// "/memfd:tq-segment-3 (deleted)" in /proc).
const memfdPrefix = "/memfd:tq-"

// LeakedMemory lists, after waiting up to d for them to go (connections
// close asynchronously), TQ memfds this process still has open or
// mapped, and TQ names under /dev/shm (TQ never creates any).
func LeakedMemory(d time.Duration) string {
	deadline := time.Now().Add(d)
	for {
		leaked := sharedMemory()
		if len(leaked) == 0 || time.Now().After(deadline) {
			return strings.Join(leaked, "\n")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func sharedMemory() []string {
	var leaked []string
	if maps, err := os.ReadFile("/proc/self/maps"); err == nil {
		for _, line := range strings.Split(string(maps), "\n") {
			if strings.Contains(line, memfdPrefix) {
				leaked = append(leaked, "mapped: "+line)
			}
		}
	}
	fds, _ := filepath.Glob("/proc/self/fd/*")
	for _, fd := range fds {
		if target, err := os.Readlink(fd); err == nil && strings.HasPrefix(target, memfdPrefix) {
			leaked = append(leaked, fmt.Sprintf("open: fd %s -> %s", filepath.Base(fd), target))
		}
	}
	shm, _ := filepath.Glob("/dev/shm/tq*")
	for _, name := range shm {
		leaked = append(leaked, "named: "+name)
	}
	return leaked
}
