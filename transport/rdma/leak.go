package rdma

import (
	"fmt"
	"runtime/debug"
	"sort"
	"sync"
	"sync/atomic"
)

// The leak net: with tracking on (tests turn it on in TestMain), every
// verbs handle records the stack that created it until it is closed, and
// LiveHandles lists the ones still open.
var (
	trackHandles atomic.Bool
	liveHandles  sync.Map // handle → creation stack
)

// TrackHandles turns the leak net on or off (off by default: recording a
// stack per handle costs a few microseconds).
func TrackHandles(on bool) { trackHandles.Store(on) }

func track(h any) {
	if trackHandles.Load() {
		liveHandles.Store(h, string(debug.Stack()))
	}
}

func untrack(h any) { liveHandles.Delete(h) }

// LiveHandles describes every tracked handle not closed yet, with the
// stack that made it.
func LiveHandles() []string {
	var out []string
	liveHandles.Range(func(k, v any) bool {
		out = append(out, fmt.Sprintf("%T not closed, made at:\n%s", k, v))
		return true
	})
	sort.Strings(out)
	return out
}
