package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// probe GETs url and returns the status code and body.
func probe(t *testing.T, url string) (int, string) {
	t.Helper()
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	require.NoError(t, err, "GET %s", url)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

// waitProbe polls url until it answers want, for up to 20 s, and returns
// the last body.
func waitProbe(t *testing.T, url string, want int) string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, body := probe(t, url)
		if code == want {
			return body
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: got %d %q after 20 s, want %d", url, code, body, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// The probes answer before the servers are up: /healthz says the process
// lives, /readyz says what it waits for. Once stopping, it is not ready.
func TestReadyzStates(t *testing.T) {
	s := &server{}
	for _, tc := range []struct {
		state    int32
		wantCode int
		wantBody string
	}{
		{stateStarting, http.StatusServiceUnavailable, "not ready: starting"},
		{stateServing, http.StatusOK, "ready"},
		{stateStopping, http.StatusServiceUnavailable, "not ready: shutting down"},
	} {
		s.state.Store(tc.state)
		rec := httptest.NewRecorder()
		s.readyz(rec, httptest.NewRequest("GET", "/readyz", nil))
		assert.Equal(t, tc.wantCode, rec.Code, "state %d", tc.state)
		assert.Equal(t, tc.wantBody+"\n", rec.Body.String(), "state %d", tc.state)
		rec = httptest.NewRecorder()
		s.healthz(rec, httptest.NewRequest("GET", "/healthz", nil))
		assert.Equal(t, http.StatusOK, rec.Code, "healthz in state %d", tc.state)
	}
}

// A controller and a storage unit in their own processes, as Kubernetes
// runs them: both ready once up; with the controller killed the unit is
// no longer ready (and says why) but stays live — a liveness failure
// would restart it and lose its cells; with the controller back, the
// unit re-registers and is ready again.
func TestHealthProbesSplitRoles(t *testing.T) {
	bin := tqBinary(t)
	data, socks := t.TempDir(), t.TempDir()
	metricsOf := func(p *serveProc) string {
		t.Helper()
		require.NotEmpty(t, p.metricsURL, "tq serve printed no metrics endpoint")
		return strings.TrimSuffix(p.metricsURL, "/metrics")
	}
	ctrlArgs := []string{"--role", "controller", "--listen", "", "--socket-dir", socks, "--heartbeat", "100ms", "--metrics", "127.0.0.1:0"}
	ctrl := startServeIn(t, data, nil, bin, ctrlArgs...)
	ctrlURL := metricsOf(ctrl)
	code, body := probe(t, ctrlURL+"/readyz")
	assert.Equal(t, http.StatusOK, code, "controller /readyz: %s", body)
	code, _ = probe(t, ctrlURL+"/healthz")
	assert.Equal(t, http.StatusOK, code, "controller /healthz")

	unit := startServeIn(t, data, nil, bin, "--role", "unit", "--controller", "unix://"+filepath.Join(socks, "controller.sock"),
		"--unit-listen", "", "--socket-dir", socks, "--capacity", "16MiB", "--metrics", "127.0.0.1:0")
	unitURL := metricsOf(unit)
	code, body = probe(t, unitURL+"/readyz")
	assert.Equal(t, http.StatusOK, code, "unit /readyz: %s", body)

	ctrl.kill()
	body = waitProbe(t, unitURL+"/readyz", http.StatusServiceUnavailable)
	assert.Contains(t, body, "not registered with the controller", "the unit says why it is not ready")
	code, _ = probe(t, unitURL+"/healthz")
	assert.Equal(t, http.StatusOK, code, "the unit stays live without its controller")

	// The same data directory: the same token, the same socket.
	startServeIn(t, data, nil, bin, ctrlArgs...)
	waitProbe(t, unitURL+"/readyz", http.StatusOK)
}
