package storage

import (
	"context"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// A segment is faulted in behind the puts that write to it: bytes written
// while the background prefault runs are intact once it is done, and then
// every page of the segment is resident. (How long the put that maps a
// segment waits is BenchmarkFirstReserve's.)
func TestSegmentFaultsInBehindPuts(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Capacity, cfg.SegmentSize = 64<<20, 64<<20
	u, err := NewUnit(1, cfg)
	require.NoError(t, err)
	defer u.Close()
	ctx := context.Background()
	var rs []*Reservation
	for i := range 16 { // 4 MiB apiece: across the whole segment
		r, err := u.Reserve(ctx, []int64{4 << 20})
		require.NoError(t, err)
		buf := r.Buf(0)
		for j := 0; j < len(buf); j += 1000 {
			buf[j] = byte(i + j/1000)
		}
		rs = append(rs, r)
	}
	u.mu.Lock()
	require.Len(t, u.segs, 1)
	s := u.segs[0]
	u.mu.Unlock()
	if s.faulting != nil { // else (a kernel before 5.14) it was faulted in whole when mapped
		<-s.faulting.faulted
	}
	for i, r := range rs {
		buf := r.Buf(0)
		for j := 0; j < len(buf); j += 1000 {
			if buf[j] != byte(i+j/1000) {
				t.Fatalf("reservation %d byte %d = %d, written %d: the prefault changed it", i, j, buf[j], byte(i+j/1000))
			}
		}
	}
	vec := make([]byte, len(s.mem)/pageSize)
	_, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(unsafe.SliceData(s.mem))), uintptr(len(s.mem)), uintptr(unsafe.Pointer(unsafe.SliceData(vec))))
	require.Zero(t, errno, "mincore")
	resident := 0
	for _, v := range vec {
		resident += int(v & 1)
	}
	assert.Equal(t, len(vec), resident, "pages resident after the prefault")
	for _, r := range rs {
		r.Abort()
	}
}

// Closing a unit while a segment is still being faulted in stops that,
// and waits for it (the unit's pages are unmapped only then).
func TestCloseStopsThePrefault(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Capacity, cfg.SegmentSize = 256<<20, 256<<20
	u, err := NewUnit(1, cfg)
	require.NoError(t, err)
	r, err := u.Reserve(context.Background(), []int64{1 << 10})
	require.NoError(t, err)
	r.Abort()
	u.mu.Lock()
	s := u.segs[0]
	u.mu.Unlock()
	require.NoError(t, u.Close())
	if s.faulting != nil {
		select {
		case <-s.faulting.faulted:
		default:
			t.Fatal("Close returned with the prefault still running")
		}
	}
}
