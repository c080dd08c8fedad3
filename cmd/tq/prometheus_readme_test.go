package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// readmePrometheusConfig returns README's prometheus.yml snippet, as
// written there.
func readmePrometheusConfig(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	require.NoError(t, err)
	_, rest, ok := strings.Cut(string(b), "```yaml\n# prometheus.yml\n")
	require.True(t, ok, "README has no ```yaml block starting # prometheus.yml")
	snippet, _, ok := strings.Cut(rest, "```")
	require.True(t, ok)
	return "# prometheus.yml\n" + snippet
}

// README's prometheus.yml, as written, passes promtool; with its target
// set to a `tq serve --metrics` that has a metrics token and its
// authorization lines uncommented, a real Prometheus scrapes tq's series
// through it. The same job with the lines left commented out is refused
// (up 0): they are what the token asks for.
func TestReadmePrometheusConfigScrapesServe(t *testing.T) {
	promBin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Skip("no prometheus binary (Debian package prometheus)")
	}
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("no promtool binary (Debian package prometheus)")
	}
	bin := tqBinary(t)
	snippet := readmePrometheusConfig(t)
	dir := t.TempDir()
	verbatim := filepath.Join(dir, "verbatim.yml")
	require.NoError(t, os.WriteFile(verbatim, []byte(snippet), 0o600))
	out, err := exec.Command(promtool, "check", "config", verbatim).CombinedOutput()
	require.NoError(t, err, "promtool check config on README's snippet:\n%s", out)

	t.Setenv(envMetricsToken, "readme-token")
	p := startServe(t, nil, bin, "--listen", "127.0.0.1:0", "--socket-dir", t.TempDir(), "--units", "1", "--capacity", "16MiB", "--metrics", "127.0.0.1:0")
	target := strings.TrimSuffix(strings.TrimPrefix(p.metricsURL, "http://"), "/metrics")
	require.NotEmpty(t, target, "tq serve printed no metrics endpoint")
	tokenFile := filepath.Join(dir, "tq-metrics-token")
	require.NoError(t, os.WriteFile(tokenFile, []byte("readme-token\n"), 0o600))

	replaceOnce := func(s, old, new string) string {
		t.Helper()
		require.Equal(t, 1, strings.Count(s, old), "README's snippet has %q once", old)
		return strings.Replace(s, old, new, 1)
	}
	withTarget := replaceOnce(snippet, `"127.0.0.1:9464"`, fmt.Sprintf("%q", target))
	authorized := replaceOnce(withTarget, "    # authorization:\n", "    authorization:\n")
	authorized = replaceOnce(authorized, "    #   credentials_file: /etc/prometheus/tq-metrics-token\n", "      credentials_file: "+tokenFile+"\n")
	// The commented-out job again, as a second job of the same file.
	_, job, ok := strings.Cut(withTarget, "scrape_configs:\n")
	require.True(t, ok)
	cfg := authorized + replaceOnce(job, "job_name: tq\n", "job_name: tq-no-token\n")
	cfgFile := filepath.Join(dir, "prometheus.yml")
	require.NoError(t, os.WriteFile(cfgFile, []byte(cfg), 0o600))
	out, err = exec.Command(promtool, "check", "config", cfgFile).CombinedOutput()
	require.NoError(t, err, "promtool check config:\n%s\n%s", cfg, out)

	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	l.Close()
	cmd := exec.Command(promBin, "--config.file="+cfgFile, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--log.level=warn")
	var log strings.Builder
	cmd.Stdout, cmd.Stderr = &log, &log
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("prometheus.yml:\n%s\nprometheus log:\n%s", cfg, log.String())
		}
	})

	// The snippet scrapes every 5 s: the first scrape comes within one
	// interval of the start.
	want := map[string]float64{`up{job="tq"}`: 1, `up{job="tq-no-token"}`: 0, `tq_units{job="tq",state="alive"}`: 1}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var problems []string
		for q, w := range want {
			got, n, err := promQuery(addr, q)
			if err != nil || n != 1 || got != w {
				problems = append(problems, fmt.Sprintf("%s = %v (%d series, err %v), want %v", q, got, n, err, w))
			}
		}
		if len(problems) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 30 s:\n%s", strings.Join(problems, "\n"))
		}
		time.Sleep(200 * time.Millisecond)
	}
}
