package main

// Tests of `tq serve`'s own life cycle with real processes: what a start
// does with the state it finds, and what SIGTERM lets finish.

import (
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/kvapi"
)

// startServeLogged is startServeIn that also collects what the process
// prints on stdout, the lines before "ready" included.
func startServeLogged(t *testing.T, dataDir, bin string, args ...string) (*serveProc, *syncBuffer) {
	t.Helper()
	var lines syncBuffer
	p, err := spawnServe(dataDir, nil, os.Stderr, func(l string) {
		t.Logf("serve: %s", l)
		lines.Write([]byte(l + "\n"))
	}, bin, args...)
	require.NoError(t, err)
	t.Cleanup(p.kill)
	return p, &lines
}

// TestRestoreOnlyIntoAnEmptyController: --restore stays in a controller's
// flags (a config file, a Kubernetes args list), so every restart sees it.
// A controller that recovers partitions from its data directory skips it,
// saying why: keys put and acknowledged after the checkpoint survive the
// restart, as do their bytes (before, they were gone and their cells
// freed). --restore-force loads the checkpoint all the same.
func TestRestoreOnlyIntoAnEmptyController(t *testing.T) {
	bin := tqBinary(t)
	data, socks := t.TempDir(), t.TempDir()
	ctrlArgs := []string{"--role", "controller", "--listen", "", "--socket-dir", socks, "--heartbeat", "100ms"}
	ctrl := startServeIn(t, data, nil, bin, ctrlArgs...)
	addr := ctrl.addr("unix")
	startServeIn(t, data, nil, bin, "--role", "unit", "--controller", addr, "--unit-listen", "", "--socket-dir", socks, "--capacity", "16MiB")
	kv := kvapi.New(connectTo(t, ctrl, addr))
	putInt(t, kv, "p", "before", 1)
	out, err := runTQ(t, ctrl, bin, "checkpoint", "save", addr, "c0")
	require.NoError(t, err, out)
	putInt(t, kv, "p", "after", 2)
	ctrl.stop(t)

	// A restart with --restore still given: the state stands.
	ctrl, lines := startServeLogged(t, data, bin, append(ctrlArgs, "--restore", "c0")...)
	assert.Contains(t, lines.String(), "tq serve: not restoring checkpoint c0: the controller's state in ")
	assert.NotContains(t, lines.String(), "restored checkpoint")
	kv = kvapi.New(connectTo(t, ctrl, addr))
	for key, want := range map[string]int64{"before": 1, "after": 2} {
		v, err := getInt(t, kv, "p", key)
		require.NoError(t, err, "p/%s after a restart with --restore c0", key)
		assert.Equal(t, []int64{want}, v, "p/%s", key)
	}
	ctrl.stop(t)

	// --restore-force: the checkpoint replaces the state.
	ctrl, lines = startServeLogged(t, data, bin, append(ctrlArgs, "--restore", "c0", "--restore-force")...)
	assert.Contains(t, lines.String(), "tq serve: restored checkpoint c0")
	kv = kvapi.New(connectTo(t, ctrl, addr))
	v, err := getInt(t, kv, "p", "before")
	require.NoError(t, err)
	assert.Equal(t, []int64{1}, v)
	_, err = getInt(t, kv, "p", "after")
	require.ErrorIs(t, err, engine.ErrNotFound, "p/after was put after the checkpoint")
}

// TestRestoreForceNeedsRestore: --restore-force alone is a mistake, said
// at once.
func TestRestoreForceNeedsRestore(t *testing.T) {
	_, _, err := parseServeConfig([]string{"--restore-force"}, &strings.Builder{})
	require.ErrorContains(t, err, "--restore-force needs --restore")
}
