package engine

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Sentinel errors. Callers branch on these with [errors.Is]; the text of a
// wrapped error names what was wrong (the key, the field, the partition) and
// is meant for people, never for matching.
var (
	// ErrInvalid reports a malformed request: a non-positive batch size,
	// duplicate keys, a tag count that does not match the key count, a
	// negative rank, rows out of range.
	ErrInvalid = errors.New("engine: invalid argument")
	// ErrNotFound reports unknown keys, fields, partitions or tasks.
	ErrNotFound = errors.New("engine: not found")
	// ErrDTypeMismatch reports a write whose dtype differs from the dtype the
	// field already has.
	ErrDTypeMismatch = errors.New("engine: dtype mismatch")
	// ErrNotReady reports a read of cells that have not been produced yet.
	ErrNotReady = errors.New("engine: not ready")
	// ErrCapacity reports a bounded resource that is full: a storage unit
	// that cannot fit a write within its reserve wait or the caller's
	// deadline, or another limit the error names (partitions, fields, the
	// unit registry).
	ErrCapacity = errors.New("engine: capacity exceeded")
	// ErrTooLarge reports a storage request that the unit could not hold
	// even empty (extents past its capacity once rounded to its blocks):
	// waiting for room does not help. It wraps ErrCapacity.
	ErrTooLarge = fmt.Errorf("engine: larger than the unit could ever hold: %w", ErrCapacity)
	// ErrClosed reports a call on a closed object.
	ErrClosed = errors.New("engine: closed")
	// ErrNotSupported reports a capability this build or machine lacks.
	ErrNotSupported = errors.New("engine: not supported")
	// ErrLost reports cells whose storage unit is gone.
	ErrLost = errors.New("engine: data lost")
	// ErrUnavailable reports a peer — a storage unit, the controller —
	// that cannot be reached or stopped answering.
	ErrUnavailable = errors.New("engine: peer unavailable")
	// ErrCorrupt reports a checkpoint or frame that fails validation.
	ErrCorrupt = errors.New("engine: corrupt data")
	// ErrDone reports a fetch from a partition its producer marked done
	// (the controller's MarkDone) that has nothing left for the caller:
	// every row is consumed by the task, or the rest can never make a
	// batch. A streaming loader in finite mode ends on it.
	ErrDone = errors.New("engine: partition done")
)

// OpError is the one error type returned at component boundaries (controller
// calls, storage units, transports). It records the operation and where it
// failed, and unwraps to the cause so [errors.Is] finds the sentinel.
type OpError struct {
	Op        string // "fetch", "put", "read", …
	Transport string // "shm", "tcp", "local"; empty for pure metadata ops
	Peer      string // partition, unit id or address; empty when not relevant
	Err       error
}

// maxPeerBytes bounds how much of OpError.Peer its message shows.
const maxPeerBytes = 256

func (e *OpError) Error() string {
	var b strings.Builder
	b.WriteString(e.Op)
	if e.Transport != "" {
		b.WriteString(" ")
		b.WriteString(e.Transport)
	}
	if e.Peer != "" {
		// A partition id may be up to MaxNameBytes long: its first bytes
		// say which.
		b.WriteString(" ")
		if len(e.Peer) > maxPeerBytes {
			b.WriteString(namePrefix(e.Peer, maxPeerBytes))
			b.WriteString("…")
		} else {
			b.WriteString(e.Peer)
		}
	}
	b.WriteString(": ")
	if e.Err != nil {
		b.WriteString(e.Err.Error())
	} else {
		b.WriteString("<nil>")
	}
	return b.String()
}

func (e *OpError) Unwrap() error { return e.Err }

// KeysError names the keys an error is about: the unknown keys of a
// lookup ([ErrNotFound]). It crosses the wire (Error.keys, the first
// [MaxErrorKeys]), so a caller finds which keys were missing with
// [errors.As] rather than by reading the message; Err's text names the
// first few and how many there were.
type KeysError struct {
	Keys []string
	Err  error
}

func (e *KeysError) Error() string { return e.Err.Error() }
func (e *KeysError) Unwrap() error { return e.Err }

// MaxErrorKeys is the most keys an error reply names in Error.keys.
const MaxErrorKeys = 1024

// maxMessageItems is the most items [MessageList] spells out.
const maxMessageItems = 16

// MessageList spells items for an error's message as %v spells a slice,
// but only the first 16, and then how many more there are: a request may
// name millions of rows or keys, and its error (a wire reply's message
// too) stays short. spell writes one item. Data that callers rely on
// goes in the error's fields ([KeysError]), whole.
func MessageList[T any](items []T, spell func(T) string) string {
	var b strings.Builder
	b.WriteByte('[')
	for i, it := range items[:min(len(items), maxMessageItems)] {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(spell(it))
	}
	b.WriteByte(']')
	if n := len(items) - maxMessageItems; n > 0 {
		fmt.Fprintf(&b, " and %d more", n)
	}
	return b.String()
}

// RowList is [MessageList] of row indexes.
func RowList(rows []uint64) string {
	return MessageList(rows, func(r uint64) string { return strconv.FormatUint(r, 10) })
}

// QuoteKeys is [MessageList] of keys (or names), each quoted and cut to
// its first bytes (a key may be 64 KiB long).
func QuoteKeys(keys []string) string {
	return MessageList(keys, func(k string) string {
		if len(k) > maxPeerBytes {
			return strconv.Quote(namePrefix(k, maxPeerBytes)) + "…"
		}
		return strconv.Quote(k)
	})
}
