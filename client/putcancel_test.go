package client_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/embedded"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/storage"
)

// canceler ends the context of the put under way at one point of it: once
// its bytes are on the unit (written, or a reservation committed there),
// or as the controller is asked to commit it.
type canceler struct {
	mu      sync.Mutex
	atUnit  context.CancelFunc
	atMeta  context.CancelFunc
	unitHit bool
}

func (c *canceler) unit() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.atUnit != nil {
		c.atUnit()
		c.unitHit = true
	}
}

func (c *canceler) meta() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.atMeta != nil {
		c.atMeta()
	}
}

// cancelingUnit is a unit whose write, or reserved commit, lands and then
// ends its caller's context.
type cancelingUnit struct {
	client.DataUnit
	c *canceler
}

func (u cancelingUnit) Write(ctx context.Context, extents [][][]byte) ([]engine.RemoteAddr, error) {
	addrs, err := u.DataUnit.Write(ctx, extents)
	u.c.unit()
	return addrs, err
}

func (u cancelingUnit) ReserveExtents(ctx context.Context, sizes []int64) (client.Reserved, error) {
	r, err := u.DataUnit.(client.Reserver).ReserveExtents(ctx, sizes)
	if err != nil {
		return nil, err
	}
	return cancelingReserved{r, u.c}, nil
}

type cancelingReserved struct {
	client.Reserved
	c *canceler
}

func (r cancelingReserved) Commit(ctx context.Context) error {
	err := r.Reserved.Commit(ctx)
	r.c.unit()
	return err
}

// cancelingMeta ends the put's context as its commit is asked (and hides
// the remote's KV_PUT: every put goes through the unit).
type cancelingMeta struct {
	client.MetaService
	c *canceler
}

func (m cancelingMeta) Commit(ctx context.Context, req engine.CommitRequest) error {
	m.c.meta()
	return m.MetaService.Commit(ctx, req)
}

func (m cancelingMeta) CommitKeys(ctx context.Context, req engine.KeysCommit) (engine.KeysCommitted, error) {
	m.c.meta()
	return m.MetaService.CommitKeys(ctx, req)
}

// cancelPut is one kind of put of x = 0, 1, 2 into partition p, made
// with ctx (a reserved one is reserved with it too; one into rows inserts
// them first).
type cancelPut struct {
	name string
	put  func(t *testing.T, ctx context.Context, c *client.Client) error
	// rows returns the meta of the rows the put made, nil for none.
	rows func(t *testing.T, c *client.Client) *engine.BatchMeta
}

var cancelKeys = []string{"a", "b", "c"}

var cancelPuts = []cancelPut{
	{
		name: "put",
		put: func(t *testing.T, ctx context.Context, c *client.Client) error {
			_, err := c.PutNew(ctx, "p", xBatch(t, 3))
			return err
		},
		rows: readyRows,
	},
	{
		name: "put keys",
		put: func(t *testing.T, ctx context.Context, c *client.Client) error {
			_, err := c.PutKeys(ctx, "p", cancelKeys, xBatch(t, 3), nil)
			return err
		},
		rows: keyRows,
	},
	{
		name: "reserve put",
		put: func(t *testing.T, ctx context.Context, c *client.Client) error {
			meta, err := c.Meta().Insert(context.Background(), "p", 3, []string{"x"})
			require.NoError(t, err)
			pb, err := c.ReservePut(ctx, meta, client.FieldSpec{Name: "x", DType: engine.Int64})
			require.NoError(t, err)
			fillX(t, pb.Column("x"))
			_, err = pb.Commit(ctx)
			return err
		},
		rows: readyRows,
	},
	{
		name: "reserve put keys",
		put: func(t *testing.T, ctx context.Context, c *client.Client) error {
			pb, err := c.ReservePutKeys(ctx, "p", cancelKeys, nil, client.FieldSpec{Name: "x", DType: engine.Int64})
			require.NoError(t, err)
			fillX(t, pb.Column("x"))
			_, err = pb.Commit(ctx)
			return err
		},
		rows: keyRows,
	},
}

// readyRows returns the meta of the partition's rows whose x is
// produced, nil for none.
func readyRows(t *testing.T, c *client.Client) *engine.BatchMeta {
	m, err := c.Meta().ForceFetch(context.Background(), "p", []string{"x"})
	if errors.Is(err, engine.ErrNotFound) {
		return nil
	}
	require.NoError(t, err)
	var pos []int
	for i, r := range m.Ready {
		if r {
			pos = append(pos, i)
		}
	}
	if len(pos) == 0 {
		return nil
	}
	m, err = m.SelectRows(pos)
	require.NoError(t, err)
	return m
}

func keyRows(t *testing.T, c *client.Client) *engine.BatchMeta {
	m, _, err := c.Meta().ResolveKeys(context.Background(), "p", cancelKeys, []string{"x"}, false)
	if errors.Is(err, engine.ErrNotFound) {
		return nil
	}
	require.NoError(t, err)
	return m
}

func fillX(t *testing.T, col *engine.Column) {
	x, err := engine.Values[int64](col)
	require.NoError(t, err)
	for i := range x {
		x[i] = int64(i)
	}
}

// A put whose context ends once its bytes are on the unit, or while the
// controller commits it, either succeeds, its rows reading back what it
// put, or fails having left nothing: no row or key, and nothing on the
// unit (what it wrote is freed at once, not left for the units'
// reconciliation). Only a put the controller took before the context
// ended may fail and stay, and then its rows read back whole. Every kind
// of put, with a controller reached over a socket (which is sent nothing
// once the context ended) and one in this process with a log (which
// takes the commit and waits for its record with the context).
func TestPutCanceledAtItsCommitLeavesNothing(t *testing.T) {
	for _, remote := range []bool{true, false} {
		for _, at := range []string{"unit", "commit"} {
			for _, p := range cancelPuts {
				where := map[bool]string{true: "remote", false: "in process"}[remote]
				t.Run(where+"/"+at+"/"+p.name, func(t *testing.T) {
					testPutCanceled(t, p, remote, at)
				})
			}
		}
	}
}

func testPutCanceled(t *testing.T, p cancelPut, remote bool, at string) {
	u, err := storage.NewUnit(1, storage.DefaultConfig())
	require.NoError(t, err)
	t.Cleanup(func() { u.Close() })
	cfg := controller.Config{}
	if !remote {
		cfg.Dir = t.TempDir()
	}
	ctrl, err := controller.New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { ctrl.Close() })
	var meta client.MetaService
	if remote {
		_, addr := serveController(t, ctrl, controller.ServerConfig{}, "unix")
		meta = dialMeta(t, addr, client.RemoteConfig{})
	} else {
		meta = embedded.Meta(ctrl, u)
	}
	cn := &canceler{}
	c, err := client.New(cancelingMeta{meta, cn}, []client.DataUnit{cancelingUnit{embedded.Unit(u), cn}}, client.DefaultConfig())
	require.NoError(t, err)

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	cn.mu.Lock()
	if at == "unit" {
		cn.atUnit = cancel
	} else {
		cn.atMeta = cancel
	}
	cn.mu.Unlock()
	err = p.put(t, ctx, c)
	cn.mu.Lock()
	cn.atUnit, cn.atMeta = nil, nil
	require.True(t, at != "unit" || cn.unitHit, "the put's bytes never reached the unit")
	cn.mu.Unlock()

	rows := p.rows(t, c)
	switch {
	case err == nil || rows != nil:
		require.NotNil(t, rows, "a put that succeeded made no rows")
		got, gerr := c.GetCopy(t.Context(), rows)
		require.NoError(t, gerr, "the rows of a put (err %v)", err)
		require.Equal(t, []int64{0, 1, 2}, slices.Sorted(slices.Values(values(t, got, "x"))))
		if err != nil {
			// Taken before ctx ended, and whole: the error must say so.
			require.False(t, remote, "a put a remote controller was never sent failed (%v) and made rows", err)
			require.ErrorIs(t, err, context.Canceled)
			require.ErrorContains(t, err, "may have happened")
		}
	default:
		require.ErrorIs(t, err, context.Canceled)
		require.Eventually(t, func() bool { return u.Stats().Used == 0 }, 10*time.Second, time.Millisecond,
			"a put that failed (%v) left %d bytes on the unit", err, u.Stats().Used)
	}
	if at == "commit" {
		require.NoError(t, err, "a put whose commit the controller answered")
	}
}
