package controller

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// TestPendingRefusedUndoesAllocation: while a first request to "new"
// holds its pending partition (pre-allocated rows taken), other requests
// allocate rows and make partitions; the request is then refused. Every
// index the partition took goes back, none of the others', and the state
// is the one a replay of the log finds.
func TestPendingRefusedUndoesAllocation(t *testing.T) {
	for _, other := range []string{"insert", "create"} {
		t.Run(other, func(t *testing.T) {
			dir := t.TempDir()
			c := openDurable(t, dir, Config{PreAlloc: 4})
			_, draining := refusedSetup(t, c)
			_, err := c.CreatePartition("old")
			require.NoError(t, err)
			before, _ := c.Indexes()

			release := holdPending(t, c, draining)
			switch other {
			case "insert":
				m, err := c.Insert("old", 3, nil)
				require.NoError(t, err)
				require.Len(t, m.Indexes, 3)
			case "create":
				_, err := c.CreatePartition("later")
				require.NoError(t, err)
			}
			mid, _ := c.Indexes()
			require.ErrorIs(t, release(), ErrDraining)

			after, _ := c.Indexes()
			assert.Equal(t, mid-4, after, "the refused partition's 4 pre-allocated indexes went back, nothing else")
			assert.Greater(t, after, before-1)
			_, err = c.Stats("new")
			require.ErrorIs(t, err, engine.ErrNotFound)

			want := stateBytes(t, c)
			require.NoError(t, c.WaitDurable(context.Background()))
			crash(t, c)
			d := openDurable(t, dir, Config{PreAlloc: 4})
			defer d.Close()
			assert.Equal(t, string(want), string(stateBytes(t, d)), "the state a replay of the log finds")

			// The partition can be made after all, with fresh rows.
			m, err := d.Insert("new", 2, nil)
			require.NoError(t, err)
			assert.Len(t, m.Indexes, 2)
		})
	}
}
