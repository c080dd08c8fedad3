package shmring

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Layout (see the package comment).
const (
	// HeaderSize is the length of the header before the two rings' data.
	HeaderSize = 4096
	// MinRingSize and MaxRingSize bound a ring's size (a power of two).
	MinRingSize = 4 << 10
	MaxRingSize = 16 << 20
	// DefaultRingSize is the size of each direction's ring when a caller
	// asks for 0: a control frame is a few hundred bytes.
	DefaultRingSize = 64 << 10

	magic   = "TQR1"
	version = 2 // 2: doorbells over the liveness socket, not FUTEX_WAKE

	offClosed  = 64
	offRing0   = 256
	ringCtlLen = 512
	offTail    = 0
	offHead    = 128
	offData    = 256 // unused u32, sleep u32
	offSpace   = 384
)

// Side names one end of a channel.
type Side int

// The two ends. A channel's creator (the storage unit) is SideB; by
// convention the client is SideA. Ring 0 carries A→B, ring 1 B→A.
const (
	SideA Side = 0
	SideB Side = 1
)

// Sentinels.
var (
	// ErrPeerGone is returned by reads and writes once the liveness socket
	// broke without a clean close from the peer: its process died.
	ErrPeerGone = errors.New("shmring: peer gone")
	// ErrPeerClosed is returned by writes after the peer closed its end.
	// (Reads drain what is left and then return io.EOF.)
	ErrPeerClosed = errors.New("shmring: peer closed")
	// ErrCorrupt is returned when the peer's index is impossible (more
	// bytes in a ring than it holds), a header is malformed, or the peer
	// leaves its doorbells unread until its liveness socket is full.
	ErrCorrupt = errors.New("shmring: corrupt ring")
	// ErrVersion is returned by NewConn for a region laid out by another
	// version of this package (the peer is another build): the caller
	// may use another channel instead.
	ErrVersion = errors.New("shmring: another channel version")
)

// Size returns the length of a region with rings of ringSize bytes.
func Size(ringSize int) int { return HeaderSize + 2*ringSize }

func validRingSize(n int) bool {
	return n >= MinRingSize && n <= MaxRingSize && n&(n-1) == 0
}

// Format writes a fresh header for rings of ringSize bytes (a power of two
// between MinRingSize and MaxRingSize) into b, which must be [Size] bytes,
// 8-byte aligned and zero past the header (a new memfd, or make).
func Format(b []byte, ringSize int) error {
	if !validRingSize(ringSize) {
		return fmt.Errorf("ring size %d is not a power of two in [%d, %d]: %w", ringSize, MinRingSize, MaxRingSize, ErrCorrupt)
	}
	if len(b) != Size(ringSize) {
		return fmt.Errorf("region of %d bytes for rings of %d: %w", len(b), ringSize, ErrCorrupt)
	}
	if !aligned(b) {
		return fmt.Errorf("region not 8-byte aligned: %w", ErrCorrupt)
	}
	clear(b[:HeaderSize])
	copy(b, magic)
	binary.NativeEndian.PutUint32(b[4:], version)
	binary.NativeEndian.PutUint32(b[8:], uint32(ringSize))
	return nil
}

// check validates b's header and returns its ring size.
func check(b []byte) (int, error) {
	if len(b) < HeaderSize || string(b[:4]) != magic {
		return 0, fmt.Errorf("no channel header in %d bytes: %w", len(b), ErrCorrupt)
	}
	if v := binary.NativeEndian.Uint32(b[4:]); v != version {
		return 0, fmt.Errorf("channel version %d, want %d: %w", v, version, ErrVersion)
	}
	size := int(binary.NativeEndian.Uint32(b[8:]))
	if !validRingSize(size) || len(b) != Size(size) {
		return 0, fmt.Errorf("region of %d bytes, header says rings of %d: %w", len(b), size, ErrCorrupt)
	}
	if !aligned(b) {
		return 0, fmt.Errorf("region not 8-byte aligned: %w", ErrCorrupt)
	}
	return size, nil
}
