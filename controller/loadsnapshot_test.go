package controller

import (
	"context"
	"errors"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/controller/journal"
	"github.com/tqgo/tq/controller/sampler"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire/wirepb"
)

// A controller killed while a checkpoint load writes its snapshot (the
// Replaced record durable, the snapshot file not in place yet) starts
// again with the state before the load, which nobody saw, and so does
// every start after it. It used to refuse every start: replay took the
// record for one whose snapshot was damaged.
func TestRestartAfterLoadKilledBeforeItsSnapshot(t *testing.T) {
	dir := t.TempDir()
	c := openDurable(t, dir, Config{})
	insert(t, c, "p", 3, "x")
	want := stateBytes(t, c)
	// takeOver as far as WriteSnapshot's wait for the record: what the
	// disk holds when the process dies while the snapshot is written.
	unlock := c.lockAll()
	c.log(&wirepb.LogOp{Op: &wirepb.LogOp_Cluster{Cluster: &wirepb.ClusterOp{Epoch: c.epoch, Replaced: true}}})
	unlock()
	require.NoError(t, c.WaitDurable(context.Background()))
	crash(t, c)

	d, err := New(Config{Dir: dir})
	require.NoError(t, err, "restart after a load killed before its snapshot")
	assert.Equal(t, want, stateBytes(t, d))
	insert(t, d, "q", 2, "x")
	want = stateBytes(t, d)
	require.NoError(t, d.WaitDurable(context.Background()))
	crash(t, d)

	e, err := New(Config{Dir: dir})
	require.NoError(t, err, "a second restart, with records after the abandoned load")
	defer e.Close()
	assert.Equal(t, want, stateBytes(t, e))
}

// failingSaver is the sequential sampler with a state whose SaveState
// fails while fail is set.
type failingSaver struct {
	engine.Sampler
	fail atomic.Bool
}

var errSaveState = errors.New("save state failed")

func (s *failingSaver) SaveState() ([]byte, error) {
	if s.fail.Load() {
		// Slow, as a disk that fails often is: the load's record is
		// durable by the time the snapshot fails.
		time.Sleep(100 * time.Millisecond)
		return nil, errSaveState
	}
	return nil, nil
}

func (s *failingSaver) LoadState([]byte) error { return nil }

// A load whose snapshot cannot be taken (here the sampler's state cannot
// be saved) fails, and the controller acknowledges nothing more: what it
// holds in memory is the loaded state, which no record can follow. A
// restart comes back with the state before the load. It used to go on
// serving the loaded state, logging changes after a Replaced record that
// had no snapshot, and no restart could read the log again.
func TestLoadWhoseSnapshotFailsStopsTheController(t *testing.T) {
	dir := t.TempDir()
	s := &failingSaver{Sampler: sampler.NewSequential()}
	c := openDurable(t, dir, Config{Sampler: s})
	insert(t, c, "p", 3, "x")
	ck := filepath.Join(t.TempDir(), "ck")
	require.NoError(t, c.Save(ck))
	insert(t, c, "q", 2, "x")
	// What the restart must bring back is what was acknowledged durable:
	// records still waiting for their fsync when the journal stops may go.
	require.NoError(t, c.WaitDurable(context.Background()))
	want := stateBytes(t, c)

	s.fail.Store(true)
	_, err := c.Load(ck)
	require.ErrorIs(t, err, errSaveState)
	// A read of the loaded state (q is gone from it) is not acknowledged:
	// the restart brings q back.
	require.ErrorIs(t, c.WaitRead(context.Background(), "q", []string{"k"}), journal.ErrFailed,
		"a read after the failed load is not acknowledged")
	_, err = c.Insert("r", 1, []string{"x"})
	if err == nil {
		err = c.WaitDurable(context.Background())
	}
	require.ErrorIs(t, err, journal.ErrFailed, "a change after the failed load is not acknowledged")
	s.fail.Store(false)
	require.ErrorIs(t, c.Close(), journal.ErrFailed)

	d, err := New(Config{Dir: dir, Sampler: &failingSaver{Sampler: sampler.NewSequential()}})
	require.NoError(t, err)
	defer d.Close()
	assert.Equal(t, want, stateBytes(t, d), "the state before the load")
}
