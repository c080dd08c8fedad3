package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/internal/testenv"
	"github.com/tqgo/tq/kvapi"
)

// A real Prometheus scrapes `tq serve --metrics` while a workload runs:
// its figures agree with the workload (rows put, bytes moved per
// transport, rows consumed per task, an error), and every PromQL
// expression of every panel of the Grafana dashboard returns data.
func TestPrometheusScrapesServe(t *testing.T) {
	bin := tqBinary(t)
	promBin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Skip("no prometheus binary (Debian package prometheus): the scrape test needs one")
	}
	// The endpoint asks for a token, which Prometheus reads from its
	// credentials_file; a second job scrapes with a wrong one.
	t.Setenv(envMetricsToken, "prometheus-token")
	var metricsURL, pprofURL string
	socks := t.TempDir()
	p, err := spawnServe(t.TempDir(), nil, os.Stderr, func(l string) {
		t.Logf("serve: %s", l)
		if rest, ok := strings.CutPrefix(l, "tq serve: metrics on "); ok {
			metricsURL = rest
		}
		if rest, ok := strings.CutPrefix(l, "tq serve: profiles on "); ok {
			pprofURL = rest
		}
	}, bin, "--listen", "127.0.0.1:0", "--unit-listen", "127.0.0.1:0", "--socket-dir", socks,
		"--units", "2", "--capacity", "64MiB", "--metrics", "127.0.0.1:0", "--pprof", "127.0.0.1:0", "--log-format", "json")
	require.NoError(t, err)
	t.Cleanup(p.kill)
	require.NotEmpty(t, metricsURL)
	req, err := http.NewRequest("GET", pprofURL+"goroutine?debug=1", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer prometheus-token")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err, "--pprof")
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, "--pprof serves profiles")
	target := strings.TrimSuffix(strings.TrimPrefix(metricsURL, "http://"), "/metrics")
	promAddr := startPrometheus(t, promBin, target, "prometheus-token")

	// The workload: rows through shared memory and rows through the TCP
	// transport (on one host it dials the units' unix sockets: transport
	// "unix" in the unit's figures), each partition fetched and read in
	// full by a task, and one error.
	ctx := t.Context()
	tok := p.token(t)
	const dim = 256 // float32s per row of "y": 1 KiB
	put := func(c *client.Client, partition string, batches, rows int) int64 {
		var bytes int64
		for range batches {
			x := make([]int64, rows)
			y := make([]float32, rows*dim)
			xc, err := engine.DenseOf(x)
			require.NoError(t, err)
			yc, err := engine.DenseOf(y, dim)
			require.NoError(t, err)
			_, err = c.PutNew(ctx, partition, engine.MustBatch(engine.Field{Name: "x", Col: xc}, engine.Field{Name: "y", Col: yc}))
			require.NoError(t, err)
			bytes += int64(rows * (8 + 4*dim))
		}
		return bytes
	}
	consume := func(c *client.Client, partition, task string, rows int) {
		m, err := c.GetMeta(ctx, client.MetaRequest{Partition: partition, Fields: []string{"x", "y"}, BatchSize: rows, Task: task, Mode: client.Fetch})
		require.NoError(t, err)
		require.Equal(t, rows, m.Len())
		b, err := c.GetCopy(ctx, m)
		require.NoError(t, err)
		b.Release()
	}
	shmC, err := client.Connect(ctx, p.addr("unix"), client.ConnectConfig{Token: tok, WaitForUnits: true, Transport: client.TransportShm})
	require.NoError(t, err)
	defer shmC.Close()
	tcpC, err := client.Connect(ctx, p.addr("tcp"), client.ConnectConfig{Token: tok, WaitForUnits: true, Transport: client.TransportTCP})
	require.NoError(t, err)
	defer tcpC.Close()
	const shmRows, tcpRows = 10 * 64, 4 * 32
	shmBytes := put(shmC, "train", 10, 64)
	tcpBytes := put(tcpC, "val", 4, 32)
	consume(shmC, "train", "actor", shmRows)
	consume(tcpC, "val", "critic", tcpRows)
	// A small KV value goes to the controller with its bytes (KV_SET: the
	// units' figures do not see it) and is read back from its unit
	// (READ over the unit's unix socket).
	kv := kvapi.New(shmC)
	small := []byte("small value")
	_, err = kv.Put(ctx, "kv", "k", engine.MustBatch(engine.Field{Name: "v", Col: engine.BytesOf([][]byte{small})}), nil)
	require.NoError(t, err)
	kb, err := kv.BatchGetCopy(ctx, "kv", []string{"k"})
	require.NoError(t, err)
	kb.Release()
	_, err = tcpC.Meta().(*client.RemoteMeta).Stats(ctx, "no-such-partition")
	require.Error(t, err)

	eps, err := shmC.MetricsEndpoints(ctx)
	require.NoError(t, err)
	require.Equal(t, []string{metricsURL}, eps, "the controller names the process's endpoint, once")

	want := map[string]float64{
		`sum(tq_partition_rows{partition=~"train|val"})`:                                shmRows + tcpRows,
		`sum(tq_partition_produced_rows{partition="train"})`:                            shmRows,
		`sum(tq_partition_field_produced_rows{partition="val",field="y"})`:              tcpRows,
		`sum(tq_task_consumed_rows{partition="train",task="actor"})`:                    shmRows,
		`sum(tq_task_consumed_rows{partition="val",task="critic"})`:                     tcpRows,
		`sum(tq_unit_data_bytes_total{direction="write"})`:                              float64(shmBytes + tcpBytes),
		`sum(tq_unit_data_bytes_total{direction="write",transport="shm"})`:              float64(shmBytes),
		`sum(tq_unit_data_bytes_total{direction="write",transport=~"tcp|unix"})`:        float64(tcpBytes),
		`sum(tq_unit_data_bytes_total{direction="read"})`:                               float64(shmBytes + tcpBytes + int64(len(small))),
		`sum(tq_unit_data_bytes_total{direction="read",transport=~"tcp|unix"})`:         float64(tcpBytes + int64(len(small))),
		`sum(tq_request_errors_total{server="controller",op="STATS",code="not_found"})`: 1,
		`sum(tq_units{state="alive"})`:                                                  2,
		`up{job="tq"}`:                                                                  1,
		`up{job="tq-wrong"}`:                                                            0, // its scrapes answered 401
	}
	exprs := dashboardExprs(t)
	require.NotEmpty(t, exprs)
	deadline := time.Now().Add(20 * time.Second)
	for {
		var problems []string
		for q, w := range want {
			got, n, err := promQuery(promAddr, q)
			switch {
			case err != nil:
				problems = append(problems, fmt.Sprintf("%s: %v", q, err))
			case n != 1 || got != w:
				problems = append(problems, fmt.Sprintf("%s = %v (%d series), want %v", q, got, n, w))
			}
		}
		for _, e := range exprs {
			q := strings.NewReplacer("$__rate_interval", "10s", "$__range", "1h").Replace(e.expr)
			if _, n, err := promQuery(promAddr, q); err != nil || n == 0 {
				problems = append(problems, fmt.Sprintf("panel %q: %s: %d series, err %v", e.panel, q, n, err))
			}
		}
		if len(problems) == 0 {
			t.Logf("%d figures agree; %d dashboard expressions return data", len(want), len(exprs))
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 20 s of scrapes:\n%s", strings.Join(problems, "\n"))
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// startPrometheus runs Prometheus scraping target every second, with the
// metrics token as its bearer token (job tq) and with another (job
// tq-wrong), and returns its address once it is ready.
func startPrometheus(t *testing.T, bin, target, token string) string {
	t.Helper()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "prometheus.yml")
	right, wrong := filepath.Join(dir, "token"), filepath.Join(dir, "wrong-token")
	require.NoError(t, os.WriteFile(right, []byte(token+"\n"), 0o600))
	require.NoError(t, os.WriteFile(wrong, []byte("not-"+token+"\n"), 0o600))
	require.NoError(t, os.WriteFile(cfg, []byte(fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: tq
    authorization:
      credentials_file: %q
    static_configs:
      - targets: [%q]
  - job_name: tq-wrong
    authorization:
      credentials_file: %q
    static_configs:
      - targets: [%q]
`, right, target, wrong, target)), 0o600))
	addr := testenv.FreeLoopbackAddr(t)
	log, err := os.Create(filepath.Join(dir, "prometheus.log"))
	require.NoError(t, err)
	cmd := exec.Command(bin, "--config.file="+cfg, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--log.level=warn")
	cmd.Stdout, cmd.Stderr = log, log
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		log.Close()
		if t.Failed() {
			b, _ := os.ReadFile(log.Name())
			t.Logf("prometheus log:\n%s", b)
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return addr
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus not ready on %s after 15 s: %v", addr, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// promQuery runs an instant query and returns the first sample's value
// and the number of series.
func promQuery(addr, q string) (float64, int, error) {
	resp, err := http.Get("http://" + addr + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, 0, err
	}
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result []struct {
				Value [2]any `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return 0, 0, fmt.Errorf("%s: %w", b, err)
	}
	if r.Status != "success" {
		return 0, 0, fmt.Errorf("query failed: %s", r.Error)
	}
	if len(r.Data.Result) == 0 {
		return 0, 0, nil
	}
	s, _ := r.Data.Result[0].Value[1].(string)
	v, err := strconv.ParseFloat(s, 64)
	return v, len(r.Data.Result), err
}

type panelExpr struct{ panel, expr string }

// dashboardExprs returns every PromQL expression of every panel of
// deploy/grafana/tq.json, checking the dashboard's fixed parts on the way.
func dashboardExprs(t *testing.T) []panelExpr {
	t.Helper()
	b, err := os.ReadFile("../../deploy/grafana/tq.json")
	require.NoError(t, err)
	var d struct {
		UID        string `json:"uid"`
		Templating struct {
			List []struct {
				Name, Type, Query string
			} `json:"list"`
		} `json:"templating"`
		Panels []struct {
			Title      string `json:"title"`
			Type       string `json:"type"`
			Datasource struct {
				UID string `json:"uid"`
			} `json:"datasource"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	require.NoError(t, json.Unmarshal(b, &d))
	require.Equal(t, "tq-overview", d.UID, "a stable uid: links and provisioning name it")
	require.NotEmpty(t, d.Templating.List)
	require.Equal(t, "datasource", d.Templating.List[0].Type)
	var out []panelExpr
	for _, p := range d.Panels {
		if p.Type == "row" {
			continue
		}
		require.Equal(t, "${datasource}", p.Datasource.UID, "panel %q uses the datasource variable", p.Title)
		require.NotEmpty(t, p.Targets, "panel %q", p.Title)
		for _, tg := range p.Targets {
			if strings.Contains(tg.Expr, "rate(") || strings.Contains(tg.Expr, "deriv(") {
				require.Contains(t, tg.Expr, "[$__rate_interval]", "panel %q: %s", p.Title, tg.Expr)
			}
			if strings.Contains(tg.Expr, "_total") && !strings.Contains(tg.Expr, "rate(") {
				// A counter restarts at zero with its process: a panel
				// sums what it did over the range, not a raw count.
				require.Contains(t, tg.Expr, "increase(", "panel %q: %s", p.Title, tg.Expr)
			}
			out = append(out, panelExpr{p.Title, tg.Expr})
		}
	}
	return out
}
