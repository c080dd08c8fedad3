package rdma

// The verbs layer: one Go type per verbs object (Device, MR, CQ,
// PreparedQP/QP), each owning exactly one C handle. The types are
// declared in verbs_cgo.go (linux && cgo && rdma: the real shim) and
// verbs_stub.go (every other build: every constructor fails with an error
// wrapping engine.ErrNotSupported). This file holds what both share.

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"

	"github.com/tqgo/tq/engine"
)

// Access flags of a memory registration or a queue pair (ibv_access_flags).
type Access int

// Access flags.
const (
	AccessLocalWrite  Access = 1
	AccessRemoteWrite Access = 2
	AccessRemoteRead  Access = 4
)

// Opcode is a work request's operation.
type Opcode uint32

// Opcodes (enum ibv_wr_opcode).
const (
	OpWrite Opcode = 0 // IBV_WR_RDMA_WRITE
	OpRead  Opcode = 4 // IBV_WR_RDMA_READ
)

// GIDIndexEnv names the environment variable that picks the entry of the
// port's GID table queue pairs use: their source GID, and the GID their
// Endpoint gives the peer ([OpenDevice] reads it; unset means 0). On
// InfiniBand entry 0 is right. On RoCE entry 0 is usually the RoCE v1
// link-local GID, which does not cross an IP router: set it to the RoCE
// v2 entry of the address the hosts reach each other on (show_gids lists
// them), on clients and units alike.
const GIDIndexEnv = "TQ_RDMA_GID_INDEX"

// gidIndex is the GID table entry GIDIndexEnv asks for.
func gidIndex() (uint8, error) {
	v := os.Getenv(GIDIndexEnv)
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseUint(v, 10, 8)
	if err != nil {
		return 0, fmt.Errorf("%s=%q: want a GID table index from 0 to 255: %w", GIDIndexEnv, v, engine.ErrInvalid)
	}
	return uint8(n), nil
}

// Endpoint is what the other side of a queue pair needs to connect to it:
// its port's LID and GID (the entry GIDIndexEnv picks), the QP number and the first packet sequence
// number. It is plain data and travels over the control connection.
type Endpoint struct {
	LID uint16
	GID [16]byte
	QPN uint32
	PSN uint32
}

// ReadDepth is how many RDMA READs a queue pair has outstanding at once:
// Init as the initiator (max_rd_atomic, bounded by the device's
// max_qp_init_rd_atom) and Resp as the responder (max_dest_rd_atomic,
// bounded by max_qp_rd_atom). A device's is its limits, at most 16.
type ReadDepth struct{ Init, Resp uint8 }

// With is the depth a queue pair of this side uses with a peer whose
// device's depth is peer, the ibverbs rule both sides apply alike: READs
// one side may have in flight are the lower of its own Init and the
// responder's Resp, and the responder makes room for no more (a responder
// that gets more READs than its resources NAKs them, and the initiator's
// QP fails with a remote invalid request error). A peer that did not say
// (a zero field: an older build) leaves d as it is, as before.
func (d ReadDepth) With(peer ReadDepth) ReadDepth {
	if peer.Init == 0 || peer.Resp == 0 {
		return d
	}
	return ReadDepth{Init: min(d.Init, peer.Resp), Resp: min(d.Resp, peer.Init)}
}

// PortInfo describes the port a device was opened on.
type PortInfo struct {
	LID       uint16
	GID       [16]byte // entry GIDIndex of the port's GID table
	GIDIndex  int
	State     int // enum ibv_port_state; 4 is ACTIVE
	MTU       int // enum ibv_mtu of the active MTU (5: 4096)
	LinkLayer int
	MaxQPWR   uint32
	MaxSGE    uint32
	MaxCQE    int
}

// DeviceInfo names a device this host has.
type DeviceInfo struct {
	Name     string
	Emulated bool // the emulated device of csrc/emu.c, not hardware
	// NUMANode is the node nearest the device (-1: unknown). An emulated
	// device emuN claims node N modulo the host's node count.
	NUMANode int
}

// SGE is one piece of local memory in a work request: an address inside a
// memory region and its lkey.
type SGE struct {
	Addr   uint64
	Length uint32
	LKey   uint32
}

// WR is one work request of a chain: an RDMA READ or WRITE of the
// concatenation of its SGEs (SGEs[FirstSGE:FirstSGE+NumSGE] of the slice
// passed with it) from or to remote memory.
type WR struct {
	ID         uint64
	RemoteAddr uint64
	RKey       uint32
	Op         Opcode
	Signaled   uint32 // 1: a completion is reported on success too
	FirstSGE   uint32
	NumSGE     uint32
}

// WC is one completion.
type WC struct {
	ID        uint64
	Status    WCStatus
	Opcode    uint32
	ByteLen   uint32
	QPN       uint32
	VendorErr uint32
}

// WCStatus is a completion's status (enum ibv_wc_status).
type WCStatus uint32

// Completion statuses TQ branches on.
const (
	WCSuccess      WCStatus = 0
	WCLocLenErr    WCStatus = 1
	WCLocQPOpErr   WCStatus = 2
	WCLocProtErr   WCStatus = 4
	WCFlushErr     WCStatus = 5
	WCLocAccessErr WCStatus = 8
	WCRemInvReqErr WCStatus = 9
	WCRemAccessErr WCStatus = 10
	WCRetryExcErr  WCStatus = 12
	WCGeneralErr   WCStatus = 21
	wcStatusCount           = 24
)

// wcStatusText mirrors ibv_wc_status_str (a test checks them against the
// library's).
var wcStatusText = [wcStatusCount]string{
	"success", "local length error", "local QP operation error", "local EE context operation error",
	"local protection error", "Work Request Flushed Error", "memory management operation error",
	"bad response error", "local access error", "remote invalid request error", "remote access error",
	"remote operation error", "transport retry counter exceeded", "RNR retry counter exceeded",
	"local RDD violation error", "remote invalid RD request", "aborted error", "invalid EE context number",
	"invalid EE context state", "fatal error", "response timeout error", "general error", "TM error",
	"TM software rendezvous",
}

func (s WCStatus) String() string {
	if int(s) < len(wcStatusText) {
		return wcStatusText[s]
	}
	return fmt.Sprintf("unknown completion status %d", uint32(s))
}

// Error is a verbs failure with its detail: the verb, the errno it set,
// and for a completion its status. It wraps the engine sentinel callers
// branch on (see Unwrap).
type Error struct {
	Op     string        // the verb: "ibv_reg_mr", "ibv_post_send", "completion", …
	Errno  syscall.Errno // 0 for a completion
	Status WCStatus      // for a completion
	Device string
}

func (e *Error) Error() string {
	if e.Op == "completion" {
		return fmt.Sprintf("rdma %s: work request completed with %q (status %d)", e.Device, e.Status.String(), uint32(e.Status))
	}
	return fmt.Sprintf("rdma %s: %s: %v", e.Device, e.Op, e.Errno)
}

// Unwrap maps the failure onto the engine's sentinels. A completion that
// says the work request itself is wrong, so that sending it again fails
// the same way, is [engine.ErrInvalid]: the responder refused it (remote
// invalid request: an opcode, a length or more READs in flight than its
// queue pair serves) or this side's device did (local length, QP
// operation, protection or access error: an SGE or lkey that does not fit
// the local registration or the QP). One whose address the responder's
// memory refused (remote access error: an address, length or rkey outside
// its registrations) is [engine.ErrCorrupt]: a client reads and writes a
// unit only where a lease or reservation holds it, in a segment that stays
// registered while anything is held there, and segment ids are never used
// again, so the location itself is wrong. Every other status is a
// transport failure, [engine.ErrUnavailable]: a peer that does not answer
// (retry counter exceeded), work flushed after a QP error, a fatal or
// general error. A missing device or verb is [engine.ErrNotSupported];
// other errors are just the errno.
func (e *Error) Unwrap() []error {
	if e.Op == "completion" {
		switch e.Status {
		case WCRemInvReqErr, WCLocLenErr, WCLocQPOpErr, WCLocProtErr, WCLocAccessErr:
			return []error{engine.ErrInvalid}
		case WCRemAccessErr:
			return []error{engine.ErrCorrupt}
		default:
			return []error{engine.ErrUnavailable}
		}
	}
	switch e.Errno {
	case syscall.ENODEV, syscall.ENOSYS, syscall.EOPNOTSUPP:
		return []error{e.Errno, engine.ErrNotSupported}
	}
	return []error{e.Errno}
}

// ErrNoRDMA is returned (wrapped) by builds without the verbs shim.
var errNoRDMA = fmt.Errorf("this build has no RDMA transport (it needs linux, cgo, libibverbs-dev and -tags rdma): %w", engine.ErrNotSupported)

// IsCompletion reports whether err is a completion error with status s.
func IsCompletion(err error, s WCStatus) bool {
	var e *Error
	return errors.As(err, &e) && e.Op == "completion" && e.Status == s
}

// qpStateName names a queue pair state (enum ibv_qp_state) in errors.
func qpStateName(s int) string {
	names := [...]string{"RESET", "INIT", "RTR", "RTS", "SQD", "SQE", "ERR"}
	if s >= 0 && s < len(names) {
		return names[s]
	}
	return fmt.Sprintf("unknown state %d", s)
}

// mtuName names a path MTU (enum ibv_mtu: 1 is 256 bytes … 5 is 4096).
func mtuName(m int) string {
	if m >= 1 && m <= 5 {
		return strconv.Itoa(128 << m)
	}
	return fmt.Sprintf("enum %d (not 1 to 5)", m)
}

// describeWR names work request i of a chain posted with sges, for an
// error: its operation, bytes and remote address.
func describeWR(wrs []WR, sges []SGE, i int) string {
	if i < 0 || i >= len(wrs) {
		return fmt.Sprintf("a chain of %d work requests", len(wrs))
	}
	w := wrs[i]
	op := fmt.Sprintf("opcode %d", w.Op)
	switch w.Op {
	case OpRead:
		op = "read"
	case OpWrite:
		op = "write"
	}
	size := "SGEs out of range"
	if end := uint64(w.FirstSGE) + uint64(w.NumSGE); end <= uint64(len(sges)) {
		var n uint64
		for _, s := range sges[w.FirstSGE:end] {
			n += uint64(s.Length)
		}
		size = fmt.Sprintf("%d bytes in %d SGEs", n, w.NumSGE)
	}
	return fmt.Sprintf("work request %d of %d (%s of %s, remote %#x, rkey %#x)", i, len(wrs), op, size, w.RemoteAddr, w.RKey)
}
