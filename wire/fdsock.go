package wire

// The fd socket: a storage unit hands its memfd segments to clients on the
// same host over a unix stream socket of its own (advertised as
// "shm:///path"), because file descriptors travel only as SCM_RIGHTS
// ancillary data, which a framed net.Conn stream cannot carry. See
// spec.md, "Shared memory". One connection carries one request, of one
// of two kinds told apart by its first four bytes:
//
//	segment  "TQF1" | segment u32 | token length u16 | token
//	segment  "TQF2" | segment u32 | incarnation u64 | token length u16 | token
//	ring     "TQC1" | ring size u32 | token length u16 | token
//	reply    "TQF1" | status u8 | flags u8 | 0 u16 | size u64
//	         + the memfd as SCM_RIGHTS when status is FdOK
//
// Integers are little-endian. A segment request gets the segment's memfd;
// one that names an incarnation (TQF2) gets it only from that run of the
// unit (another answers FdNotThisUnit: a unit restarted at the same path
// numbers its segments anew);
// flags bit 0: the segment uses hugetlb pages. A ring request asks for a
// control channel (internal/shmring): the unit creates a memfd with two
// rings of about ring size bytes each (0: its default), replies with it
// (size: the whole region), and then serves the unit's wire protocol over
// the channel; the connection that carried the request stays open as the
// channel's liveness signal until either side goes.

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"

	"github.com/tqgo/tq/engine"
)

// FdMagic opens every reply, and every segment request, on a unit's fd
// socket; FdRingMagic opens a ring request.
const (
	FdMagic     = "TQF1"
	FdMagicInc  = "TQF2" // a segment request naming the unit's incarnation
	FdRingMagic = "TQC1"
)

// FdReplySize is the length of an fd socket reply.
const FdReplySize = 16

// FdStatus is the outcome of an fd socket request.
type FdStatus uint8

// Statuses of an fd socket reply.
const (
	FdOK              FdStatus = 0 // the memfd is attached
	FdUnauthenticated FdStatus = 1 // wrong or missing token
	FdNotFound        FdStatus = 2 // no live segment with that id
	FdBadRequest      FdStatus = 3 // malformed request
	FdClosed          FdStatus = 4 // the unit is shutting down
	FdNotSupported    FdStatus = 5 // the unit offers no control rings
	FdBusy            FdStatus = 6 // too many exchanges in flight, or out of fds; try again
	FdNotThisUnit     FdStatus = 7 // another run of the unit than the request names
)

// Err returns nil for FdOK and otherwise an error wrapping the matching
// sentinel.
func (s FdStatus) Err() error {
	switch s {
	case FdOK:
		return nil
	case FdUnauthenticated:
		return fmt.Errorf("fd socket: wrong or missing token: %w", ErrUnauthenticated)
	case FdNotFound:
		return fmt.Errorf("fd socket: no such segment: %w", engine.ErrNotFound)
	case FdBadRequest:
		return fmt.Errorf("fd socket: bad request: %w", engine.ErrInvalid)
	case FdClosed:
		return fmt.Errorf("fd socket: unit closing: %w", engine.ErrClosed)
	case FdNotSupported:
		return fmt.Errorf("fd socket: unit offers no control ring: %w", engine.ErrNotSupported)
	case FdBusy:
		return fmt.Errorf("fd socket: unit busy (other exchanges in flight, or out of descriptors), try again: %w", engine.ErrCapacity)
	case FdNotThisUnit:
		return fmt.Errorf("fd socket: another run of the unit answers there (it restarted): %w", engine.ErrLost)
	}
	return fmt.Errorf("fd socket: unknown status %d: %w", s, ErrFrame)
}

// FdRequest asks a unit's fd socket for one segment's memfd, or, with
// Ring set, for a control channel with rings of RingSize bytes.
type FdRequest struct {
	Segment uint32
	// Incarnation, when not 0, is the run of the unit a segment request
	// means (see FdNotThisUnit).
	Incarnation uint64
	Ring        bool
	RingSize    uint32
	Token       string
}

// Append encodes r after b. A token longer than 65535 bytes is cut (a
// unit would reject it anyway).
func (r FdRequest) Append(b []byte) []byte {
	tok := r.Token[:min(len(r.Token), math.MaxUint16)]
	if r.Ring {
		b = append(b, FdRingMagic...)
		b = binary.LittleEndian.AppendUint32(b, r.RingSize)
	} else if r.Incarnation != 0 {
		b = append(b, FdMagicInc...)
		b = binary.LittleEndian.AppendUint32(b, r.Segment)
		b = binary.LittleEndian.AppendUint64(b, r.Incarnation)
	} else {
		b = append(b, FdMagic...)
		b = binary.LittleEndian.AppendUint32(b, r.Segment)
	}
	b = binary.LittleEndian.AppendUint16(b, uint16(len(tok)))
	return append(b, tok...)
}

// ReadFdRequest reads one request; a malformed one is an error wrapping
// [ErrFrame].
func ReadFdRequest(rd io.Reader) (FdRequest, error) {
	var h [8]byte
	if _, err := io.ReadFull(rd, h[:]); err != nil {
		return FdRequest{}, fmt.Errorf("read fd request: %w", err)
	}
	var r FdRequest
	switch string(h[:4]) {
	case FdMagic, FdMagicInc:
		r.Segment = binary.LittleEndian.Uint32(h[4:])
	case FdRingMagic:
		r.Ring, r.RingSize = true, binary.LittleEndian.Uint32(h[4:])
	default:
		return FdRequest{}, fmt.Errorf("fd request magic %q: %w", h[:4], ErrFrame)
	}
	if string(h[:4]) == FdMagicInc {
		var inc [8]byte
		if _, err := io.ReadFull(rd, inc[:]); err != nil {
			return FdRequest{}, fmt.Errorf("read fd request: %w", err)
		}
		if r.Incarnation = binary.LittleEndian.Uint64(inc[:]); r.Incarnation == 0 {
			return FdRequest{}, fmt.Errorf("fd request names incarnation 0: %w", ErrFrame)
		}
	}
	var tl [2]byte
	if _, err := io.ReadFull(rd, tl[:]); err != nil {
		return FdRequest{}, fmt.Errorf("read fd request: %w", err)
	}
	// Read the token as it comes: a buffer of the claimed length (up to
	// 64 KiB) made before a byte of it arrived would let every half-sent
	// request hold that much.
	n := int(binary.LittleEndian.Uint16(tl[:]))
	tok, err := io.ReadAll(io.LimitReader(rd, int64(n)))
	if err != nil {
		return FdRequest{}, fmt.Errorf("read fd request token: %w", err)
	}
	if len(tok) < n {
		return FdRequest{}, fmt.Errorf("read fd request token of %d bytes, %d came: %w", n, len(tok), io.ErrUnexpectedEOF)
	}
	r.Token = string(tok)
	return r, nil
}

// FdReply is the fixed part of an fd socket reply.
type FdReply struct {
	Status    FdStatus
	HugePages bool
	Size      uint64
}

// Append encodes r after b.
func (r FdReply) Append(b []byte) []byte {
	var flags byte
	if r.HugePages {
		flags = 1
	}
	b = append(b, FdMagic...)
	b = append(b, byte(r.Status), flags, 0, 0)
	return binary.LittleEndian.AppendUint64(b, r.Size)
}

// ParseFdReply decodes a reply of [FdReplySize] bytes.
func ParseFdReply(b []byte) (FdReply, error) {
	switch {
	case len(b) != FdReplySize:
		return FdReply{}, fmt.Errorf("fd reply of %d bytes, not %d: %w", len(b), FdReplySize, ErrFrame)
	case string(b[:4]) != FdMagic:
		return FdReply{}, fmt.Errorf("fd reply starts with %q, not %q: %w", b[:4], FdMagic, ErrFrame)
	}
	return FdReply{Status: FdStatus(b[4]), HugePages: b[5]&1 != 0, Size: binary.LittleEndian.Uint64(b[8:])}, nil
}
