package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
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

// A controller that restarts from its data directory lists the storage
// units of its earlier start, alive for one timeout so that they can come
// back; one that does not is not heard from. The log says so, and does
// not report it registered: before, every unit of the durable state was
// logged "storage unit registered" at the start, though none had, and then
// lost.
func TestUnitWatchDoesNotReportARecoveredUnitRegistered(t *testing.T) {
	data, socks := t.TempDir(), t.TempDir()
	start := func(log *slog.Logger, args ...string) *server {
		args = append([]string{"--insecure", "--listen", "", "--socket-dir", socks, "--data-dir", data, "--heartbeat", "20ms"}, args...)
		cfg, _, err := parseServeConfig(args, io.Discard)
		require.NoError(t, err)
		require.NoError(t, cfg.secure())
		s := &server{cfg: cfg, out: io.Discard, log: log}
		require.NoError(t, s.start(context.Background()))
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
