package client

import (
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
)

// TestReadErrSaysWhyTheCellsAreLost: every failed read of a unit's cells
// leaves them lost to the read (engine.ErrLost, with the unit's own error
// kept), but only a unit that did not answer is called unreachable: one
// that refused the request as wrong (an RDMA completion saying so, a
// reply that does not fit) says it refused, one that closed says so.
func TestReadErrSaysWhyTheCellsAreLost(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("no extent: %w", engine.ErrNotFound), "cells are gone from storage unit 7"},
		{fmt.Errorf(`rdma read of unit 7: "remote invalid request error": %w`, engine.ErrInvalid), "storage unit 7 refused the read"},
		{fmt.Errorf("rdma read of unit 7: remote access error: %w", engine.ErrCorrupt), "storage unit 7 refused the read"},
		{fmt.Errorf("read: %w", wire.ErrUnavailable), "storage unit 7 is unreachable"},
		{fmt.Errorf("read: %w", engine.ErrClosed), "storage unit 7 is closed (its memory went with it)"},
	} {
		err := (&Client{}).readErr(7, tc.err)
		assert.ErrorContains(t, err, tc.want)
		assert.ErrorIs(t, err, engine.ErrLost)
		assert.True(t, errors.Is(err, tc.err), "%v keeps %v", err, tc.err)
	}
}

// TestReadErrOfAClosedClientIsNotLost: once the client is closed, a
// failed read says the client was closed and wraps engine.ErrClosed, not
// engine.ErrLost, whatever its connection failed with.
func TestReadErrOfAClosedClientIsNotLost(t *testing.T) {
	c := &Client{}
	c.closed.Store(true)
	for _, cause := range []error{
		fmt.Errorf("storage unit 7: client closed: %w", engine.ErrClosed),
		fmt.Errorf("read: %w", wire.ErrUnavailable),
	} {
		err := c.readErr(7, cause)
		assert.ErrorContains(t, err, "client was closed")
		assert.ErrorIs(t, err, engine.ErrClosed)
		assert.NotErrorIs(t, err, engine.ErrLost)
		assert.True(t, errors.Is(err, cause), "%v keeps %v", err, cause)
	}
}
