package embedded

import (
	"context"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/storage"
)

// readConn is the controller's data connection to a unit of this process,
// as tq serve --role all dials it for a checkpoint.
type readConn struct{ u *storage.Unit }

func (c readConn) Write(ctx context.Context, extents [][][]byte) ([]engine.RemoteAddr, error) {
	return WriteReserved(ctx, c.u, extents)
}
func (c readConn) Read(ctx context.Context, ranges []engine.RemoteAddr, dst [][]byte) error {
	return localUnit{c.u}.ReadInto(ctx, ranges, dst)
}
func (c readConn) Free(_ context.Context, cells []engine.RemoteAddr) error { return c.u.Free(cells) }
func (c readConn) Close() error                                            { return nil }

// A checkpoint with data reads the cells of the state it copied, so the
// frees of cells a change drops after the copy wait for the save: those
// the units collect from the controller's queue, and those a KV put of
// this process (tq serve --role all: KV_PUT, KV_SET, RESP) makes on its
// own units, which used to free the bytes the save then read (the save
// failed: "no extent of generation …"). They are made once it is done.
func TestCheckpointSaveSurvivesKVOverwrite(t *testing.T) {
	ctrl, err := controller.New(controller.DefaultConfig())
	require.NoError(t, err)
	t.Cleanup(func() { ctrl.Close() })
	scfg := storage.DefaultConfig()
	scfg.Capacity, scfg.SegmentSize = 1<<20, 1<<20
	u, err := storage.NewUnit(0, scfg)
	require.NoError(t, err)
	t.Cleanup(func() { u.Close() })
	id, err := ctrl.Units().Register(engine.UnitInfo{Incarnation: u.Incarnation(), Host: "h", Name: "u", Capacity: scfg.Capacity}, true)
	require.NoError(t, err)
	u.SetID(id)
	kdi, err := KVData(ctrl, u)
	require.NoError(t, err)
	kd := kdi.(kvData)
	ctx := context.Background()

	set := func(v string) {
		_, err := kd.SetValue(ctx, "p", "k", "f", len(v), controller.ReadFunc(func(dst []byte) error {
			copy(dst, v)
			return nil
		}))
		require.NoError(t, err)
	}
	set("old value")

	var once sync.Once
	srv := controller.NewServer(ctrl, controller.ServerConfig{
		CheckpointDir: t.TempDir(),
		Dial: func(_ context.Context, ui engine.UnitInfo) (engine.DataConn, error) {
			// The save copied the state (naming "old value"'s cell) and
			// now reads the unit; a KV overwrite comes meanwhile.
			once.Do(func() { set("new value") })
			return readConn{u}, nil
		},
	})
	t.Cleanup(func() { srv.Close() })
	used := u.Stats().Used
	_, err = srv.SaveCheckpoint(ctx, "c", nil)
	require.NoError(t, err, "a checkpoint saved while a KV put overwrote a key")
	require.Equal(t, used, u.Stats().Used, "one value's extent: the replaced one was freed once the save was done")
}
