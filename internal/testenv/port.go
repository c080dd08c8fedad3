package testenv

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"testing"
)

// FreeLoopbackAddr returns a loopback TCP address ("127.0.0.1:PORT")
// nothing listens on now, for a process started later (or restarted) at
// a known address. The port is below the kernel's ephemeral range
// (ip_local_port_range), which every outgoing connection takes its local
// port from: a port picked by listening on :0 and closing is in that
// range, and a connection made meanwhile (by this test or any other
// process) may take it before the process meant for it binds it.
func FreeLoopbackAddr(tb testing.TB) string {
	tb.Helper()
	lo := ephemeralLow()
	const first = 10000 // clear of well-known and common service ports
	if lo <= first+1000 {
		lo = 65536 // a range that starts low leaves no room below it: anywhere
	}
	for range 200 {
		p := first + rand.IntN(lo-first)
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue // taken
		}
		addr := l.Addr().String()
		l.Close()
		return addr
	}
	tb.Fatalf("no free loopback port found below %d", lo)
	return ""
}

// ephemeralLow is the first port of the kernel's ephemeral range
// (32768 where it cannot be read).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	var lo, hi int
	if _, err := fmt.Sscan(string(b), &lo, &hi); err != nil || lo <= 0 {
		return 32768
	}
	return lo
}
