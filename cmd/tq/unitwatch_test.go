package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/kvapi"
)

// lockedBuffer is a bytes.Buffer a logger and a test share.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startDurable starts tq serve's servers in the test's process, with the
// controller's state in data (a controller that restarts there recovers
// it), unix sockets in socks, no token, and the flags of args added
// (--listen "" leaves a controller on its unix socket only). The
// caller closes it.
func startDurable(data, socks string, log *slog.Logger, args ...string) (*server, error) {
	args = serveArgs([]string{"--insecure", "--socket-dir=" + socks, "--data-dir=" + data}, args...)
	cfg, once, err := parseServeConfig(args, io.Discard)
	if err != nil {
		return nil, err
	}
	if err := cfg.secure(); err != nil {
		return nil, err
	}
	bound, err := cfg.bindTCP()
	if err != nil {
		return nil, err
	}
	s := &server{cfg: cfg, out: io.Discard, log: log, restoreForce: once.restoreForce, bound: bound}
	if err := s.start(context.Background()); err != nil {
		s.close()
		bound.close()
		return nil, err
	}
	return s, nil
}

// A controller that restarts from its data directory lists the storage
// units of its earlier start, alive for one timeout so that they can come
// back; one that does not is not heard from. The log says so, and does
// not report it registered: before, every unit of the durable state was
// logged "storage unit registered" at the start, though none had, and then
// lost.
func TestUnitWatchDoesNotReportARecoveredUnitRegistered(t *testing.T) {
	data, socks := t.TempDir(), t.TempDir()
	start := func(log *slog.Logger, args ...string) *server {
		s, err := startDurable(data, socks, log, append(args, "--listen", "", "--heartbeat", "20ms")...)
		require.NoError(t, err)
		return s
	}
	first := start(slog.New(slog.DiscardHandler), "--units", "1", "--capacity", "16MiB")
	require.Len(t, first.ctrlSrv.Units(), 1)
	first.close()

	var log lockedBuffer
	again := start(slog.New(slog.NewTextHandler(&log, nil)), "--role", "controller")
	defer again.close()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(log.String(), "unit=1") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // a few heartbeat intervals more
	got := log.String()
	t.Logf("log:\n%s", got)
	assert.NotContains(t, got, `msg="storage unit registered"`, "unit 1 never registered with this start")
	assert.Contains(t, got, `msg="storage unit not heard from since the controller started; its cells read as lost" unit=1`)
	assert.Equal(t, 1, strings.Count(got, "unit=1"), "one line about unit 1")
}

// --restore waits for a storage unit to load the checkpoint's cells into.
// A controller restarted from its data directory with no partition (so
// --restore loads) lists the units of its earlier start alive for one
// timeout, though they may never come back: restore took them for live
// units, loaded at once, failed to reach them ("no storage unit
// reachable") and tq serve exited, before a unit of this start could
// register. It now waits for a unit heard from since the start.
func TestRestoreWaitsForAUnitHeardFrom(t *testing.T) {
	data, socks := t.TempDir(), t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	quiet := slog.New(slog.DiscardHandler)
	start := func(args ...string) *server {
		s, err := startDurable(data, socks, quiet, append(args, "--listen", "", "--heartbeat", "20ms")...)
		require.NoError(t, err)
		return s
	}
	first := start("--units", "1", "--capacity", "16MiB")
	require.NoError(t, first.serveKV())
	c, err := client.Connect(ctx, first.local, client.ConnectConfig{WaitForUnits: true, Name: "restore-test"})
	require.NoError(t, err)
	putInt(t, kvapi.New(c), "p", "k", 7)
	c.Close()
	_, err = first.ctrlSrv.SaveCheckpoint(ctx, "c0", nil)
	require.NoError(t, err)
	_, err = first.ctrl.ClearPartition("p") // the state holds no partition: --restore loads
	require.NoError(t, err)
	first.close()

	again := start("--role", "controller", "--restore", "c0")
	defer again.close()
	require.Equal(t, 0, again.held)
	// A unit of this start registers a moment later.
	unit := make(chan *server, 1)
	unitErr := make(chan error, 1)
	go func() {
		time.Sleep(300 * time.Millisecond)
		u, err := startDurable(t.TempDir(), socks, quiet, "--role", "unit", "--controller", again.local, "--unit-listen", "", "--capacity", "16MiB")
		unit <- u
		unitErr <- err
	}()
	err = again.restore(ctx)
	if u := <-unit; u != nil {
		defer u.close()
	}
	require.NoError(t, <-unitErr, "the unit's start")
	require.NoError(t, err, "restore")
	c, err = client.Connect(ctx, again.local, client.ConnectConfig{WaitForUnits: true, Name: "restore-test"})
	require.NoError(t, err)
	defer c.Close()
	v, err := getInt(t, kvapi.New(c), "p", "k")
	require.NoError(t, err)
	assert.Equal(t, []int64{7}, v)
}

// A storage unit process stopped (SIGSTOP) past the heartbeat timeout and
// then continued: the controller logs it registered, lost and back, once
// each, as README says.
func TestControllerLogsUnitLostAndBackOnce(t *testing.T) {
	bin := tqBinary(t)
	var stderr syncBuffer
	ctrl, err := spawnServe(t.TempDir(), nil, &stderr, func(l string) { t.Logf("serve: %s", l) }, bin,
		"--role", "controller", "--listen", "127.0.0.1:0", "--socket-dir", t.TempDir(), "--heartbeat", "100ms")
	require.NoError(t, err)
	t.Cleanup(ctrl.kill)
	unit := startServeIn(t, ctrl.dataDir, nil, bin, "--role", "unit", "--controller", ctrl.addr("tcp"), "--socket-dir", "",
		"--capacity", "16MiB")
	waitLog := func(msg string) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for !strings.Contains(stderr.String(), msg) {
			if time.Now().After(deadline) {
				t.Fatalf("the controller never logged %q:\n%s", msg, stderr.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitLog(`msg="storage unit registered"`)
	require.NoError(t, unit.cmd.Process.Signal(syscall.SIGSTOP))
	t.Cleanup(func() { unit.cmd.Process.Signal(syscall.SIGCONT) })
	waitLog(`msg="storage unit lost: no heartbeat`)
	time.Sleep(500 * time.Millisecond) // several of the watch's checks with the unit still silent
	require.NoError(t, unit.cmd.Process.Signal(syscall.SIGCONT))
	waitLog(`msg="storage unit back"`)
	time.Sleep(500 * time.Millisecond) // several more checks with it alive
	logs := stderr.String()
	for _, msg := range []string{"storage unit registered", "storage unit lost", "storage unit back"} {
		assert.Equal(t, 1, strings.Count(logs, `msg="`+msg), "%q logged once:\n%s", msg, logs)
	}
}
