package client_test

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// TestUnconsumeRowsOverTheWire: through tq's controller, a client gives
// back two of the four rows of a held fetch (UnconsumeRows, UNCONSUME with
// indexes): another fetch of the task gets exactly those two, and once
// the fetch is acknowledged its other two stay consumed. A row the fetch
// never took is refused, naming it.
func TestUnconsumeRowsOverTheWire(t *testing.T) {
	ctrl := newController(t)
	_, addr := serveController(t, ctrl, controller.ServerConfig{}, "unix")
	r := dialMeta(t, addr, client.RemoteConfig{})
	ctx := t.Context()
	produced := produce(t, r, "p", 6)

	m, err := r.Fetch(ctx, engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 4, Key: "k", Hold: true})
	require.NoError(t, err)
	require.Equal(t, 4, m.Len())

	err = r.UnconsumeRows(ctx, "p", "t", "k", []uint64{m.Indexes[0], 99})
	require.ErrorIs(t, err, engine.ErrInvalid)
	assert.Contains(t, err.Error(), "99")

	require.NoError(t, r.UnconsumeRows(ctx, "p", "t", "k", m.Indexes[2:]))
	require.NoError(t, r.UnconsumeRows(ctx, "p", "t", "k", m.Indexes[2:]), "a second give-back of the same rows")
	require.NoError(t, r.Acknowledge(ctx, "p", "t", "k"))

	again, err := r.Fetch(ctx, engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 4})
	require.NoError(t, err)
	fresh := produced[4:]
	assert.ElementsMatch(t, append(append([]uint64{}, m.Indexes[2:]...), fresh...), again.Indexes,
		"the rows given back and the two never fetched, and not the two kept")
	rest, err := r.Fetch(ctx, engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 1})
	require.NoError(t, err)
	assert.Zero(t, rest.Len(), "rows left: %v", rest.Indexes)
}

// TestUnconsumeRowsOfAFetchARowOfWhichWasCleared: a loader gives back
// the rows of a held fetch it did not yield (the path of
// Client.GiveBackRows), one of which was cleared since the fetch: the
// others go back and the cleared one is just gone. Before, the give-back
// was refused whole (a row "not of the fetch") and the loader gave the
// batch back whole, its yielded rows too.
func TestUnconsumeRowsOfAFetchARowOfWhichWasCleared(t *testing.T) {
	ctrl := newController(t)
	_, addr := serveController(t, ctrl, controller.ServerConfig{}, "unix")
	r := dialMeta(t, addr, client.RemoteConfig{})
	ctx := t.Context()
	produce(t, r, "p", 4)

	m, err := r.Fetch(ctx, engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 4, Key: "k", Hold: true})
	require.NoError(t, err)
	require.Equal(t, 4, m.Len())
	_, err = ctrl.ClearRows("p", m.Indexes[1:2])
	require.NoError(t, err)

	require.NoError(t, r.UnconsumeRows(ctx, "p", "t", "k", m.Indexes[1:]), "the rows not yielded, one cleared since")
	require.NoError(t, r.Acknowledge(ctx, "p", "t", "k"))
	again, err := r.Fetch(ctx, engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 2})
	require.NoError(t, err)
	assert.ElementsMatch(t, m.Indexes[2:], again.Indexes, "the rows given back")
	rest, err := r.Fetch(ctx, engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 1})
	require.NoError(t, err)
	assert.Zero(t, rest.Len(), "rows left (the one yielded?): %v", rest.Indexes)
}

// TestUnconsumeRowsNeedsTheFeature: a give-back of some rows goes only to
// a controller whose HELLO lists "unconsume_rows": an older one would
// ignore the indexes and give back the whole fetch, its rows the caller
// used too. The client refuses it itself, naming the feature, and sends
// nothing; a give-back of the whole fetch still goes.
func TestUnconsumeRowsNeedsTheFeature(t *testing.T) {
	srv := wire.NewServer(wire.ServerConfig{Hello: &wirepb.Hello{Role: "controller",
		Features: []string{wire.FeatureHoldGroup, wire.FeatureFetchMustExist}}})
	var unconsumes atomic.Int32
	srv.Handle(wire.OpUnconsume, func(ctx context.Context, req *wire.Request, rw *wire.ReplyWriter) {
		unconsumes.Add(1)
		rw.Reply(&wirepb.Empty{}, nil, nil)
	})
	r := dialFake(t, srv)

	err := r.UnconsumeRows(t.Context(), "p", "t", "k", []uint64{1, 2})
	require.ErrorIs(t, err, engine.ErrNotSupported)
	assert.Contains(t, err.Error(), `"unconsume_rows"`)
	assert.Zero(t, unconsumes.Load(), "the give-back went to a controller that would give back the whole fetch")

	require.NoError(t, r.Unconsume(t.Context(), "p", "t", "k"))
	assert.EqualValues(t, 1, unconsumes.Load())
}
