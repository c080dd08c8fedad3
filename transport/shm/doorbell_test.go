package shm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// BenchmarkDoorbell measures, between this process and a child process
// (this test binary re-executed as TestDoorbellChild), the round trip of
// the notification mechanisms a shared-memory transport could use for its
// control messages:
//
//	mech=wire-unix   wire.Conn.Ping over a unix socket to a wire.Server
//	mech=eventfd     two eventfds, blocking read/write ping-pong
//	mech=futex-spin  two words in a shared page: spin ~3 µs, then FUTEX_WAIT;
//	                 the waker FUTEX_WAKEs only if the waiter said it sleeps
//	mech=spin        two words in a shared page, spinning with runtime.Gosched
//
// Each reports the round trip's p50, p99 and mean in µs.
//
//	go test -run '^$' -bench Doorbell -benchtime 5000x -count 3 ./transport/shm
func BenchmarkDoorbell(b *testing.B) {
	for _, mech := range []string{"wire-unix", "eventfd", "futex-spin", "spin"} {
		b.Run("mech="+mech, func(b *testing.B) { benchDoorbell(b, mech) })
	}
}

const (
	doorbellEnv = "TQ_DOORBELL_CHILD" // names the mechanism the child serves

	doorbellStall   = 10 * time.Second // no round trip for this long: the child is dead
	doorbellSpinFor = 3 * time.Microsecond
	doorbellWarmup  = 1000

	// A doorbell word holds a sequence number in its low 31 bits and, in
	// its top bit, the waiter's "I am asleep in FUTEX_WAIT" flag.
	doorbellSleeping = 1 << 31
	doorbellSeqMask  = doorbellSleeping - 1

	// futex(2) operations, shared (not FUTEX_PRIVATE_FLAG): the word is
	// in a page mapped by two processes.
	futexOpWait = 0
	futexOpWake = 1
)

// doorbellPeer is the parent's end of one mechanism: ping does one round
// trip; poke unblocks a ping stuck on a dead child.
type doorbellPeer struct {
	ping func() error
	poke func()
}

// errDoorbellDead is returned by a ping that gave up on the child.
var errDoorbellDead = errors.New("doorbell: child dead or stalled")

func benchDoorbell(b *testing.B, mech string) {
	var (
		dead     atomic.Bool  // set by the watchdog; every wait checks it
		progress atomic.Int64 // round trips so far, for the watchdog
		extra    []*os.File   // handed to the child as fd 3, 4, …
		peer     doorbellPeer
		sockPath string // wire-unix: dialled once the child runs
	)
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)

	switch mech {
	case "wire-unix":
		path := filepath.Join(b.TempDir(), "doorbell.sock")
		l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
		if err != nil {
			b.Fatal(err)
		}
		l.SetUnlinkOnClose(false)
		lf, err := l.File()
		l.Close()
		if err != nil {
			b.Fatal(err)
		}
		extra = append(extra, lf)
		// The child accepts on the listener; the dial after the child's
		// start queues on it until the child is up.
		sockPath = path
		peer.poke = cancel

	case "eventfd":
		var fds [2]int // 0: parent→child, 1: child→parent
		for i := range fds {
			fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
			if err != nil {
				b.Fatal(err)
			}
			fds[i] = fd
			extra = append(extra, os.NewFile(uintptr(fd), fmt.Sprintf("eventfd%d", i)))
		}
		one := []byte{1, 0, 0, 0, 0, 0, 0, 0}
		var buf [8]byte
		peer.ping = func() error {
			if err := eventfdWrite(fds[0], one); err != nil {
				return err
			}
			if err := eventfdRead(fds[1], buf[:]); err != nil {
				return err
			}
			if dead.Load() {
				return errDoorbellDead
			}
			return nil
		}
		peer.poke = func() { _ = eventfdWrite(fds[1], one) } // our own read returns; dead is set

	case "futex-spin", "spin":
		mf, words := doorbellPage(b)
		extra = append(extra, mf)
		ping, pong := words[0], words[1]
		var seq uint32
		spin := mech == "spin"
		peer.ping = func() error {
			seq = (seq + 1) & doorbellSeqMask
			if spin {
				ping.Store(seq)
				return spinWait(pong, seq, &dead)
			}
			ring(ping, seq)
			return futexWait(pong, seq, &dead)
		}
		peer.poke = func() { futexWake(pong) } // a sleeping ping wakes, sees dead

	default:
		b.Fatalf("unknown mechanism %q", mech)
	}

	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^TestDoorbellChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), doorbellEnv+"="+mech)
	cmd.ExtraFiles = extra
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	// Closing our copies of the fds is safe: the eventfds and the page stay
	// open in the child, and the page stays mapped here.
	if mech != "eventfd" {
		for _, f := range extra {
			f.Close()
		}
	}

	// The watchdog gives up on a child that exited or stopped answering:
	// it marks it dead and pokes whatever the benchmark may be blocked on.
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		last, lastAt := progress.Load(), time.Now()
		for {
			select {
			case <-stop:
				return
			case <-exited:
			case <-tick.C:
				if p := progress.Load(); p != last {
					last, lastAt = p, time.Now()
					continue
				}
				if time.Since(lastAt) < doorbellStall {
					continue
				}
			}
			dead.Store(true)
			peer.poke()
			return
		}
	})
	b.Cleanup(func() {
		close(stop)
		wg.Wait()
		cmd.Process.Kill()
		<-exited
		if mech == "eventfd" {
			for _, f := range extra {
				f.Close()
			}
		}
	})

	if sockPath != "" {
		dctx, dcancel := context.WithTimeout(ctx, doorbellStall)
		c, _, err := wire.Dial(dctx, wire.FormatAddr("unix", sockPath), &wirepb.Hello{Role: "client"}, wire.ConnConfig{KeepAlive: -1})
		dcancel()
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		peer.ping = func() error { return c.Ping(ctx) }
	}
	for range doorbellWarmup {
		if err := peer.ping(); err != nil {
			b.Fatalf("warm-up: %v", err)
		}
		progress.Add(1)
	}

	rtts := make([]time.Duration, 0, 1<<16)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		t0 := time.Now()
		if err := peer.ping(); err != nil {
			b.Fatal(err)
		}
		rtts = append(rtts, time.Since(t0))
		progress.Add(1)
	}
	b.StopTimer()
	reportRTTs(b, rtts)
}

// reportRTTs reports the round trips' p50, p99 and mean in µs.
func reportRTTs(b *testing.B, rtts []time.Duration) {
	if len(rtts) == 0 {
		return
	}
	slices.Sort(rtts)
	var sum time.Duration
	for _, d := range rtts {
		sum += d
	}
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	b.ReportMetric(us(rtts[len(rtts)/2]), "p50-µs")
	b.ReportMetric(us(rtts[min(len(rtts)-1, len(rtts)*99/100)]), "p99-µs")
	b.ReportMetric(us(sum/time.Duration(len(rtts))), "mean-µs")
}

// TestDoorbellChild is BenchmarkDoorbell's other process. It runs only
// when the benchmark starts it, and serves until it is killed.
func TestDoorbellChild(t *testing.T) {
	mech := os.Getenv(doorbellEnv)
	if mech == "" {
		t.Skip("the child process of BenchmarkDoorbell")
	}
	// Belt and braces next to Pdeathsig: leave if the parent goes.
	ppid := os.Getppid()
	go func() {
		for range time.Tick(time.Second) {
			if os.Getppid() != ppid {
				os.Exit(3)
			}
		}
	}()
	var never atomic.Bool // the child has no watchdog to declare the parent dead
	switch mech {
	case "wire-unix":
		l, err := net.FileListener(os.NewFile(3, "listener"))
		if err != nil {
			t.Fatal(err)
		}
		srv := wire.NewServer(wire.ServerConfig{Hello: &wirepb.Hello{Role: "doorbell"}})
		t.Fatal(srv.Serve(l))

	case "eventfd":
		in, out := 3, 4
		var buf [8]byte
		for {
			if err := eventfdRead(in, buf[:]); err != nil {
				t.Fatal(err)
			}
			if err := eventfdWrite(out, buf[:]); err != nil {
				t.Fatal(err)
			}
		}

	case "futex-spin", "spin":
		mem, err := unix.Mmap(3, 0, os.Getpagesize(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			t.Fatal(err)
		}
		ping, pong := doorbellWords(mem)
		for seq := uint32(1); ; seq = (seq + 1) & doorbellSeqMask {
			if mech == "spin" {
				if err := spinWait(ping, seq, &never); err != nil {
					t.Fatal(err)
				}
				pong.Store(seq)
				continue
			}
			if err := futexWait(ping, seq, &never); err != nil {
				t.Fatal(err)
			}
			ring(pong, seq)
		}

	default:
		t.Fatalf("unknown mechanism %q", mech)
	}
}

func eventfdWrite(fd int, b []byte) error {
	for {
		_, err := unix.Write(fd, b)
		if err != unix.EINTR {
			return err
		}
	}
}

func eventfdRead(fd int, b []byte) error {
	for {
		_, err := unix.Read(fd, b)
		if err != unix.EINTR {
			return err
		}
	}
}

// doorbellPage maps a shared page (a memfd, so that the child can map it
// too) and returns the memfd and the page's two doorbell words.
func doorbellPage(b *testing.B) (*os.File, [2]*atomic.Uint32) {
	fd, err := unix.MemfdCreate("tq-doorbell", unix.MFD_CLOEXEC)
	if err != nil {
		b.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "tq-doorbell")
	size := os.Getpagesize()
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		f.Close()
		b.Fatal(err)
	}
	mem, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		f.Close()
		b.Fatal(err)
	}
	b.Cleanup(func() { unix.Munmap(mem) })
	ping, pong := doorbellWords(mem)
	return f, [2]*atomic.Uint32{ping, pong}
}

// doorbellWords returns the page's two words, on cache lines of their own:
// ping (parent→child) and pong (child→parent).
func doorbellWords(mem []byte) (ping, pong *atomic.Uint32) {
	return (*atomic.Uint32)(unsafe.Pointer(&mem[0])), (*atomic.Uint32)(unsafe.Pointer(&mem[128]))
}

// ring publishes seq in w and wakes the waiter if it said it sleeps. The
// swap clears the sleeping flag and reads it in one step, so a waiter that
// sets it concurrently either sees seq (its CAS fails) or is woken.
func ring(w *atomic.Uint32, seq uint32) {
	if w.Swap(seq)&doorbellSleeping != 0 {
		futexWake(w)
	}
}

// futexWait waits for w to hold seq: it spins for doorbellSpinFor, then
// flags itself asleep and sleeps in FUTEX_WAIT, in slices of 100 ms so
// that it notices dead.
func futexWait(w *atomic.Uint32, seq uint32, dead *atomic.Bool) error {
	var spinUntil time.Time
	for i := 0; ; i++ {
		v := w.Load()
		if v&doorbellSeqMask == seq {
			return nil
		}
		if i&63 != 0 {
			continue
		}
		if dead.Load() {
			return errDoorbellDead
		}
		now := time.Now()
		if spinUntil.IsZero() {
			spinUntil = now.Add(doorbellSpinFor)
			continue
		}
		if now.Before(spinUntil) {
			continue
		}
		asleep := v | doorbellSleeping
		if v&doorbellSleeping == 0 && !w.CompareAndSwap(v, asleep) {
			continue // the waker moved it on
		}
		ts := unix.NsecToTimespec(int64(100 * time.Millisecond))
		_, _, errno := unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(w)), futexOpWait, uintptr(asleep), uintptr(unsafe.Pointer(&ts)), 0, 0)
		switch errno {
		case 0, unix.EAGAIN, unix.EINTR, unix.ETIMEDOUT:
		default:
			return fmt.Errorf("futex wait: %w", errno)
		}
	}
}

func futexWake(w *atomic.Uint32) {
	unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(w)), futexOpWake, 1, 0, 0, 0)
}

// spinWait waits for w to hold seq by spinning, yielding the processor
// between looks so that it cannot starve the process's other goroutines.
func spinWait(w *atomic.Uint32, seq uint32, dead *atomic.Bool) error {
	for i := 0; ; i++ {
		if w.Load()&doorbellSeqMask == seq {
			return nil
		}
		if i&63 == 63 && dead.Load() {
			return errDoorbellDead
		}
		runtime.Gosched()
	}
}
