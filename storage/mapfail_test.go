package storage

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/tqgo/tq/engine"
)

// TestReserveMapENOMEMIsCapacity: a segment the kernel has no memory for
// (mmap fails with ENOMEM) is no room, as in a full unit: the reserve
// fails with ErrCapacity, naming the unit and the bytes asked, and the
// unit maps one once memory is back.
func TestReserveMapENOMEMIsCapacity(t *testing.T) {
	u := newTestUnit(t, testConfig())
	mmap = func(int, int64, int, int, int) ([]byte, error) { return nil, unix.ENOMEM }
	t.Cleanup(func() { mmap = unix.Mmap })

	_, err := u.Reserve(t.Context(), []int64{1000, 24})
	require.ErrorIs(t, err, engine.ErrCapacity)
	require.ErrorIs(t, err, unix.ENOMEM)
	var op *engine.OpError
	require.True(t, errors.As(err, &op), "%v", err)
	require.Equal(t, u.ident.Load().name, op.Peer)
	require.Contains(t, err.Error(), "reserve unit 1: 2 extents of ")
	require.Contains(t, err.Error(), "map segment of 1048576 bytes")

	mmap = unix.Mmap
	r := reserve(t, u, 1000, 24)
	r.Abort()
}
