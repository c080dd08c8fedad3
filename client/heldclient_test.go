package client_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/engine"
)

// A Go client names itself the same on every connection and redial: a
// connection cut under it (the controller sees it closed from the
// client's side) and dialed again keeps what the client holds, however
// long the client then takes to acknowledge; closed, the client leaves,
// and what it held goes back to a peer waiting at the end within the
// controller's grace, not after the held-fetch TTL.
func TestHeldRowsFollowTheClientNotItsConnections(t *testing.T) {
	const grace = 200 * time.Millisecond
	ctx := context.Background()
	addr, producer := heldSetup(t, grace, 8)
	peerFetch := func(d time.Duration) (*engine.BatchMeta, error) {
		ctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		return producer.Fetch(ctx, engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 8, Wait: true})
	}
	held := func(r *client.RemoteMeta, key string) {
		t.Helper()
		got, err := r.Fetch(ctx, engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 4, Key: key, Hold: true})
		require.NoError(t, err)
		require.Equal(t, 4, got.Len())
	}

	proxy := newStallProxy(t, "127.0.0.1:0", strings.TrimPrefix(addr, "tcp://"))
	stays := dialMeta(t, "tcp://"+proxy.addr, client.RemoteConfig{Name: "stays", Lanes: 2})
	leaves := dialMeta(t, addr, client.RemoteConfig{Name: "leaves"})
	held(stays, "k1")
	held(leaves, "k2")
	proxy.cut()
	require.Eventually(t, func() bool { // dials again
		_, err := stays.Partitions(ctx)
		return err == nil
	}, 5*time.Second, 10*time.Millisecond)
	_, err := peerFetch(5 * grace)
	require.ErrorIs(t, err, context.DeadlineExceeded, "both clients live: their rows stay held")
	require.NoError(t, stays.Acknowledge(ctx, "p", "t", "k1"), "the client that came back keeps its rows")

	require.NoError(t, leaves.Close())
	start := time.Now()
	got, err := peerFetch(10 * time.Second)
	require.NoError(t, err)
	require.Equal(t, 4, got.Len(), "what the closed client held")
	require.Less(t, time.Since(start), 5*time.Second)
}

// An idle client whose connection broke (a loader in a long step) dials
// again on its own, not only at its next call: past the controller's
// grace it would be taken for gone and what it holds given back, to be
// dropped when it acknowledges.
func TestIdleClientComesBackOnItsOwn(t *testing.T) {
	defer client.SetKeepDial(50 * time.Millisecond)()
	const grace = 500 * time.Millisecond
	ctx := context.Background()
	addr, producer := heldSetup(t, grace, 4)

	proxy := newStallProxy(t, "127.0.0.1:0", strings.TrimPrefix(addr, "tcp://"))
	idle := dialMeta(t, "tcp://"+proxy.addr, client.RemoteConfig{Name: "idle"})
	got, err := idle.Fetch(ctx, engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 4, Key: "k", Hold: true})
	require.NoError(t, err)
	require.Equal(t, 4, got.Len())
	proxy.cut()
	time.Sleep(4 * grace) // no call meanwhile
	wctx, cancel := context.WithTimeout(ctx, 2*grace)
	defer cancel()
	_, err = producer.Fetch(wctx, engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 4, Wait: true})
	require.ErrorIs(t, err, context.DeadlineExceeded, "the idle client came back: its rows stay held")
	require.NoError(t, idle.Acknowledge(ctx, "p", "t", "k"))
}

// heldSetup serves a controller whose grace for clients that left is
// grace, over TCP, with partition "p" of n produced rows marked done; it
// returns the address and the producer's connection.
func heldSetup(t *testing.T, grace time.Duration, n int) (string, *client.RemoteMeta) {
	t.Helper()
	cfg := controller.DefaultConfig()
	cfg.HeldClientGrace = grace
	_, addr, producer := heldServe(t, cfg, n)
	return addr, producer
}

// heldServe serves a controller of cfg over TCP, with partition "p" of n
// produced rows marked done; it returns the controller, its address and
// the producer's connection.
func heldServe(t *testing.T, cfg controller.Config, n int) (*controller.Controller, string, *client.RemoteMeta) {
	t.Helper()
	ctx := context.Background()
	c, err := controller.New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	_, addr := serveController(t, c, controller.ServerConfig{}, "tcp")
	producer := dialMeta(t, addr, client.RemoteConfig{Name: "producer"})
	m, err := producer.Insert(ctx, "p", n, []string{"x"})
	require.NoError(t, err)
	require.NoError(t, producer.Commit(ctx, engine.CommitRequest{Partition: "p", Indexes: m.Indexes, Fields: []engine.CommitField{
		{Name: "x", DType: engine.Int64, Kind: engine.Dense, Shape: engine.Shape{}, Locs: locs(1, n, 0, 8)},
	}}))
	require.NoError(t, producer.MarkDone(ctx, "p"))
	return c, addr, producer
}

// A held fetch the controller gave back (its hold outlived the TTL, and
// a peer took its rows) is refused its acknowledgment however late it
// comes: 65,536 keyed fetches later, its key gone from the fetch table,
// the acknowledgment succeeded, and the client kept rows the peer had.
// A key never held still succeeds.
func TestLateAcknowledgeOfAHoldGivenBack(t *testing.T) {
	ctx := context.Background()
	cfg := controller.DefaultConfig()
	cfg.HeldFetchTTL = 100 * time.Millisecond
	c, addr, producer := heldServe(t, cfg, 4)
	consumer := dialMeta(t, addr, client.RemoteConfig{Name: "consumer"})
	held, err := consumer.Fetch(ctx, engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 4, Key: "k", Hold: true})
	require.NoError(t, err)
	require.Equal(t, 4, held.Len())
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	got, err := producer.Fetch(wctx, engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 4, Wait: true})
	require.NoError(t, err, "given back by the TTL")
	require.Equal(t, held.Indexes, got.Indexes)
	for i := range 1 << 16 { // keyed fetches (given back) push "k" out of the fetch table
		require.NoError(t, c.Unconsume("p", "t", fmt.Sprintf("k%d", i)))
	}
	err = consumer.Acknowledge(ctx, "p", "t", "k")
	require.ErrorIs(t, err, engine.ErrNotFound, "the peer has the rows")
	require.ErrorContains(t, err, "given back")
	require.NoError(t, consumer.Acknowledge(ctx, "p", "t", "never held"))
}
