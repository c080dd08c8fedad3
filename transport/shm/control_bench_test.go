package shm

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tqgo/tq/engine"
)

// BenchmarkControl measures a control round trip between this process
// and a unit in a child process (this test binary re-executed as
// TestRingChild), over a shared-memory ring and over the unit's socket,
// side by side:
//
//	op=stats  UNIT_STATS: one request, one small reply
//	op=view   View + Release of one 4 KiB range: ACQUIRE then RELEASE
//
// Each reports the round trip's p50, p99 and mean in µs, and the CPU time
// both processes spent per operation (cpu-µs/op: spinning shows there).
//
//	go test -run '^$' -bench Control -benchtime 20000x -count 3 ./transport/shm
//
// TQ_RING_SPIN (a duration) sets both ends' spin before they sleep, to
// try other values than the default.
func BenchmarkControl(b *testing.B) {
	for _, op := range []string{"stats", "view"} {
		for _, control := range []Control{ControlRing, ControlSocket} {
			b.Run(fmt.Sprintf("op=%s/control=%v", op, control), func(b *testing.B) { benchControl(b, op, control) })
		}
	}
}

func benchControl(b *testing.B, op string, control Control) {
	spin, _ := time.ParseDuration(os.Getenv(ringSpinEnv))
	ch, addr := startUnitProcess(b, 64<<20)
	tr := New(Config{Control: control, RingSpin: spin})
	b.Cleanup(func() { tr.Close() })
	ctx := b.Context()
	c, err := tr.DialConn(ctx, engine.PeerInfo{Addr: addr})
	if err != nil {
		b.Fatal(err)
	}
	if got := c.Control(); got != control {
		b.Fatalf("control over the %v, want the %v", got, control)
	}
	addrs, err := c.Write(ctx, [][][]byte{{make([]byte, 4096)}})
	if err != nil {
		b.Fatal(err)
	}
	once := func() error {
		switch op {
		case "stats":
			_, err := c.Stats(ctx)
			return err
		default:
			l, err := c.View(ctx, addrs)
			if err != nil {
				return err
			}
			l.Release()
			return nil
		}
	}
	for range 1000 {
		if err := once(); err != nil {
			b.Fatal(err)
		}
	}
	rtts := make([]time.Duration, 0, 1<<16)
	cpu0 := cpuTime(b, ch.cmd.Process.Pid)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		t0 := time.Now()
		if err := once(); err != nil {
			b.Fatal(err)
		}
		rtts = append(rtts, time.Since(t0))
	}
	b.StopTimer()
	cpu := cpuTime(b, ch.cmd.Process.Pid) - cpu0
	reportRTTs(b, rtts)
	b.ReportMetric(float64(cpu)/float64(time.Microsecond)/float64(len(rtts)), "cpu-µs/op")
}

// cpuTime returns the CPU time (user and system) this process and process
// pid have used.
func cpuTime(b *testing.B, pid int) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	self := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command's closing parenthesis; utime and stime are
	// the 14th and 15th of the line, in clock ticks (100 Hz).
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return self + time.Duration(ut+st)*10*time.Millisecond
}
