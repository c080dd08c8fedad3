package wire

// Frame layout. Every frame is a fixed 32-byte header, a protobuf body of
// BodyLen bytes, then PayloadLen bytes of raw payload (the segments the
// body describes, back to back). All integers are little-endian.
//
//	offset size field
//	0      2    magic "TQ" (0x54 0x51)
//	2      1    version (1)
//	3      1    flags (FlagReply, FlagError)
//	4      2    op
//	6      2    reserved, zero
//	8      8    request id
//	16     4    body length
//	20     4    reserved, zero
//	24     8    payload length

import (
	"encoding/binary"
	"fmt"

	"github.com/tqgo/tq/engine"
)

// HeaderSize is the size of a frame header in bytes.
const HeaderSize = 32

// Version is the protocol version this package speaks.
const Version = 1

// Limits, enforced before anything is allocated.
const (
	// MaxBodyLen bounds a frame's protobuf body: 64 MiB, enough for the
	// meta of about a quarter million rows of nine fields.
	MaxBodyLen = 64 << 20
	// MaxHelloLen bounds the body of the HELLO that opens a connection:
	// nothing bigger is read before the peer authenticated. A larger
	// claim closes the connection before anything is allocated for it.
	MaxHelloLen = 4 << 10
	// MaxPayloadLen bounds a frame's payload.
	MaxPayloadLen = 1 << 40
	// MaxSegments bounds the number of payload segments, cells or rows a
	// body may list.
	MaxSegments = 1 << 22
)

// Flags mark a frame's role.
type Flags uint8

const (
	// FlagReply marks a reply to the request with the same id.
	FlagReply Flags = 1 << 0
	// FlagError marks a reply whose body is an Error message.
	FlagError Flags = 1 << 1
)

const knownFlags = FlagReply | FlagError

// Op identifies a request type; a reply carries its request's op.
type Op uint16

// Header is a decoded frame header.
type Header struct {
	Version    uint8
	Flags      Flags
	Op         Op
	ID         uint64
	BodyLen    uint32
	PayloadLen uint64
}

// Append encodes h onto b.
func (h Header) Append(b []byte) []byte {
	b = append(b, 'T', 'Q', h.Version, byte(h.Flags))
	b = binary.LittleEndian.AppendUint16(b, uint16(h.Op))
	b = append(b, 0, 0)
	b = binary.LittleEndian.AppendUint64(b, h.ID)
	b = binary.LittleEndian.AppendUint32(b, h.BodyLen)
	b = append(b, 0, 0, 0, 0)
	b = binary.LittleEndian.AppendUint64(b, h.PayloadLen)
	return b
}

// ErrFrame reports a malformed frame; the connection it came from is
// closed.
var ErrFrame = fmt.Errorf("wire: malformed frame: %w", engine.ErrCorrupt)

// errNotTQ is a frame whose magic is not TQ's: its sender does not speak
// the protocol at all.
var errNotTQ = fmt.Errorf("not TQ's magic: %w", ErrFrame)

// DecodeHeader parses and validates a header: magic, version, known flags,
// zero reserved bytes, and lengths within the limits.
func DecodeHeader(b []byte) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, fmt.Errorf("header of %d bytes: %w", len(b), ErrFrame)
	}
	if b[0] != 'T' || b[1] != 'Q' {
		return Header{}, fmt.Errorf("bad magic %q: %w", b[:2], errNotTQ)
	}
	h := Header{
		Version:    b[2],
		Flags:      Flags(b[3]),
		Op:         Op(binary.LittleEndian.Uint16(b[4:])),
		ID:         binary.LittleEndian.Uint64(b[8:]),
		BodyLen:    binary.LittleEndian.Uint32(b[16:]),
		PayloadLen: binary.LittleEndian.Uint64(b[24:]),
	}
	switch {
	case h.Version != Version:
		return Header{}, fmt.Errorf("a frame of protocol version %d, this side speaks version %d: %w", h.Version, Version, ErrFrame)
	case h.Flags&^knownFlags != 0:
		return Header{}, fmt.Errorf("unknown flags %#x: %w", uint8(h.Flags), ErrFrame)
	case h.Flags&FlagError != 0 && h.Flags&FlagReply == 0:
		return Header{}, fmt.Errorf("error flag on a request: %w", ErrFrame)
	case b[6] != 0 || b[7] != 0 || binary.LittleEndian.Uint32(b[20:]) != 0:
		return Header{}, fmt.Errorf("reserved bytes set: %w", ErrFrame)
	case h.BodyLen > MaxBodyLen:
		return Header{}, fmt.Errorf("body of %d bytes exceeds %d: %w", h.BodyLen, MaxBodyLen, ErrFrame)
	case h.PayloadLen > MaxPayloadLen:
		return Header{}, fmt.Errorf("payload of %d bytes exceeds %d: %w", h.PayloadLen, uint64(MaxPayloadLen), ErrFrame)
	}
	return h, nil
}
