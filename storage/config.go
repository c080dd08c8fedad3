package storage

import (
	"fmt"
	"time"

	"github.com/tqgo/tq/engine"
)

// Config sizes and tunes a [Unit]. Start from [DefaultConfig].
type Config struct {
	// Capacity is the most bytes the unit maps (the sum of its segment
	// sizes); every extent is accounted at its rounded size. Must be > 0.
	Capacity int64
	// SegmentSize is the size of each memfd segment (a multiple of 4 KiB,
	// at least 64 KiB; 0 means 64 MiB). An extent larger than this gets a
	// segment of its own, rounded up to whole pages.
	SegmentSize int64
	// HugePages tries hugetlb pages (MFD_HUGETLB, 2 MiB) and falls back to
	// 4 KiB pages with MADV_HUGEPAGE when the kernel has none reserved.
	// [Unit.Stats] reports which one is in use.
	HugePages bool
	// Prefault faults every page of a segment in when it is mapped (its
	// first 256 KiB at once, the rest in the background where the kernel
	// has MADV_POPULATE_WRITE), so puts seldom pay for first touch.
	// DefaultConfig sets it; the zero Config does not.
	Prefault bool
	// ReserveTimeout bounds how long a [Reservation] may stay open: after
	// it the unit aborts the reservation and [Reservation.Commit] fails.
	// It bounds a WRITE's payload too: one still coming is cut off (see
	// [Server]). 0 means 30 s.
	ReserveTimeout time.Duration
}

// Defaults.
const (
	DefaultCapacity       = 1 << 30
	DefaultSegmentSize    = 64 << 20
	DefaultReserveTimeout = 30 * time.Second
	minSegmentSize        = slabSize
)

// DefaultConfig returns a 1 GiB unit of pre-faulted 64 MiB segments on
// 4 KiB pages with a 30 s reservation timeout.
func DefaultConfig() Config {
	return Config{
		Capacity:       DefaultCapacity,
		SegmentSize:    DefaultSegmentSize,
		Prefault:       true,
		ReserveTimeout: DefaultReserveTimeout,
	}
}

// Validate reports a config [NewUnit] rejects, wrapping [engine.ErrInvalid].
func (c Config) Validate() error {
	switch {
	case c.Capacity <= 0:
		return fmt.Errorf("storage config: capacity %d is not positive: %w", c.Capacity, engine.ErrInvalid)
	case c.Capacity < minSegmentSize:
		// The smallest extent takes a slab of a segment.
		return fmt.Errorf("storage config: capacity %d is below the smallest segment, %d bytes: %w", c.Capacity, minSegmentSize, engine.ErrInvalid)
	case c.SegmentSize < 0 || c.SegmentSize > 0 && (c.SegmentSize < minSegmentSize || c.SegmentSize%pageSize != 0):
		return fmt.Errorf("storage config: segment size %d is not a multiple of %d of at least %d: %w",
			c.SegmentSize, pageSize, minSegmentSize, engine.ErrInvalid)
	case c.ReserveTimeout < 0:
		return fmt.Errorf("storage config: negative reserve timeout %v: %w", c.ReserveTimeout, engine.ErrInvalid)
	}
	return nil
}

// withDefaults fills the zero fields that have defaults.
func (c Config) withDefaults() Config {
	if c.SegmentSize == 0 {
		c.SegmentSize = DefaultSegmentSize
	}
	if c.ReserveTimeout == 0 {
		c.ReserveTimeout = DefaultReserveTimeout
	}
	return c
}
