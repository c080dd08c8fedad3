package client_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
)

// TestReadAfterCloseIsNotLost: a read by a client that was closed fails
// with an error wrapping engine.ErrClosed that says the client was
// closed, not engine.ErrLost: the units still hold the cells, which
// another client reads.
func TestReadAfterCloseIsNotLost(t *testing.T) {
	ctx := t.Context()
	_, addr := servedController(t)
	joinUnit(t, addr, true)
	c, err := client.Connect(ctx, addr, client.ConnectConfig{})
	require.NoError(t, err)
	m, err := c.PutNew(ctx, "p", xBatch(t, 4))
	require.NoError(t, err)
	require.NoError(t, c.Close())

	for name, read := range map[string]func() error{
		"get":      func() error { _, err := c.Get(ctx, m); return err },
		"get copy": func() error { _, err := c.GetCopy(ctx, m); return err },
		"get view": func() error { _, err := c.GetView(ctx, m); return err },
		"get into": func() error { _, err := c.GetInto(ctx, m, make([]byte, 1<<10)); return err },
	} {
		err := read()
		require.ErrorIs(t, err, engine.ErrClosed, name)
		assert.NotErrorIs(t, err, engine.ErrLost, name)
		assert.ErrorContains(t, err, "client was closed", name)
	}

	// The cells are there for a client that is open.
	c2, err := client.Connect(ctx, addr, client.ConnectConfig{})
	require.NoError(t, err)
	t.Cleanup(func() { c2.Close() })
	b, err := c2.Get(ctx, m)
	require.NoError(t, err)
	b.Release()
}
