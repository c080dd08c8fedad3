package embedded

import (
	"context"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
)

// drainingMeta is the in-process meta service that marks the unit of a
// commit's first cell draining just before the first commit reaches the
// controller: a drain begun between a put's placement and its commit.
type drainingMeta struct {
	localMeta
	once *sync.Once
}

func (m drainingMeta) CommitKeys(ctx context.Context, req engine.KeysCommit) (engine.KeysCommitted, error) {
	m.once.Do(func() { m.c.DrainUnit(req.Fields[0].Locs[0].Unit, true) })
	return m.localMeta.CommitKeys(ctx, req)
}

// TestLocalClientPutsAgainWhenItsUnitStartsDraining: a client of units
// in its process (KV_PUT's of several keys in tq serve, the RESP
// endpoint's general puts) whose commit is refused because the unit it
// wrote to started draining after it placed the cells puts once more on
// the units as they are now, as a client that lists the units does; it
// used to fail the put with "data lost".
func TestLocalClientPutsAgainWhenItsUnitStartsDraining(t *testing.T) {
	ctrl, units, _, _ := kvPair(t)
	meta := drainingMeta{localMeta: Meta(ctrl, units...).(localMeta), once: new(sync.Once)}
	dus := []client.DataUnit{Unit(units[0]), Unit(units[1])}
	cl, err := client.New(meta, dus, client.DefaultConfig())
	require.NoError(t, err)
	t.Cleanup(func() { cl.Close() })
	ctx := context.Background()
	b := engine.MustBatch(engine.Field{Name: "f", Col: engine.BytesOf([][]byte{[]byte("one"), []byte("two")})})
	_, err = cl.PutKeys(ctx, "p", []string{"a", "b"}, b, nil)
	require.NoError(t, err, "a put whose unit started draining before its commit")
	m, err := cl.MetaByKeys(ctx, "p", []string{"a", "b"}, []string{"f"}, false)
	require.NoError(t, err)
	for i, loc := range m.Cells["f"] {
		require.False(t, ctrl.Units().Draining(loc.Unit), "key %d placed on draining unit %d", i, loc.Unit)
	}
	require.NoError(t, cl.ClearKeys(ctx, "p", []string{"a", "b"}))
	require.Zero(t, used(units), "bytes left once the keys are cleared: the refused try's given back")
}
