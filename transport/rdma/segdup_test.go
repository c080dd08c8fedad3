//go:build linux && cgo && rdma

package rdma

import (
	"bytes"
	"log/slog"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/tqgo/tq/engine"
)

// A segment mapped twice: the same memory again is a no-op that keeps the
// one registration (its rkey, which clients hold, stays good, and one
// SegmentDropped lets it go); other memory under a live segment's id is
// refused with ErrInvalid and the live registration kept; a segment whose
// registration failed may be registered again.
func TestSegmentMappedTwice(t *testing.T) {
	dev, err := OpenDevice("emu1")
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, dev.Close()) })
	tgt := NewTarget(dev)
	tgt.log = slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil))
	t.Cleanup(func() { assert.NoError(t, tgt.Close()) })
	seg := func() []byte {
		fd, err := unix.MemfdCreate("tq-test-seg", unix.MFD_CLOEXEC)
		require.NoError(t, err)
		t.Cleanup(func() { unix.Close(fd) })
		require.NoError(t, unix.Ftruncate(fd, 1<<16))
		mem, err := unix.Mmap(fd, 0, 1<<16, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		require.NoError(t, err)
		t.Cleanup(func() { unix.Munmap(mem) })
		return mem
	}
	a, b := seg(), seg()
	before := EmulatedCounts()

	require.NoError(t, tgt.SegmentMapped(1, a, -1))
	first, err := tgt.Segments([]uint32{1})
	require.NoError(t, err)
	require.NoError(t, tgt.SegmentMapped(1, a, -1), "the same memory again")
	assert.Equal(t, before.MRs+1, EmulatedCounts().MRs, "registrations after mapping the same segment twice")
	again, err := tgt.Segments([]uint32{1})
	require.NoError(t, err)
	assert.Equal(t, first[0].Rkey, again[0].Rkey, "the rkey clients hold")

	err = tgt.SegmentMapped(1, b, -1)
	require.ErrorIs(t, err, engine.ErrInvalid, "other memory under a live segment's id")
	assert.ErrorContains(t, err, "segment 1 is registered already")
	assert.Equal(t, before.MRs+1, EmulatedCounts().MRs, "registrations after a refused duplicate")
	again, err = tgt.Segments([]uint32{1})
	require.NoError(t, err)
	assert.Equal(t, first[0].Rkey, again[0].Rkey, "the live registration is kept")
	assert.Equal(t, first[0].Addr, again[0].Addr)

	tgt.SegmentDropped(1)
	assert.Equal(t, before, EmulatedCounts(), "one SegmentDropped lets the segment go")
	_, err = tgt.Segments([]uint32{1})
	require.ErrorIs(t, err, engine.ErrNotFound)

	// A failed registration may be tried again.
	require.NoError(t, dev.InjectFault(4, 0, 1, int(syscall.ENOMEM)))
	require.ErrorIs(t, tgt.SegmentMapped(2, a, -1), syscall.ENOMEM)
	require.NoError(t, tgt.SegmentMapped(2, a, -1), "after a failed registration")
	_, err = tgt.Segments([]uint32{2})
	require.NoError(t, err)
	tgt.SegmentDropped(2)
	assert.Equal(t, before, EmulatedCounts())
}
