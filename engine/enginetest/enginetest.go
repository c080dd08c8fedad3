// Package enginetest is the conformance suite every transport's
// [engine.DataConn] passes. A transport's tests call [Run] with a function
// that connects to a fresh storage unit:
//
//	func TestConformance(t *testing.T) {
//		enginetest.Run(t, func(t *testing.T) (engine.DataConn, func()) {
//			srv, addr := startUnit(t)            // a unit with ≥ 64 MiB of capacity
//			conn, err := tr.Dial(t.Context(), engine.PeerInfo{Addr: addr})
//			if err != nil { t.Fatal(err) }
//			t.Cleanup(func() { conn.Close() })
//			return conn, func() { srv.Close() } // kill: the unit side dies abruptly
//		})
//	}
//
// The suite uses nothing but the DataConn interface. It checks round trips
// at many sizes and buffer alignments, extents made of several pieces,
// cells cut from extents, transfers large enough to be striped, concurrent
// users, contexts and deadlines, Close unblocking waiters, a unit that
// dies mid-transfer, and reads of freed ranges.
package enginetest

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tqgo/tq/engine"
)

// MakePair connects to a fresh storage unit and returns the connection
// and a kill function that makes the unit side die abruptly (its sockets
// or shared state go away as if its process had exited). The unit must
// have at least [MinCapacity] bytes. MakePair registers its own cleanup
// with t.Cleanup; the suite closes conn in some subtests, so closing it
// again must be harmless.
type MakePair func(t *testing.T) (conn engine.DataConn, kill func())

// MinCapacity is the capacity the suite needs from a unit.
const MinCapacity = 64 << 20

// bound is how long any single call may take in the suite before it
// counts as a hang.
const bound = 10 * time.Second

const largeSize = 9 << 20 // larger than the 8 MiB stripes transports default to

// Run runs the suite, each subtest on a pair of its own.
func Run(t *testing.T, mk MakePair) {
	t.Run("RoundTrip", func(t *testing.T) { testRoundTrip(t, mk) })
	t.Run("Pieces", func(t *testing.T) { testPieces(t, mk) })
	t.Run("Cells", func(t *testing.T) { testCells(t, mk) })
	t.Run("Striped", func(t *testing.T) { testStriped(t, mk) })
	t.Run("Concurrent", func(t *testing.T) { testConcurrent(t, mk) })
	t.Run("NotFound", func(t *testing.T) { testNotFound(t, mk) })
	t.Run("Canceled", func(t *testing.T) { testCanceled(t, mk) })
	t.Run("Deadline", func(t *testing.T) { testDeadline(t, mk) })
	t.Run("CloseUnblocks", func(t *testing.T) { testCloseUnblocks(t, mk) })
	t.Run("PeerDeath", func(t *testing.T) { testPeerDeath(t, mk) })
}

// noise is random bytes that patterns are cut from; copying and comparing
// them stays cheap under the race detector.
var noise = sync.OnceValue(func() []byte {
	b := make([]byte, 20<<20)
	rng := rand.New(rand.NewPCG(7, 11))
	for i := 0; i < len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
	}
	return b
})

// pattern returns n bytes identified by seed (n ≤ 16 MiB).
func pattern(seed uint64, n int) []byte {
	at := int(seed*2654435761) & (4<<20 - 1)
	return noise()[at : at+n]
}

// aligned returns a copy of p starting off bytes into a fresh buffer, so
// that transports see buffers at odd addresses.
func aligned(p []byte, off int) []byte {
	b := make([]byte, off+len(p)+8)
	copy(b[off:], p)
	return b[off : off+len(p) : off+len(p)]
}

// ctxFor returns a context bounded by the suite's hang limit.
func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), bound)
	t.Cleanup(cancel)
	return ctx
}

func write(t *testing.T, conn engine.DataConn, extents ...[][]byte) []engine.RemoteAddr {
	t.Helper()
	addrs, err := conn.Write(ctxFor(t), extents)
	if err != nil {
		t.Fatalf("Write of %d extents: %v", len(extents), err)
	}
	if len(addrs) != len(extents) {
		t.Fatalf("Write of %d extents returned %d addresses", len(extents), len(addrs))
	}
	for i, pieces := range extents {
		if got, want := addrs[i].Len, uint64(concatLen(pieces)); got != want {
			t.Fatalf("extent %d: address of %d bytes, want %d", i, got, want)
		}
	}
	return addrs
}

func concatLen(pieces [][]byte) int {
	n := 0
	for _, p := range pieces {
		n += len(p)
	}
	return n
}

func concat(pieces [][]byte) []byte {
	return bytes.Join(pieces, nil)
}

// readBack reads ranges into buffers placed off bytes into guarded
// allocations, checks the guards, and returns the bytes.
func readBack(t *testing.T, conn engine.DataConn, ranges []engine.RemoteAddr, off int) [][]byte {
	t.Helper()
	dst, full := guarded(ranges, off)
	if err := conn.Read(ctxFor(t), ranges, dst); err != nil {
		t.Fatalf("Read of %d ranges: %v", len(ranges), err)
	}
	checkGuards(t, full, dst, off)
	return dst
}

const guardByte = 0xa5

func guarded(ranges []engine.RemoteAddr, off int) (dst, full [][]byte) {
	dst = make([][]byte, len(ranges))
	full = make([][]byte, len(ranges))
	for i, r := range ranges {
		b := make([]byte, off+int(r.Len)+8)
		for j := range off {
			b[j] = guardByte
		}
		for j := off + int(r.Len); j < len(b); j++ {
			b[j] = guardByte
		}
		full[i] = b
		dst[i] = b[off : off+int(r.Len) : off+int(r.Len)]
	}
	return dst, full
}

func checkGuards(t *testing.T, full, dst [][]byte, off int) {
	t.Helper()
	for i, b := range full {
		end := off + len(dst[i])
		for j, c := range b[:off] {
			if c != guardByte {
				t.Fatalf("buffer %d: byte %d before the range (offset %d) was overwritten", i, j, off)
			}
		}
		for j, c := range b[end:] {
			if c != guardByte {
				t.Fatalf("buffer %d: byte %d after the range (offset %d, len %d) was overwritten", i, end+j, off, len(dst[i]))
			}
		}
	}
}

func free(t *testing.T, conn engine.DataConn, cells []engine.RemoteAddr) {
	t.Helper()
	if err := conn.Free(ctxFor(t), cells); err != nil {
		t.Fatalf("Free of %d cells: %v", len(cells), err)
	}
}

func sameBytes(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		at := 0
		for at < len(got) && at < len(want) && got[at] == want[at] {
			at++
		}
		t.Fatalf("%s: got %d bytes, want %d; first difference at byte %d", what, len(got), len(want), at)
	}
}

func testRoundTrip(t *testing.T, mk MakePair) {
	conn, _ := mk(t)
	sizes := []int{0, 1, 7, 4095, 4096, 4097, 64<<10 - 1, 64 << 10, 64<<10 + 1, 1 << 20, largeSize}
	for _, n := range sizes {
		offs := []int{0, 1, 2, 3, 4, 5, 6, 7}
		if n > 64<<10+1 {
			offs = []int{0, 3}
		}
		for _, off := range offs {
			t.Run(fmt.Sprintf("size=%d/offset=%d", n, off), func(t *testing.T) {
				want := pattern(uint64(n+off), n)
				addrs := write(t, conn, [][]byte{aligned(want, off)})
				got := readBack(t, conn, addrs, (off+5)%8)
				sameBytes(t, "read back", got[0], want)
				free(t, conn, addrs)
			})
		}
	}
}

func testPieces(t *testing.T, mk MakePair) {
	conn, _ := mk(t)
	shapes := [][]int{
		{3, 0, 4096, 1},
		{},
		{0},
		{65537, 7, 1 << 20},
		{1},
		{4095, 4097, 0, 0, 13},
	}
	extents := make([][][]byte, len(shapes))
	seed := uint64(100)
	for i, shape := range shapes {
		extents[i] = [][]byte{}
		for j, n := range shape {
			seed++
			extents[i] = append(extents[i], aligned(pattern(seed, n), (i+j)%8))
		}
	}
	addrs := write(t, conn, extents...)
	got := readBack(t, conn, addrs, 1)
	for i := range extents {
		sameBytes(t, fmt.Sprintf("extent %d", i), got[i], concat(extents[i]))
	}
	// The same ranges in reverse order, one of them twice.
	rev := []engine.RemoteAddr{addrs[3]}
	for i := len(addrs) - 1; i >= 0; i-- {
		rev = append(rev, addrs[i])
	}
	got = readBack(t, conn, rev, 6)
	sameBytes(t, "extent 3 read first", got[0], concat(extents[3]))
	for k, i := 1, len(addrs)-1; i >= 0; k, i = k+1, i-1 {
		sameBytes(t, fmt.Sprintf("extent %d in reverse", i), got[k], concat(extents[i]))
	}
	free(t, conn, addrs)
}

// cut splits an extent into cells of the given sizes.
func cut(ext engine.RemoteAddr, sizes []int) []engine.RemoteAddr {
	cells := make([]engine.RemoteAddr, len(sizes))
	at := ext.Offset
	for i, n := range sizes {
		cells[i] = engine.RemoteAddr{Segment: ext.Segment, Gen: ext.Gen, Offset: at, Len: uint64(n)}
		at += uint64(n)
	}
	return cells
}

func testCells(t *testing.T, mk MakePair) {
	conn, _ := mk(t)
	sizes := []int{10, 1, 4096, 0, 333, 65536, 7, 1 << 18, 5, 12345}
	total := 0
	for _, n := range sizes {
		total += n
	}
	data := pattern(9, total)
	addrs := write(t, conn, [][]byte{aligned(data, 2)})
	cells := cut(addrs[0], sizes)
	want := make([][]byte, len(cells))
	at := 0
	for i, n := range sizes {
		want[i] = data[at : at+n]
		at += n
	}
	// All cells at once, then a shuffled subset.
	got := readBack(t, conn, cells, 0)
	for i := range cells {
		sameBytes(t, fmt.Sprintf("cell %d", i), got[i], want[i])
	}
	order := []int{7, 2, 9, 0, 5}
	sub := make([]engine.RemoteAddr, len(order))
	for k, i := range order {
		sub[k] = cells[i]
	}
	got = readBack(t, conn, sub, 7)
	for k, i := range order {
		sameBytes(t, fmt.Sprintf("cell %d (shuffled)", i), got[k], want[i])
	}
	// Free some cells: they are gone, the others stay readable.
	free(t, conn, []engine.RemoteAddr{cells[0], cells[2], cells[4]})
	dst, _ := guarded(cells[2:3], 0)
	if err := conn.Read(ctxFor(t), cells[2:3], dst); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("read of a freed cell: got %v, want an error wrapping %v", err, engine.ErrNotFound)
	}
	got = readBack(t, conn, []engine.RemoteAddr{cells[1], cells[9]}, 3)
	sameBytes(t, "cell 1 after freeing its neighbours", got[0], want[1])
	sameBytes(t, "cell 9 after freeing others", got[1], want[9])
	rest := []engine.RemoteAddr{cells[1], cells[3], cells[5], cells[6], cells[7], cells[8], cells[9]}
	free(t, conn, rest)
	dst, _ = guarded(cells[9:], 0)
	if err := conn.Read(ctxFor(t), cells[9:], dst); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("read after every cell was freed: got %v, want an error wrapping %v", err, engine.ErrNotFound)
	}
}

func testStriped(t *testing.T, mk MakePair) {
	conn, _ := mk(t)
	// 13 extents, 12.5 MiB: transports that stripe split this.
	var extents [][][]byte
	for i := range 12 {
		extents = append(extents, [][]byte{aligned(pattern(uint64(i), 1<<20), i%8)})
	}
	extents = append(extents, [][]byte{pattern(77, 1<<19), pattern(78, 1)})
	addrs := write(t, conn, extents...)
	got := readBack(t, conn, addrs, 5)
	for i := range extents {
		sameBytes(t, fmt.Sprintf("extent %d", i), got[i], concat(extents[i]))
	}
	// One range spanning a whole large extent, read in one call next to
	// small ones.
	big := write(t, conn, [][]byte{pattern(5, largeSize)})
	mixed := []engine.RemoteAddr{addrs[12], big[0], {}, cut(addrs[0], []int{17})[0]}
	got = readBack(t, conn, mixed, 4)
	sameBytes(t, "small extent before", got[0], concat(extents[12]))
	sameBytes(t, "large extent", got[1], pattern(5, largeSize))
	sameBytes(t, "empty range", got[2], nil)
	sameBytes(t, "cell after", got[3], concat(extents[0])[:17])
	free(t, conn, append(addrs, big...))
}

func testConcurrent(t *testing.T, mk MakePair) {
	conn, _ := mk(t)
	const workers, rounds = 16, 12
	ctx := ctxFor(t)
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 3))
			for r := range rounds {
				if err := concurrentRound(ctx, conn, rng, uint64(w*rounds+r)); err != nil {
					errs <- fmt.Errorf("worker %d round %d: %w", w, r, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func concurrentRound(ctx context.Context, conn engine.DataConn, rng *rand.Rand, seed uint64) error {
	n := 1 + rng.IntN(3)
	extents := make([][][]byte, n)
	for i := range extents {
		size := rng.IntN(96 << 10)
		if rng.IntN(8) == 0 {
			size = 1<<20 + rng.IntN(4096)
		}
		extents[i] = [][]byte{aligned(pattern(seed*3+uint64(i), size), rng.IntN(8))}
	}
	addrs, err := conn.Write(ctx, extents)
	if err != nil {
		return fmt.Errorf("write: %w", err)
	}
	dst, _ := guarded(addrs, rng.IntN(8))
	if err := conn.Read(ctx, addrs, dst); err != nil {
		return fmt.Errorf("read: %w", err)
	}
	for i := range extents {
		if !bytes.Equal(dst[i], extents[i][0]) {
			return fmt.Errorf("extent %d of %d bytes read back different", i, len(dst[i]))
		}
	}
	if err := conn.Free(ctx, addrs); err != nil {
		return fmt.Errorf("free: %w", err)
	}
	return nil
}

func testNotFound(t *testing.T, mk MakePair) {
	conn, _ := mk(t)
	addrs := write(t, conn, [][]byte{pattern(1, 5000)}, [][]byte{pattern(2, 100)})
	free(t, conn, addrs[:1])
	read := func(ranges ...engine.RemoteAddr) error {
		dst, _ := guarded(ranges, 0)
		return conn.Read(ctxFor(t), ranges, dst)
	}
	if err := read(addrs[0]); !errors.Is(err, engine.ErrNotFound) {
		t.Errorf("read of a freed extent: got %v, want an error wrapping %v", err, engine.ErrNotFound)
	}
	if err := read(addrs[1], addrs[0]); !errors.Is(err, engine.ErrNotFound) {
		t.Errorf("read of a live and a freed extent: got %v, want an error wrapping %v", err, engine.ErrNotFound)
	}
	if err := conn.Free(ctxFor(t), addrs[:1]); !errors.Is(err, engine.ErrNotFound) {
		t.Errorf("double free: got %v, want an error wrapping %v", err, engine.ErrNotFound)
	}
	bogus := engine.RemoteAddr{Segment: 1 << 30, Gen: 5, Offset: 4096, Len: 10}
	if err := read(bogus); !errors.Is(err, engine.ErrNotFound) {
		t.Errorf("read of an address never handed out: got %v, want an error wrapping %v", err, engine.ErrNotFound)
	}
	stale := addrs[1]
	stale.Gen++
	if err := read(stale); !errors.Is(err, engine.ErrNotFound) {
		t.Errorf("read with a stale generation: got %v, want an error wrapping %v", err, engine.ErrNotFound)
	}
	// Mismatched buffers are the caller's mistake, never a hang.
	if err := conn.Read(ctxFor(t), addrs[1:], [][]byte{make([]byte, 3)}); err == nil {
		t.Errorf("read into a buffer of the wrong length succeeded")
	}
	// The connection still works.
	got := readBack(t, conn, addrs[1:], 0)
	sameBytes(t, "live extent", got[0], pattern(2, 100))
	free(t, conn, addrs[1:])
}

func testCanceled(t *testing.T, mk MakePair) {
	conn, _ := mk(t)
	addrs := write(t, conn, [][]byte{pattern(3, 1<<20)})
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	expired, cancel2 := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel2()
	for _, c := range []struct {
		name string
		ctx  context.Context
		want error
	}{{"canceled", canceled, context.Canceled}, {"expired", expired, context.DeadlineExceeded}} {
		ops := map[string]func() error{
			"write": func() error {
				_, err := conn.Write(c.ctx, [][][]byte{{pattern(4, largeSize)}})
				return err
			},
			"read": func() error {
				return conn.Read(c.ctx, addrs, [][]byte{make([]byte, addrs[0].Len)})
			},
			"free": func() error { return conn.Free(c.ctx, addrs) },
		}
		for op, f := range ops {
			// bound, not a second: a loaded machine may take that long
			// to run the call, and what it guards against is a call that
			// waits for the unit or forever.
			err := within(t, fmt.Sprintf("%s with a %s context", op, c.name), bound, f)
			if !errors.Is(err, c.want) {
				t.Errorf("%s with a %s context: got %v, want an error wrapping %v", op, c.name, err, c.want)
			}
		}
	}
	// Nothing happened: the extent is still there.
	got := readBack(t, conn, addrs, 0)
	sameBytes(t, "extent after canceled calls", got[0], pattern(3, 1<<20))
	free(t, conn, addrs)
}

// busyGoroutines counts the process's goroutines other than a wire
// server's idle handler goroutines: those wait workerIdle (10 s) for
// another request before they exit, so a call that hit its deadline while
// its handler still ran leaves one behind for a while, bounded and not a
// leak.
func busyGoroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		// The first frame follows the "goroutine N [state]:" line.
		if _, frames, ok := strings.Cut(g, "\n"); ok && strings.HasPrefix(frames, "github.com/tqgo/tq/wire.(*Server).worker(") {
			continue
		}
		count++
	}
	return count
}

// settledGoroutines waits up to d for busyGoroutines to drop to at most n
// and returns the last count.
func settledGoroutines(n int, d time.Duration) int {
	deadline := time.Now().Add(d)
	for {
		got := busyGoroutines()
		if got <= n || time.Now().After(deadline) {
			return got
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func testDeadline(t *testing.T, mk MakePair) {
	conn, _ := mk(t)
	const n = 4
	extents := make([][][]byte, n)
	for i := range extents {
		extents[i] = [][]byte{pattern(uint64(20+i), 4<<20)}
	}
	// Warm up: let the transport open every connection it pools.
	var addrs []engine.RemoteAddr
	for range 4 {
		addrs = write(t, conn, extents...)
		readBack(t, conn, addrs, 0)
		free(t, conn, addrs)
	}
	addrs = write(t, conn, extents...)
	baseline := busyGoroutines()

	for _, timeout := range []time.Duration{time.Microsecond, 100 * time.Microsecond, time.Millisecond, 5 * time.Millisecond} {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		start := time.Now()
		got, err := conn.Write(ctx, extents)
		if d := time.Since(start); d > bound {
			t.Fatalf("write with a %v deadline took %v", timeout, d)
		}
		switch {
		case err == nil:
			// It made it in time (or the transport waited for the answer
			// so as not to leak the extents): it must be complete.
			readBack(t, conn, got, 0)
			free(t, conn, got)
		case !errors.Is(err, context.DeadlineExceeded):
			t.Errorf("write with a %v deadline: got %v, want an error wrapping %v", timeout, err, context.DeadlineExceeded)
		}
		cancel()

		ctx, cancel = context.WithTimeout(context.Background(), timeout)
		dst, _ := guarded(addrs, 0)
		start = time.Now()
		err = conn.Read(ctx, addrs, dst)
		if d := time.Since(start); d > bound {
			t.Fatalf("read with a %v deadline took %v", timeout, d)
		}
		switch {
		case err == nil:
			for i := range addrs {
				sameBytes(t, fmt.Sprintf("extent %d read in time", i), dst[i], extents[i][0])
			}
		case !errors.Is(err, context.DeadlineExceeded):
			t.Errorf("read with a %v deadline: got %v, want an error wrapping %v", timeout, err, context.DeadlineExceeded)
		}
		cancel()
	}
	// The connection still works (one failed attempt is allowed for a
	// transport that drops a connection it gave up on).
	var err error
	for range 2 {
		dst, _ := guarded(addrs, 0)
		if err = conn.Read(ctxFor(t), addrs, dst); err == nil {
			for i := range addrs {
				sameBytes(t, fmt.Sprintf("extent %d after deadlines", i), dst[i], extents[i][0])
			}
			break
		}
	}
	if err != nil {
		t.Fatalf("read after deadlines: %v", err)
	}
	free(t, conn, addrs)
	if got := settledGoroutines(baseline, 5*time.Second); got > baseline {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines after calls that hit their deadline, %d before:\n%s", got, baseline, buf[:runtime.Stack(buf, true)])
	}
}

// loop runs transfers until one fails and returns that error (nil if stop
// closed first), counting completed rounds in done.
func loop(ctx context.Context, conn engine.DataConn, seed uint64, stop <-chan struct{}, done chan<- struct{}) error {
	data := pattern(seed, 3<<20)
	for {
		select {
		case <-stop:
			return nil
		default:
		}
		addrs, err := conn.Write(ctx, [][][]byte{{data[:1<<20]}, {data[1<<20:]}})
		if err != nil {
			return err
		}
		dst := [][]byte{make([]byte, addrs[0].Len), make([]byte, addrs[1].Len)}
		if err := conn.Read(ctx, addrs, dst); err != nil {
			return err
		}
		if !bytes.Equal(dst[0], data[:1<<20]) || !bytes.Equal(dst[1], data[1<<20:]) {
			return errors.New("read back different bytes")
		}
		if err := conn.Free(ctx, addrs); err != nil {
			return err
		}
		select {
		case done <- struct{}{}:
		default:
		}
	}
}

// within runs f and fails the test if it takes longer than d.
func within(t *testing.T, what string, d time.Duration, f func() error) error {
	t.Helper()
	start := time.Now()
	err := f()
	if took := time.Since(start); took > d {
		t.Errorf("%s took %v, want at most %v", what, took, d)
	}
	return err
}

func testCloseUnblocks(t *testing.T, mk MakePair) {
	conn, _ := mk(t)
	const workers = 6
	ctx := context.Background() // only Close can stop them
	stop := make(chan struct{})
	progress := make(chan struct{}, 1)
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() { errs[w] = loop(ctx, conn, uint64(w), stop, progress) })
	}
	select {
	case <-progress:
	case <-time.After(bound):
		t.Fatalf("no transfer completed in %v", bound)
	}
	time.Sleep(5 * time.Millisecond)
	if err := within(t, "Close with calls in flight", bound, conn.Close); err != nil {
		t.Errorf("Close: %v", err)
	}
	exited := make(chan struct{})
	go func() { wg.Wait(); close(exited) }()
	select {
	case <-exited:
	case <-time.After(bound):
		close(stop)
		t.Fatalf("calls still blocked %v after Close", bound)
	}
	close(stop)
	for w, err := range errs {
		if !errors.Is(err, engine.ErrClosed) {
			t.Errorf("worker %d: got %v, want an error wrapping %v", w, err, engine.ErrClosed)
		}
	}
	// Every call after Close fails at once.
	addr := engine.RemoteAddr{Segment: 1, Gen: 1, Len: 1}
	checks := map[string]func() error{
		"write": func() error { _, err := conn.Write(context.Background(), [][][]byte{{{1}}}); return err },
		"read":  func() error { return conn.Read(context.Background(), []engine.RemoteAddr{addr}, [][]byte{{0}}) },
		"free":  func() error { return conn.Free(context.Background(), []engine.RemoteAddr{addr}) },
		"close": func() error {
			if err := conn.Close(); err != nil {
				return err
			}
			return engine.ErrClosed
		},
	}
	for op, f := range checks {
		if err := within(t, op+" after Close", bound, f); !errors.Is(err, engine.ErrClosed) {
			t.Errorf("%s after Close: got %v, want an error wrapping %v", op, err, engine.ErrClosed)
		}
	}
}

func testPeerDeath(t *testing.T, mk MakePair) {
	conn, kill := mk(t)
	const workers = 4
	stop := make(chan struct{})
	progress := make(chan struct{}, 1)
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() { errs[w] = loop(context.Background(), conn, uint64(w), stop, progress) })
	}
	select {
	case <-progress:
	case <-time.After(bound):
		t.Fatalf("no transfer completed in %v", bound)
	}
	time.Sleep(5 * time.Millisecond)
	within(t, "kill", bound, func() error { kill(); return nil })
	exited := make(chan struct{})
	go func() { wg.Wait(); close(exited) }()
	select {
	case <-exited:
	case <-time.After(2 * bound):
		close(stop)
		t.Fatalf("calls still blocked %v after the unit died", 2*bound)
	}
	close(stop)
	for w, err := range errs {
		if err == nil {
			t.Errorf("worker %d: no error after the unit died", w)
		}
	}
	// Later calls fail too, and promptly.
	addr := engine.RemoteAddr{Segment: 1, Gen: 1, Len: 1}
	if err := within(t, "write to a dead unit", bound, func() error {
		_, err := conn.Write(context.Background(), [][][]byte{{pattern(1, 1<<20)}})
		return err
	}); err == nil {
		t.Errorf("write to a dead unit succeeded")
	}
	if err := within(t, "read from a dead unit", bound, func() error {
		return conn.Read(context.Background(), []engine.RemoteAddr{addr}, [][]byte{{0}})
	}); err == nil {
		t.Errorf("read from a dead unit succeeded")
	}
	within(t, "Close after the unit died", bound, conn.Close)
}
