package client_test

import (
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/embedded"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/kvapi"
	"github.com/tqgo/tq/storage"
)

// The unsigned, float8 and complex dtypes cross the wire by name: a put
// and a get through a remote controller come back bit for bit with their
// dtypes, the controller reports them, and a dtype of the same size on the
// same field is refused with ErrDTypeMismatch.
func TestNewDTypesOverRemoteController(t *testing.T) {
	ctx := t.Context()
	_, addr := serveController(t, newController(t), controller.ServerConfig{}, "unix")
	meta := dialMeta(t, addr, client.RemoteConfig{Name: "test"})
	cfg := storage.DefaultConfig()
	cfg.Capacity = 4 << 20
	u, err := storage.NewUnit(1, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { u.Close() })
	c, err := client.New(meta, []client.DataUnit{embedded.Unit(u)}, client.DefaultConfig())
	require.NoError(t, err)
	kv := kvapi.New(c)

	dense := func(col *engine.Column, err error) *engine.Column {
		t.Helper()
		require.NoError(t, err)
		return col
	}
	fields := []engine.Field{
		{Name: "u16", Col: dense(engine.DenseOf([]uint16{1, math.MaxUint16}))},
		{Name: "u32", Col: dense(engine.DenseOf([]uint32{math.MaxUint32, 7}))},
		{Name: "u64", Col: dense(engine.DenseOf([]uint64{math.MaxUint64, 1 << 63}))},
		{Name: "e4m3", Col: dense(engine.DenseOf([]engine.F8E4M3FN{0x7f, 0x7e, 0x80, 0x01}, 2))},
		{Name: "e5m2", Col: dense(engine.DenseOf([]engine.F8E5M2{0x7c, 0xfd, 0x7b, 0x01}, 2))},
		{Name: "c64", Col: dense(engine.DenseOf([]complex64{complex(float32(math.NaN()), 1), -2i}))},
		{Name: "c128", Col: engine.RaggedOf([][]complex128{{complex(math.Inf(-1), 0)}, {1i, 2}})},
	}
	keys := []string{"a", "b"}
	_, err = kv.BatchPut(ctx, "p", keys, engine.MustBatch(fields...), nil)
	require.NoError(t, err)
	got, err := kv.BatchGet(ctx, "p", keys)
	require.NoError(t, err)
	defer got.Release()
	for _, f := range fields {
		g := got.Col(f.Name)
		require.NotNil(t, g, f.Name)
		assert.True(t, g.Equal(f.Col), "field %s did not round-trip bit-exactly", f.Name)
	}

	stats, err := meta.Fields(ctx, "p")
	require.NoError(t, err)
	dts := map[string]engine.DType{}
	for _, s := range stats {
		dts[s.Name] = s.DType
	}
	for _, f := range fields {
		assert.Equal(t, f.Col.DType(), dts[f.Name], f.Name)
	}

	i32 := dense(engine.DenseOf([]int32{1}))
	_, err = kv.Put(ctx, "p", "c", engine.MustBatch(engine.Field{Name: "u32", Col: i32}), nil)
	require.ErrorIs(t, err, engine.ErrDTypeMismatch)
	u32 := dense(engine.DenseOf([]uint32{1}))
	_, err = kv.Put(ctx, "p", "c", engine.MustBatch(engine.Field{Name: "e4m3", Col: u32}), nil)
	require.ErrorIs(t, err, engine.ErrDTypeMismatch)
}
