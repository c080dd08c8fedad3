package shmring

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestCorruptRingWinsOverPeerGone: the peer scribbles an impossible tail
// on the ring this side reads and dies. The reader, which found the ring
// empty and then the peer gone, drains the ring once more and finds the
// tail impossible: it reports the corruption (wrapping ErrCorrupt, naming
// the tail), not ErrPeerGone. Before, the drain dropped the corruption
// and the read said only "peer gone". testHookDrain puts the scribble
// exactly between the read that found the ring empty and the drain.
func TestCorruptRingWinsOverPeerGone(t *testing.T) {
	mem := make([]byte, Size(MinRingSize))
	require.NoError(t, Format(mem, MinRingSize))
	la, lb := socketPair(t) // la: the peer's liveness socket
	b, err := NewConn(mem, SideB, lb, nil, Config{Spin: -1})
	require.NoError(t, err)
	defer b.Close()

	require.NoError(t, la.Close()) // the peer dies…
	within(t, "b's watcher seeing the peer gone", b.watchOut, 10*time.Second)
	tail := u64At(mem, offRing0+offTail)           // ring 0: A→B, read by b
	testHookDrain = func() { tail.Store(1 << 40) } // …having scribbled its tail
	defer func() { testHookDrain = nil }()

	_, err = b.Read(make([]byte, 10))
	require.ErrorIs(t, err, ErrCorrupt)
	require.False(t, errors.Is(err, ErrPeerGone), "read of a corrupt ring whose peer is gone: %v", err)
	require.ErrorContains(t, err, "tail 1099511627776")
	// The channel stays failed as corrupt.
	_, err = b.Read(make([]byte, 10))
	require.ErrorIs(t, err, ErrCorrupt)
}
