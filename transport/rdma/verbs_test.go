//go:build linux && cgo && rdma

package rdma

import (
	"bytes"
	"errors"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/tqgo/tq/engine"
)

func TestWCStatusText(t *testing.T) {
	for s := WCStatus(0); s < wcStatusCount; s++ {
		assert.Equal(t, wcStatusC(s), s.String(), "status %d", s)
	}
}

func TestDevicesListsEmulated(t *testing.T) {
	devs, err := Devices()
	require.NoError(t, err)
	var emu []string
	for _, d := range devs {
		if d.Emulated {
			emu = append(emu, d.Name)
		}
	}
	assert.Equal(t, []string{"emu0", "emu1", "emu2", "emu3"}, emu)
	// Auto selection never takes an emulated device.
	_, err = PickDevice(devs[len(devs)-4:], 0)
	assert.ErrorIs(t, err, engine.ErrNotSupported)
}

func TestOpenUnknownDevice(t *testing.T) {
	_, err := OpenDevice("mlx5_nonexistent")
	require.ErrorIs(t, err, engine.ErrNotSupported)
	var e *Error
	require.ErrorAs(t, err, &e)
	// No such device, or (here) no kernel support for any.
	assert.Contains(t, []syscall.Errno{syscall.ENODEV, syscall.ENOSYS}, e.Errno)
}

// pair is two emulated contexts connected by one RC queue pair each way
// round: a is the initiator, b owns remote memory (a memfd mapping, as a
// unit's arena segment is).
type pair struct {
	a, b       *Device
	cqa, cqb   *CQ
	qa, qb     *QP
	local      []byte // a's memory, registered as la
	la         *MR
	remote     []byte // b's memory, registered as rb
	rb         *MR
	remoteFile int
}

func newPair(t testing.TB, remoteAccess Access, o HandshakeOpts) *pair {
	t.Helper()
	p := &pair{}
	var err error
	p.a, err = OpenDevice("emu0")
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, p.a.Close()) })
	p.b, err = OpenDevice("emu0")
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, p.b.Close()) })

	p.local, err = unix.Mmap(-1, 0, 1<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	require.NoError(t, err)
	t.Cleanup(func() { unix.Munmap(p.local) })
	p.remoteFile, err = unix.MemfdCreate("tq-test-remote", unix.MFD_CLOEXEC)
	require.NoError(t, err)
	t.Cleanup(func() { unix.Close(p.remoteFile) })
	require.NoError(t, unix.Ftruncate(p.remoteFile, 1<<20))
	p.remote, err = unix.Mmap(p.remoteFile, 0, 1<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	require.NoError(t, err)
	t.Cleanup(func() { unix.Munmap(p.remote) })

	p.la, err = p.a.Register(p.local, AccessLocalWrite)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, p.la.Close()) })
	p.rb, err = p.b.Register(p.remote, remoteAccess)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, p.rb.Close()) })

	p.cqa, err = p.a.NewCQ(256)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, p.cqa.Close()) })
	p.cqb, err = p.b.NewCQ(16)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, p.cqb.Close()) })
	pa, err := p.a.NewPreparedQP(p.cqa, QPCaps{MaxWR: 64, MaxSGE: 4}, 1)
	require.NoError(t, err)
	pb, err := p.b.NewPreparedQP(p.cqb, QPCaps{MaxWR: 1, MaxSGE: 1}, 2)
	require.NoError(t, err)
	ea, eb := pa.Endpoint(), pb.Endpoint()
	p.qb, err = pb.Handshake(ea, HandshakeOpts{Access: AccessRemoteRead | AccessRemoteWrite, Timeout: 8, RetryCnt: 1})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, p.qb.Close()) })
	o.Timeout, o.RetryCnt = max(o.Timeout, 8), max(o.RetryCnt, 1)
	p.qa, err = pa.Handshake(eb, o)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, p.qa.Close()) })
	return p
}

// pollN polls a's CQ until n completions arrived (or 5 s passed).
func (p *pair) pollN(t testing.TB, n int) []WC {
	t.Helper()
	var out []WC
	deadline := time.Now().Add(5 * time.Second)
	buf := make([]WC, 64)
	for len(out) < n && time.Now().Before(deadline) {
		got, err := p.cqa.Poll(buf)
		require.NoError(t, err)
		out = append(out, buf[:got]...)
		if got == 0 {
			time.Sleep(time.Millisecond)
		}
	}
	require.Len(t, out, n, "completions")
	return out
}

func (p *pair) laddr(off int) uint64 { return uint64(p.la.Addr) + uint64(off) }
func (p *pair) raddr(off int) uint64 { return uint64(p.rb.Addr) + uint64(off) }

// A chain of WRITEs, each gathering two SGEs, then a chain of READs, each
// scattering into two: one post and one batch poll each.
func TestChainsWithSGELists(t *testing.T) {
	p := newPair(t, AccessLocalWrite|AccessRemoteRead|AccessRemoteWrite, HandshakeOpts{})
	for i := range 4096 {
		p.local[i] = byte(i * 7)
	}
	var wrs []WR
	var sges []SGE
	for k := range 3 {
		sges = append(sges, SGE{Addr: p.laddr(k * 1000), Length: 600, LKey: p.la.LKey},
			SGE{Addr: p.laddr(k*1000 + 600), Length: 400, LKey: p.la.LKey})
		wrs = append(wrs, WR{ID: uint64(k + 1), RemoteAddr: p.raddr(8192 + k*1000), RKey: p.rb.RKey, Op: OpWrite,
			Signaled: 1, FirstSGE: uint32(2 * k), NumSGE: 2})
	}
	bad, err := p.qa.Post(wrs, sges)
	require.NoError(t, err, "bad %d", bad)
	wcs := p.pollN(t, 3)
	for i, wc := range wcs {
		assert.Equal(t, WCSuccess, wc.Status)
		assert.Equal(t, uint64(i+1), wc.ID, "completions come in post order")
	}
	require.True(t, bytes.Equal(p.local[:3000], p.remote[8192:8192+3000]), "written bytes")

	// Read them back, scattered into two SGEs per WR, at another place.
	for k := range 3 {
		sges[2*k] = SGE{Addr: p.laddr(100000 + k*1000), Length: 300, LKey: p.la.LKey}
		sges[2*k+1] = SGE{Addr: p.laddr(100000 + k*1000 + 300), Length: 700, LKey: p.la.LKey}
		wrs[k].Op = OpRead
		wrs[k].ID = uint64(10 + k)
	}
	_, err = p.qa.Post(wrs, sges)
	require.NoError(t, err)
	p.pollN(t, 3)
	require.True(t, bytes.Equal(p.local[:3000], p.local[100000:103000]), "read bytes")
}

// Unsignaled work requests complete silently; an error always reports.
func TestUnsignaledAndBadWR(t *testing.T) {
	p := newPair(t, AccessLocalWrite|AccessRemoteRead|AccessRemoteWrite, HandshakeOpts{})
	sges := []SGE{{Addr: p.laddr(0), Length: 64, LKey: p.la.LKey}}
	wrs := []WR{
		{ID: 1, RemoteAddr: p.raddr(0), RKey: p.rb.RKey, Op: OpWrite, NumSGE: 1},
		{ID: 2, RemoteAddr: p.raddr(64), RKey: p.rb.RKey, Op: OpWrite, NumSGE: 1},
		{ID: 3, RemoteAddr: p.raddr(128), RKey: p.rb.RKey, Op: OpWrite, Signaled: 1, NumSGE: 1},
	}
	_, err := p.qa.Post(wrs, sges)
	require.NoError(t, err)
	wcs := p.pollN(t, 1)
	assert.Equal(t, uint64(3), wcs[0].ID)

	// An injected post failure at the second WR: bad names it, the
	// first was posted and completes.
	require.NoError(t, p.a.InjectFault(1, 1, 1, int(syscall.ENOMEM)))
	for i := range wrs {
		wrs[i].Signaled = 1
	}
	bad, err := p.qa.Post(wrs, sges)
	require.Error(t, err)
	assert.Equal(t, 1, bad)
	var e *Error
	require.ErrorAs(t, err, &e)
	assert.Equal(t, "ibv_post_send", e.Op)
	assert.Equal(t, syscall.ENOMEM, e.Errno)
	wcs = p.pollN(t, 1)
	assert.Equal(t, uint64(1), wcs[0].ID)

	// A chain longer than the shim takes is refused whole: nothing posted.
	long := make([]WR, 257)
	bad, err = p.qa.Post(long, sges)
	require.ErrorIs(t, err, engine.ErrInvalid)
	assert.Zero(t, bad)
	assert.ErrorContains(t, err, "a chain of 257 work requests")
}

// Every error class a completion reports, and what it unwraps to.
func TestCompletionErrors(t *testing.T) {
	cases := []struct {
		name   string
		access Access // of the remote MR
		wr     func(p *pair) WR
		sge    func(p *pair) SGE
		want   WCStatus
		is     error
	}{
		{"wrong rkey", AccessLocalWrite | AccessRemoteRead | AccessRemoteWrite,
			func(p *pair) WR { return WR{RemoteAddr: p.raddr(0), RKey: p.rb.RKey ^ 0x5a5a00, Op: OpRead} },
			nil, WCRemAccessErr, engine.ErrCorrupt},
		{"out of bounds", AccessLocalWrite | AccessRemoteRead | AccessRemoteWrite,
			func(p *pair) WR { return WR{RemoteAddr: p.raddr(1<<20 - 10), RKey: p.rb.RKey, Op: OpRead} },
			nil, WCRemAccessErr, engine.ErrCorrupt},
		{"no remote write", AccessRemoteRead,
			func(p *pair) WR { return WR{RemoteAddr: p.raddr(0), RKey: p.rb.RKey, Op: OpWrite} },
			nil, WCRemAccessErr, engine.ErrCorrupt},
		{"wrong lkey", AccessLocalWrite | AccessRemoteRead | AccessRemoteWrite,
			func(p *pair) WR { return WR{RemoteAddr: p.raddr(0), RKey: p.rb.RKey, Op: OpRead} },
			func(p *pair) SGE { return SGE{Addr: p.laddr(0), Length: 64, LKey: p.la.LKey + 1} },
			WCLocProtErr, engine.ErrInvalid},
		{"read depth above the responder's", AccessLocalWrite | AccessRemoteRead | AccessRemoteWrite,
			func(p *pair) WR { return WR{RemoteAddr: p.raddr(0), RKey: p.rb.RKey, Op: OpRead} },
			nil, WCRemInvReqErr, engine.ErrInvalid},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var o HandshakeOpts
			if tc.want == WCRemInvReqErr {
				// The responder serves 2 READs at once; the initiator
				// is told it may have 16 in flight.
				require.NoError(t, SetEmulatedReadDepth("emu0", ReadDepth{Init: 16, Resp: 2}))
				t.Cleanup(func() { assert.NoError(t, SetEmulatedReadDepth("emu0", ReadDepth{})) })
				o.ReadDepth = ReadDepth{Init: 16, Resp: 2}
			}
			p := newPair(t, tc.access, o)
			sge := SGE{Addr: p.laddr(0), Length: 64, LKey: p.la.LKey}
			if tc.sge != nil {
				sge = tc.sge(p)
			}
			wr := tc.wr(p)
			wr.ID, wr.Signaled, wr.NumSGE = 1, 1, 1
			next := WR{ID: 2, RemoteAddr: p.raddr(0), RKey: p.rb.RKey, Op: OpRead, Signaled: 1, NumSGE: 1}
			_, err := p.qa.Post([]WR{wr, next}, []SGE{sge})
			require.NoError(t, err)
			wcs := p.pollN(t, 2)
			assert.Equal(t, tc.want, wcs[0].Status, "first: %v", wcs[0].Status)
			// After an error the QP is in the error state: the rest is flushed.
			assert.Equal(t, WCFlushErr, wcs[1].Status, "second: %v", wcs[1].Status)
			st, err := p.qa.State()
			require.NoError(t, err)
			assert.Equal(t, 6, st, "QP state after an error completion (IBV_QPS_ERR)")
			cerr := &Error{Op: "completion", Status: wcs[0].Status, Device: "emu0"}
			assert.ErrorIs(t, cerr, tc.is)
			assert.NotErrorIs(t, cerr, engine.ErrUnavailable, "sending the request again fails the same way")
			assert.Contains(t, cerr.Error(), tc.want.String())
		})
	}
}

// Injected error completions and CQ overrun.
func TestInjectedFaults(t *testing.T) {
	p := newPair(t, AccessLocalWrite|AccessRemoteRead|AccessRemoteWrite, HandshakeOpts{})
	sges := []SGE{{Addr: p.laddr(0), Length: 8, LKey: p.la.LKey}}
	wr := WR{ID: 1, RemoteAddr: p.raddr(0), RKey: p.rb.RKey, Op: OpRead, Signaled: 1, NumSGE: 1}
	require.NoError(t, p.a.InjectFault(2, 0, 1, int(WCGeneralErr)))
	_, err := p.qa.Post([]WR{wr}, sges)
	require.NoError(t, err)
	wcs := p.pollN(t, 1)
	assert.Equal(t, WCGeneralErr, wcs[0].Status)

	q := newPair(t, AccessLocalWrite|AccessRemoteRead|AccessRemoteWrite, HandshakeOpts{})
	require.NoError(t, q.a.InjectFault(3, 0, 0, 0))
	wr = WR{ID: 1, RemoteAddr: q.raddr(0), RKey: q.rb.RKey, Op: OpRead, Signaled: 1, NumSGE: 1}
	_, err = q.qa.Post([]WR{wr}, []SGE{{Addr: q.laddr(0), Length: 8, LKey: q.la.LKey}})
	require.NoError(t, err)
	_, err = q.cqa.Poll(make([]WC, 4))
	var e *Error
	require.ErrorAs(t, err, &e)
	assert.Equal(t, syscall.EOVERFLOW, e.Errno)
}

// A peer whose QP is gone does not answer: the work request completes
// with "retry exceeded" after the transport timeout, never hangs.
func TestRetryExceededWhenPeerQPGone(t *testing.T) {
	p := newPair(t, AccessLocalWrite|AccessRemoteRead|AccessRemoteWrite, HandshakeOpts{Timeout: 10, RetryCnt: 2})
	require.NoError(t, p.qb.Close())
	start := time.Now()
	_, err := p.qa.Post([]WR{{ID: 1, RemoteAddr: p.raddr(0), RKey: p.rb.RKey, Op: OpRead, Signaled: 1, NumSGE: 1}},
		[]SGE{{Addr: p.laddr(0), Length: 8, LKey: p.la.LKey}})
	require.NoError(t, err)
	wcs := p.pollN(t, 1)
	assert.Equal(t, WCRetryExcErr, wcs[0].Status)
	// 4.096 µs × 2^10 × 3 tries ≈ 12.6 ms.
	assert.GreaterOrEqual(t, time.Since(start), 10*time.Millisecond, "retry exceeded only after the timeout")
	assert.True(t, errors.Is(&Error{Op: "completion", Status: wcs[0].Status}, engine.ErrUnavailable))
}

// A device with open children refuses to close; closing them in reverse
// leaves nothing behind.
func TestCloseOrder(t *testing.T) {
	d, err := OpenDevice("emu1")
	require.NoError(t, err)
	mem, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	require.NoError(t, err)
	defer unix.Munmap(mem)
	mr, err := d.Register(mem, AccessLocalWrite)
	require.NoError(t, err)
	before := EmulatedCounts()
	err = d.Close()
	require.ErrorIs(t, err, syscall.EBUSY)
	require.NoError(t, mr.Close())
	require.NoError(t, mr.Close(), "Close is idempotent")
	require.NoError(t, d.Close())
	after := EmulatedCounts()
	assert.Equal(t, before.MRs-1, after.MRs)
	assert.Equal(t, before.Contexts-1, after.Contexts)
}

// A device closed while a completion queue is open (nothing else) is
// refused before anything is freed — the emulator would refuse the close
// after freeing the protection domain, a driver might close the context
// under the queue — works on meanwhile, and closes on the next try once
// the queue is gone.
func TestCloseRefusedWhileACQIsOpen(t *testing.T) {
	d, err := OpenDevice("emu1")
	require.NoError(t, err)
	cq, err := d.NewCQ(16)
	require.NoError(t, err)
	before := EmulatedCounts()
	err = d.Close()
	require.ErrorIs(t, err, syscall.EBUSY)
	var e *Error
	require.ErrorAs(t, err, &e)
	assert.Equal(t, "close", e.Op)
	assert.Equal(t, before, EmulatedCounts(), "refused before anything is freed")

	mem, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	require.NoError(t, err)
	defer unix.Munmap(mem)
	mr, err := d.Register(mem, AccessLocalWrite)
	require.NoError(t, err, "the device works on after a refused close")
	require.NoError(t, mr.Close())

	require.NoError(t, cq.Close())
	require.NoError(t, d.Close())
	after := EmulatedCounts()
	assert.Equal(t, before.PDs-1, after.PDs)
	assert.Equal(t, before.Contexts-1, after.Contexts)
}

// TQ_RDMA_GID_INDEX picks the GID queue pairs use; a malformed index, or
// one the port's table does not have, fails OpenDevice saying so.
func TestOpenDeviceGIDIndex(t *testing.T) {
	for _, tc := range []struct {
		env  string
		is   error
		says string
	}{
		{"", nil, ""},
		{"0", nil, ""},
		{"1", syscall.EINVAL, "gid index 1"}, // the emulated port has one GID
		{"256", engine.ErrInvalid, "TQ_RDMA_GID_INDEX"},
		{"-1", engine.ErrInvalid, "TQ_RDMA_GID_INDEX"},
		{"roce", engine.ErrInvalid, "TQ_RDMA_GID_INDEX"},
	} {
		t.Run("env="+tc.env, func(t *testing.T) {
			t.Setenv(GIDIndexEnv, tc.env)
			d, err := OpenDevice("emu0")
			if tc.is == nil {
				require.NoError(t, err)
				assert.Equal(t, 0, d.Port().GIDIndex)
				assert.NotEqual(t, [16]byte{}, d.Port().GID)
				require.NoError(t, d.Close())
				return
			}
			require.ErrorIs(t, err, tc.is)
			assert.Contains(t, err.Error(), tc.says)
		})
	}
}

// postedCompletions polls cq for 300 ms and returns how many completions
// arrived.
func postedCompletions(t *testing.T, cq *CQ) int {
	t.Helper()
	n := 0
	buf := make([]WC, 64)
	deadline := time.Now().Add(300 * time.Millisecond)
	for time.Now().Before(deadline) {
		got, err := cq.Poll(buf)
		require.NoError(t, err)
		n += got
		if got == 0 {
			time.Sleep(5 * time.Millisecond)
		}
	}
	return n
}

// TestPostRefusesSGEsOutOfRange: a work request naming SGEs past the
// slice given is refused, naming it, whatever FirstSGE+NumSGE wraps to
// in 32 bits: the shim checked the sum in 32 bits, and FirstSGE
// 0xFFFFFFFF with NumSGE 1 (a sum of 0) read 64 GiB past the slice. The
// chain is refused whole, so bad is 0 and nothing completes: bad was the
// offending WR's index, and a caller waited for the completions of the
// WRs before it, which were never posted.
func TestPostRefusesSGEsOutOfRange(t *testing.T) {
	p := newPair(t, AccessLocalWrite|AccessRemoteRead|AccessRemoteWrite, HandshakeOpts{})
	sges := []SGE{{Addr: p.laddr(0), Length: 64, LKey: p.la.LKey}}
	for _, wr := range []WR{
		{FirstSGE: 0xFFFFFFFF, NumSGE: 1},
		{FirstSGE: 1, NumSGE: 0xFFFFFFFF},
		{FirstSGE: 0, NumSGE: 2},
	} {
		wr.ID, wr.RemoteAddr, wr.RKey, wr.Op, wr.Signaled = 1, p.raddr(0), p.rb.RKey, OpWrite, 1
		ok := WR{ID: 2, RemoteAddr: p.raddr(0), RKey: p.rb.RKey, Op: OpWrite, Signaled: 1, NumSGE: 1}
		bad, err := p.qa.Post([]WR{ok, wr}, sges)
		require.ErrorIs(t, err, engine.ErrInvalid, "%+v", wr)
		require.Zero(t, bad, "nothing was posted")
		require.ErrorContains(t, err, "work request 1 names SGEs")
	}
	assert.Zero(t, postedCompletions(t, p.cqa), "completions of WRs never posted")
}

// TestPostRefusesChainPastShimSGEs: a chain naming more SGEs together than
// the shim's array holds (1024), on a QP that takes every WR of it, is
// refused whole in Go, saying so, with bad 0 and nothing completing. The
// shim refused it before ibv_post_send with EINVAL and bad the index of
// the WR that overflowed its array (128 here): a caller waited for 128
// completions that never came.
func TestPostRefusesChainPastShimSGEs(t *testing.T) {
	p := newPair(t, AccessLocalWrite|AccessRemoteRead|AccessRemoteWrite, HandshakeOpts{})
	cq, err := p.a.NewCQ(1024)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, cq.Close()) })
	cqb, err := p.b.NewCQ(16)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, cqb.Close()) })
	pa, err := p.a.NewPreparedQP(cq, QPCaps{MaxWR: 256, MaxSGE: 8}, 11)
	require.NoError(t, err)
	pb, err := p.b.NewPreparedQP(cqb, QPCaps{MaxWR: 1, MaxSGE: 1}, 12)
	require.NoError(t, err)
	ea, eb := pa.Endpoint(), pb.Endpoint()
	qb, err := pb.Handshake(ea, HandshakeOpts{Access: AccessRemoteRead | AccessRemoteWrite, Timeout: 8, RetryCnt: 1})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, qb.Close()) })
	qa, err := pa.Handshake(eb, HandshakeOpts{Timeout: 8, RetryCnt: 1})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, qa.Close()) })

	const nwr, per = 200, 8
	var wrs []WR
	var sges []SGE
	for i := range nwr {
		for k := range per {
			sges = append(sges, SGE{Addr: p.laddr(i*per + k), Length: 1, LKey: p.la.LKey})
		}
		wrs = append(wrs, WR{ID: uint64(i + 1), RemoteAddr: p.raddr(i * per), RKey: p.rb.RKey, Op: OpWrite,
			Signaled: 1, FirstSGE: uint32(i * per), NumSGE: per})
	}
	bad, err := qa.Post(wrs, sges)
	require.ErrorIs(t, err, engine.ErrInvalid)
	assert.ErrorContains(t, err, "names 1600 SGEs, more than 1024")
	assert.Zero(t, bad, "nothing was posted")
	assert.Zero(t, postedCompletions(t, cq), "completions of WRs never posted")
}

// TestPostRefusesOpcodesOtherThanReadWrite: a work request whose opcode is
// not RDMA READ or WRITE is refused whole, before ibv_post_send, naming it,
// with bad 0 and nothing completing. The shim passed any opcode through,
// and the emulated device refused it only there (EINVAL, bad the WR's
// index, the WRs before it posted), hiding what hardware does with one:
// the shim fills only wr.rdma, so a SEND waits forever for a receive the
// unit never posts (rnr_retry 7), an atomic runs with a zero rkey, and a
// BIND_MW has its provider follow the NULL wr.bind_mw.mw.
func TestPostRefusesOpcodesOtherThanReadWrite(t *testing.T) {
	p := newPair(t, AccessLocalWrite|AccessRemoteRead|AccessRemoteWrite, HandshakeOpts{})
	sges := []SGE{{Addr: p.laddr(0), Length: 64, LKey: p.la.LKey}}
	for _, op := range []Opcode{2 /* SEND */, 5 /* ATOMIC_CMP_AND_SWP */, 8 /* BIND_MW */, 0xFFFFFFFF} {
		ok := WR{ID: 1, RemoteAddr: p.raddr(0), RKey: p.rb.RKey, Op: OpWrite, Signaled: 1, NumSGE: 1}
		wr := WR{ID: 2, RemoteAddr: p.raddr(64), RKey: p.rb.RKey, Op: op, Signaled: 1, NumSGE: 1}
		bad, err := p.qa.Post([]WR{ok, wr}, sges)
		require.ErrorIs(t, err, engine.ErrInvalid, "opcode %d", op)
		require.Zero(t, bad, "nothing was posted")
		require.ErrorContains(t, err, "work request 1 has opcode")
	}
	assert.Zero(t, postedCompletions(t, p.cqa), "completions of WRs never posted")
}
