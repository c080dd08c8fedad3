package shmring

import (
	"encoding/binary"
	"os"
	"runtime/debug"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// TestDeadlineWakesDespitePeer: the peer clears the sleep word this side
// set before it parked (the word is in the shared region, so the peer can
// write it); a deadline moved to now still wakes the parked read or
// write. Before, SetDeadline woke the sleeper only when it found the
// shared word set, and a read with no earlier deadline stayed parked for
// good (as wire.Conn's reader does after a failed write moves its
// deadline to a grace period).
func TestDeadlineWakesDespitePeer(t *testing.T) {
	for _, tc := range []struct {
		name string
		op   func(b *Conn) <-chan result
		bell func(b *Conn) *bell
		move func(b *Conn) error
	}{
		{"read", func(b *Conn) <-chan result { return goRead(b, 1) },
			func(b *Conn) *bell { return &b.in.data },
			func(b *Conn) error { return b.SetReadDeadline(time.Now()) }},
		{"write", func(b *Conn) <-chan result { return goWrite(b, make([]byte, 2*MinRingSize)) },
			func(b *Conn) *bell { return &b.out.space },
			func(b *Conn) error { return b.SetWriteDeadline(time.Now()) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mem := make([]byte, Size(MinRingSize))
			require.NoError(t, Format(mem, MinRingSize))
			la, lb := socketPair(t) // la: the peer's end, which rings nothing
			defer la.Close()
			b, err := NewConn(mem, SideB, lb, nil, Config{Spin: -1})
			require.NoError(t, err)
			defer b.Close()
			done := tc.op(b)
			sleep := tc.bell(b).sleep
			deadline := time.Now().Add(10 * time.Second)
			for sleep.Load() == 0 {
				require.True(t, time.Now().Before(deadline), "the %s never parked", tc.name)
				time.Sleep(time.Millisecond)
			}
			time.Sleep(50 * time.Millisecond) // parked in its select by now
			sleep.Store(0)                    // the peer clears it
			require.NoError(t, tc.move(b))
			r := within(t, tc.name+" whose deadline moved to now", done, 10*time.Second)
			require.ErrorIs(t, r.err, os.ErrDeadlineExceeded)
		})
	}
}

// TestWriteRacingHostileHead: the peer flips the head of the ring this
// side writes between a valid value and an impossible one. Each write
// either succeeds or fails with ErrCorrupt; none panics. Before, the
// self-check of invariant builds (race, invariants: every test run)
// loaded the head a second time after publishing the tail and panicked
// when the peer had moved it in between, so a hostile peer could crash a
// unit built with them.
func TestWriteRacingHostileHead(t *testing.T) {
	mem := make([]byte, Size(MinRingSize))
	require.NoError(t, Format(mem, MinRingSize))
	peer := ringAt(mem, 1, MinRingSize) // B→A, as side A sees it
	stop := make(chan struct{})
	peerDone := make(chan struct{})
	go func() {
		defer close(peerDone)
		for {
			select {
			case <-stop:
				return
			default:
			}
			tail := peer.tail.Load()
			peer.head.Store(tail)         // all read
			peer.head.Store(tail + 1<<40) // impossible
		}
	}()
	defer func() {
		close(stop)
		<-peerDone
	}()
	r := ringAt(mem, 1, MinRingSize) // this side, B, the producer
	var ok, corrupt int
	for i := 0; i < 200_000; i++ {
		func() {
			defer func() {
				if p := recover(); p != nil {
					t.Fatalf("write %d panicked on the peer's head: %v", i, p)
				}
			}()
			_, err := r.write([]byte{byte(i)})
			if err != nil {
				require.ErrorIs(t, err, ErrCorrupt)
				corrupt++
			} else {
				ok++
			}
		}()
	}
	t.Logf("%d writes taken, %d refused as corrupt", ok, corrupt)
}

// TestReadRacingHostileTail: the peer flips the tail of the ring this
// side reads between valid values and impossible ones (behind the head,
// past the ring's size). Each read returns at most the ring's bytes or
// fails with ErrCorrupt; none reads outside the ring.
func TestReadRacingHostileTail(t *testing.T) {
	mem := make([]byte, Size(MinRingSize))
	require.NoError(t, Format(mem, MinRingSize))
	peer := ringAt(mem, 0, MinRingSize)
	stop := make(chan struct{})
	peerDone := make(chan struct{})
	go func() {
		defer close(peerDone)
		for i := uint64(0); ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			head := peer.head.Load()
			peer.tail.Store(head + MinRingSize)     // full
			peer.tail.Store(head + MinRingSize + 1) // more than it holds
			peer.tail.Store(head - 1)               // behind the head
			peer.tail.Store(head + i%MinRingSize)
		}
	}()
	defer func() {
		close(stop)
		<-peerDone
	}()
	r := ringAt(mem, 0, MinRingSize) // this side, B, the consumer
	p := make([]byte, 3*MinRingSize)
	for i := 0; i < 200_000; i++ {
		n, err := r.read(p[:1+i%len(p)])
		if err != nil {
			require.ErrorIs(t, err, ErrCorrupt)
			continue
		}
		require.LessOrEqual(t, n, MinRingSize)
	}
}

// TestMapRefusesHostileRegions: a memfd handed over the fd exchange that
// is not a channel this side can use is refused with an error that says
// what is wrong with it, before NewConn.
func TestMapRefusesHostileRegions(t *testing.T) {
	const ring = MinRingSize
	memfd := func(t *testing.T, size int, seal bool, header func(b []byte)) int {
		fd, err := unix.MemfdCreate("hostile", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
		require.NoError(t, err)
		t.Cleanup(func() { unix.Close(fd) })
		require.NoError(t, unix.Ftruncate(fd, int64(size)))
		if size >= HeaderSize {
			b, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
			require.NoError(t, err)
			if err := Format(b, ring); err != nil { // the wrong size for ring
				copy(b, magic)
				binary.NativeEndian.PutUint32(b[4:], version)
				binary.NativeEndian.PutUint32(b[8:], ring)
			}
			if header != nil {
				header(b)
			}
			require.NoError(t, unix.Munmap(b))
		}
		if seal {
			_, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW)
			require.NoError(t, err)
		}
		return fd
	}
	for _, tc := range []struct {
		name   string
		fd     func(t *testing.T) int
		want   error
		saying string
	}{
		{"empty", func(t *testing.T) int { return memfd(t, 0, true, nil) }, ErrCorrupt, "channel memfd of 0 bytes"},
		{"huge", func(t *testing.T) int { return memfd(t, 2*Size(MaxRingSize), true, nil) }, ErrCorrupt, "bytes"},
		{"unsealed", func(t *testing.T) int { return memfd(t, Size(ring), false, nil) }, ErrCorrupt, "not sealed against resizing"},
		{"bad magic", func(t *testing.T) int {
			return memfd(t, Size(ring), true, func(b []byte) { copy(b, "XXXX") })
		}, ErrCorrupt, "no channel header"},
		{"other version", func(t *testing.T) int {
			return memfd(t, Size(ring), true, func(b []byte) { binary.NativeEndian.PutUint32(b[4:], version+1) })
		}, ErrVersion, "channel version 3, want 2"},
		{"ring size not a power of two", func(t *testing.T) int {
			return memfd(t, Size(ring), true, func(b []byte) { binary.NativeEndian.PutUint32(b[8:], ring+8) })
		}, ErrCorrupt, "header says rings of 4104"},
		{"header disagrees with the size", func(t *testing.T) int { return memfd(t, Size(2*ring), true, nil) }, ErrCorrupt, "region of 20480 bytes, header says rings of 4096"},
		{"not a memfd", func(t *testing.T) int {
			var p [2]int
			require.NoError(t, unix.Pipe2(p[:], unix.O_CLOEXEC))
			t.Cleanup(func() { unix.Close(p[0]); unix.Close(p[1]) })
			return p[0]
		}, ErrCorrupt, "channel fd is not a sealable memfd"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mem, err := Map(tc.fd(t))
			if err == nil {
				Unmap(mem)
			}
			require.ErrorIs(t, err, tc.want)
			require.ErrorContains(t, err, tc.saying)
		})
	}
}

// TestMapRefusesMemfdShrunkWhileChecked: the creator of a channel's
// memfd keeps it, and may shrink it while this side checks it, then seal
// it; the size this side checked holds only if the memfd was sealed when
// it was checked. Map checks the seals first, then the size; it ran the
// other way round, and a memfd shrunk to nothing and sealed between the
// two (here by a hook, as a racing peer would) was mapped at its old
// size: reading its header was SIGBUS.
func TestMapRefusesMemfdShrunkWhileChecked(t *testing.T) {
	fd, err := unix.MemfdCreate("hostile", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	require.NoError(t, err)
	defer unix.Close(fd)
	size := Size(MinRingSize)
	require.NoError(t, unix.Ftruncate(fd, int64(size)))
	b, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	require.NoError(t, err)
	require.NoError(t, Format(b, MinRingSize))
	require.NoError(t, unix.Munmap(b))
	testHookMapChecks = func(fd int) {
		unix.Ftruncate(fd, 0)
		unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW)
	}
	defer func() { testHookMapChecks = nil }()

	var mem []byte
	faulted := func() (faulted bool) {
		defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
		defer func() { faulted = recover() != nil }()
		mem, err = Map(fd)
		return false
	}()
	if mem != nil {
		Unmap(mem)
	}
	require.False(t, faulted, "Map of a memfd shrunk while it was checked faulted (SIGBUS)")
	require.ErrorIs(t, err, ErrCorrupt)
	require.ErrorContains(t, err, "not sealed against resizing")
}
