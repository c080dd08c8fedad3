package shm

import (
	"fmt"
	"runtime/debug"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
)

// sealedMemfd returns a memfd of size bytes, sealed against resizing
// when seal is set (closed with the test).
func sealedMemfd(t *testing.T, size int64, seal bool) int {
	t.Helper()
	fd, err := unix.MemfdCreate("hostile", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	require.NoError(t, err)
	t.Cleanup(func() { unix.Close(fd) })
	require.NoError(t, unix.Ftruncate(fd, size))
	if seal {
		_, err = unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW)
		require.NoError(t, err)
	}
	return fd
}

// faults reports whether reading b's first byte faults (SIGBUS past a
// memfd's end, recovered here by SetPanicOnFault).
func faults(b []byte) (faulted bool) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() { faulted = recover() != nil }()
	sink = b[0]
	return false
}

// A unit's fd socket announces the segment's size and hands over a
// memfd: a size larger than the memfd holds would have the client map
// past the memfd's end, and its first read there is SIGBUS, which kills
// the process. The client takes the size from fstat, refuses a reply
// that announces another, and names the unit, the segment and both
// sizes.
func TestAnnouncedSizePastMemfdRefused(t *testing.T) {
	tu, c, addr := socketConn(t)
	const real, announced = 4096, 1 << 20
	c.fdSock = fakeFdSocket(t, wire.FdReply{Status: wire.FdOK, Size: announced}, sealedMemfd(t, real, true))

	l, err := c.View(t.Context(), []engine.RemoteAddr{addr})
	if err == nil {
		defer l.Release()
		t.Fatalf("View mapped a memfd of %d bytes as a segment of %d (reading its view faulted: %v); want an error wrapping %v",
			real, announced, faults(l.Bytes(0)), engine.ErrCorrupt)
	}
	require.ErrorIs(t, err, engine.ErrCorrupt)
	for _, want := range []string{fmt.Sprintf("unit %d", tu.u.ID()), fmt.Sprintf("segment %d", addr.Segment), "memfd of 4096 bytes", "region of 1048576"} {
		assert.Contains(t, err.Error(), want)
	}
}

// The peer that sends a memfd keeps it, and may shrink it while this
// side checks it, then seal it: the size this side checked holds only if
// the memfd was sealed when it was checked. The checks run seals first,
// then size; they ran the other way round, and a memfd shrunk to nothing
// and sealed between the two (here by a hook, as a racing peer would)
// was mapped at its old size: the first read of a view was SIGBUS.
func TestMemfdShrunkWhileCheckedRefused(t *testing.T) {
	_, c, addr := socketConn(t)
	const size = 1 << 20
	memfd := sealedMemfd(t, size, false)
	testHookMemfdChecks = func(int) {
		unix.Ftruncate(memfd, 0)
		unix.FcntlInt(uintptr(memfd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW)
	}
	t.Cleanup(func() { testHookMemfdChecks = nil })
	c.fdSock = fakeFdSocket(t, wire.FdReply{Status: wire.FdOK, Size: size}, memfd)

	l, err := c.View(t.Context(), []engine.RemoteAddr{addr})
	if err == nil {
		defer l.Release()
		t.Fatalf("View mapped a memfd shrunk to 0 bytes as a segment of %d (reading its view faulted: %v); want an error wrapping %v",
			size, faults(l.Bytes(0)), engine.ErrCorrupt)
	}
	require.ErrorIs(t, err, engine.ErrCorrupt)
	assert.Contains(t, err.Error(), "not sealed")
}
