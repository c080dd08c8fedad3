package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// requireBearer lets through only "Authorization: Bearer TOKEN" with the
// token (the scheme in any case), and tells the others why not.
func TestRequireBearer(t *testing.T) {
	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "served") })
	h := requireBearer("s3cret", ok)
	for _, tc := range []struct {
		name, header string
		status       int
		want         string
	}{
		{"none", "", 401, "no Authorization header"},
		{"basic", "Basic czNjcmV0", 401, "not a Bearer token"},
		{"wrong", "Bearer s3cre", 401, "not this server's"},
		{"longer", "Bearer s3crets", 401, "not this server's"},
		{"right", "Bearer s3cret", 200, "served"},
		{"scheme in lower case", "bearer s3cret", 200, "served"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/metrics", nil)
			if tc.header != "" {
				r.Header.Set("Authorization", tc.header)
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			assert.Equal(t, tc.status, w.Code)
			assert.Contains(t, w.Body.String(), tc.want)
			if tc.status == 401 {
				assert.Contains(t, w.Body.String(), "/metrics needs tq serve's metrics token")
				assert.Equal(t, `Bearer realm="tq"`, w.Header().Get("WWW-Authenticate"))
			}
		})
	}
	assert.Equal(t, "served", func() string {
		w := httptest.NewRecorder()
		requireBearer("", ok).ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
		return w.Body.String()
	}(), "no token: nothing asked")
}

// The metrics token comes from --metrics-token-file (checked as the
// cluster's token file is), else $TQ_METRICS_TOKEN; --pprof beyond
// loopback needs one.
func TestMetricsTokenResolved(t *testing.T) {
	secure := func(t *testing.T, mutate func(*serveConfig)) (serveConfig, error) {
		c := defaultServeConfig()
		c.DataDir = filepath.Join(t.TempDir(), "data")
		c.SocketDir = filepath.Join(t.TempDir(), "s")
		mutate(&c)
		err := c.secure()
		return c, err
	}
	t.Run("none", func(t *testing.T) {
		t.Setenv(envMetricsToken, "")
		c, err := secure(t, func(c *serveConfig) {})
		require.NoError(t, err)
		assert.Empty(t, c.metricsToken)
	})
	t.Run("env", func(t *testing.T) {
		t.Setenv(envMetricsToken, "from-env")
		c, err := secure(t, func(c *serveConfig) {})
		require.NoError(t, err)
		assert.Equal(t, "from-env", c.metricsToken)
	})
	t.Run("file over env", func(t *testing.T) {
		t.Setenv(envMetricsToken, "from-env")
		path := filepath.Join(t.TempDir(), "mt")
		require.NoError(t, os.WriteFile(path, []byte("from-file\n"), 0o600))
		c, err := secure(t, func(c *serveConfig) { c.MetricsTokenFile = path })
		require.NoError(t, err)
		assert.Equal(t, "from-file", c.metricsToken)
	})
	t.Run("file others may read", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "mt")
		require.NoError(t, os.WriteFile(path, []byte("from-file\n"), 0o644))
		_, err := secure(t, func(c *serveConfig) { c.MetricsTokenFile = path })
		require.ErrorIs(t, err, engine.ErrInvalid)
		assert.Contains(t, err.Error(), "--metrics-token-file")
		assert.Contains(t, err.Error(), "mode 0644")
	})
	t.Run("a bad file is named, with advice for it", func(t *testing.T) {
		// Each refusal names the flag and the path, and says how to fix
		// it: not the cluster token file's advice, since tq serve makes no
		// metrics token (an empty file was "remove it, and tq serve makes
		// a new one", after which the start failed on the missing file).
		dir := t.TempDir()
		write := func(name, body string, mode os.FileMode) string {
			path := filepath.Join(dir, name)
			require.NoError(t, os.WriteFile(path, []byte(body), mode))
			require.NoError(t, os.Chmod(path, mode))
			return path
		}
		link := filepath.Join(dir, "link")
		require.NoError(t, os.Symlink(write("target", "tok\n", 0o600), link))
		sub := filepath.Join(dir, "sub")
		require.NoError(t, os.Mkdir(sub, 0o700))
		notDir := write("notdir", "x", 0o600)
		for _, tc := range []struct {
			name, path, want string
		}{
			{"empty", write("empty", "", 0o600), "is empty: write the token into it"},
			{"only a newline", write("nl", "\n", 0o600), "is empty: write the token into it"},
			{"two words", write("two", "a b\n", 0o600), "holds more than one word"},
			{"others may read", write("open", "tok\n", 0o644), "has mode 0644 (-rw-r--r--): other users can read the token: fix with chmod 600 " + filepath.Join(dir, "open") + " (and consider the token leaked: choose a new one)"},
			{"a symbolic link", link, "is a symbolic link: name the file itself"},
			{"a directory", sub, "is not a regular file (mode drwx------)"},
			{"missing", filepath.Join(dir, "missing"), "cannot be read: no such file or directory"},
			{"its directory a file", filepath.Join(notDir, "mt"), "cannot be read: not a directory"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, err := secure(t, func(c *serveConfig) { c.MetricsTokenFile = tc.path })
				require.Error(t, err)
				assert.Contains(t, err.Error(), "--metrics-token-file "+tc.path+" "+tc.want)
				assert.NotContains(t, err.Error(), "tq serve makes a new one")
				assert.NotContains(t, err.Error(), "restart tq serve")
				assert.NotContains(t, err.Error(), "token file "+tc.path, "named as the cluster's token file")
			})
		}
		if os.Geteuid() == 0 {
			path := write("theirs", "tok\n", 0o600)
			require.NoError(t, os.Chown(path, 65534, 65534))
			_, err := secure(t, func(c *serveConfig) { c.MetricsTokenFile = path })
			require.ErrorIs(t, err, engine.ErrInvalid)
			assert.Contains(t, err.Error(), "--metrics-token-file "+path+" is owned by uid 65534, not by this user (uid 0): chown it, or name a file of this user's")
		}
	})
	t.Run("pprof beyond loopback without one", func(t *testing.T) {
		t.Setenv(envMetricsToken, "")
		_, err := secure(t, func(c *serveConfig) { c.Pprof = "0.0.0.0:6060" })
		require.Error(t, err)
		assert.Contains(t, err.Error(), `--pprof "0.0.0.0:6060" listens beyond this host without a token`)
		_, err = secure(t, func(c *serveConfig) { c.Pprof = "6060" })
		require.NoError(t, err, "loopback")
		t.Setenv(envMetricsToken, "t")
		_, err = secure(t, func(c *serveConfig) { c.Pprof = "0.0.0.0:6060" })
		require.NoError(t, err)
	})
	t.Run("bad env", func(t *testing.T) {
		t.Setenv(envMetricsToken, "two words")
		c := defaultServeConfig()
		err := c.validate()
		require.Error(t, err)
		assert.Contains(t, err.Error(), "$"+envMetricsToken)
	})
}

// `tq serve` with a metrics token: /metrics and the profiles answer 401
// without it and serve with it; the probes ask for none.
func TestServeMetricsToken(t *testing.T) {
	bin := tqBinary(t)
	t.Setenv(envMetricsToken, "m-token")
	var metricsURL, pprofURL string
	p, err := spawnServe(t.TempDir(), nil, os.Stderr, func(l string) {
		if rest, ok := strings.CutPrefix(l, "tq serve: metrics on "); ok {
			metricsURL = rest
		}
		if rest, ok := strings.CutPrefix(l, "tq serve: profiles on "); ok {
			pprofURL = rest
		}
	}, bin, "--listen", "127.0.0.1:0", "--socket-dir", t.TempDir(), "--capacity", "16MiB",
		"--metrics", "127.0.0.1:0", "--pprof", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(p.kill)
	get := func(url, token string) (int, string) {
		req, err := http.NewRequest("GET", url, nil)
		require.NoError(t, err)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, body := get(metricsURL, "")
	assert.Equal(t, 401, code)
	assert.Contains(t, body, "no Authorization header")
	code, _ = get(metricsURL, "other")
	assert.Equal(t, 401, code)
	code, body = get(metricsURL, "m-token")
	assert.Equal(t, 200, code)
	assert.Contains(t, body, "tq_partitions")
	code, _ = get(pprofURL+"goroutine?debug=1", "")
	assert.Equal(t, 401, code)
	code, _ = get(pprofURL+"goroutine?debug=1", "m-token")
	assert.Equal(t, 200, code)
	base := strings.TrimSuffix(metricsURL, "/metrics")
	code, _ = get(base+"/healthz", "")
	assert.Equal(t, 200, code)
	code, _ = get(base+"/readyz", "")
	assert.Equal(t, 200, code)
}

// `tq serve --metrics` beyond loopback with no metrics token starts,
// warns on stderr that it listens beyond the host without one, and
// /metrics asks for none.
func TestServeWarnsOfMetricsWithoutAToken(t *testing.T) {
	bin := tqBinary(t)
	unsetEnv(t, envMetricsToken)
	var stderr syncBuffer
	var metricsURL string
	p, err := spawnServe(t.TempDir(), nil, &stderr, func(l string) {
		if rest, ok := strings.CutPrefix(l, "tq serve: metrics on "); ok {
			metricsURL = rest
		}
	}, bin, "--listen", "127.0.0.1:0", "--socket-dir", t.TempDir(), "--units", "1", "--capacity", "16MiB", "--metrics", "0.0.0.0:0")
	require.NoError(t, err)
	t.Cleanup(p.kill)
	// stderr is copied by a goroutine of its own: the warning, written
	// before "ready", may land a moment after it.
	const warning = "tq serve: WARNING: --metrics 0.0.0.0:0 listens beyond this host without a token"
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(stderr.String(), warning) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	assert.Contains(t, stderr.String(), warning)
	require.NotEmpty(t, metricsURL)
	code, body := probe(t, metricsURL)
	assert.Equal(t, http.StatusOK, code)
	assert.Contains(t, body, "tq_partitions")
}
