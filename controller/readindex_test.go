package controller

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// TestReadIndexCoversAClearOfThePartitionMeanwhile: a read that found a
// key (a one-key GET's lookup) and then waits for it to be durable while
// its partition is cleared waits at least for the key's last record. It
// used to read c.removed before it looked the partition up: a clear made
// in between hid the key's record and left c.removed's old value, so the
// GET answered a value whose put (and clear) a crash could still undo.
func TestReadIndexCoversAClearOfThePartitionMeanwhile(t *testing.T) {
	c := openDurable(t, t.TempDir(), DefaultConfig())
	t.Cleanup(func() { c.Close() })
	_, err := c.CommitKeys(engine.KeysCommit{Partition: "p", Keys: []string{"k"}, Tags: []engine.Tags{{"t": int64(1)}}})
	require.NoError(t, err)
	put := c.readIndex("p", []string{"k"})
	require.NotZero(t, put)

	// The clear waits for the partition's lock, holding c.mu; the read,
	// which looked the key up before, waits behind it.
	p, _ := c.lock("p")
	cleared := make(chan error)
	go func() {
		_, err := c.ClearPartition("p")
		cleared <- err
	}()
	time.Sleep(20 * time.Millisecond)
	read := make(chan uint64)
	go func() { read <- c.readIndex("p", []string{"k"}) }()
	time.Sleep(20 * time.Millisecond)
	p.mu.Unlock()
	require.NoError(t, <-cleared)
	require.GreaterOrEqual(t, <-read, put, "a read of a key whose partition was cleared meanwhile waits for the key's record")
}
