package embedded

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/storage"
)

// TestPutsAnsweredOnceDurable: a KV put through a client of a durable
// controller in this process (as tq serve's KV_PUT and Redis endpoint
// run them) returns once its commit's record is durable, and the cell it
// replaced is freed on its unit. The put waits for its own record only,
// so that is checked on each return: one that returned before its fsync
// would be seen nearly every time.
func TestPutsAnsweredOnceDurable(t *testing.T) {
	cfg := controller.DefaultConfig()
	cfg.Dir = t.TempDir()
	ctrl, err := controller.New(cfg)
	require.NoError(t, err)
	defer ctrl.Close()
	scfg := storage.DefaultConfig()
	scfg.Capacity, scfg.SegmentSize = 8<<20, 8<<20
	u, err := storage.NewUnit(0, scfg)
	require.NoError(t, err)
	defer u.Close()
	id, err := ctrl.Units().Register(engine.UnitInfo{Incarnation: u.Incarnation(), Host: "h", Name: "u", Capacity: scfg.Capacity}, true)
	require.NoError(t, err)
	u.SetID(id)
	cl, err := LocalClient(ctrl, u)
	require.NoError(t, err)

	ended, cancel := context.WithCancel(context.Background())
	cancel()
	ctx := context.Background()
	for i := range 50 {
		key := fmt.Sprintf("k%d", i%10) // from the 11th on, each replaces a cell
		b := engine.MustBatch(engine.Field{Name: "v", Col: engine.BytesOf([][]byte{make([]byte, 256)})})
		_, err := cl.PutKeys(ctx, "p", []string{key}, b, nil)
		require.NoError(t, err)
		require.NoError(t, ctrl.WaitRead(ended, "p", []string{key}), "put %d returned before its record was durable", i)
	}
	_, used := localUnit{u}.Room()
	require.Equal(t, int64(10*256), used, "the replaced cells are freed: only the last put of each key holds bytes")
}
