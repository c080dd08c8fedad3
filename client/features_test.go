package client_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// TestHoldGroupNeedsTheFeature: a held fetch for a hold group goes only
// to a controller whose HELLO lists "hold_group". An older one would
// ignore the field and make the group's members wait on each other's
// holds until the TTL; the client refuses the fetch itself instead, with
// an error naming the feature, and sends nothing. Fetches that need no
// feature still go.
func TestHoldGroupNeedsTheFeature(t *testing.T) {
	srv := wire.NewServer(wire.ServerConfig{Hello: &wirepb.Hello{Role: "controller"}})
	var fetches atomic.Int32
	srv.Handle(wire.OpFetch, func(ctx context.Context, req *wire.Request, rw *wire.ReplyWriter) {
		fetches.Add(1)
		rw.Reply(&wirepb.MetaReply{Meta: &wirepb.BatchMeta{}}, nil, nil)
	})
	srv.Handle(wire.OpUnconsume, func(ctx context.Context, req *wire.Request, rw *wire.ReplyWriter) {
		rw.Reply(&wirepb.Empty{}, nil, nil)
	})
	r := dialFake(t, srv)
	ctx := t.Context()

	req := engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 1, Key: "k", Hold: true, HoldGroup: "loader-1"}
	_, err := r.Fetch(ctx, req)
	require.ErrorIs(t, err, engine.ErrNotSupported)
	assert.Contains(t, err.Error(), `"hold_group"`)
	assert.Contains(t, err.Error(), "upgrade")
	assert.Zero(t, fetches.Load(), "the fetch went to a controller that would misread it")

	req.HoldGroup = ""
	_, err = r.Fetch(ctx, req)
	require.NoError(t, err)
	assert.EqualValues(t, 1, fetches.Load())
}

// TestControllerListsItsFeatures: tq's controller names the features it
// serves, and a fetch for a hold group goes through to it.
func TestControllerListsItsFeatures(t *testing.T) {
	ctrl := newController(t)
	_, addr := serveController(t, ctrl, controller.ServerConfig{}, "unix")
	c, reply, err := wire.Dial(t.Context(), addr, &wirepb.Hello{Role: "client"}, wire.ConnConfig{})
	require.NoError(t, err)
	defer c.Close()
	assert.ElementsMatch(t, []string{wire.FeatureClientHolds, wire.FeatureHoldGroup, wire.FeatureFetchMustExist, wire.FeatureFetchPartitionGen, wire.FeatureUnconsumeRows}, reply.Features)
	assert.True(t, c.Serves(wire.FeatureHoldGroup))
	assert.False(t, c.Serves("no_such_feature"))
	require.ErrorIs(t, c.Need("no_such_feature", "test"), engine.ErrNotSupported)

	r := dialMeta(t, addr, client.RemoteConfig{})
	produce(t, r, "p", 1)
	m, err := r.Fetch(t.Context(), engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 1,
		Key: "k", Hold: true, HoldGroup: "loader-1"})
	require.NoError(t, err)
	assert.Equal(t, 1, m.Len())
}

// TestFetchMustExistNeedsTheFeature: a fetch with PartitionMustExist goes
// only to a controller whose HELLO lists "fetch_must_exist": an older one
// would ignore the field and wait for the partition (for ever, for a
// misspelled id). The client refuses it itself, naming the feature, and
// sends nothing.
func TestFetchMustExistNeedsTheFeature(t *testing.T) {
	r, fetches := oldFetchController(t, wire.FeatureHoldGroup)

	req := engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 1, PartitionMustExist: true}
	_, err := r.Fetch(t.Context(), req)
	require.ErrorIs(t, err, engine.ErrNotSupported)
	assert.Contains(t, err.Error(), `"fetch_must_exist"`)
	assert.Zero(t, fetches.Load(), "the fetch went to a controller that would wait for the partition")

	req.PartitionMustExist = false
	_, err = r.Fetch(t.Context(), req)
	require.NoError(t, err)
	assert.EqualValues(t, 1, fetches.Load())
}

// TestFetchMustExist: through tq's controller, a waiting fetch with
// PartitionMustExist of a partition it does not have fails at once with
// an error naming it that wraps ErrInvalid; one of a partition it has
// gets the rows.
func TestFetchMustExist(t *testing.T) {
	ctrl := newController(t)
	_, addr := serveController(t, ctrl, controller.ServerConfig{}, "unix")
	r := dialMeta(t, addr, client.RemoteConfig{})
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	req := engine.FetchRequest{Partition: "trian_0", Task: "t", Fields: []string{"x"}, BatchSize: 1, Wait: true, PartitionMustExist: true}
	_, err := r.Fetch(ctx, req)
	require.ErrorIs(t, err, engine.ErrInvalid)
	assert.NotErrorIs(t, err, engine.ErrNotFound)
	assert.Contains(t, err.Error(), `partition "trian_0" does not exist`)

	produce(t, r, "train_0", 1)
	req.Partition = "train_0"
	m, err := r.Fetch(ctx, req)
	require.NoError(t, err)
	assert.Equal(t, 1, m.Len())
}

// TestFetchPartitionGenNeedsTheFeature: a fetch with PartitionGen goes
// only to a controller whose HELLO lists "fetch_partition_gen": an older
// one would ignore it, and wait for a partition cleared or serve the one
// made again. The client refuses it itself, naming the feature, and sends
// nothing.
func TestFetchPartitionGenNeedsTheFeature(t *testing.T) {
	r, fetches := oldFetchController(t, wire.FeatureFetchMustExist)

	req := engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 1, PartitionGen: 7}
	_, err := r.Fetch(t.Context(), req)
	require.ErrorIs(t, err, engine.ErrNotSupported)
	assert.Contains(t, err.Error(), `"fetch_partition_gen"`)
	assert.Zero(t, fetches.Load(), "the fetch went to a controller that would not read the generation")

	req.PartitionGen = 0
	m, err := r.Fetch(t.Context(), req)
	require.NoError(t, err)
	assert.EqualValues(t, 1, fetches.Load())
	assert.Zero(t, m.PartitionGen)
}

// TestFetchPartitionGen: through tq's controller, a fetch's meta names the
// partition's generation; a fetch naming it is served, and once the
// partition is cleared and made again one naming the old generation fails
// at once with an error naming it that wraps ErrDone.
func TestFetchPartitionGen(t *testing.T) {
	ctrl := newController(t)
	_, addr := serveController(t, ctrl, controller.ServerConfig{}, "unix")
	r := dialMeta(t, addr, client.RemoteConfig{})
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	produce(t, r, "p", 2)
	req := engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 1, Wait: true}
	m, err := r.Fetch(ctx, req)
	require.NoError(t, err)
	gen := m.PartitionGen
	require.NotZero(t, gen, "the reply named no generation")
	req.PartitionGen = gen
	m, err = r.Fetch(ctx, req)
	require.NoError(t, err)
	assert.Equal(t, gen, m.PartitionGen)

	require.NoError(t, r.ClearPartition(ctx, "p"))
	produce(t, r, "p", 2)
	_, err = r.Fetch(ctx, req)
	require.ErrorIs(t, err, engine.ErrDone)
	assert.NotErrorIs(t, err, context.DeadlineExceeded)
	assert.Contains(t, err.Error(), fmt.Sprintf(`partition "p" generation %d was cleared`, gen))
}

// oldFetchController dials a stand-in controller whose HELLO lists only
// features, answering each FETCH with an empty meta; fetches counts the
// FETCHes it got.
func oldFetchController(t *testing.T, features ...string) (r *client.RemoteMeta, fetches *atomic.Int32) {
	t.Helper()
	srv := wire.NewServer(wire.ServerConfig{Hello: &wirepb.Hello{Role: "controller", Features: features}})
	fetches = new(atomic.Int32)
	srv.Handle(wire.OpFetch, func(ctx context.Context, req *wire.Request, rw *wire.ReplyWriter) {
		fetches.Add(1)
		rw.Reply(&wirepb.MetaReply{Meta: &wirepb.BatchMeta{}}, nil, nil)
	})
	return dialFake(t, srv), fetches
}
