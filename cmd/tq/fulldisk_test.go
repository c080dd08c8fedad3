package main

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/kvapi"
)

// durability.md, "The log": a controller whose log cannot be written (its
// disk full) acknowledges nothing more: the process stops (exit status
// 2, the error on standard error) and its clients see their connections
// end. A restart, once there is room, replays what reached the disk:
// every put acknowledged before is there. The data directory is a small
// tmpfs: the test needs to be able to mount one.
func TestControllerOnAFullDiskStopsAndKeepsWhatItAcknowledged(t *testing.T) {
	bin := tqBinary(t)
	data, socks := smallTmpfs(t), t.TempDir()
	args := []string{"--listen", "", "--socket-dir", socks, "--capacity", "16MiB"}
	var stderr syncBuilder
	ctrl, err := spawnServe(data, nil, &stderr, func(l string) { t.Logf("serve: %s", l) }, bin, args...)
	require.NoError(t, err)
	t.Cleanup(ctrl.kill)
	c, err := client.Connect(t.Context(), "unix://"+filepath.Join(socks, "controller.sock"),
		client.ConnectConfig{Token: ctrl.token(t), Name: "fulldisk", WaitForUnits: true})
	require.NoError(t, err)
	kv := kvapi.New(c)

	pad := strings.Repeat("x", 4<<10)
	var acked []string
	var putErr error
	for i := range 10000 {
		key := fmt.Sprintf("k%05d", i)
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		_, putErr = kv.Put(ctx, "p", key, nil, engine.Tags{"i": i, "pad": pad})
		cancel()
		if putErr != nil {
			break
		}
		acked = append(acked, key)
	}
	c.Close()
	require.Error(t, putErr, "10000 puts of 4 KiB of tags fit a 2 MiB disk")
	t.Logf("%d puts acknowledged, then: %v", len(acked), putErr)
	require.NotEmpty(t, acked)

	select {
	case err = <-ctrl.done:
		ctrl.done <- err
	case <-time.After(30 * time.Second):
		t.Fatalf("tq serve still running 30 s after its log's disk filled (a put failed: %v)", putErr)
	}
	var exit *exec.ExitError
	require.True(t, errors.As(err, &exit), "tq serve: %v", err)
	assert.Equal(t, 2, exit.ExitCode(), "stderr:\n%s", stderr.String())
	assert.Contains(t, stderr.String(), "no space left on device")

	require.NoError(t, unix.Mount("tmpfs", data, "tmpfs", unix.MS_REMOUNT, "size=64m,mode=0700"))
	ctrl = startServeIn(t, data, nil, bin, args...)
	c, err = client.Connect(t.Context(), "unix://"+filepath.Join(socks, "controller.sock"),
		client.ConnectConfig{Token: ctrl.token(t), Name: "fulldisk", WaitForUnits: true})
	require.NoError(t, err)
	defer c.Close()
	all, err := kvapi.New(c).List(t.Context(), "p")
	require.NoError(t, err)
	got := map[string]bool{}
	for _, e := range all["p"] {
		got[e.Key] = true
	}
	for _, k := range acked {
		require.True(t, got[k], "key %s was acknowledged before the disk filled, and is gone after the restart", k)
	}
}

// durability.md, "Snapshots": the snapshot a clean shutdown takes may
// not fit the disk (the log did). The shutdown runs to its end and says
// why on standard error, exiting with status 1 so that a supervisor sees
// it; a restart replays the log: every put acknowledged is there, and the
// snapshot's partial file is not left behind.
func TestShutdownSnapshotOnAFullDiskKeepsTheLog(t *testing.T) {
	bin := tqBinary(t)
	data, socks := smallTmpfs(t), t.TempDir()
	args := []string{"--listen", "", "--socket-dir", socks, "--capacity", "16MiB"}
	var stderr syncBuilder
	ctrl, err := spawnServe(data, nil, &stderr, func(l string) { t.Logf("serve: %s", l) }, bin, args...)
	require.NoError(t, err)
	t.Cleanup(ctrl.kill)
	c, err := client.Connect(t.Context(), "unix://"+filepath.Join(socks, "controller.sock"),
		client.ConnectConfig{Token: ctrl.token(t), Name: "fulldisk", WaitForUnits: true})
	require.NoError(t, err)
	kv := kvapi.New(c)
	// About 1.3 MiB of log: the state's snapshot, as large, does not fit
	// beside it.
	pad := strings.Repeat("x", 4<<10)
	const n = 300
	for i := range n {
		_, err := kv.Put(t.Context(), "p", fmt.Sprintf("k%05d", i), nil, engine.Tags{"i": i, "pad": pad})
		require.NoError(t, err, "put %d", i)
	}
	c.Close()
	require.NoError(t, ctrl.cmd.Process.Signal(unix.SIGTERM))
	select {
	case err = <-ctrl.done:
		ctrl.done <- err
	case <-time.After(30 * time.Second):
		t.Fatal("tq serve still running 30 s after SIGTERM")
	}
	var exit *exec.ExitError
	require.True(t, errors.As(err, &exit), "tq serve after SIGTERM: %v; want an exit status saying the shutdown failed", err)
	assert.Equal(t, 1, exit.ExitCode(), "stderr:\n%s", stderr.String())
	assert.Regexp(t, `tq: shutdown incomplete: close the controller: write snapshot: .*: no space left on device`, stderr.String(), "the shutdown says why its snapshot failed")
	tmp, err := filepath.Glob(filepath.Join(data, "controller", "snap-*"))
	require.NoError(t, err)
	assert.Empty(t, tmp, "a snapshot, or what is left of one")

	require.NoError(t, unix.Mount("tmpfs", data, "tmpfs", unix.MS_REMOUNT, "size=64m,mode=0700"))
	ctrl = startServeIn(t, data, nil, bin, args...)
	c, err = client.Connect(t.Context(), "unix://"+filepath.Join(socks, "controller.sock"),
		client.ConnectConfig{Token: ctrl.token(t), Name: "fulldisk", WaitForUnits: true})
	require.NoError(t, err)
	defer c.Close()
	all, err := kvapi.New(c).List(t.Context(), "p")
	require.NoError(t, err)
	require.Len(t, all["p"], n)
	for i, e := range all["p"] {
		assert.Equal(t, fmt.Sprintf("k%05d", i), e.Key)
	}
}

// smallTmpfs mounts a tmpfs of 2 MiB for a data directory whose disk
// fills (the test skips where it cannot mount one), unmounted at cleanup;
// a remount with a larger size makes room again.
func smallTmpfs(t *testing.T) string {
	t.Helper()
	data := t.TempDir()
	if err := unix.Mount("tmpfs", data, "tmpfs", 0, "size=2m,mode=0700"); err != nil {
		t.Skipf("mount a small tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(data, unix.MNT_DETACH) })
	return data
}
