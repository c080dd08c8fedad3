package engine

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// RoomWaitMillis leaves a unit's refusal time to come back before ctx
// ends: a quarter of what is left, at most 250 ms; no deadline, no bound
// (0); a ctx past its deadline, the least wait there is (1 ms, not 0).
func TestRoomWaitMillis(t *testing.T) {
	assert.Zero(t, RoomWaitMillis(context.Background()))
	for _, tc := range []struct {
		left     time.Duration
		min, max uint64
	}{
		{time.Minute, 59_700, 59_750},
		{time.Second, 700, 750},
		{400 * time.Millisecond, 250, 300},
		{-time.Second, 1, 1},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), tc.left)
		got := RoomWaitMillis(ctx)
		cancel()
		assert.True(t, got >= tc.min && got <= tc.max, "%v left: %d ms, want %d to %d", tc.left, got, tc.min, tc.max)
	}
}
