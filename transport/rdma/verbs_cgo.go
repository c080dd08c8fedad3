//go:build linux && cgo && rdma

package rdma

/*
#cgo CFLAGS: -O2 -Wall
#cgo LDFLAGS: -libverbs
#include <errno.h>
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"unsafe"

	"github.com/tqgo/tq/engine"
)

// The Go structs passed to C as arrays must have the C layout.
var _ = [1]struct{}{}[unsafe.Sizeof(WR{})-C.sizeof_struct_tq_wr]
var _ = [1]struct{}{}[unsafe.Sizeof(SGE{})-C.sizeof_struct_tq_sge]
var _ = [1]struct{}{}[unsafe.Sizeof(WC{})-C.sizeof_struct_tq_wc]

// Supported reports whether this build has the verbs shim.
const Supported = true

func cerr(dev string, e *C.struct_tq_err) error {
	return &Error{Op: C.GoString(&e.verb[0]), Errno: syscall.Errno(e.errnum), Device: dev}
}

// Devices lists this host's RDMA devices and the emulated ones.
func Devices() ([]DeviceInfo, error) {
	var out [64]C.struct_tq_devinfo
	var e C.struct_tq_err
	n := C.tq_shim_devices(&out[0], C.int(len(out)), &e)
	if n < 0 {
		return nil, cerr("", &e)
	}
	infos := make([]DeviceInfo, n)
	for i := range infos {
		infos[i] = DeviceInfo{Name: C.GoString(&out[i].name[0]), Emulated: out[i].emulated != 0}
		infos[i].NUMANode = numaNode(infos[i])
	}
	return infos, nil
}

func numaNode(d DeviceInfo) int {
	if d.Emulated {
		n, err := strconv.Atoi(strings.TrimPrefix(d.Name, "emu"))
		if err != nil {
			return -1
		}
		nodes, _ := filepath.Glob("/sys/devices/system/node/node[0-9]*")
		return n % max(len(nodes), 1)
	}
	b, err := os.ReadFile(filepath.Join("/sys/class/infiniband", d.Name, "device/numa_node"))
	if err != nil {
		return -1
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return -1
	}
	return n
}

// Device is an opened RDMA device (one port) with its protection domain.
// Close it after every MR, CQ and QP made through it.
type Device struct {
	name     string
	emulated bool
	port     PortInfo
	rd       ReadDepth // the device's limits, at most 16

	mu     sync.Mutex
	c      *C.struct_tq_dev
	closed bool
	// open counts the handles made through the device and not closed
	// yet (under mu), for Close's error.
	open struct{ mrs, cqs, qps int }
}

// OpenDevice opens the named device on port 1 ("emu0".."emu3" are the
// emulated device), its queue pairs to use the GID [GIDIndexEnv] picks.
// A name the host does not have is an error wrapping
// [engine.ErrNotSupported]; a GID index that is malformed or has no GID,
// one wrapping [engine.ErrInvalid].
func OpenDevice(name string) (*Device, error) {
	gi, err := gidIndex()
	if err != nil {
		return nil, err
	}
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))
	var e C.struct_tq_err
	c := C.tq_shim_open(cname, 1, C.uint8_t(gi), &e)
	if c == nil {
		err := cerr(name, &e)
		if e.errnum == C.ENODEV {
			return nil, fmt.Errorf("no RDMA device %q on this host: %w", name, err)
		}
		return nil, err
	}
	d := &Device{name: name, emulated: c.emulated != 0, c: c,
		rd: ReadDepth{Init: uint8(c.max_rd_atomic), Resp: uint8(c.max_dest_rd_atomic)}}
	var pi C.struct_tq_port_info
	if C.tq_shim_query_port(c, &pi, &e) != 0 {
		err := fmt.Errorf("port 1 (gid index %d): %w", gi, cerr(name, &e))
		C.tq_shim_close(c, &e)
		return nil, err
	}
	d.port = PortInfo{LID: uint16(pi.lid), GIDIndex: int(gi), State: int(pi.state), MTU: int(pi.active_mtu), LinkLayer: int(pi.link_layer),
		MaxQPWR: uint32(pi.max_qp_wr), MaxSGE: uint32(pi.max_sge), MaxCQE: int(pi.max_cqe)}
	for i := range d.port.GID {
		d.port.GID[i] = byte(pi.gid[i])
	}
	if d.port.GID == [16]byte{} {
		C.tq_shim_close(c, &e)
		return nil, fmt.Errorf("rdma %s: port 1 has no GID at index %d (see %s): %w", name, gi, GIDIndexEnv, engine.ErrInvalid)
	}
	track(d)
	return d, nil
}

// Name is the device's name; Emulated reports the emulated device.
func (d *Device) Name() string   { return d.name }
func (d *Device) Emulated() bool { return d.emulated }

// Port describes the opened port.
func (d *Device) Port() PortInfo { return d.port }

// ReadDepth is the device's RDMA READ limits per queue pair
// (max_qp_init_rd_atom, max_qp_rd_atom), at most 16 each.
func (d *Device) ReadDepth() ReadDepth { return d.rd }

// Close deallocates the protection domain and closes the device. While
// registrations, completion queues or queue pairs made through it are
// open it frees nothing and fails (EBUSY, the error counting them), and
// may be called again once they are closed: a driver may let the device
// close with a completion queue open, whose handle would then point into
// a closed context. A failure of the verbs themselves after the
// protection domain was freed leaves a device that registers nothing and
// makes no queue pairs (EBADF).
func (d *Device) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	if open := d.openLocked(); open != "" {
		return fmt.Errorf("close device %s with %s still open: %w", d.name, open, &Error{Op: "close", Errno: syscall.EBUSY, Device: d.name})
	}
	return d.closeVerbsLocked()
}

// closeVerbsLocked is Close past its count of open handles: the shim
// frees the protection domain and closes the device, each once, and
// refuses (EBUSY) where the driver does. The caller holds d.mu.
func (d *Device) closeVerbsLocked() error {
	var e C.struct_tq_err
	if C.tq_shim_close(d.c, &e) != 0 {
		return cerr(d.name, &e)
	}
	d.closed, d.c = true, nil
	untrack(d)
	return nil
}

// openLocked names the handles made through the device that are still
// open ("" when none is). The caller holds d.mu.
func (d *Device) openLocked() string {
	var parts []string
	for _, k := range []struct {
		n     int
		thing string
	}{{d.open.mrs, "memory registration"}, {d.open.cqs, "completion queue"}, {d.open.qps, "queue pair"}} {
		switch {
		case k.n == 1:
			parts = append(parts, "1 "+k.thing)
		case k.n > 1:
			parts = append(parts, fmt.Sprintf("%d %ss", k.n, k.thing))
		}
	}
	if len(parts) < 2 {
		return strings.Join(parts, "")
	}
	return strings.Join(parts[:len(parts)-1], ", ") + " and " + parts[len(parts)-1]
}

// count adds delta to the open handles of h's kind.
func (d *Device) count(h any, delta int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch h.(type) {
	case *MR:
		d.open.mrs += delta
	case *CQ:
		d.open.cqs += delta
	case *QP:
		d.open.qps += delta
	}
}

// destroy runs a child handle's destroy verb once (the caller holds the
// child's lock) and takes it off the leak net.
func (d *Device) destroy(closed *bool, h any, verb func(*C.struct_tq_dev, *C.struct_tq_err) C.int) error {
	if *closed {
		return nil
	}
	c, err := d.handle()
	if err != nil {
		return err
	}
	var e C.struct_tq_err
	if verb(c, &e) != 0 {
		return cerr(d.name, &e)
	}
	*closed = true
	untrack(h)
	d.count(h, -1)
	return nil
}

func (d *Device) handle() (*C.struct_tq_dev, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, fmt.Errorf("rdma device %s closed: %w", d.name, engine.ErrClosed)
	}
	return d.c, nil
}

// MR is a memory registration.
type MR struct {
	d      *Device
	mu     sync.Mutex
	c      *C.struct_ibv_mr
	Addr   uintptr
	Len    int
	LKey   uint32
	RKey   uint32
	closed bool
}

// Register registers mem, which must not be Go-managed memory (mmap it or
// allocate it in C): the device reads and writes it behind Go's back.
func (d *Device) Register(mem []byte, access Access) (*MR, error) {
	if len(mem) == 0 {
		return nil, fmt.Errorf("register 0 bytes: %w", engine.ErrInvalid)
	}
	c, err := d.handle()
	if err != nil {
		return nil, err
	}
	var e C.struct_tq_err
	mr := C.tq_shim_reg_mr(c, unsafe.Pointer(&mem[0]), C.size_t(len(mem)), C.int(access), &e)
	if mr == nil {
		return nil, fmt.Errorf("register %d bytes at %#x, access %#x: %w", len(mem), sliceAddr(mem), int(access), cerr(d.name, &e))
	}
	return d.newMR(mr), nil
}

// RegisterDmabuf registers len bytes at offset of a dma-buf (device
// memory exported by a GPU or NPU driver), addressed as iova.
func (d *Device) RegisterDmabuf(fd int, offset, length, iova uint64, access Access) (*MR, error) {
	c, err := d.handle()
	if err != nil {
		return nil, err
	}
	var e C.struct_tq_err
	mr := C.tq_shim_reg_dmabuf_mr(c, C.int(fd), C.uint64_t(offset), C.size_t(length), C.uint64_t(iova), C.int(access), &e)
	if mr == nil {
		return nil, fmt.Errorf("register dma-buf fd %d, offset %d, %d bytes at iova %#x, access %#x: %w",
			fd, offset, length, iova, int(access), cerr(d.name, &e))
	}
	return d.newMR(mr), nil
}

func (d *Device) newMR(mr *C.struct_ibv_mr) *MR {
	m := &MR{d: d, c: mr, Addr: uintptr(mr.addr), Len: int(mr.length), LKey: uint32(mr.lkey), RKey: uint32(mr.rkey)}
	track(m)
	d.count(m, 1)
	return m
}

// Close deregisters the memory. It is idempotent.
func (m *MR) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	err := m.d.destroy(&m.closed, m, func(c *C.struct_tq_dev, e *C.struct_tq_err) C.int { return C.tq_shim_dereg_mr(c, m.c, e) })
	if err != nil {
		return fmt.Errorf("deregister %d bytes at %#x: %w", m.Len, m.Addr, err)
	}
	return nil
}

// CQ is a completion queue.
type CQ struct {
	d      *Device
	mu     sync.Mutex
	c      *C.struct_ibv_cq
	closed bool
}

// NewCQ makes a completion queue of at least n entries.
func (d *Device) NewCQ(n int) (*CQ, error) {
	c, err := d.handle()
	if err != nil {
		return nil, err
	}
	var e C.struct_tq_err
	cq := C.tq_shim_create_cq(c, C.int(n), &e)
	if cq == nil {
		return nil, fmt.Errorf("completion queue of %d entries (device max %d): %w", n, d.port.MaxCQE, cerr(d.name, &e))
	}
	q := &CQ{d: d, c: cq}
	track(q)
	d.count(q, 1)
	return q, nil
}

// Poll fills out with up to len(out) (at most 64) completions and
// returns how many.
func (q *CQ) Poll(out []WC) (int, error) {
	if len(out) == 0 {
		return 0, nil
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return 0, fmt.Errorf("poll a destroyed completion queue: %w", engine.ErrClosed)
	}
	var e C.struct_tq_err
	n := C.tq_shim_poll(q.c, (*C.struct_tq_wc)(unsafe.Pointer(&out[0])), C.int(len(out)), &e)
	if n < 0 {
		return 0, fmt.Errorf("poll %d completions: %w", min(len(out), 64), cerr(q.d.name, &e))
	}
	return int(n), nil
}

// Close destroys the CQ (after the QPs that use it). It is idempotent.
func (q *CQ) Close() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if err := q.d.destroy(&q.closed, q, func(c *C.struct_tq_dev, e *C.struct_tq_err) C.int { return C.tq_shim_destroy_cq(c, q.c, e) }); err != nil {
		return fmt.Errorf("destroy completion queue: %w", err)
	}
	return nil
}

// QPCaps sizes a queue pair.
type QPCaps struct {
	MaxWR  uint32 // work requests outstanding at once
	MaxSGE uint32 // SGEs per work request
}

// PreparedQP is an RC queue pair in the RESET state: its Endpoint goes to
// the peer, and Handshake with the peer's Endpoint brings it up, once.
type PreparedQP struct {
	qp  *QP
	psn uint32
}

// QP is a connected RC queue pair (RTS).
type QP struct {
	d      *Device
	cq     *CQ
	mu     sync.Mutex
	c      *C.struct_ibv_qp
	qpn    uint32
	closed bool
	// connected: a handshake brought it up, to the peer's QPN remote;
	// the queue pair then belongs to the *QP Handshake returned.
	connected bool
	remote    uint32
}

// NewPreparedQP makes an RC queue pair on cq. Close it (Handshake's QP,
// or the PreparedQP when the handshake never happens).
func (d *Device) NewPreparedQP(cq *CQ, caps QPCaps, psn uint32) (*PreparedQP, error) {
	c, err := d.handle()
	if err != nil {
		return nil, err
	}
	// cq stays alive while the QP is made on it: destroying it frees its
	// handle.
	cq.mu.Lock()
	defer cq.mu.Unlock()
	if cq.closed {
		return nil, fmt.Errorf("queue pair on a destroyed completion queue: %w", engine.ErrClosed)
	}
	var e C.struct_tq_err
	qp := C.tq_shim_create_qp(c, cq.c, C.uint32_t(caps.MaxWR), C.uint32_t(caps.MaxSGE), &e)
	if qp == nil {
		return nil, fmt.Errorf("queue pair of %d work requests, %d SGEs each (device max %d, %d): %w",
			caps.MaxWR, caps.MaxSGE, d.port.MaxQPWR, d.port.MaxSGE, cerr(d.name, &e))
	}
	q := &QP{d: d, cq: cq, c: qp, qpn: uint32(qp.qp_num)}
	track(q)
	d.count(q, 1)
	return &PreparedQP{qp: q, psn: psn & 0xffffff}, nil
}

// Endpoint is what the peer needs to connect to this QP.
func (p *PreparedQP) Endpoint() Endpoint {
	return Endpoint{LID: p.qp.d.port.LID, GID: p.qp.d.port.GID, QPN: p.qp.qpn, PSN: p.psn}
}

// HandshakeOpts tunes the RTR and RTS transitions.
type HandshakeOpts struct {
	Access   Access // what the peer may do to memory through this QP
	MTU      int    // enum ibv_mtu; 0: the port's active MTU
	Timeout  uint8  // local ACK timeout: 4.096 µs × 2^Timeout per try
	RetryCnt uint8  // tries before a retry-exceeded completion
	// ReadDepth is the QP's max_rd_atomic (Init) and max_dest_rd_atomic
	// (Resp), agreed with the peer (see [ReadDepth.With]); the zero value
	// is the device's own, [Device.ReadDepth].
	ReadDepth ReadDepth
}

// Handshake walks the QP through INIT, RTR (connected to remote) and RTS.
// On failure the QP is closed. A PreparedQP is handshaken once: calling
// Handshake again is an error wrapping [engine.ErrInvalid] that leaves
// the connected QP the first call returned as it is (a queue pair in RTS
// cannot go back to INIT, and a failed transition would destroy it).
func (p *PreparedQP) Handshake(remote Endpoint, o HandshakeOpts) (*QP, error) {
	q := p.qp
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.connected {
		return nil, fmt.Errorf("handshake of queue pair %#x with qpn %#x: handshaken already, connected to qpn %#x: %w",
			q.qpn, remote.QPN, q.remote, engine.ErrInvalid)
	}
	if q.closed { // its handle is freed
		return nil, fmt.Errorf("handshake of a destroyed queue pair: %w", engine.ErrClosed)
	}
	c, err := q.d.handle()
	if err != nil {
		q.closeLocked()
		return nil, err
	}
	mtu := o.MTU
	if mtu == 0 {
		mtu = q.d.port.MTU
	}
	rd := o.ReadDepth
	if rd == (ReadDepth{}) {
		rd = q.d.ReadDepth()
	}
	var e C.struct_tq_err
	// fail names the transition that failed, what it asked for and the
	// state the queue pair was left in, then destroys the queue pair.
	fail := func(to, attrs string) (*QP, error) {
		err := cerr(q.d.name, &e)
		state := "unknown"
		var se C.struct_tq_err
		if s := C.tq_shim_qp_state(c, q.c, &se); s >= 0 {
			state = qpStateName(int(s))
		}
		q.closeLocked()
		return nil, fmt.Errorf("queue pair %#x in state %s to %s (%s): %w", q.qpn, state, to, attrs, err)
	}
	if C.tq_shim_qp_init(c, q.c, C.int(o.Access), &e) != 0 {
		return fail("INIT", fmt.Sprintf("port 1, access %#x", int(o.Access)))
	}
	gid := (*C.uint8_t)(unsafe.Pointer(&remote.GID[0]))
	if C.tq_shim_qp_rtr(c, q.c, C.uint32_t(remote.QPN), C.uint32_t(remote.PSN), C.uint16_t(remote.LID), gid, C.int(mtu), C.uint8_t(rd.Resp), &e) != 0 {
		return fail("RTR", fmt.Sprintf("remote qpn %#x, psn %#x, lid %#x, gid %x, mtu %s, max_dest_rd_atomic %d",
			remote.QPN, remote.PSN, remote.LID, remote.GID[:], mtuName(mtu), rd.Resp))
	}
	if C.tq_shim_qp_rts(c, q.c, C.uint32_t(p.psn), C.uint8_t(o.Timeout), C.uint8_t(o.RetryCnt), C.uint8_t(rd.Init), &e) != 0 {
		return fail("RTS", fmt.Sprintf("psn %#x, timeout %d, retry count %d, max_rd_atomic %d", p.psn, o.Timeout, o.RetryCnt, rd.Init))
	}
	q.connected, q.remote = true, remote.QPN
	return q, nil
}

// Close destroys a QP that never completed its handshake. After a
// handshake it does nothing: the QP it returned owns the queue pair.
func (p *PreparedQP) Close() error {
	q := p.qp
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.connected {
		return nil
	}
	return q.closeLocked()
}

// QPN is the queue pair's number.
func (q *QP) QPN() uint32 { return q.qpn }

// Post posts wrs as one chain (at most 256, naming at most 1024 SGEs
// together, each an [OpRead] or [OpWrite]) with their SGEs: one crossing
// of cgo. On failure bad is the
// index of the first WR not posted: those before it were, and complete. A
// chain refused before it reaches the device is not posted at all: bad is 0.
func (q *QP) Post(wrs []WR, sges []SGE) (bad int, err error) {
	if len(wrs) == 0 {
		return 0, nil
	}
	if len(wrs) > C.TQ_SHIM_MAX_CHAIN {
		return 0, fmt.Errorf("post: a chain of %d work requests, more than %d: nothing posted: %w", len(wrs), C.TQ_SHIM_MAX_CHAIN, engine.ErrInvalid)
	}
	var nsge uint64
	for i, w := range wrs {
		if w.Op != OpRead && w.Op != OpWrite {
			return 0, fmt.Errorf("post: work request %d has opcode %d, not an RDMA READ or WRITE: nothing posted: %w", i, w.Op, engine.ErrInvalid)
		}
		if uint64(w.FirstSGE)+uint64(w.NumSGE) > uint64(len(sges)) {
			return 0, fmt.Errorf("post: work request %d names SGEs %d..%d of %d: nothing posted: %w", i, w.FirstSGE, uint64(w.FirstSGE)+uint64(w.NumSGE), len(sges), engine.ErrInvalid)
		}
		nsge += uint64(w.NumSGE)
	}
	if nsge > C.TQ_SHIM_MAX_SGE {
		return 0, fmt.Errorf("post: a chain of %d work requests names %d SGEs, more than %d: nothing posted: %w", len(wrs), nsge, C.TQ_SHIM_MAX_SGE, engine.ErrInvalid)
	}
	return q.post(wrs, sges)
}

// post is Post's crossing of cgo, without Post's checks: the shim checks
// the chain again, and tests reach its refusals through here.
func (q *QP) post(wrs []WR, sges []SGE) (bad int, err error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return 0, fmt.Errorf("post to a destroyed queue pair: %w", engine.ErrClosed)
	}
	var wp *C.struct_tq_wr
	if len(wrs) > 0 {
		wp = (*C.struct_tq_wr)(unsafe.Pointer(&wrs[0]))
	}
	var sp *C.struct_tq_sge
	if len(sges) > 0 {
		sp = (*C.struct_tq_sge)(unsafe.Pointer(&sges[0]))
	}
	var e C.struct_tq_err
	var cbad C.int
	if C.tq_shim_post(q.c, wp, C.int(len(wrs)), sp, C.int(len(sges)), &cbad, &e) != 0 {
		bad := int(cbad)
		return bad, fmt.Errorf("queue pair %#x: %s: %w", q.qpn, describeWR(wrs, sges, bad), cerr(q.d.name, &e))
	}
	runtime.KeepAlive(wrs)
	runtime.KeepAlive(sges)
	return 0, nil
}

// Fail moves the QP to the error state: work requests outstanding
// complete as flushed and the peer's memory is no longer touched.
func (q *QP) Fail() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return fmt.Errorf("queue pair destroyed: %w", engine.ErrClosed)
	}
	c, err := q.d.handle()
	if err != nil {
		return err
	}
	var e C.struct_tq_err
	if C.tq_shim_qp_error(c, q.c, &e) != 0 {
		return fmt.Errorf("queue pair %#x to ERR: %w", q.qpn, cerr(q.d.name, &e))
	}
	return nil
}

// State is the QP's state (enum ibv_qp_state: 3 RTS, 6 ERR).
func (q *QP) State() (int, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return 0, fmt.Errorf("queue pair destroyed: %w", engine.ErrClosed)
	}
	c, err := q.d.handle()
	if err != nil {
		return 0, err
	}
	var e C.struct_tq_err
	s := C.tq_shim_qp_state(c, q.c, &e)
	if s < 0 {
		return 0, fmt.Errorf("query state of queue pair %#x: %w", q.qpn, cerr(q.d.name, &e))
	}
	return int(s), nil
}

// ReadDepth is the QP's max_rd_atomic (Init) and max_dest_rd_atomic
// (Resp), as the device has them.
func (q *QP) ReadDepth() (ReadDepth, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return ReadDepth{}, fmt.Errorf("queue pair destroyed: %w", engine.ErrClosed)
	}
	c, err := q.d.handle()
	if err != nil {
		return ReadDepth{}, err
	}
	var init, resp C.uint8_t
	var e C.struct_tq_err
	if C.tq_shim_qp_rd_atomic(c, q.c, &init, &resp, &e) != 0 {
		return ReadDepth{}, fmt.Errorf("query read depth of queue pair %#x: %w", q.qpn, cerr(q.d.name, &e))
	}
	return ReadDepth{Init: uint8(init), Resp: uint8(resp)}, nil
}

// Timeout is the QP's local ACK timeout exponent and retry count, as the
// device has them (see [HandshakeOpts]).
func (q *QP) Timeout() (timeout, retryCnt uint8, err error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return 0, 0, fmt.Errorf("queue pair destroyed: %w", engine.ErrClosed)
	}
	c, err := q.d.handle()
	if err != nil {
		return 0, 0, err
	}
	var to, rc C.uint8_t
	var e C.struct_tq_err
	if C.tq_shim_qp_timeout(c, q.c, &to, &rc, &e) != 0 {
		return 0, 0, fmt.Errorf("query timeout of queue pair %#x: %w", q.qpn, cerr(q.d.name, &e))
	}
	return uint8(to), uint8(rc), nil
}

// Close destroys the QP. It is idempotent.
func (q *QP) Close() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.closeLocked()
}

func (q *QP) closeLocked() error {
	if err := q.d.destroy(&q.closed, q, func(c *C.struct_tq_dev, e *C.struct_tq_err) C.int { return C.tq_shim_destroy_qp(c, q.c, e) }); err != nil {
		return fmt.Errorf("destroy queue pair %#x: %w", q.qpn, err)
	}
	return nil
}

// InjectFault arms a fault on an emulated device (see csrc/tqverbs.h,
// enum tq_emu_fault): kind 1 fails the next count posts with errno err at
// WR index after; 2 completes the next count WRs with status err; 3
// overruns the CQs; 4 fails the next count memory registrations with
// errno err. On hardware it is an error wrapping ErrNotSupported.
func (d *Device) InjectFault(kind, after, count, err int) error {
	c, herr := d.handle()
	if herr != nil {
		return herr
	}
	if !d.emulated {
		return fmt.Errorf("fault injection on hardware device %s: %w", d.name, engine.ErrNotSupported)
	}
	if r, cerrno := C.tq_emu_inject(c.ctx, C.int(kind), C.int(after), C.int(count), C.int(err)); r != 0 {
		en, _ := cerrno.(syscall.Errno)
		return &Error{Op: "tq_emu_inject", Errno: en, Device: d.name}
	}
	return nil
}

// SetEmulatedReadDepth makes the emulated device name report d as its
// max_qp_init_rd_atom (Init) and max_qp_rd_atom (Resp) when it is opened
// from now on in this process (zero fields: the default, 16), so that tests
// can pair devices with different limits.
func SetEmulatedReadDepth(name string, d ReadDepth) error {
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))
	if r, cerrno := C.tq_emu_set_rd_atom(cname, C.int(d.Resp), C.int(d.Init)); r != 0 {
		en, _ := cerrno.(syscall.Errno)
		return &Error{Op: "tq_emu_set_rd_atom", Errno: en, Device: name}
	}
	return nil
}

// EmuCounts reports the emulated device's live objects in this process
// (leak checks).
type EmuCounts struct{ Contexts, PDs, MRs, CQs, QPs, RemoteMaps int }

// EmulatedCounts returns the live objects of every emulated context.
func EmulatedCounts() EmuCounts {
	var c C.struct_tq_emu_counts
	C.tq_emu_counts(&c)
	return EmuCounts{int(c.contexts), int(c.pds), int(c.mrs), int(c.cqs), int(c.qps), int(c.remote_maps)}
}

func wcStatusC(s WCStatus) string { return C.GoString(C.tq_shim_wc_status_str(C.int(s))) }
