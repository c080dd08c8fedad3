package main

import (
	"bytes"
	"fmt"
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

// tq checkpoint with a wrong verb or the wrong number of arguments says
// which: the verb it does not know, the argument missing, or the ones
// left over. It used to answer every such mistake with the same "want
// save ADDR NAME, load ADDR NAME or list ADDR", naming none.
func TestCheckpointNamesTheArgumentsItRefuses(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "checkpoint: no verb given: want save ADDR NAME, load ADDR NAME or list ADDR"},
		{[]string{"frob", "tcp://127.0.0.1:1"}, `checkpoint: unknown verb "frob": want save ADDR NAME, load ADDR NAME or list ADDR`},
		{[]string{"save"}, "checkpoint save: missing ADDR and NAME: want save ADDR NAME"},
		{[]string{"save", "tcp://127.0.0.1:1"}, "checkpoint save: missing NAME: want save ADDR NAME"},
		{[]string{"load", "tcp://127.0.0.1:1"}, "checkpoint load: missing NAME: want load ADDR NAME"},
		{[]string{"list"}, "checkpoint list: missing ADDR: want list ADDR"},
		{[]string{"list", "tcp://127.0.0.1:1", "extra"}, `checkpoint list: unexpected "extra": want list ADDR`},
		{[]string{"save", "tcp://127.0.0.1:1", "a", "b", "c"}, `checkpoint save: unexpected "b" "c": want save ADDR NAME`},
	} {
		t.Run(fmt.Sprint(tc.args), func(t *testing.T) {
			var stderr bytes.Buffer
			err := run(t.Context(), append([]string{"checkpoint"}, tc.args...), io.Discard, &stderr)
			require.EqualError(t, err, tc.want)
			assert.Contains(t, stderr.String(), "usage:", "the usage goes with the error")
		})
	}
}
