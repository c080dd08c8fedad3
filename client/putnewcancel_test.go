package client_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/embedded"
	"github.com/tqgo/tq/engine"
)

// givingUpUnit is a unit whose write is where its caller gives up.
type givingUpUnit struct {
	client.DataUnit
	cancel context.CancelFunc
}

func (g givingUpUnit) Write(ctx context.Context, _ [][][]byte) ([]engine.RemoteAddr, error) {
	g.cancel()
	return nil, context.Cause(ctx)
}

// A PutNew whose caller gives up after its rows were made gives them
// back all the same: the clear used the caller's ended context, failed,
// and left rows that would never be produced in the partition (a
// consumer waiting for the partition's end waited for them for good).
func TestPutNewGivenUpGivesItsRowsBack(t *testing.T) {
	ctrl, addr, u := servedControllerAndUnit(t)
	ctx, cancel := context.WithCancel(t.Context())
	c, err := client.New(dialMeta(t, addr, client.RemoteConfig{}), []client.DataUnit{givingUpUnit{embedded.Unit(u), cancel}}, client.DefaultConfig())
	require.NoError(t, err)
	_, err = c.PutNew(ctx, "p", xBatch(t, 4))
	require.ErrorIs(t, err, context.Canceled)
	st, err := ctrl.Stats("p")
	require.NoError(t, err)
	assert.Zero(t, st.Rows, "rows left by a put its caller gave up")
}
