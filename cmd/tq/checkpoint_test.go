package main

import (
	"io"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// A checkpoint saved with cells whose unit was gone says so: their reads
// fail after a load. The CLI used to print only "saved NAME".
func TestCheckpointSaysLostCells(t *testing.T) {
	assert.Empty(t, lostString(0))
	assert.Equal(t, "; 3 cells lost when it was saved (their unit was gone): reads of them fail", lostString(3))
}

// tq checkpoint save and load refuse a name that is no checkpoint name
// before they dial, naming it and the rule; with the controller down they
// used to fail with "connection refused", naming neither.
func TestCheckpointRefusesABadNameBeforeDialling(t *testing.T) {
	t.Setenv("TQ_TOKEN", "t")
	for _, verb := range []string{"save", "load"} {
		for _, name := range []string{"../x", "a/b", "", ".hidden", "a b"} {
			t.Run(verb+"/"+name, func(t *testing.T) {
				// Nothing listens on port 1: a dial would be refused.
				err := run(t.Context(), []string{"checkpoint", verb, "tcp://127.0.0.1:1", name}, io.Discard, io.Discard)
				require.Error(t, err)
				assert.ErrorIs(t, err, engine.ErrInvalid)
				assert.ErrorContains(t, err, "checkpoint name "+`"`+name+`"`)
				assert.ErrorContains(t, err, "use 1 to 128 letters")
				assert.NotContains(t, err.Error(), "refused")
			})
		}
	}
}
