package leaktest

import (
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func park(stop chan struct{}) { <-stop }

func TestLeakedFindsAParkedGoroutine(t *testing.T) {
	stop := make(chan struct{})
	go park(stop)
	time.Sleep(10 * time.Millisecond)
	if got := Leaked(50 * time.Millisecond); !strings.Contains(got, "leaktest.park") {
		t.Fatalf("a parked goroutine was not reported:\n%s", got)
	}
	close(stop)
	if got := Leaked(time.Second); got != "" {
		t.Fatalf("an ended goroutine was reported:\n%s", got)
	}
}

func TestLeakedMemoryFindsAMappedMemfd(t *testing.T) {
	fd, err := unix.MemfdCreate("tq-leaktest", unix.MFD_CLOEXEC)
	if err != nil {
		t.Skipf("memfd_create: %v", err)
	}
	if err := unix.Ftruncate(fd, 4096); err != nil {
		t.Fatal(err)
	}
	mem, err := unix.Mmap(fd, 0, 4096, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	got := LeakedMemory(0)
	if !strings.Contains(got, "mapped: ") || !strings.Contains(got, "open: ") {
		t.Errorf("an open, mapped memfd was not reported:\n%s", got)
	}
	unix.Close(fd)
	if got := LeakedMemory(0); !strings.Contains(got, "mapped: ") || strings.Contains(got, "open: ") {
		t.Errorf("a closed but mapped memfd:\n%s", got)
	}
	unix.Munmap(mem)
	if got := LeakedMemory(time.Second); got != "" {
		t.Fatalf("nothing left, yet:\n%s", got)
	}
}
