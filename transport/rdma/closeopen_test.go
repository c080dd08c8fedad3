//go:build linux && cgo && rdma

package rdma

import (
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// A device closed while handles made through it are open fails, and the
// error names what is still open, so that the caller can tell which
// handle it forgot. It said only "ibv_dealloc_pd: device or resource
// busy" (or ibv_close_device), whatever was open.
func TestDeviceCloseNamesWhatIsOpen(t *testing.T) {
	d, err := OpenDevice("emu1")
	require.NoError(t, err)
	mem, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	require.NoError(t, err)
	defer unix.Munmap(mem)
	mr, err := d.Register(mem, AccessLocalWrite)
	require.NoError(t, err)
	cq, err := d.NewCQ(16)
	require.NoError(t, err)
	qp1, err := d.NewPreparedQP(cq, QPCaps{MaxWR: 1, MaxSGE: 1}, 1)
	require.NoError(t, err)
	qp2, err := d.NewPreparedQP(cq, QPCaps{MaxWR: 1, MaxSGE: 1}, 2)
	require.NoError(t, err)

	err = d.Close()
	require.ErrorIs(t, err, syscall.EBUSY)
	assert.ErrorContains(t, err, "1 memory registration, 1 completion queue and 2 queue pairs still open")

	require.NoError(t, qp1.Close())
	require.NoError(t, qp2.Close())
	require.NoError(t, qp2.Close(), "a second close counts nothing")
	err = d.Close()
	require.ErrorIs(t, err, syscall.EBUSY)
	assert.ErrorContains(t, err, "1 memory registration and 1 completion queue still open")

	require.NoError(t, mr.Close())
	err = d.Close() // refused before the protection domain is freed
	require.ErrorIs(t, err, syscall.EBUSY)
	assert.ErrorContains(t, err, "1 completion queue still open")
	assert.NotContains(t, err.Error(), "memory registration")

	require.NoError(t, cq.Close())
	require.NoError(t, d.Close())
}
