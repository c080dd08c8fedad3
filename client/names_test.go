package client_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
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

// watchedUnit is a unit that fails the test if a byte is written to or
// reserved on it: the cases below must be refused before.
type watchedUnit struct {
	client.DataUnit
	t *testing.T
}

func (w watchedUnit) Write(context.Context, [][][]byte) ([]engine.RemoteAddr, error) {
	w.t.Errorf("a write reached unit %d", w.ID())
	return nil, errors.New("unexpected write")
}

func (w watchedUnit) ReserveExtents(context.Context, []int64) (client.Reserved, error) {
	w.t.Errorf("a reservation reached unit %d", w.ID())
	return nil, errors.New("unexpected reservation")
}

// Names the wire cannot carry, or empty where a name is required, are
// refused before anything is sent — to the controller or to a unit — with
// an error wrapping engine.ErrInvalid that quotes the value and says what
// it is, on the embedded path and the remote one alike.
func TestBadNamesRefusedUpFront(t *testing.T) {
	const bad = "caf\xe9" // Latin-1, not UTF-8
	quoted := fmt.Sprintf("%q", bad)
	ok := []string{"k0", "k1"}
	batch := func(field string) *engine.Batch {
		col, err := engine.DenseOf([]int64{1, 2}, 1)
		require.NoError(t, err)
		b, err := engine.NewBatch(engine.Field{Name: field, Col: col})
		require.NoError(t, err)
		return b
	}
	good := batch("x")
	spec := func(name string) client.FieldSpec {
		return client.FieldSpec{Name: name, DType: engine.Int64, Shape: engine.Shape{1}}
	}
	// meta is a meta of two rows, for the batch API's Put.
	meta := &engine.BatchMeta{Partitions: []string{"p", "p"}, Indexes: []uint64{0, 1}, Ready: make([]bool, 2), Tags: make([]engine.Tags, 2)}
	for _, tc := range []struct {
		name  string
		what  string // "key", "partition", "field", "task"
		value string // the name, quoted in the message; "" when empty
		op    func(ctx context.Context, c *client.Client, kv *kvapi.KV) error
	}{
		{"batch put: key", "key", bad, func(ctx context.Context, _ *client.Client, kv *kvapi.KV) error {
			_, err := kv.BatchPut(ctx, "p", []string{"k0", bad}, good, nil)
			return err
		}},
		{"batch put: partition", "partition", bad, func(ctx context.Context, _ *client.Client, kv *kvapi.KV) error {
			_, err := kv.BatchPut(ctx, bad, ok, good, nil)
			return err
		}},
		{"batch put: field", "field", bad, func(ctx context.Context, _ *client.Client, kv *kvapi.KV) error {
			_, err := kv.BatchPut(ctx, "p", ok, batch(bad), nil)
			return err
		}},
		{"put keys: empty key", "key", "", func(ctx context.Context, c *client.Client, _ *kvapi.KV) error {
			_, err := c.PutKeys(ctx, "p", []string{"k0", ""}, good, nil)
			return err
		}},
		{"put keys: tags only, bad key", "key", bad, func(ctx context.Context, c *client.Client, _ *kvapi.KV) error {
			_, err := c.PutKeys(ctx, "p", []string{bad}, nil, []engine.Tags{{"a": 1}})
			return err
		}},
		{"batch get: key", "key", bad, func(ctx context.Context, _ *client.Client, kv *kvapi.KV) error {
			_, err := kv.BatchGet(ctx, "p", []string{bad})
			return err
		}},
		{"batch get: field", "field", bad, func(ctx context.Context, _ *client.Client, kv *kvapi.KV) error {
			_, err := kv.BatchGet(ctx, "p", ok, "x", bad)
			return err
		}},
		{"list: partition", "partition", bad, func(ctx context.Context, _ *client.Client, kv *kvapi.KV) error {
			_, err := kv.List(ctx, bad)
			return err
		}},
		{"clear: key", "key", bad, func(ctx context.Context, _ *client.Client, kv *kvapi.KV) error {
			return kv.Clear(ctx, "p", []string{bad})
		}},
		{"clear: partition", "partition", bad, func(ctx context.Context, _ *client.Client, kv *kvapi.KV) error {
			return kv.Clear(ctx, bad, ok)
		}},
		{"put new: partition", "partition", bad, func(ctx context.Context, c *client.Client, _ *kvapi.KV) error {
			_, err := c.PutNew(ctx, bad, good)
			return err
		}},
		{"put new: field", "field", bad, func(ctx context.Context, c *client.Client, _ *kvapi.KV) error {
			_, err := c.PutNew(ctx, "p", batch(bad))
			return err
		}},
		{"put: field", "field", bad, func(ctx context.Context, c *client.Client, _ *kvapi.KV) error {
			_, err := c.Put(ctx, batch(bad), meta)
			return err
		}},
		{"fetch: task", "task", bad, func(ctx context.Context, c *client.Client, _ *kvapi.KV) error {
			_, err := c.GetMeta(ctx, client.MetaRequest{Partition: "p", Task: bad, Fields: []string{"x"}, BatchSize: 1})
			return err
		}},
		{"fetch: empty task", "task", "", func(ctx context.Context, c *client.Client, _ *kvapi.KV) error {
			_, err := c.GetMeta(ctx, client.MetaRequest{Partition: "p", Fields: []string{"x"}, BatchSize: 1})
			return err
		}},
		{"fetch: field", "field", bad, func(ctx context.Context, c *client.Client, _ *kvapi.KV) error {
			_, err := c.GetMeta(ctx, client.MetaRequest{Partition: "p", Task: "t", Fields: []string{bad}, BatchSize: 1})
			return err
		}},
		{"force fetch: partition", "partition", bad, func(ctx context.Context, c *client.Client, _ *kvapi.KV) error {
			_, err := c.GetMeta(ctx, client.MetaRequest{Partition: bad, Mode: client.ForceFetch})
			return err
		}},
		{"insert: empty partition", "partition", "", func(ctx context.Context, c *client.Client, _ *kvapi.KV) error {
			_, err := c.GetMeta(ctx, client.MetaRequest{Mode: client.Insert, Fields: []string{"x"}, BatchSize: 1})
			return err
		}},
		{"meta by keys: key", "key", bad, func(ctx context.Context, c *client.Client, _ *kvapi.KV) error {
			_, err := c.MetaByKeys(ctx, "p", []string{bad}, nil, true)
			return err
		}},
		{"keys of: partition", "partition", bad, func(ctx context.Context, c *client.Client, _ *kvapi.KV) error {
			_, err := c.KeysOf(ctx, bad, []uint64{0})
			return err
		}},
		{"production status: field", "field", bad, func(ctx context.Context, c *client.Client, _ *kvapi.KV) error {
			_, err := c.ProductionStatus(ctx, "p", []string{bad})
			return err
		}},
		{"consumption status: task", "task", bad, func(ctx context.Context, c *client.Client, _ *kvapi.KV) error {
			_, err := c.ConsumptionStatus(ctx, "p", bad)
			return err
		}},
		{"reset consumption: task", "task", bad, func(ctx context.Context, c *client.Client, _ *kvapi.KV) error {
			return c.ResetConsumption(ctx, "p", bad)
		}},
		{"clear partition", "partition", bad, func(ctx context.Context, c *client.Client, _ *kvapi.KV) error {
			return c.ClearPartition(ctx, bad)
		}},
		{"stats: partition", "partition", bad, func(ctx context.Context, c *client.Client, _ *kvapi.KV) error {
			_, err := c.Stats(ctx, bad)
			return err
		}},
		{"fields: partition", "partition", bad, func(ctx context.Context, c *client.Client, _ *kvapi.KV) error {
			_, err := c.Fields(ctx, bad)
			return err
		}},
		{"reserve put keys: key", "key", bad, func(ctx context.Context, c *client.Client, _ *kvapi.KV) error {
			_, err := c.ReservePutKeys(ctx, "p", []string{bad}, nil, spec("x"))
			return err
		}},
		{"reserve put keys: field", "field", bad, func(ctx context.Context, c *client.Client, _ *kvapi.KV) error {
			_, err := c.ReservePutKeys(ctx, "p", ok, nil, spec(bad))
			return err
		}},
		{"reserve put: field", "field", bad, func(ctx context.Context, c *client.Client, _ *kvapi.KV) error {
			_, err := c.ReservePut(ctx, meta, spec(bad))
			return err
		}},
	} {
		for _, path := range []string{"embedded", "remote"} {
			t.Run(path+"/"+tc.name, func(t *testing.T) {
				msg := refusedUpFront(t, path, tc.op)
				if tc.value == "" {
					assert.Contains(t, msg, "empty "+tc.what, "the error says which name is empty")
				} else {
					assert.Contains(t, msg, tc.what+" "+quoted, "the error quotes the value and says what it is")
				}
				assert.True(t, strings.Contains(msg, "UTF-8") || tc.value == "", msg)
			})
		}
	}
}

// refusedUpFront runs op with a client of path (namesClient) and returns
// its error's message: an error wrapping engine.ErrInvalid, raised before
// the request was sent (it did not reach the closed connection).
func refusedUpFront(t *testing.T, path string, op func(context.Context, *client.Client, *kvapi.KV) error) string {
	t.Helper()
	c := namesClient(t, path)
	err := op(t.Context(), c, kvapi.New(c))
	require.ErrorIs(t, err, engine.ErrInvalid)
	assert.False(t, errors.Is(err, engine.ErrClosed), "the request reached the closed connection: %v", err)
	return err.Error()
}

// namesClient returns a client over watched units, its metadata service
// the embedded controller or a remote one whose connection is closed
// already (so a request that were sent would fail with ErrClosed).
func namesClient(t *testing.T, path string) *client.Client {
	t.Helper()
	ctrl := newController(t)
	var meta client.MetaService = embedded.Meta(ctrl)
	if path == "remote" {
		_, addr := serveController(t, ctrl, controller.ServerConfig{}, "unix")
		r, err := client.DialMeta(t.Context(), addr, client.RemoteConfig{})
		require.NoError(t, err)
		require.NoError(t, r.Close())
		meta = r
	}
	cfg := storage.DefaultConfig()
	cfg.Capacity = 4 << 20
	var units []client.DataUnit
	for id := range 2 {
		u, err := storage.NewUnit(engine.UnitID(id+1), cfg)
		require.NoError(t, err)
		t.Cleanup(func() { u.Close() })
		units = append(units, watchedUnit{embedded.Unit(u), t})
	}
	c, err := client.New(meta, units, client.Config{Placement: client.Hash})
	require.NoError(t, err)
	return c
}

// Names longer than engine.MaxNameBytes are refused before anything is
// sent, as names the wire cannot carry are: an error wrapping
// engine.ErrInvalid that says which name, its length and the limit, and
// quotes only the name's first bytes.
func TestLongNamesRefusedUpFront(t *testing.T) {
	long := strings.Repeat("n", engine.MaxNameBytes+1)
	ok := []string{"k0", "k1"}
	batch := func(field string) *engine.Batch {
		col, err := engine.DenseOf([]int64{1, 2}, 1)
		require.NoError(t, err)
		b, err := engine.NewBatch(engine.Field{Name: field, Col: col})
		require.NoError(t, err)
		return b
	}
	good := batch("x")
	for _, tc := range []struct {
		name, what string
		op         func(ctx context.Context, c *client.Client, kv *kvapi.KV) error
	}{
		{"batch put: key", "key", func(ctx context.Context, _ *client.Client, kv *kvapi.KV) error {
			_, err := kv.BatchPut(ctx, "p", []string{"k0", long}, good, nil)
			return err
		}},
		{"batch put: partition", "partition", func(ctx context.Context, _ *client.Client, kv *kvapi.KV) error {
			_, err := kv.BatchPut(ctx, long, ok, good, nil)
			return err
		}},
		{"batch put: field", "field", func(ctx context.Context, _ *client.Client, kv *kvapi.KV) error {
			_, err := kv.BatchPut(ctx, "p", ok, batch(long), nil)
			return err
		}},
		{"put keys: tags only", "key", func(ctx context.Context, c *client.Client, _ *kvapi.KV) error {
			_, err := c.PutKeys(ctx, "p", []string{long}, nil, []engine.Tags{{"a": 1}})
			return err
		}},
		{"put new: partition", "partition", func(ctx context.Context, c *client.Client, _ *kvapi.KV) error {
			_, err := c.PutNew(ctx, long, good)
			return err
		}},
		{"meta by keys: key", "key", func(ctx context.Context, c *client.Client, _ *kvapi.KV) error {
			_, err := c.MetaByKeys(ctx, "p", []string{long}, nil, true)
			return err
		}},
		{"fetch: task", "task", func(ctx context.Context, c *client.Client, _ *kvapi.KV) error {
			_, err := c.GetMeta(ctx, client.MetaRequest{Partition: "p", Task: long, Fields: []string{"x"}, BatchSize: 1})
			return err
		}},
		{"insert: partition", "partition", func(ctx context.Context, c *client.Client, _ *kvapi.KV) error {
			_, err := c.GetMeta(ctx, client.MetaRequest{Mode: client.Insert, Partition: long, Fields: []string{"x"}, BatchSize: 1})
			return err
		}},
	} {
		for _, path := range []string{"embedded", "remote"} {
			t.Run(path+"/"+tc.name, func(t *testing.T) {
				msg := refusedUpFront(t, path, tc.op)
				assert.Contains(t, msg, fmt.Sprintf("%s %q… is %d bytes long, past the limit of %d", tc.what, long[:32], len(long), engine.MaxNameBytes))
				assert.Less(t, len(msg), 1024, "the error quotes only the name's first bytes")
			})
		}
	}
}

// A field list that names a field twice — a get's selection, a fetch's,
// an insert's — is refused before anything is sent, naming the field, as
// a key named twice is: the meta would quietly hold the field once.
func TestRepeatedFieldRefusedUpFront(t *testing.T) {
	twice := []string{"x", "y", "x"}
	for _, tc := range []struct {
		name string
		op   func(ctx context.Context, c *client.Client, kv *kvapi.KV) error
	}{
		{"batch get", func(ctx context.Context, _ *client.Client, kv *kvapi.KV) error {
			_, err := kv.BatchGet(ctx, "p", []string{"k0"}, twice...)
			return err
		}},
		{"batch get copy", func(ctx context.Context, _ *client.Client, kv *kvapi.KV) error {
			_, err := kv.BatchGetCopy(ctx, "p", []string{"k0"}, twice...)
			return err
		}},
		{"get keys", func(ctx context.Context, c *client.Client, _ *kvapi.KV) error {
			_, _, err := c.GetKeys(ctx, "p", []string{"k0"}, twice)
			return err
		}},
		{"meta by keys", func(ctx context.Context, c *client.Client, _ *kvapi.KV) error {
			_, err := c.MetaByKeys(ctx, "p", []string{"k0"}, twice, false)
			return err
		}},
		{"fetch", func(ctx context.Context, c *client.Client, _ *kvapi.KV) error {
			_, err := c.GetMeta(ctx, client.MetaRequest{Partition: "p", Task: "t", Fields: twice, BatchSize: 1})
			return err
		}},
		{"force fetch", func(ctx context.Context, c *client.Client, _ *kvapi.KV) error {
			_, err := c.GetMeta(ctx, client.MetaRequest{Partition: "p", Mode: client.ForceFetch, Fields: twice})
			return err
		}},
		{"insert", func(ctx context.Context, c *client.Client, _ *kvapi.KV) error {
			_, err := c.GetMeta(ctx, client.MetaRequest{Partition: "p", Mode: client.Insert, Fields: twice, BatchSize: 1})
			return err
		}},
		{"production status", func(ctx context.Context, c *client.Client, _ *kvapi.KV) error {
			_, err := c.ProductionStatus(ctx, "p", twice)
			return err
		}},
	} {
		for _, path := range []string{"embedded", "remote"} {
			t.Run(path+"/"+tc.name, func(t *testing.T) {
				msg := refusedUpFront(t, path, tc.op)
				assert.Contains(t, msg, `field "x" appears twice`)
			})
		}
	}
}
