package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/controller"
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

// tq checkpoint save over a checkpoint of the same name replaces it (by
// design: the swap is atomic) and says so, with what the old one held;
// it used to print only "saved NAME", as if the name had been free.
func TestCheckpointSaveSaysWhatItReplaced(t *testing.T) {
	ctrl, err := controller.New(controller.Config{})
	require.NoError(t, err)
	_, err = ctrl.Insert("train", 3, nil)
	require.NoError(t, err)
	srv := controller.NewServer(ctrl, controller.ServerConfig{Token: statTestToken, CheckpointDir: t.TempDir()})
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "c.sock"))
	require.NoError(t, err)
	served := make(chan struct{})
	go func() { srv.Serve(l); close(served) }()
	t.Cleanup(func() { srv.Close(); <-served; ctrl.Close() })
	addr := "unix://" + l.Addr().String()
	save := func(name string, args ...string) string {
		t.Helper()
		var out bytes.Buffer
		err := run(t.Context(), append([]string{"checkpoint", "save", "--token", statTestToken, addr, name}, args...), &out, io.Discard)
		require.NoError(t, err)
		t.Logf("tq checkpoint save %s: %s", name, out.String())
		return out.String()
	}

	out := save("ck", "--metadata", `{"step": 100}`)
	assert.Contains(t, out, "saved ck")
	assert.NotContains(t, out, "replaced", "the name was free")

	out = save("ck", "--metadata", `{"step": 200}`)
	assert.Contains(t, out, "saved ck")
	assert.Contains(t, out, "replaced the earlier checkpoint ck (saved ")
	assert.Contains(t, out, `metadata {"step":100}`, "what the old one held")
	assert.NotContains(t, out, `"step":200`, "the old one's metadata, not the new")

	out = save("other")
	assert.NotContains(t, out, "replaced", "another name")
}
