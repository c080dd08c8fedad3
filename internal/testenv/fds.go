package testenv

import (
	"errors"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// ExhaustFds makes every new descriptor of the process fail with EMFILE
// (a soft RLIMIT_NOFILE lowered to 64, and what is left under it taken)
// until the function it returns is called, or the test ends.
func ExhaustFds(tb testing.TB) (restore func()) {
	tb.Helper()
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		tb.Fatalf("getrlimit: %v", err)
	}
	low := lim
	low.Cur = 64
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &low); err != nil {
		tb.Fatalf("setrlimit: %v", err)
	}
	var held []int
	for {
		fd, err := unix.Dup(2)
		if err != nil {
			if !errors.Is(err, unix.EMFILE) {
				tb.Fatalf("dup: %v, want EMFILE", err)
			}
			break
		}
		held = append(held, fd)
	}
	var once sync.Once
	restore = func() {
		once.Do(func() {
			for _, fd := range held {
				unix.Close(fd)
			}
			unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
		})
	}
	tb.Cleanup(restore)
	return restore
}
