//go:build linux && cgo && rdma

package rdma

// The refusals of the C shim (csrc/shim.c) and of the emulated device under
// it (csrc/emu.c, which refuses what hardware refuses), each reached
// through the real cgo boundary: the error names the verb and the errno
// (or the completion its status), and a refused call leaves nothing
// behind: no registration, completion queue, queue pair, peer mapping or
// completion entry.

import (
	"encoding/binary"
	"math"
	"syscall"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/tqgo/tq/engine"
)

// requireVerbErr checks that err is the verbs failure of verb with errno.
func requireVerbErr(t *testing.T, err error, verb string, errno syscall.Errno) {
	t.Helper()
	require.Error(t, err)
	var e *Error
	require.ErrorAs(t, err, &e)
	assert.Equal(t, verb, e.Op, "the verb that refused")
	assert.Equal(t, errno, e.Errno, "its errno")
	assert.ErrorIs(t, err, errno)
	assert.Contains(t, err.Error(), verb)
}

// sameCounts checks that the emulated device holds what it held before.
func sameCounts(t *testing.T, before EmuCounts) {
	t.Helper()
	assert.Equal(t, before, EmulatedCounts(), "emulated objects after a refusal")
}

// The shim's own checks of a chain, before ibv_post_send (QP.post skips
// Post's checks in Go): each is EINVAL from "ibv_post_send" with bad 0,
// nothing is posted, nothing completes, and the queue pair stays usable.
func TestShimRefusesChains(t *testing.T) {
	p := newPair(t, AccessLocalWrite|AccessRemoteRead|AccessRemoteWrite, HandshakeOpts{})
	ok := func(id uint64) WR {
		return WR{ID: id, RemoteAddr: p.raddr(0), RKey: p.rb.RKey, Op: OpWrite, Signaled: 1, NumSGE: 1}
	}
	one := []SGE{{Addr: p.laddr(0), Length: 64, LKey: p.la.LKey}}
	many := make([]SGE, 1025)
	for i := range many {
		many[i] = SGE{Addr: p.laddr(i), Length: 1, LKey: p.la.LKey}
	}
	for _, tc := range []struct {
		name string
		wrs  []WR
		sges []SGE
	}{
		{"empty chain", nil, one},
		{"257 work requests", make([]WR, 257), one},
		{"opcode SEND", []WR{ok(1), {ID: 2, Op: 2, NumSGE: 1}}, one},
		{"opcode past the enum", []WR{ok(1), {ID: 2, Op: 0xFFFFFFFF, NumSGE: 1}}, one},
		{"SGEs past the array", []WR{ok(1), {ID: 2, Op: OpWrite, FirstSGE: 0, NumSGE: 2}}, one},
		{"first SGE wrapping 32 bits", []WR{ok(1), {ID: 2, Op: OpWrite, FirstSGE: 0xFFFFFFFF, NumSGE: 1}}, one},
		{"SGE count wrapping 32 bits", []WR{ok(1), {ID: 2, Op: OpWrite, FirstSGE: 1, NumSGE: 0xFFFFFFFF}}, one},
		{"more than 1024 SGEs in the chain", []WR{
			{ID: 1, Op: OpWrite, FirstSGE: 0, NumSGE: 1000},
			{ID: 2, Op: OpWrite, FirstSGE: 1000, NumSGE: 25},
		}, many},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := EmulatedCounts()
			bad, err := p.qa.post(tc.wrs, tc.sges)
			requireVerbErr(t, err, "ibv_post_send", syscall.EINVAL)
			assert.Zero(t, bad, "nothing was posted")
			assert.ErrorContains(t, err, "rdma emu0: ibv_post_send: invalid argument")
			sameCounts(t, before)
			st, err := p.qa.State()
			require.NoError(t, err)
			assert.Equal(t, 3, st, "the queue pair is still ready to send (IBV_QPS_RTS)")
		})
	}
	assert.Zero(t, postedCompletions(t, p.cqa), "completions of chains never posted")

	// The queue pair still moves bytes.
	copy(p.local, "after the refusals")
	_, err := p.qa.Post([]WR{ok(9)}, one)
	require.NoError(t, err)
	wcs := p.pollN(t, 1)
	assert.Equal(t, WCSuccess, wcs[0].Status)
	assert.Equal(t, "after the refusals", string(p.remote[:18]))
}

// A device whose protection domain its failed Close freed refuses what
// needs one (EBADF, naming the verb) and makes nothing.
func TestShimRefusesWithoutProtectionDomain(t *testing.T) {
	d, err := OpenDevice("emu1")
	require.NoError(t, err)
	cq, err := d.NewCQ(16)
	require.NoError(t, err)
	// Past Close's own refusal (a completion queue is open): the shim
	// frees the protection domain, and the emulated device refuses the
	// close.
	d.mu.Lock()
	err = d.closeVerbsLocked()
	d.mu.Unlock()
	requireVerbErr(t, err, "ibv_close_device", syscall.EBUSY)
	before := EmulatedCounts()

	fd, err := unix.MemfdCreate("tq-test-dmabuf", unix.MFD_CLOEXEC)
	require.NoError(t, err)
	defer unix.Close(fd)
	require.NoError(t, unix.Ftruncate(fd, 4096))
	_, err = d.RegisterDmabuf(fd, 0, 4096, 0x10000, AccessLocalWrite)
	requireVerbErr(t, err, "ibv_reg_dmabuf_mr", syscall.EBADF)
	_, err = d.NewPreparedQP(cq, QPCaps{MaxWR: 1, MaxSGE: 1}, 1)
	requireVerbErr(t, err, "ibv_create_qp", syscall.EBADF)
	sameCounts(t, before)

	require.NoError(t, cq.Close())
	require.NoError(t, d.Close())
}

// Registrations the device refuses: EINVAL from the verb, and no
// registration (or dup of a backing fd) left behind.
func TestDeviceRefusesRegistrations(t *testing.T) {
	d, err := OpenDevice("emu2")
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, d.Close()) })
	anon, err := unix.Mmap(-1, 0, 1<<16, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	require.NoError(t, err)
	t.Cleanup(func() { unix.Munmap(anon) })
	fd, err := unix.MemfdCreate("tq-test-seg", unix.MFD_CLOEXEC)
	require.NoError(t, err)
	t.Cleanup(func() { unix.Close(fd) })
	require.NoError(t, unix.Ftruncate(fd, 1<<16))
	seg, err := unix.Mmap(fd, 0, 1<<16, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	require.NoError(t, err)
	t.Cleanup(func() { unix.Munmap(seg) })
	var pipe [2]int
	require.NoError(t, unix.Pipe2(pipe[:], unix.O_CLOEXEC))
	t.Cleanup(func() { unix.Close(pipe[0]); unix.Close(pipe[1]) })

	remote := AccessLocalWrite | AccessRemoteRead | AccessRemoteWrite
	// The device reads none of these bytes: it looks the range up in
	// /proc/self/maps, or refuses it before that.
	past := unsafe.Slice(&seg[0], 2<<16)
	huge := unsafe.Slice(&anon[0], 1<<41)
	for _, tc := range []struct {
		name   string
		reg    func() (*MR, error)
		verb   string
		errno  syscall.Errno
		closed bool
	}{
		{"unknown access flag", func() (*MR, error) { return d.Register(anon, AccessLocalWrite|1<<12) }, "ibv_reg_mr", syscall.EINVAL, false},
		{"remote write without local write", func() (*MR, error) { return d.Register(seg, AccessRemoteWrite) }, "ibv_reg_mr", syscall.EINVAL, false},
		{"remote access to anonymous memory", func() (*MR, error) { return d.Register(anon, remote) }, "ibv_reg_mr", syscall.EINVAL, false},
		{"range past the file mapping", func() (*MR, error) { return d.Register(past, remote) }, "ibv_reg_mr", syscall.EINVAL, false},
		{"more than the device registers", func() (*MR, error) { return d.Register(huge, AccessLocalWrite) }, "ibv_reg_mr", syscall.EINVAL, false},
		{"dmabuf: no fd", func() (*MR, error) { return d.RegisterDmabuf(-1, 0, 4096, 0, AccessLocalWrite) }, "ibv_reg_dmabuf_mr", syscall.EINVAL, false},
		{"dmabuf: 0 bytes", func() (*MR, error) { return d.RegisterDmabuf(fd, 0, 0, 0, AccessLocalWrite) }, "ibv_reg_dmabuf_mr", syscall.EINVAL, false},
		{"dmabuf: offset wrapping", func() (*MR, error) {
			return d.RegisterDmabuf(fd, math.MaxUint64-10, 4096, 0, AccessLocalWrite)
		}, "ibv_reg_dmabuf_mr", syscall.EINVAL, false},
		{"dmabuf: iova wrapping", func() (*MR, error) {
			return d.RegisterDmabuf(fd, 0, 4096, math.MaxUint64-10, AccessLocalWrite)
		}, "ibv_reg_dmabuf_mr", syscall.EINVAL, false},
		{"dmabuf: past the file's end", func() (*MR, error) { return d.RegisterDmabuf(fd, 1<<15, 1<<16, 0, AccessLocalWrite) }, "ibv_reg_dmabuf_mr", syscall.EINVAL, false},
		{"dmabuf: not a regular file", func() (*MR, error) { return d.RegisterDmabuf(pipe[0], 0, 4096, 0, AccessLocalWrite) }, "ibv_reg_dmabuf_mr", syscall.EINVAL, false},
		{"dmabuf: bad access", func() (*MR, error) { return d.RegisterDmabuf(fd, 0, 4096, 0, AccessRemoteWrite) }, "ibv_reg_dmabuf_mr", syscall.EINVAL, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := EmulatedCounts()
			fds := openFDs(t)
			mr, err := tc.reg()
			if mr != nil {
				mr.Close()
			}
			requireVerbErr(t, err, tc.verb, tc.errno)
			sameCounts(t, before)
			assert.Equal(t, fds, openFDs(t), "file descriptors after a refused registration")
		})
	}
	// Memory Go does not register at all: no bytes.
	_, err = d.Register(nil, AccessLocalWrite)
	require.ErrorIs(t, err, engine.ErrInvalid)
	assert.ErrorContains(t, err, "register 0 bytes")
}

// openFDs counts this process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := unix.Open("/proc/self/fd", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	require.NoError(t, err)
	defer unix.Close(ents)
	n := 0
	buf := make([]byte, 1<<16)
	for {
		got, err := unix.Getdents(ents, buf)
		require.NoError(t, err)
		if got == 0 {
			return n
		}
		_, c, _ := unix.ParseDirent(buf[:got], -1, nil)
		n += c
	}
}

// Completion queues and queue pairs the device refuses.
func TestDeviceRefusesQueues(t *testing.T) {
	d, err := OpenDevice("emu2")
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, d.Close()) })
	other, err := OpenDevice("emu3")
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, other.Close()) })
	cq, err := d.NewCQ(16)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, cq.Close()) })
	otherCQ, err := other.NewCQ(16)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, otherCQ.Close()) })

	for _, tc := range []struct {
		name string
		make func() (any, error)
		verb string
	}{
		{"CQ of 0 entries", func() (any, error) { return d.NewCQ(0) }, "ibv_create_cq"},
		{"CQ of more entries than the device has", func() (any, error) { return d.NewCQ(1<<20 + 1) }, "ibv_create_cq"},
		{"QP with more SGEs than the device takes", func() (any, error) {
			return d.NewPreparedQP(cq, QPCaps{MaxWR: 1, MaxSGE: 33}, 1)
		}, "ibv_create_qp"},
		{"QP with more work requests than the device takes", func() (any, error) {
			return d.NewPreparedQP(cq, QPCaps{MaxWR: 16385, MaxSGE: 1}, 1)
		}, "ibv_create_qp"},
		{"QP on another device's CQ", func() (any, error) {
			return d.NewPreparedQP(otherCQ, QPCaps{MaxWR: 1, MaxSGE: 1}, 1)
		}, "ibv_create_qp"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := EmulatedCounts()
			_, err := tc.make()
			requireVerbErr(t, err, tc.verb, syscall.EINVAL)
			sameCounts(t, before)
		})
	}
}

// Handshakes the device refuses at INIT, RTR or RTS: the error names the
// transition, and the queue pair is destroyed, with the peer it attached
// to at RTR let go.
func TestDeviceRefusesHandshakes(t *testing.T) {
	a, err := OpenDevice("emu0")
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, a.Close()) })
	b, err := OpenDevice("emu0")
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, b.Close()) })
	cqa, err := a.NewCQ(16)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, cqa.Close()) })
	cqb, err := b.NewCQ(16)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, cqb.Close()) })
	pb, err := b.NewPreparedQP(cqb, QPCaps{MaxWR: 1, MaxSGE: 1}, 7)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, pb.Close()) })
	peer := pb.Endpoint()
	// A GID names its port's registry by pid and fd: this fd is a file
	// large enough to be one, but it is not.
	notReg, err := unix.MemfdCreate("tq-test-not-a-registry", unix.MFD_CLOEXEC)
	require.NoError(t, err)
	t.Cleanup(func() { unix.Close(notReg) })
	require.NoError(t, unix.Ftruncate(notReg, 1<<22))
	good := HandshakeOpts{Timeout: 8, RetryCnt: 1}

	for _, tc := range []struct {
		name   string
		remote func(Endpoint) Endpoint
		opts   func(HandshakeOpts) HandshakeOpts
		verb   string
	}{
		{"local write on a queue pair", nil, func(o HandshakeOpts) HandshakeOpts { o.Access = AccessLocalWrite; return o }, "ibv_modify_qp(INIT)"},
		{"unknown access flag", nil, func(o HandshakeOpts) HandshakeOpts { o.Access = 1 << 12; return o }, "ibv_modify_qp(INIT)"},
		{"GID of no emulated port", func(e Endpoint) Endpoint { e.GID = [16]byte{0x20, 1, 0xd, 0xb8}; return e }, nil, "ibv_modify_qp(RTR)"},
		{"GID of a file that is no registry", func(e Endpoint) Endpoint {
			binary.BigEndian.PutUint32(e.GID[12:], uint32(notReg))
			return e
		}, nil, "ibv_modify_qp(RTR)"},
		{"QPN 0", func(e Endpoint) Endpoint { e.QPN = 0; return e }, nil, "ibv_modify_qp(RTR)"},
		{"QPN past 24 bits", func(e Endpoint) Endpoint { e.QPN = 1 << 24; return e }, nil, "ibv_modify_qp(RTR)"},
		{"PSN past 24 bits", func(e Endpoint) Endpoint { e.PSN = 1 << 24; return e }, nil, "ibv_modify_qp(RTR)"},
		{"MTU past 4096", nil, func(o HandshakeOpts) HandshakeOpts { o.MTU = 6; return o }, "ibv_modify_qp(RTR)"},
		{"responder depth past the device's", nil, func(o HandshakeOpts) HandshakeOpts { o.ReadDepth = ReadDepth{Init: 1, Resp: 17}; return o }, "ibv_modify_qp(RTR)"},
		{"initiator depth past the device's", nil, func(o HandshakeOpts) HandshakeOpts { o.ReadDepth = ReadDepth{Init: 17, Resp: 1}; return o }, "ibv_modify_qp(RTS)"},
		{"ACK timeout past 5 bits", nil, func(o HandshakeOpts) HandshakeOpts { o.Timeout = 32; return o }, "ibv_modify_qp(RTS)"},
		{"retry count past 3 bits", nil, func(o HandshakeOpts) HandshakeOpts { o.RetryCnt = 8; return o }, "ibv_modify_qp(RTS)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := EmulatedCounts()
			pa, err := a.NewPreparedQP(cqa, QPCaps{MaxWR: 4, MaxSGE: 1}, 3)
			require.NoError(t, err)
			remote, o := peer, good
			if tc.remote != nil {
				remote = tc.remote(remote)
			}
			if tc.opts != nil {
				o = tc.opts(o)
			}
			q, err := pa.Handshake(remote, o)
			assert.Nil(t, q)
			requireVerbErr(t, err, tc.verb, syscall.EINVAL)
			sameCounts(t, before) // the QP, and any peer mapping, are gone
			require.NoError(t, pa.Close(), "closing the failed QP again is a no-op")
		})
	}
}

// Work requests the device refuses when they are posted (EINVAL or
// ENOMEM at the WR, bad its index: the WRs before it were posted and
// complete) and those it fails with a completion (the QP goes to the
// error state; later WRs are flushed).
func TestDeviceRefusesWorkRequests(t *testing.T) {
	t.Run("more SGEs than the QP takes", func(t *testing.T) {
		p := newPair(t, AccessLocalWrite|AccessRemoteRead|AccessRemoteWrite, HandshakeOpts{})
		sges := make([]SGE, 6)
		for i := range sges {
			sges[i] = SGE{Addr: p.laddr(i * 8), Length: 8, LKey: p.la.LKey}
		}
		wrs := []WR{
			{ID: 1, RemoteAddr: p.raddr(0), RKey: p.rb.RKey, Op: OpWrite, Signaled: 1, NumSGE: 1},
			{ID: 2, RemoteAddr: p.raddr(64), RKey: p.rb.RKey, Op: OpWrite, Signaled: 1, FirstSGE: 1, NumSGE: 5}, // the QP takes 4
		}
		bad, err := p.qa.Post(wrs, sges)
		requireVerbErr(t, err, "ibv_post_send", syscall.EINVAL)
		assert.Equal(t, 1, bad)
		wcs := p.pollN(t, 1)
		assert.Equal(t, uint64(1), wcs[0].ID)
		assert.Equal(t, WCSuccess, wcs[0].Status)
		assert.Zero(t, postedCompletions(t, p.cqa), "the refused WR completes not")
	})
	t.Run("send queue full", func(t *testing.T) {
		p := newPair(t, AccessLocalWrite|AccessRemoteRead|AccessRemoteWrite, HandshakeOpts{})
		sges := []SGE{{Addr: p.laddr(0), Length: 8, LKey: p.la.LKey}}
		wrs := make([]WR, 65) // the QP holds 64
		for i := range wrs {
			wrs[i] = WR{ID: uint64(i + 1), RemoteAddr: p.raddr(i * 8), RKey: p.rb.RKey, Op: OpWrite, Signaled: 1, NumSGE: 1}
		}
		bad, err := p.qa.Post(wrs, sges)
		requireVerbErr(t, err, "ibv_post_send", syscall.ENOMEM)
		assert.Equal(t, 64, bad)
		assert.Len(t, p.pollN(t, 64), 64)
		assert.Zero(t, postedCompletions(t, p.cqa), "the refused WR completes not")
		// Room again once the completions are polled.
		_, err = p.qa.Post(wrs[64:], sges)
		require.NoError(t, err)
		assert.Equal(t, WCSuccess, p.pollN(t, 1)[0].Status)
	})

	for _, tc := range []struct {
		name string
		// wr and sges of the failing WR; mr is a's registration
		// without local write, unregistered: b's MR deregistered.
		setup func(t *testing.T, p *pair) (WR, []SGE)
		want  WCStatus
		is    error
	}{
		{"local SGE past its registration", func(t *testing.T, p *pair) (WR, []SGE) {
			return WR{RemoteAddr: p.raddr(0), RKey: p.rb.RKey, Op: OpRead},
				[]SGE{{Addr: p.laddr(1<<20 - 8), Length: 16, LKey: p.la.LKey}}
		}, WCLocProtErr, engine.ErrInvalid},
		{"local SGE before its registration", func(t *testing.T, p *pair) (WR, []SGE) {
			return WR{RemoteAddr: p.raddr(0), RKey: p.rb.RKey, Op: OpRead},
				[]SGE{{Addr: p.laddr(0) - 8, Length: 16, LKey: p.la.LKey}}
		}, WCLocProtErr, engine.ErrInvalid},
		{"local SGE wrapping the address space", func(t *testing.T, p *pair) (WR, []SGE) {
			return WR{RemoteAddr: p.raddr(0), RKey: p.rb.RKey, Op: OpRead},
				[]SGE{{Addr: math.MaxUint64 - 7, Length: 16, LKey: p.la.LKey}}
		}, WCLocProtErr, engine.ErrInvalid},
		{"READ into memory registered without local write", func(t *testing.T, p *pair) (WR, []SGE) {
			mem, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
			require.NoError(t, err)
			t.Cleanup(func() { unix.Munmap(mem) })
			ro, err := p.a.Register(mem, 0)
			require.NoError(t, err)
			t.Cleanup(func() { assert.NoError(t, ro.Close()) })
			return WR{RemoteAddr: p.raddr(0), RKey: p.rb.RKey, Op: OpRead},
				[]SGE{{Addr: uint64(ro.Addr), Length: 16, LKey: ro.LKey}}
		}, WCLocProtErr, engine.ErrInvalid},
		{"message past 2 GiB", func(t *testing.T, p *pair) (WR, []SGE) {
			// Address space only: the device refuses before it copies.
			mem, err := unix.Mmap(-1, 0, 5<<29, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
			require.NoError(t, err)
			t.Cleanup(func() { unix.Munmap(mem) })
			big, err := p.a.Register(mem, AccessLocalWrite)
			require.NoError(t, err)
			t.Cleanup(func() { assert.NoError(t, big.Close()) })
			return WR{RemoteAddr: p.raddr(0), RKey: p.rb.RKey, Op: OpWrite},
				[]SGE{{Addr: uint64(big.Addr), Length: 5 << 28, LKey: big.LKey}, {Addr: uint64(big.Addr) + 5<<28, Length: 5 << 28, LKey: big.LKey}}
		}, WCLocLenErr, engine.ErrInvalid},
		{"remote range wrapping the address space", func(t *testing.T, p *pair) (WR, []SGE) {
			return WR{RemoteAddr: math.MaxUint64 - 7, RKey: p.rb.RKey, Op: OpWrite},
				[]SGE{{Addr: p.laddr(0), Length: 16, LKey: p.la.LKey}}
		}, WCRemAccessErr, engine.ErrCorrupt},
		{"remote range before the registration", func(t *testing.T, p *pair) (WR, []SGE) {
			return WR{RemoteAddr: p.raddr(0) - 8, RKey: p.rb.RKey, Op: OpWrite},
				[]SGE{{Addr: p.laddr(0), Length: 16, LKey: p.la.LKey}}
		}, WCRemAccessErr, engine.ErrCorrupt},
		{"rkey of a deregistered segment", func(t *testing.T, p *pair) (WR, []SGE) {
			// A segment dropped while a client still holds its key:
			// the key reaches nothing, and the bytes stay untouched.
			rb := p.rb
			require.NoError(t, rb.Close())
			return WR{RemoteAddr: uint64(rb.Addr), RKey: rb.RKey, Op: OpWrite},
				[]SGE{{Addr: p.laddr(0), Length: 16, LKey: p.la.LKey}}
		}, WCRemAccessErr, engine.ErrCorrupt},
		{"lkey used as the rkey", func(t *testing.T, p *pair) (WR, []SGE) {
			return WR{RemoteAddr: p.raddr(0), RKey: p.rb.LKey, Op: OpWrite},
				[]SGE{{Addr: p.laddr(0), Length: 16, LKey: p.la.LKey}}
		}, WCRemAccessErr, engine.ErrCorrupt},
		{"rkey of this side's own memory", func(t *testing.T, p *pair) (WR, []SGE) {
			return WR{RemoteAddr: p.laddr(4096), RKey: p.la.RKey, Op: OpWrite},
				[]SGE{{Addr: p.laddr(0), Length: 16, LKey: p.la.LKey}}
		}, WCRemAccessErr, engine.ErrCorrupt},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPair(t, AccessLocalWrite|AccessRemoteRead|AccessRemoteWrite, HandshakeOpts{})
			for i := range 64 {
				p.local[i] = 0xA5
			}
			wr, sges := tc.setup(t, p)
			wr.ID, wr.Signaled, wr.FirstSGE, wr.NumSGE = 1, 1, 0, uint32(len(sges))
			next := WR{ID: 2, RemoteAddr: p.raddr(0), RKey: p.rb.RKey, Op: OpRead, Signaled: 1, FirstSGE: uint32(len(sges)), NumSGE: 1}
			sges = append(sges, SGE{Addr: p.laddr(0), Length: 8, LKey: p.la.LKey})
			before := EmulatedCounts()
			_, err := p.qa.Post([]WR{wr, next}, sges)
			require.NoError(t, err)
			wcs := p.pollN(t, 2)
			assert.Equal(t, tc.want, wcs[0].Status, "first: %v", wcs[0].Status)
			assert.Equal(t, WCFlushErr, wcs[1].Status, "second: %v", wcs[1].Status)
			assert.Zero(t, postedCompletions(t, p.cqa), "no completion but the two")
			st, err := p.qa.State()
			require.NoError(t, err)
			assert.Equal(t, 6, st, "QP state after an error completion (IBV_QPS_ERR)")
			for i := range 64 {
				require.Zero(t, p.remote[i], "remote byte %d written", i)
			}
			sameCounts(t, before)
			cerr := &Error{Op: "completion", Status: wcs[0].Status, Device: "emu0"}
			assert.ErrorIs(t, cerr, tc.is)
			assert.Contains(t, cerr.Error(), tc.want.String())
		})
	}
}
