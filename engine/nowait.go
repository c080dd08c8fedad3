package engine

import (
	"context"
	"time"
)

// noWaitKey marks a context whose writes must not wait for room.
type noWaitKey struct{}

// WithoutWait returns a context under which a write or reservation that
// finds its storage unit full fails at once with an error wrapping
// [ErrCapacity] instead of waiting for frees. A client that has other
// units with room (spill placement) writes this way, so that one full
// unit never holds up a put the rest of the cluster could take.
//
// It is a context value rather than a parameter because it has to cross
// [DataConn.Write], which every transport implements, down to the unit
// (in this process, or as WriteRequest.no_wait and ReserveRequest.no_wait
// on the wire): it is request-scoped data, read once per request.
//
// A ctx that already says so is returned as it is (no allocation: the
// controller's in-memory KV path asks it of every put).
func WithoutWait(ctx context.Context) context.Context {
	if NoWait(ctx) {
		return ctx
	}
	return context.WithValue(ctx, noWaitKey{}, true)
}

// NoWait reports whether ctx came from [WithoutWait].
func NoWait(ctx context.Context) bool {
	v, _ := ctx.Value(noWaitKey{}).(bool)
	return v
}

// RoomWaitMillis is how long, in milliseconds, a storage unit in another
// process may keep a write or reservation under ctx waiting for room (as
// WriteRequest.wait_ms and ReserveRequest.wait_ms): a little less than
// ctx has left, so that the unit's refusal arrives before ctx ends and
// the connection stays in step; 0 (the unit's own reserve wait) when ctx
// has no deadline.
func RoomWaitMillis(ctx context.Context) uint64 {
	d, ok := ctx.Deadline()
	if !ok {
		return 0
	}
	left := time.Until(d)
	left -= min(left/4, roomWaitMargin)
	return uint64(max(left/time.Millisecond, 1))
}

// roomWaitMargin is the most of ctx's time RoomWaitMillis leaves for the
// refusal's way back.
const roomWaitMargin = 250 * time.Millisecond
