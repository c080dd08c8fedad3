package storage

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/internal/invariants"
)

// testConfig is a small unit: 4 MiB of 1 MiB segments.
func testConfig() Config {
	cfg := DefaultConfig()
	cfg.Capacity = 4 << 20
	cfg.SegmentSize = 1 << 20
	return cfg
}

func newTestUnit(t *testing.T, cfg Config) *Unit {
	t.Helper()
	u, err := NewUnit(1, cfg)
	if err != nil {
		t.Fatalf("NewUnit: %v", err)
	}
	t.Cleanup(func() {
		if err := u.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return u
}

func reserve(t *testing.T, u *Unit, sizes ...int64) *Reservation {
	t.Helper()
	r, err := u.Reserve(t.Context(), sizes)
	if err != nil {
		t.Fatalf("Reserve(%v): %v", sizes, err)
	}
	return r
}

// put reserves one extent per payload, fills and commits it, and returns
// the addresses.
func put(t *testing.T, u *Unit, payloads ...[]byte) []engine.RemoteAddr {
	t.Helper()
	sizes := make([]int64, len(payloads))
	for i, p := range payloads {
		sizes[i] = int64(len(p))
	}
	r := reserve(t, u, sizes...)
	addrs := make([]engine.RemoteAddr, len(payloads))
	for i, p := range payloads {
		copy(r.Buf(i), p)
		addrs[i] = r.Addr(i)
	}
	if err := r.Commit(); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	return addrs
}

// noise is random bytes that pattern slices; copy and bytes.Equal over it
// stay cheap under the race detector.
var noise = sync.OnceValue(func() []byte {
	b := make([]byte, 8<<20)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
	}
	return b
})

// pattern returns n bytes that depend on seed (shared: do not modify).
func pattern(seed uint64, n int) []byte {
	b := noise()
	off := int(seed*4099) % (len(b) - n + 1)
	return b[off : off+n : off+n]
}

// cut splits an extent's address into n cells of equal length (the last
// takes the rest).
func cut(a engine.RemoteAddr, n int) []engine.RemoteAddr {
	cells := make([]engine.RemoteAddr, n)
	step := a.Len / uint64(n)
	for i := range cells {
		cells[i] = engine.RemoteAddr{Segment: a.Segment, Gen: a.Gen, Offset: a.Offset + uint64(i)*step, Len: step}
	}
	cells[n-1].Len = a.Len - uint64(n-1)*step
	return cells
}

func wantErr(t *testing.T, what string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: got error %v, want %v", what, err, want)
	}
	var op *engine.OpError
	if !errors.As(err, &op) {
		t.Fatalf("%s: error %v is not an *engine.OpError", what, err)
	}
}

func statsOf(u *Unit) Stats {
	s := u.Stats()
	s.Mapped, s.Segments = 0, 0 // segments stay mapped once created
	return s
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		edit func(*Config)
		ok   bool
	}{
		{"default", func(*Config) {}, true},
		{"zero segment size means default", func(c *Config) { c.SegmentSize = 0 }, true},
		{"zero capacity", func(c *Config) { c.Capacity = 0 }, false},
		{"negative capacity", func(c *Config) { c.Capacity = -1 }, false},
		{"capacity below a slab", func(c *Config) { c.Capacity = 32 << 10 }, false},
		{"capacity of one slab", func(c *Config) { c.Capacity, c.SegmentSize = 64<<10, 64<<10 }, true},
		{"segment smaller than a slab", func(c *Config) { c.SegmentSize = 32 << 10 }, false},
		{"segment not page-aligned", func(c *Config) { c.SegmentSize = 1<<20 + 1 }, false},
		{"negative timeout", func(c *Config) { c.ReserveTimeout = -time.Second }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig()
			tt.edit(&cfg)
			err := cfg.Validate()
			if got := err == nil; got != tt.ok {
				t.Fatalf("Validate() = %v, want ok=%v", err, tt.ok)
			}
			if err != nil && !errors.Is(err, engine.ErrInvalid) {
				t.Fatalf("Validate() = %v, want engine.ErrInvalid", err)
			}
		})
	}
	if _, err := NewUnit(1, Config{}); !errors.Is(err, engine.ErrInvalid) {
		t.Fatalf("NewUnit(zero config) = %v, want engine.ErrInvalid", err)
	}
}

func TestRoundTrip(t *testing.T) {
	u := newTestUnit(t, testConfig())
	payloads := [][]byte{pattern(1, 100), {}, pattern(2, 5000), pattern(3, 70000), pattern(4, 3<<20/2)}
	sizes := make([]int64, len(payloads))
	for i, p := range payloads {
		sizes[i] = int64(len(p))
	}
	r := reserve(t, u, sizes...)
	if got, want := r.Len(), len(payloads); got != want {
		t.Fatalf("Len() = %d, want %d", got, want)
	}
	addrs := make([]engine.RemoteAddr, len(payloads))
	for i, p := range payloads {
		if got, want := len(r.Buf(i)), len(p); got != want {
			t.Fatalf("len(Buf(%d)) = %d, want %d", i, got, want)
		}
		copy(r.Buf(i), p)
		addrs[i] = r.Addr(i)
		if got, want := addrs[i].Len, uint64(len(p)); got != want {
			t.Fatalf("Addr(%d).Len = %d, want %d", i, got, want)
		}
	}
	var want int64
	for _, n := range sizes[:4] {
		if n > 0 {
			want += blockSize(n)
		}
	}
	want += roundUp(sizes[4], pageSize)
	if diff := cmp.Diff(Stats{Capacity: 4 << 20, Used: want, Reserved: want, Extents: 4, OpenReservations: 1, PageSize: pageSize}, statsOf(u)); diff != "" {
		t.Errorf("stats while reserved (-want +got):\n%s", diff)
	}

	_, err := u.Acquire(addrs[:1])
	wantErr(t, "Acquire before Commit", err, engine.ErrNotFound)
	if err := r.Commit(); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if diff := cmp.Diff(Stats{Capacity: 4 << 20, Used: want, Extents: 4, PageSize: pageSize}, statsOf(u)); diff != "" {
		t.Errorf("stats after Commit (-want +got):\n%s", diff)
	}

	l, err := u.Acquire(addrs)
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	for i, p := range payloads {
		if !bytes.Equal(l.Bytes(i), p) {
			t.Errorf("Bytes(%d) differs from what was written", i)
		}
	}
	if got := u.Stats().Leases; got != 1 {
		t.Errorf("Stats().Leases = %d, want 1", got)
	}
	l.Release()
	l.Release() // idempotent
	if err := u.Free(addrs); err != nil {
		t.Fatalf("Free: %v", err)
	}
	if diff := cmp.Diff(Stats{Capacity: 4 << 20, PageSize: pageSize}, statsOf(u)); diff != "" {
		t.Errorf("stats after Free (-want +got):\n%s", diff)
	}
}

func TestZeroLength(t *testing.T) {
	u := newTestUnit(t, testConfig())
	r := reserve(t, u, 0, 0)
	if b := r.Buf(0); b == nil || len(b) != 0 {
		t.Fatalf("Buf(0) = %v, want an empty non-nil slice", b)
	}
	a := r.Addr(1)
	if a.Len != 0 {
		t.Fatalf("Addr(1).Len = %d, want 0", a.Len)
	}
	if err := r.Commit(); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	// An empty cell inside a real extent, and the empty extent.
	real := put(t, u, pattern(1, 64))[0]
	empty := engine.RemoteAddr{Segment: real.Segment, Gen: real.Gen, Offset: real.Offset + 10}
	l, err := u.Acquire([]engine.RemoteAddr{a, empty, real})
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	if len(l.Bytes(0)) != 0 || len(l.Bytes(1)) != 0 || len(l.Bytes(2)) != 64 {
		t.Errorf("lease lengths %d, %d, %d; want 0, 0, 64", len(l.Bytes(0)), len(l.Bytes(1)), len(l.Bytes(2)))
	}
	l.Release()
	if err := u.Free([]engine.RemoteAddr{a, empty, real, a}); err != nil {
		t.Fatalf("Free: %v", err)
	}
	if got := u.Stats().Used; got != 0 {
		t.Errorf("Stats().Used = %d, want 0", got)
	}
}

func TestFreeCells(t *testing.T) {
	u := newTestUnit(t, testConfig())
	data := pattern(1, 1000)
	ext := put(t, u, data)[0]
	cells := cut(ext, 10)
	acquireOK := func(i int) {
		t.Helper()
		l, err := u.Acquire(cells[i : i+1])
		if err != nil {
			t.Fatalf("Acquire(cell %d): %v", i, err)
		}
		if !bytes.Equal(l.Bytes(0), data[100*i:100*(i+1)]) {
			t.Fatalf("cell %d holds the wrong bytes", i)
		}
		l.Release()
	}

	if err := u.Free(cells[3:4]); err != nil {
		t.Fatalf("Free(cell 3): %v", err)
	}
	_, err := u.Acquire(cells[3:4])
	wantErr(t, "Acquire(freed cell)", err, engine.ErrNotFound)
	_, err = u.Acquire([]engine.RemoteAddr{ext})
	wantErr(t, "Acquire(extent with a freed cell)", err, engine.ErrNotFound)
	acquireOK(2)
	acquireOK(4)

	wantErr(t, "Free(cell 3) again", u.Free(cells[3:4]), engine.ErrNotFound)
	wantErr(t, "Free(cell 0, cell 3)", u.Free([]engine.RemoteAddr{cells[0], cells[3]}), engine.ErrNotFound)
	acquireOK(0) // nothing changed
	wantErr(t, "Free(cell 1, cell 1)", u.Free([]engine.RemoteAddr{cells[1], cells[1]}), engine.ErrNotFound)
	overlap := engine.RemoteAddr{Segment: ext.Segment, Gen: ext.Gen, Offset: cells[5].Offset + 50, Len: 100}
	wantErr(t, "Free(cell 6, cell 5 + 50)", u.Free([]engine.RemoteAddr{cells[6], overlap}), engine.ErrNotFound)
	acquireOK(1)
	acquireOK(5)
	acquireOK(6)

	rest := []engine.RemoteAddr{cells[9], cells[0], cells[5], cells[7], cells[1], cells[8], cells[2], cells[6], cells[4]}
	for i, c := range rest {
		if got := u.Stats().Extents; got != 1 {
			t.Fatalf("after %d frees: %d extents, want 1", i, got)
		}
		if err := u.Free([]engine.RemoteAddr{c}); err != nil {
			t.Fatalf("Free(%v): %v", c, err)
		}
	}
	if diff := cmp.Diff(Stats{Capacity: 4 << 20, PageSize: pageSize}, statsOf(u)); diff != "" {
		t.Errorf("stats after freeing every cell (-want +got):\n%s", diff)
	}
	wantErr(t, "Free(freed extent)", u.Free(cells[:1]), engine.ErrNotFound)
}

func TestUnknownRanges(t *testing.T) {
	u := newTestUnit(t, testConfig())
	addrs := put(t, u, pattern(1, 64<<10), pattern(2, 64<<10))
	a, b := addrs[0], addrs[1]
	pending := reserve(t, u, 100)
	t.Cleanup(pending.Abort)
	seg := u.Segments()[0]
	tests := []struct {
		name string
		addr engine.RemoteAddr
	}{
		{"unknown segment", engine.RemoteAddr{Segment: 99, Len: 1}},
		{"segment 0", engine.RemoteAddr{Segment: 0, Len: 1}},
		{"past the segment", engine.RemoteAddr{Segment: seg.ID, Offset: uint64(seg.Size), Len: 1}},
		{"overflowing length", engine.RemoteAddr{Segment: seg.ID, Offset: 8, Len: ^uint64(0)}},
		{"past the extent", engine.RemoteAddr{Segment: a.Segment, Gen: a.Gen, Offset: a.Offset + a.Len - 1, Len: 2}},
		{"spanning two extents", engine.RemoteAddr{Segment: a.Segment, Gen: a.Gen, Offset: a.Offset, Len: b.Offset + b.Len - a.Offset}},
		{"reserved, not committed", pending.Addr(0)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := u.Acquire([]engine.RemoteAddr{a, tt.addr})
			wantErr(t, "Acquire", err, engine.ErrNotFound)
			wantErr(t, "Free", u.Free([]engine.RemoteAddr{a, tt.addr}), engine.ErrNotFound)
		})
	}
	if got := u.Stats(); got.Leases != 0 || got.Extents != 3 {
		t.Errorf("after failed calls: %d leases, %d extents; want 0 and 3", got.Leases, got.Extents)
	}
}

func TestAbort(t *testing.T) {
	u := newTestUnit(t, testConfig())
	r := reserve(t, u, 100, 200<<10)
	r.Abort()
	r.Abort()
	wantErr(t, "Commit after Abort", r.Commit(), engine.ErrInvalid)
	_, err := u.Acquire([]engine.RemoteAddr{r.Addr(0)})
	wantErr(t, "Acquire after Abort", err, engine.ErrNotFound)
	if diff := cmp.Diff(Stats{Capacity: 4 << 20, PageSize: pageSize}, statsOf(u)); diff != "" {
		t.Errorf("stats after Abort (-want +got):\n%s", diff)
	}

	r = reserve(t, u, 100)
	copy(r.Buf(0), "hello")
	if err := r.Commit(); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	r.Abort() // no-op after Commit
	wantErr(t, "second Commit", r.Commit(), engine.ErrInvalid)
	l, err := u.Acquire([]engine.RemoteAddr{r.Addr(0)})
	if err != nil {
		t.Fatalf("Acquire after Abort of a committed reservation: %v", err)
	}
	if got := string(l.Bytes(0)[:5]); got != "hello" {
		t.Errorf("got %q, want %q", got, "hello")
	}
	l.Release()
}

// TestReserveTimeout runs in a synctest bubble: the reaper's timer is on
// the bubble's fake clock, so the 30 s timeout passes at once.
func TestReserveTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := testConfig()
		cfg.ReserveTimeout = 30 * time.Second
		u, err := NewUnit(1, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer u.Close()

		r := reserve(t, u, 1000, 100<<10)
		copy(r.Buf(0), "half a put")
		time.Sleep(29 * time.Second)
		synctest.Wait()
		if got := u.Stats().OpenReservations; got != 1 {
			t.Fatalf("before the timeout: %d open reservations, want 1", got)
		}
		late := reserve(t, u, 64) // expires 29 s after r

		time.Sleep(2 * time.Second)
		synctest.Wait()
		if diff := cmp.Diff(Stats{Capacity: cfg.Capacity, Used: 64, Reserved: 64, Extents: 1, OpenReservations: 1, PageSize: pageSize}, statsOf(u)); diff != "" {
			t.Errorf("after the first timeout (-want +got):\n%s", diff)
		}
		wantErr(t, "Commit after the timeout", r.Commit(), engine.ErrInvalid)
		_, err = u.Acquire([]engine.RemoteAddr{r.Addr(0)})
		wantErr(t, "Acquire after the timeout", err, engine.ErrNotFound)

		time.Sleep(28 * time.Second)
		synctest.Wait()
		if got := u.Stats(); got.Used != 0 || got.OpenReservations != 0 {
			t.Errorf("after the second timeout: used %d, %d open; want 0, 0", got.Used, got.OpenReservations)
		}
		wantErr(t, "Commit of the second after its timeout", late.Commit(), engine.ErrInvalid)

		// A commit in time is not reaped.
		ok := reserve(t, u, 64)
		time.Sleep(10 * time.Second)
		if err := ok.Commit(); err != nil {
			t.Fatalf("Commit in time: %v", err)
		}
		time.Sleep(time.Minute)
		synctest.Wait()
		l, err := u.Acquire([]engine.RemoteAddr{ok.Addr(0)})
		if err != nil {
			t.Fatalf("Acquire of a committed extent after the timeout: %v", err)
		}
		l.Release()
	})
}

// TestCommitAfterTheReaperSaysExpired: a Commit of a reservation the
// reaper timed out says so, as one that finds its deadline passed itself
// does; a later Abort frees nothing twice. It used to say "reservation
// aborted", as if the caller had aborted it.
func TestCommitAfterTheReaperSaysExpired(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := testConfig()
		cfg.ReserveTimeout = time.Second
		u, err := NewUnit(1, cfg)
		require.NoError(t, err)
		defer u.Close()
		r := reserve(t, u, 100)
		other := reserve(t, u, 100)
		time.Sleep(2 * time.Second)
		synctest.Wait()
		require.Zero(t, u.Stats().OpenReservations, "the reaper ran")
		err = r.Commit()
		require.ErrorIs(t, err, engine.ErrInvalid)
		assert.ErrorContains(t, err, "reservation expired after 1s")
		r.Abort()
		assert.ErrorContains(t, r.Commit(), "reservation expired after 1s", "after an Abort of nothing")

		// Nothing was released twice: the unit holds exactly one new
		// reservation's bytes.
		again := reserve(t, u, 100)
		assert.Equal(t, blockSize(100), u.Stats().Used)
		again.Abort()
		other.Abort()
		assert.Zero(t, u.Stats().Used)
	})
}

// waitForWaiters polls until n Reserve calls are waiting for space.
func waitForWaiters(t *testing.T, u *Unit, n int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; {
		u.mu.Lock()
		got := u.waiters
		u.mu.Unlock()
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d Reserve calls waiting, want %d", got, n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestCapacityBackPressure(t *testing.T) {
	cfg := testConfig()
	cfg.Capacity = 1 << 20
	u := newTestUnit(t, cfg)
	full := put(t, u, pattern(1, 1<<20))[0]
	if got := u.Stats(); got.Used != cfg.Capacity || got.Mapped != cfg.Capacity {
		t.Fatalf("full unit: used %d, mapped %d; want %d", got.Used, got.Mapped, cfg.Capacity)
	}

	t.Run("deadline", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
		defer cancel()
		_, err := u.Reserve(ctx, []int64{64})
		wantErr(t, "Reserve on a full unit", err, engine.ErrCapacity)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("got %v, want it to wrap context.DeadlineExceeded too", err)
		}
	})

	t.Run("without wait", func(t *testing.T) {
		// No deadline: a Reserve that waited would hang the test.
		_, err := u.Reserve(engine.WithoutWait(t.Context()), []int64{64})
		wantErr(t, "Reserve without wait on a full unit", err, engine.ErrCapacity)
		if errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("got %v, want a refusal, not a wait that timed out", err)
		}
	})

	t.Run("free wakes a waiter", func(t *testing.T) {
		type result struct {
			r   *Reservation
			err error
		}
		done := make(chan result, 1)
		go func() {
			r, err := u.Reserve(t.Context(), []int64{4096, 100})
			done <- result{r, err}
		}()
		waitForWaiters(t, u, 1)
		cells := cut(full, 4)
		if err := u.Free(cells[1:2]); err != nil { // not the whole extent: still full
			t.Fatal(err)
		}
		select {
		case res := <-done:
			t.Fatalf("Reserve returned %v before there was room", res.err)
		case <-time.After(20 * time.Millisecond):
		}
		if err := u.Free([]engine.RemoteAddr{cells[0], cells[2], cells[3]}); err != nil {
			t.Fatal(err)
		}
		res := <-done
		if res.err != nil {
			t.Fatalf("waiting Reserve: %v", res.err)
		}
		res.r.Abort()
	})

	t.Run("release wakes a waiter", func(t *testing.T) {
		addr := put(t, u, pattern(2, 1<<20))[0]
		l, err := u.Acquire([]engine.RemoteAddr{addr})
		if err != nil {
			t.Fatal(err)
		}
		if err := u.Free([]engine.RemoteAddr{addr}); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() {
			r, err := u.Reserve(t.Context(), []int64{512 << 10})
			if err == nil {
				r.Abort()
			}
			done <- err
		}()
		waitForWaiters(t, u, 1)
		l.Release()
		if err := <-done; err != nil {
			t.Fatalf("waiting Reserve: %v", err)
		}
	})

	t.Run("too large fails at once", func(t *testing.T) {
		for _, sizes := range [][]int64{{cfg.Capacity + 1}, {cfg.Capacity / 2, cfg.Capacity/2 + 1}, {1 << 62, 1 << 62}} {
			_, err := u.Reserve(context.Background(), sizes) // no deadline: must not wait
			wantErr(t, fmt.Sprintf("Reserve(%v)", sizes), err, engine.ErrCapacity)
		}
		_, err := u.Reserve(context.Background(), []int64{10, -1})
		wantErr(t, "Reserve(negative)", err, engine.ErrInvalid)
	})
}

func TestCloseWakesWaiters(t *testing.T) {
	cfg := testConfig()
	cfg.Capacity = 1 << 20
	u, err := NewUnit(1, cfg)
	if err != nil {
		t.Fatal(err)
	}
	put(t, u, pattern(1, 1<<20))
	errs := make(chan error, 3)
	for range 3 {
		go func() {
			_, err := u.Reserve(context.Background(), []int64{64})
			errs <- err
		}()
	}
	waitForWaiters(t, u, 3)
	if err := u.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for range 3 {
		wantErr(t, "waiting Reserve after Close", <-errs, engine.ErrClosed)
	}
}

func TestClosed(t *testing.T) {
	u, err := NewUnit(1, testConfig())
	if err != nil {
		t.Fatal(err)
	}
	addr := put(t, u, pattern(1, 100))[0]
	l, err := u.Acquire([]engine.RemoteAddr{addr})
	if err != nil {
		t.Fatal(err)
	}
	open := reserve(t, u, 100)
	if err := u.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := u.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	_, err = u.Reserve(t.Context(), []int64{1})
	wantErr(t, "Reserve", err, engine.ErrClosed)
	_, err = u.Acquire([]engine.RemoteAddr{addr})
	wantErr(t, "Acquire", err, engine.ErrClosed)
	wantErr(t, "Free", u.Free([]engine.RemoteAddr{addr}), engine.ErrClosed)
	wantErr(t, "Commit", open.Commit(), engine.ErrClosed)
	open.Abort()
	l.Release()
	if got := u.Segments(); len(got) != 0 {
		t.Errorf("Segments() after Close = %v, want none", got)
	}
}

// TestStopReserving: after StopReserving a new Reserve, and one waiting
// for space, fail with engine.ErrClosed, while an open reservation still
// commits and reads and frees go on. Unsettled lists what a put may still
// commit to the controller: the reserved extents, and the committed ones
// younger than the grace, until they are freed.
func TestStopReserving(t *testing.T) {
	cfg := testConfig()
	cfg.Capacity = 1 << 20
	u := newTestUnit(t, cfg)
	written := put(t, u, pattern(1, 256<<10))[0]
	open := reserve(t, u, 512<<10)
	waiting := make(chan error, 1)
	go func() {
		_, err := u.Reserve(context.Background(), []int64{512 << 10})
		waiting <- err
	}()
	waitForWaiters(t, u, 1)

	u.StopReserving()
	wantErr(t, "Reserve waiting for space", <-waiting, engine.ErrClosed)
	_, err := u.Reserve(t.Context(), []int64{1})
	wantErr(t, "Reserve", err, engine.ErrClosed)
	assert.ErrorContains(t, err, "shutting down")
	_, err = u.ReserveHeld(t.Context(), []int64{1})
	wantErr(t, "ReserveHeld", err, engine.ErrClosed)
	assert.ElementsMatch(t, []engine.RemoteAddr{written, open.Addr(0)}, u.Unsettled(time.Hour))

	copy(open.Buf(0), pattern(2, 512<<10))
	require.NoError(t, open.Commit())
	l, err := u.Acquire([]engine.RemoteAddr{written, open.Addr(0)})
	require.NoError(t, err)
	assert.Equal(t, pattern(2, 512<<10), l.Bytes(1))
	l.Release()
	require.NoError(t, u.Free([]engine.RemoteAddr{written}))
	assert.Equal(t, []engine.RemoteAddr{open.Addr(0)}, u.Unsettled(time.Hour), "after the free")
	assert.Empty(t, u.Unsettled(0), "with no grace, nothing reserved")
}

func openFds(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count fds: %v", err)
	}
	return len(ents)
}

// TestCloseReleasesResources checks that Close closes every memfd
// (dropped segments included) and ends the reaper.
func TestCloseReleasesResources(t *testing.T) {
	before := openFds(t)
	cfg := testConfig()
	cfg.SegmentSize = 256 << 10
	cfg.Capacity = 1 << 20
	u, err := NewUnit(1, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var addrs []engine.RemoteAddr
	for range 4 {
		addrs = append(addrs, put(t, u, pattern(1, 200<<10))...)
	}
	if got := len(u.Segments()); got != 4 {
		t.Fatalf("got %d segments, want 4", got)
	}
	if got := openFds(t); got != before+4 {
		t.Errorf("with 4 segments: %d fds open, want %d", got, before+4)
	}
	if err := u.Free(addrs); err != nil {
		t.Fatal(err)
	}
	put(t, u, pattern(2, 1<<20)) // drops the four to map one of 1 MiB
	if got := openFds(t); got != before+1 {
		t.Errorf("after dropping 4 segments for 1: %d fds open, want %d", got, before+1)
	}
	if err := u.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if got := openFds(t); got != before {
		t.Errorf("after Close: %d fds open, want %d", got, before)
	}
	if leaked := leakedGoroutines(time.Second); leaked != "" {
		t.Errorf("goroutines left after Close:\n%s", leaked)
	}
}

func TestSegments(t *testing.T) {
	cfg := testConfig()
	cfg.SegmentSize = 256 << 10
	cfg.Capacity = 1 << 20
	u := newTestUnit(t, cfg)

	a := put(t, u, pattern(1, 100<<10))[0]
	big := put(t, u, pattern(2, 300<<10+1))[0] // larger than a segment: one of its own
	segs := u.Segments()
	if diff := cmp.Diff([]SegmentInfo{{ID: 1, Size: 256 << 10}, {ID: 2, Size: 304 << 10}}, segs,
		cmpopts.IgnoreFields(SegmentInfo{}, "Fd")); diff != "" {
		t.Fatalf("segments (-want +got):\n%s", diff)
	}
	if a.Segment != 1 || big.Segment != 2 {
		t.Fatalf("extents in segments %d and %d, want 1 and 2", a.Segment, big.Segment)
	}
	for _, s := range segs {
		if s.Fd < 0 {
			t.Errorf("segment %d has fd %d", s.ID, s.Fd)
		}
	}
	// 464 KiB left: a third segment of the configured size, then a tail
	// segment cut to what is left.
	c := put(t, u, pattern(3, 200<<10))[0]
	d := put(t, u, pattern(4, 200<<10))[0]
	if c.Segment != 3 || d.Segment != 4 {
		t.Errorf("extents in segments %d and %d, want 3 and 4", c.Segment, d.Segment)
	}
	if diff := cmp.Diff([]SegmentInfo{{ID: 1, Size: 256 << 10}, {ID: 2, Size: 304 << 10}, {ID: 3, Size: 256 << 10}, {ID: 4, Size: 208 << 10}},
		u.Segments(), cmpopts.IgnoreFields(SegmentInfo{}, "Fd")); diff != "" {
		t.Fatalf("segments (-want +got):\n%s", diff)
	}
	// Full now; a request that fits only after dropping empty segments.
	if err := u.Free([]engine.RemoteAddr{a, big, c, d}); err != nil {
		t.Fatal(err)
	}
	e := put(t, u, pattern(5, 900<<10))[0]
	if e.Segment != 5 {
		t.Errorf("after dropping the empty segments: extent in segment %d, want 5", e.Segment)
	}
	if got := u.Stats(); got.Segments != 1 || got.Mapped > cfg.Capacity {
		t.Errorf("got %d segments, %d bytes mapped; want 1 segment within %d", got.Segments, got.Mapped, cfg.Capacity)
	}
}

// TestLeaseKeepsBytes frees cells under a lease and reuses the space over
// and over; the leased bytes must keep the original data. In invariants
// builds freed blocks are poisoned, so reuse of the leased block would show.
func TestLeaseKeepsBytes(t *testing.T) {
	cfg := testConfig()
	cfg.Capacity = 1 << 20
	cfg.SegmentSize = 1 << 20
	u := newTestUnit(t, cfg)

	sizes := []int64{100, 5000, 200 << 10}
	var originals [][]byte
	var addrs []engine.RemoteAddr
	for i, n := range sizes {
		originals = append(originals, pattern(uint64(i), int(n)))
	}
	addrs = put(t, u, originals...)
	l, err := u.Acquire(addrs)
	if err != nil {
		t.Fatal(err)
	}
	if err := u.Free(addrs); err != nil {
		t.Fatal(err)
	}
	_, err = u.Acquire(addrs[:1])
	wantErr(t, "Acquire of freed, leased cells", err, engine.ErrNotFound)
	wantErr(t, "Free of freed, leased cells", u.Free(addrs[:1]), engine.ErrNotFound)

	garbage := [][]byte{bytes.Repeat([]byte{0x55}, 100), bytes.Repeat([]byte{0x66}, 5000), bytes.Repeat([]byte{0x77}, 200<<10)}
	for range 50 {
		got := put(t, u, garbage...)
		for i, a := range got {
			if a.Segment == addrs[i].Segment && a.Offset < addrs[i].Offset+addrs[i].Len && addrs[i].Offset < a.Offset+a.Len {
				t.Fatalf("new extent %v overlaps leased %v", a, addrs[i])
			}
		}
		if err := u.Free(got); err != nil {
			t.Fatal(err)
		}
	}
	for i, want := range originals {
		if !bytes.Equal(l.Bytes(i), want) {
			t.Errorf("leased range %d changed after its cells were freed and space reused", i)
		}
	}
	views := [][]byte{l.Bytes(0), l.Bytes(1), l.Bytes(2)}
	l.Release()
	if got := u.Stats().Used; got != 0 {
		t.Errorf("after Release: used %d, want 0", got)
	}
	if invariants.Enabled {
		for i, v := range views {
			if !allPoison(v) {
				t.Errorf("range %d not poisoned after its last reference went", i)
			}
		}
	}
}

func allPoison(b []byte) bool {
	for _, c := range b {
		if c != poisonByte {
			return false
		}
	}
	return true
}

// TestPoison checks that invariants builds fill blocks with poison when
// they go back to the pool: on Free, on Abort and on the timeout.
func TestPoison(t *testing.T) {
	if !invariants.Enabled {
		t.Skip("poisoning needs the invariants or race build tag")
	}
	u := newTestUnit(t, testConfig())
	r := reserve(t, u, 100, 64<<10)
	bufs := [][]byte{r.Buf(0), r.Buf(1)} // kept past their lifetime to look
	copy(bufs[0], pattern(1, 100))
	copy(bufs[1], pattern(2, 64<<10))
	if err := r.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := u.Free([]engine.RemoteAddr{r.Addr(0), r.Addr(1)}); err != nil {
		t.Fatal(err)
	}
	for i, b := range bufs {
		if !allPoison(b) {
			t.Errorf("extent %d not poisoned after Free", i)
		}
	}
	r = reserve(t, u, 5000)
	b := r.Buf(0)
	copy(b, pattern(3, 5000))
	r.Abort()
	if !allPoison(b) {
		t.Error("extent not poisoned after Abort")
	}
}

func TestBytesAfterRelease(t *testing.T) {
	if !invariants.Enabled {
		t.Skip("the check needs the invariants or race build tag")
	}
	u := newTestUnit(t, testConfig())
	l, err := u.Acquire(put(t, u, pattern(1, 10)))
	if err != nil {
		t.Fatal(err)
	}
	l.Release()
	defer func() {
		if recover() == nil {
			t.Error("Bytes after Release did not panic")
		}
	}()
	l.Bytes(0)
}

func TestLeaseSameRangeTwice(t *testing.T) {
	u := newTestUnit(t, testConfig())
	addr := put(t, u, pattern(1, 1000))[0]
	l1, err := u.Acquire([]engine.RemoteAddr{addr, addr})
	if err != nil {
		t.Fatal(err)
	}
	l2, err := u.Acquire(cut(addr, 2))
	if err != nil {
		t.Fatal(err)
	}
	if err := u.Free(cut(addr, 4)); err != nil {
		t.Fatal(err)
	}
	l1.Release()
	if got := u.Stats().Extents; got != 1 {
		t.Fatalf("with one lease left: %d extents, want 1", got)
	}
	l2.Release()
	if got := u.Stats(); got.Extents != 0 || got.Leases != 0 {
		t.Fatalf("after every release: %d extents, %d leases; want 0, 0", got.Extents, got.Leases)
	}
}

func TestHugePagesFallback(t *testing.T) {
	cfg := testConfig()
	cfg.HugePages = true
	u := newTestUnit(t, cfg)
	addr := put(t, u, pattern(1, 3<<20))[0]
	l, err := u.Acquire([]engine.RemoteAddr{addr})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(l.Bytes(0), pattern(1, 3<<20)) {
		t.Error("bytes differ")
	}
	l.Release()
	s := u.Stats()
	seg := u.Segments()[0]
	switch {
	case s.HugePages && s.PageSize == hugePageSize && seg.HugePages && seg.Size%hugePageSize == 0:
		t.Logf("hugetlb pages in use")
	case !s.HugePages && s.PageSize == pageSize && !seg.HugePages:
		t.Logf("no hugetlb pages reserved: fell back to 4 KiB pages")
	default:
		t.Errorf("inconsistent: stats %+v, segment %+v", s, seg)
	}
}

// TestConcurrent runs puts, gets and frees from many goroutines on a unit
// small enough that they wait for each other, and checks every read.
func TestConcurrent(t *testing.T) {
	cfg := testConfig()
	cfg.Capacity = 2 << 20
	cfg.SegmentSize = 512 << 10
	u := newTestUnit(t, cfg)

	const workers, iters = 8, 400
	var wg sync.WaitGroup
	shared := make(chan []engine.RemoteAddr, workers)
	for w := range workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for it := range iters {
				sizes := make([]int64, 1+rng.IntN(3))
				for i := range sizes {
					switch rng.IntN(3) {
					case 0:
						sizes[i] = rng.Int64N(200)
					case 1:
						sizes[i] = rng.Int64N(40 << 10)
					default:
						sizes[i] = rng.Int64N(300 << 10)
					}
				}
				ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
				r, err := u.Reserve(ctx, sizes)
				cancel()
				if err != nil {
					t.Errorf("worker %d: Reserve: %v", w, err)
					return
				}
				seed := uint64(w<<20 | it)
				for i := range sizes {
					copy(r.Buf(i), pattern(seed+uint64(i), int(sizes[i])))
				}
				if rng.IntN(10) == 0 {
					r.Abort()
					continue
				}
				if err := r.Commit(); err != nil {
					t.Errorf("worker %d: Commit: %v", w, err)
					return
				}
				addrs := make([]engine.RemoteAddr, len(sizes))
				for i := range sizes {
					addrs[i] = r.Addr(i)
				}
				l, err := u.Acquire(addrs)
				if err != nil {
					t.Errorf("worker %d: Acquire: %v", w, err)
					return
				}
				// Hand the cells to another goroutine to free while we read.
				select {
				case shared <- addrs:
				default:
					if err := u.Free(addrs); err != nil {
						t.Errorf("worker %d: Free: %v", w, err)
					}
				}
				select {
				case other := <-shared:
					if err := u.Free(other); err != nil {
						t.Errorf("worker %d: Free of another's cells: %v", w, err)
					}
				default:
				}
				for i := range sizes {
					if !bytes.Equal(l.Bytes(i), pattern(seed+uint64(i), int(sizes[i]))) {
						t.Errorf("worker %d iteration %d: extent %d holds the wrong bytes", w, it, i)
					}
				}
				l.Release()
			}
		})
	}
	wg.Wait()
	close(shared)
	for addrs := range shared {
		if err := u.Free(addrs); err != nil {
			t.Error(err)
		}
	}
	if diff := cmp.Diff(Stats{Capacity: cfg.Capacity, PageSize: pageSize}, statsOf(u)); diff != "" {
		t.Errorf("stats at the end (-want +got):\n%s", diff)
	}
}

// TestAllocBudget locks in the allocations of the hot paths.
func TestAllocBudget(t *testing.T) {
	if invariants.Enabled {
		t.Skip("invariants builds check more and allocate more")
	}
	u := newTestUnit(t, testConfig())
	ctx := t.Context()
	sizes := []int64{4096}
	cells := make([]engine.RemoteAddr, 1)
	putAllocs := testing.AllocsPerRun(1000, func() {
		r, err := u.Reserve(ctx, sizes)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Commit(); err != nil {
			t.Fatal(err)
		}
		cells[0] = r.Addr(0)
		if err := u.Free(cells); err != nil {
			t.Fatal(err)
		}
	})
	addr := put(t, u, pattern(1, 4096))
	getAllocs := testing.AllocsPerRun(1000, func() {
		l, err := u.Acquire(addr)
		if err != nil {
			t.Fatal(err)
		}
		l.Release()
	})
	if putAllocs > 2 || getAllocs > 1 {
		t.Errorf("allocations: Reserve+Commit+Free %.1f (budget 2), Acquire+Release %.1f (budget 1)", putAllocs, getAllocs)
	}
}

// A range freed and handed out again gets a new generation: the old
// address is refused instead of reading the new owner's bytes.
func TestStaleGenerationRefused(t *testing.T) {
	u, err := NewUnit(1, testConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	old := put(t, u, pattern(1, 4096))[0]
	if err := u.Free([]engine.RemoteAddr{old}); err != nil {
		t.Fatal(err)
	}
	fresh := put(t, u, pattern(2, 4096))[0]
	if fresh.Segment != old.Segment || fresh.Offset != old.Offset {
		t.Skipf("allocator placed the new extent elsewhere (%v vs %v); nothing to check", fresh, old)
	}
	if fresh.Gen == old.Gen {
		t.Fatalf("reused range kept generation %d", old.Gen)
	}
	_, err = u.Acquire([]engine.RemoteAddr{old})
	wantErr(t, "Acquire(stale)", err, engine.ErrNotFound)
	wantErr(t, "Free(stale)", u.Free([]engine.RemoteAddr{old}), engine.ErrNotFound)
	l, err := u.Acquire([]engine.RemoteAddr{fresh})
	if err != nil {
		t.Fatalf("current address refused: %v", err)
	}
	l.Release()
}

// TestIdentity: every unit draws its own nonzero incarnation; SetID
// renames the unit in its errors and stats and keeps its cluster.
func TestIdentity(t *testing.T) {
	seen := map[uint64]bool{}
	for range 8 {
		u := newTestUnit(t, testConfig())
		if inc := u.Incarnation(); inc == 0 || seen[inc] {
			t.Fatalf("incarnation %#x (seen before: %v)", inc, seen[inc])
		}
		seen[u.Incarnation()] = true
	}
	u := newTestUnit(t, testConfig())
	inc := u.Incarnation()
	if u.ID() != 1 || u.ClusterID() != "" {
		t.Fatalf("new unit: id %d, cluster %q; want 1, \"\"", u.ID(), u.ClusterID())
	}
	u.setIdentity(1, "c1")
	u.SetID(42)
	if u.ID() != 42 || u.ClusterID() != "c1" || u.Incarnation() != inc {
		t.Errorf("after SetID(42): id %d, cluster %q, incarnation %#x; want 42, c1, %#x", u.ID(), u.ClusterID(), u.Incarnation(), inc)
	}
	err := u.Free([]engine.RemoteAddr{{Segment: 9, Gen: 1, Len: 1}})
	var op *engine.OpError
	if !errors.As(err, &op) || op.Peer != "unit 42" {
		t.Errorf("Free error %v does not name unit 42", err)
	}
}

// lowerMaxGen makes segments run out of generations after n extents for
// the rest of the test.
func lowerMaxGen(t *testing.T, n uint32) {
	old := maxGen
	maxGen = n
	t.Cleanup(func() { maxGen = old })
}

// TestGenerationsPerSegment: generations count per segment; a segment
// that handed out its last one takes no new extent and is dropped once
// its extents are gone.
func TestGenerationsPerSegment(t *testing.T) {
	lowerMaxGen(t, 3)
	cfg := testConfig()
	cfg.SegmentSize = 256 << 10
	cfg.Capacity = 512 << 10
	u := newTestUnit(t, cfg)
	var first []engine.RemoteAddr
	for i := range 3 {
		a := put(t, u, pattern(uint64(i), 1000))[0]
		if a.Segment != 1 || a.Gen != uint32(i+1) {
			t.Fatalf("extent %d at segment %d gen %d, want segment 1 gen %d", i, a.Segment, a.Gen, i+1)
		}
		first = append(first, a)
	}
	next := put(t, u, pattern(9, 1000))[0]
	if next.Segment != 2 || next.Gen != 1 {
		t.Fatalf("the 4th extent at segment %d gen %d, want segment 2 gen 1 (segment 1 is exhausted)", next.Segment, next.Gen)
	}
	if err := u.Free(first[:2]); err != nil {
		t.Fatal(err)
	}
	if got := len(u.Segments()); got != 2 {
		t.Fatalf("%d segments while segment 1 holds an extent, want 2", got)
	}
	l, err := u.Acquire(first[2:])
	if err != nil {
		t.Fatal(err)
	}
	if err := u.Free(first[2:]); err != nil {
		t.Fatal(err)
	}
	if got := len(u.Segments()); got != 2 {
		t.Fatalf("%d segments while a lease holds segment 1, want 2", got)
	}
	l.Release()
	segs := u.Segments()
	if len(segs) != 1 || segs[0].ID != 2 {
		t.Fatalf("segments %v after segment 1 emptied, want only segment 2", segs)
	}
	if st := u.Stats(); st.Mapped != 256<<10 {
		t.Errorf("mapped %d after dropping segment 1, want %d", st.Mapped, 256<<10)
	}
	if _, err := u.Acquire(first[:1]); !errors.Is(err, engine.ErrNotFound) {
		t.Errorf("Acquire in the dropped segment: got %v, want %v", err, engine.ErrNotFound)
	}
	// The capacity came back: a segment of the configured size fits again.
	a := put(t, u, pattern(10, 200<<10))[0]
	if a.Segment != 3 || a.Gen != 1 {
		t.Errorf("after the drop: extent at segment %d gen %d, want segment 3 gen 1", a.Segment, a.Gen)
	}
}

// TestGenerationsUnique: with few generations per segment, random puts,
// aborts and frees never hand out one (segment, generation) twice, and
// exhausted segments give their capacity back once emptied.
func TestGenerationsUnique(t *testing.T) {
	lowerMaxGen(t, 5)
	cfg := testConfig()
	cfg.SegmentSize = 128 << 10
	cfg.Capacity = 512 << 10
	u := newTestUnit(t, cfg)
	rng := rand.New(rand.NewPCG(7, 7))
	seen := map[[2]uint32]bool{}
	var live []engine.RemoteAddr
	waits := 0
	for range 2000 {
		if len(live) > 0 && (len(live) > 12 || rng.IntN(2) == 0) {
			i := rng.IntN(len(live))
			if err := u.Free(live[i : i+1]); err != nil {
				t.Fatal(err)
			}
			live = slices.Delete(live, i, i+1)
			continue
		}
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
		r, err := u.Reserve(ctx, []int64{1 + rng.Int64N(40<<10)})
		cancel()
		if errors.Is(err, engine.ErrCapacity) && len(live) > 0 {
			// Every segment is exhausted and still holds an extent: only
			// a free brings capacity back.
			waits++
			if err := u.Free(live[:1]); err != nil {
				t.Fatal(err)
			}
			live = live[1:]
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		a := r.Addr(0)
		key := [2]uint32{a.Segment, a.Gen}
		if seen[key] || a.Gen == 0 || a.Gen > maxGen {
			t.Fatalf("segment %d gen %d handed out twice or out of range", a.Segment, a.Gen)
		}
		seen[key] = true
		if rng.IntN(4) == 0 {
			r.Abort()
			continue
		}
		if err := r.Commit(); err != nil {
			t.Fatal(err)
		}
		live = append(live, a)
	}
	t.Logf("%d extents in %d segments; %d reservations waited for exhausted segments to go", len(seen), len(u.Segments()), waits)
	if err := u.Free(live); err != nil {
		t.Fatal(err)
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, s := range u.segs {
		if s.gen == maxGen {
			t.Errorf("segment %d is exhausted and empty but still mapped", s.id)
		}
	}
}

// TestRollbackAfterCloseLeavesSegmentsToClose: a Reserve that finds the
// unit closed while it maps a new segment rolls back the extents it
// placed; when that empties a segment that takes no new extent (its last
// generation used), the rollback must leave it to Close, which is
// unmapping it already, not drop and retire it a second time.
func TestRollbackAfterCloseLeavesSegmentsToClose(t *testing.T) {
	lowerMaxGen(t, 2)
	for trial := range 300 {
		cfg := DefaultConfig()
		cfg.Capacity = 64 << 20
		cfg.SegmentSize = 64 << 10
		u, err := NewUnit(1, cfg)
		require.NoError(t, err)
		// Segment 1 with one generation left.
		require.NoError(t, u.Free(put(t, u, []byte("x"))))
		done := make(chan error, 1)
		go func() {
			// The small extent takes segment 1's last generation; the
			// large one maps a new segment with the lock released.
			r, err := u.Reserve(t.Context(), []int64{100, 32 << 20})
			if err == nil {
				r.Abort() // it won the race with Close
			}
			done <- err
		}()
		for range trial % 50 {
			u.Stats()
		}
		u.Close()
		<-done
		u.mu.Lock()
		late := len(u.retired)
		u.mu.Unlock()
		require.Zero(t, late, "trial %d: segments retired after Close took them", trial)
	}
}

// TestReserveFitsInEmptyUnit: a request that fits the capacity of an empty
// unit is not refused because of the order of its sizes or the sizes of
// the segments earlier requests left mapped. The unit used to place its
// extents in order, pinning a segment with the first while it could not
// map one large enough for the next, and then said the request did not
// fit even in an empty unit.
func TestReserveFitsInEmptyUnit(t *testing.T) {
	cfg := Config{Capacity: 128 << 10, SegmentSize: 64 << 10}
	for _, tc := range []struct {
		name   string
		before []int64 // reserved and aborted first
		sizes  []int64
	}{
		{"smaller first", nil, []int64{50 << 10, 70 << 10}},
		{"after segments of other sizes", []int64{70 << 10, 50 << 10}, []int64{60 << 10, 60 << 10}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := newTestUnit(t, cfg)
			ctx := engine.WithoutWait(t.Context())
			if tc.before != nil {
				reserve(t, u, tc.before...).Abort()
			}
			r, err := u.Reserve(ctx, tc.sizes)
			if err != nil {
				t.Fatalf("Reserve(%v) in an empty unit of %d bytes: %v", tc.sizes, cfg.Capacity, err)
			}
			for i, n := range tc.sizes {
				if got := len(r.Buf(i)); int64(got) != n {
					t.Errorf("extent %d: got %d bytes, want %d", i, got, n)
				}
			}
			r.Abort()
			if st := u.Stats(); st.Used != 0 || st.Mapped > cfg.Capacity {
				t.Errorf("after Abort: used %d, mapped %d of %d", st.Used, st.Mapped, cfg.Capacity)
			}
		})
	}
}

// TestCapacityErrorNamesSizes: a request larger than the capacity is
// refused with an error that says how many bytes it needs. It used to
// say only "2 extents need more than capacity".
func TestCapacityErrorNamesSizes(t *testing.T) {
	cfg := Config{Capacity: 256 << 10, SegmentSize: 64 << 10}
	u := newTestUnit(t, cfg)
	for _, tc := range []struct {
		sizes []int64
		want  string
	}{
		{[]int64{200 << 10, 100 << 10}, "2 extents of 307200 bytes exceed capacity 262144"},
		{[]int64{1, 300 << 10}, "extent 1 of 307200 bytes exceeds capacity 262144"},
	} {
		_, err := u.Reserve(t.Context(), tc.sizes)
		wantErr(t, fmt.Sprintf("Reserve(%v)", tc.sizes), err, engine.ErrCapacity)
		// Final: no wait would help (CODE_TOO_LARGE over the wire).
		wantErr(t, fmt.Sprintf("Reserve(%v)", tc.sizes), err, engine.ErrTooLarge)
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Reserve(%v): got error %q, want it to say %q", tc.sizes, err, tc.want)
		}
	}
}

// TestFreeManyCellsLinear frees the cells of one extent in the orders that
// make cutting them one by one quadratic (each cut shifts every span after
// it): every other cell from the end, then the rest from the start. A
// peer's FREE may list this many cells (wire.MaxSegments is 4 Mi), and the
// unit's lock is held throughout; one request must not stall the unit.
func TestFreeManyCellsLinear(t *testing.T) {
	cfg := testConfig()
	cfg.SegmentSize = 2 << 20
	u := newTestUnit(t, cfg)
	const n = 1 << 20
	a := put(t, u, make([]byte, n))[0]
	cells := cut(a, n)
	var odd, even []engine.RemoteAddr
	for i := n - 1; i >= 0; i-- {
		if i%2 == 1 {
			odd = append(odd, cells[i])
		}
	}
	for i := 0; i < n; i += 2 {
		even = append(even, cells[i], engine.RemoteAddr{Segment: 9, Offset: 1 << 40}) // and cells of length 0
	}
	for _, step := range []struct {
		name  string
		cells []engine.RemoteAddr
	}{{"odd cells, last first", odd}, {"even cells, first first", even}} {
		start := time.Now()
		if err := u.Free(step.cells); err != nil {
			t.Fatalf("Free(%s): %v", step.name, err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("Free(%d %s) held the unit for %v, want well under 5s", len(step.cells), step.name, d)
		}
	}
	if got := u.Stats(); got.Used != 0 || got.Extents != 0 {
		t.Errorf("after freeing every cell: used %d in %d extents, want none", got.Used, got.Extents)
	}
	if err := u.Free(cells[:1]); !errors.Is(err, engine.ErrNotFound) {
		t.Errorf("Free of a freed cell: got %v, want ErrNotFound", err)
	}
}
