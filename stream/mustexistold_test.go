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
	srv := wire.NewServer(wire.ServerConfig{Hello: &wirepb.Hello{Role: "controller", Features: []string{wire.FeatureHoldGroup}}})
	var fetches atomic.Int32
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
	c := clientOver(t, cluster(t), r) // the cluster's units, the old controller's metadata

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
