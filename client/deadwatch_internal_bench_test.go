package client

import (
	"context"
	"testing"
)

// BenchmarkWatchDead is watchDead's own cost around a call that returns
// at once: what every request to a unit pays for the watch.
func BenchmarkWatchDead(b *testing.B) {
	c := &Client{disc: &discovery{}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b.ReportAllocs()
	for b.Loop() {
		if err := c.watchDead(ctx, 1, func(context.Context) error { return nil }); err != nil {
			b.Fatal(err)
		}
	}
}
