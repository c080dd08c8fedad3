package leaktest

import (
	"strings"
	"testing"
	"time"
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
