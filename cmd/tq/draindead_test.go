package main

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/kvapi"
)

// A drain of a unit that went silent with its connections open (SIGSTOP)
// and that the controller reports dead ends as unavailable, its cells
// lost to it, once its read of the unit has waited deadCheck, not at its
// deadline: the drain's reads of the unit were not watched as a get's
// are, and waited for the connection's liveness check (10 s) or the
// drain's deadline, whichever came first.
func TestDrainOfASilentUnitEnds(t *testing.T) {
	sc := startSilentPair(t, false, "", nil)
	units, c := sc.units, sc.c
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	silent := sc.putOnOne(ctx, t, kvapi.New(c), "p", helperKeys(0, 8))
	// Each start waits for its unit to register: unit 1 is units[0].
	require.NoError(t, units[silent-1].cmd.Process.Signal(syscall.SIGSTOP))
	sc.waitLost(t)

	dctx, dcancel := context.WithTimeout(ctx, 8*time.Second)
	defer dcancel()
	_, err := c.Drain(dctx, silent, client.DrainConfig{Settle: time.Millisecond})
	require.Error(t, err, "a drain of the silent unit %d", silent)
	assert.ErrorIs(t, err, engine.ErrUnavailable)
	assert.ErrorIs(t, err, engine.ErrLost)
	assert.NoError(t, dctx.Err(), "the drain waited for its deadline: %v", err)
}
