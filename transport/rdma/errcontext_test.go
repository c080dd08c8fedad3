//go:build linux && cgo && rdma

package rdma

import (
	"fmt"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// A verb the device refuses names, past the verb and its errno, what was
// asked of it: the sizes, flags and endpoint values an operator needs to
// see which one the device did not take, and for a queue pair transition
// the state the queue pair was in.
func TestVerbErrorsNameTheirArguments(t *testing.T) {
	d, err := OpenDevice("emu2")
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, d.Close()) })
	anon, err := unix.Mmap(-1, 0, 1<<16, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	require.NoError(t, err)
	t.Cleanup(func() { unix.Munmap(anon) })
	cq, err := d.NewCQ(16)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, cq.Close()) })
	peerDev, err := OpenDevice("emu2")
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, peerDev.Close()) })
	peerCQ, err := peerDev.NewCQ(16)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, peerCQ.Close()) })
	peer, err := peerDev.NewPreparedQP(peerCQ, QPCaps{MaxWR: 1, MaxSGE: 1}, 7)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, peer.Close()) })
	handshake := func(remote func(*Endpoint), o HandshakeOpts) (string, error) {
		p, err := d.NewPreparedQP(cq, QPCaps{MaxWR: 4, MaxSGE: 1}, 3)
		require.NoError(t, err)
		t.Cleanup(func() { assert.NoError(t, p.Close()) })
		e := peer.Endpoint()
		remote(&e)
		_, err = p.Handshake(e, o)
		return fmt.Sprintf("queue pair %#x", p.Endpoint().QPN), err
	}
	maxCQE := d.Port().MaxCQE

	for _, tc := range []struct {
		name string
		do   func() (want []string, err error)
		verb string
	}{
		{"registration", func() ([]string, error) {
			_, err := d.Register(anon, AccessLocalWrite|1<<12)
			return []string{"register 65536 bytes at", "access 0x1001"}, err
		}, "ibv_reg_mr"},
		{"dmabuf registration", func() ([]string, error) {
			_, err := d.RegisterDmabuf(-1, 4096, 8192, 0, AccessLocalWrite)
			return []string{"dma-buf fd -1", "offset 4096", "8192 bytes"}, err
		}, "ibv_reg_dmabuf_mr"},
		{"completion queue", func() ([]string, error) {
			_, err := d.NewCQ(maxCQE + 1)
			return []string{fmt.Sprintf("completion queue of %d entries (device max %d)", maxCQE+1, maxCQE)}, err
		}, "ibv_create_cq"},
		{"queue pair", func() ([]string, error) {
			_, err := d.NewPreparedQP(cq, QPCaps{MaxWR: 1, MaxSGE: 33}, 1)
			return []string{"queue pair of 1 work requests, 33 SGEs each (device max"}, err
		}, "ibv_create_qp"},
		{"INIT", func() ([]string, error) {
			qp, err := handshake(func(*Endpoint) {}, HandshakeOpts{Access: 1 << 12, Timeout: 8, RetryCnt: 1})
			return []string{qp, "in state RESET", "to INIT", "access 0x1000"}, err
		}, "ibv_modify_qp(INIT)"},
		{"RTR", func() ([]string, error) {
			qp, err := handshake(func(e *Endpoint) { e.PSN = 1 << 24 }, HandshakeOpts{Timeout: 8, RetryCnt: 1})
			return []string{qp, "in state INIT", "to RTR", "remote qpn", "psn 0x1000000"}, err
		}, "ibv_modify_qp(RTR)"},
		{"RTS", func() ([]string, error) {
			qp, err := handshake(func(*Endpoint) {}, HandshakeOpts{Timeout: 32, RetryCnt: 1})
			return []string{qp, "in state RTR", "to RTS", "timeout 32", "retry count 1"}, err
		}, "ibv_modify_qp(RTS)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want, err := tc.do()
			requireVerbErr(t, err, tc.verb, syscall.EINVAL)
			for _, w := range want {
				assert.Contains(t, err.Error(), w)
			}
		})
	}

	t.Run("post", func(t *testing.T) {
		p := newPair(t, AccessLocalWrite|AccessRemoteRead|AccessRemoteWrite, HandshakeOpts{})
		require.NoError(t, p.a.InjectFault(1, 1, 1, int(syscall.ENOMEM)))
		wrs := []WR{
			{ID: 1, RemoteAddr: p.raddr(0), RKey: p.rb.RKey, Op: OpWrite, Signaled: 1, NumSGE: 1},
			{ID: 2, RemoteAddr: p.raddr(4096), RKey: p.rb.RKey, Op: OpRead, Signaled: 1, FirstSGE: 1, NumSGE: 1},
		}
		sges := []SGE{{Addr: p.laddr(0), Length: 64, LKey: p.la.LKey}, {Addr: p.laddr(64), Length: 128, LKey: p.la.LKey}}
		bad, err := p.qa.Post(wrs, sges)
		assert.Equal(t, 1, bad)
		requireVerbErr(t, err, "ibv_post_send", syscall.ENOMEM)
		for _, w := range []string{
			fmt.Sprintf("queue pair %#x", p.qa.QPN()),
			"work request 1 of 2",
			"read of 128 bytes",
			fmt.Sprintf("remote %#x, rkey %#x", p.raddr(4096), p.rb.RKey),
		} {
			assert.Contains(t, err.Error(), w)
		}
		p.pollN(t, 1) // the WR before it was posted
	})
}
