package controller

import (
	"context"
	"testing"
	"time"

	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// TestCheckpointsListingOffTheLoop: CHECKPOINTS reads the checkpoint
// directory and every checkpoint's state header. A slow listing must not
// hold up the connection's other requests, nor those of other
// connections on the same event loop: a PING and a PARTITIONS are
// answered while it is stuck.
func TestCheckpointsListingOffTheLoop(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	testHookListing = func() {
		started <- struct{}{}
		<-release
	}
	t.Cleanup(func() { testHookListing = nil })
	root := t.TempDir()
	_, addr := startServer(t, newController(t, Config{}), ServerConfig{CheckpointDir: root, Loops: 1}, "unix")
	c := dialRaw(t, addr, "")
	other := dialRaw(t, addr, "")
	listed := make(chan error, 1)
	go func() {
		var list wirepb.CheckpointsReply
		listed <- do(c, wire.OpCheckpoints, &wirepb.Empty{}, &list)
	}()
	<-started
	defer close(release)
	for _, tc := range []struct {
		name string
		conn *wire.Conn
		op   wire.Op
	}{
		{"ping, same connection", c, wire.OpPing},
		{"partitions, same connection", c, wire.OpPartitions},
		{"ping, other connection", other, wire.OpPing},
		{"partitions, other connection", other, wire.OpPartitions},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		var err error
		if tc.op == wire.OpPing {
			err = tc.conn.Do(ctx, wire.OpPing, &wirepb.Ping{}, nil, &wirepb.Ping{}, nil)
		} else {
			err = tc.conn.Do(ctx, tc.op, &wirepb.Empty{}, nil, &wirepb.PartitionsReply{}, nil)
		}
		cancel()
		if err != nil {
			t.Errorf("%s while a listing is stuck: got %v, want an answer", tc.name, err)
		}
	}
	select {
	case err := <-listed:
		t.Fatalf("CHECKPOINTS answered before its listing ended: %v", err)
	default:
	}
	release <- struct{}{} // not closed yet: the deferred close follows
	if err := <-listed; err != nil {
		t.Fatalf("CHECKPOINTS: %v", err)
	}
}
