package stream

import (
	"context"
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// The README: a loader with PartitionMustExist whose controller is from
// before the option (its HELLO lacks "fetch_must_exist", so it would
// ignore the field and wait for a misspelled partition for good) is
// refused with ErrNotSupported, naming the feature, at its first fetch;
// nothing is sent.
func TestPartitionMustExistNeedsTheFeature(t *testing.T) {
	c, fetches := oldController(t, wire.FeatureHoldGroup)

	for _, smp := range []string{engine.SamplerRankAware, engine.SamplerSequential} {
		t.Run(smp, func(t *testing.T) {
			cfg := config("trian_0")
			cfg.Sampler, cfg.PartitionMustExist = engine.SamplerSpec{Name: smp}, true
			ld, err := New(c, cfg)
			require.NoError(t, err)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			var last error
			for _, err := range ld.All(ctx) {
				require.Error(t, err, "a micro-batch from a controller that cannot say the partition is missing")
				last = err
			}
			require.ErrorIs(t, last, engine.ErrNotSupported)
			assert.NotErrorIs(t, last, context.DeadlineExceeded)
			assert.Contains(t, last.Error(), `"fetch_must_exist"`)
			assert.Contains(t, last.Error(), `"trian_0"`)
			assert.Zero(t, fetches.Load(), "a fetch went to a controller that would wait for the partition")
		})
	}
}

// A loader started at a position with a generation (kept from a run
// against a controller that names them) whose controller's HELLO lacks
// "fetch_partition_gen" is refused with ErrNotSupported naming the
// feature, and sends nothing: that controller would ignore the
// generation, and wait for a cleared partition or serve one made again.
// (A loader that starts without one sends none: the older controller
// names none in its replies.)
func TestStartGenNeedsTheFeature(t *testing.T) {
	c, fetches := oldController(t, wire.FeatureHoldGroup, wire.FeatureFetchMustExist)
	cfg := config("p")
	cfg.Start = Position{Gen: 7, GenOf: "p", Cluster: "c1"}
	l, err := New(c, cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var last error
	for _, err := range l.All(ctx) {
		require.Error(t, err)
		last = err
	}
	require.ErrorIs(t, last, engine.ErrNotSupported)
	assert.Contains(t, last.Error(), `"fetch_partition_gen"`)
	assert.Zero(t, fetches.Load())
}

// oldController serves a controller whose HELLO lists features alone; it
// answers each FETCH with no rows (counted in fetches) and each
// UNCONSUME. It returns a client of it over an embedded cluster's units.
func oldController(t *testing.T, features ...string) (c *client.Client, fetches *atomic.Int32) {
	t.Helper()
	srv := wire.NewServer(wire.ServerConfig{Hello: &wirepb.Hello{Role: "controller", Features: features}})
	fetches = new(atomic.Int32)
	srv.Handle(wire.OpFetch, func(ctx context.Context, req *wire.Request, rw *wire.ReplyWriter) {
		fetches.Add(1)
		rw.Reply(&wirepb.MetaReply{Meta: &wirepb.BatchMeta{}}, nil, nil)
	})
	// It has held fetches (hold_group): a private loader gives back the
	// key of its failed fetch, which changes nothing.
	srv.Handle(wire.OpUnconsume, func(ctx context.Context, req *wire.Request, rw *wire.ReplyWriter) {
		rw.Reply(&wirepb.Empty{}, nil, nil)
	})
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "c.sock"))
	require.NoError(t, err)
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	r, err := client.DialMeta(context.Background(), "unix://"+l.Addr().String(), client.RemoteConfig{RetryFor: -1})
	require.NoError(t, err)
	t.Cleanup(func() { r.Close() })
	return clientOver(t, cluster(t), r), fetches // the cluster's units, the old controller's metadata
}
