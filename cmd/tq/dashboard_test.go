package main

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/internal/testenv"
)

// family is what a scrape says of one metric: its type and the label
// names of its samples.
type family struct {
	typ    string
	labels map[string]bool
}

var (
	typeLine    = regexp.MustCompile(`^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) ([a-z]+)$`)
	sampleLine  = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? `)
	sampleLabel = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="(?:[^"\\]|\\.)*"`)
)

// parseScrape reads a scrape in the Prometheus text format into its
// families, by the names a query names them by: a histogram's samples
// are NAME_bucket (with le), NAME_count and NAME_sum, each of type
// "histogram".
func parseScrape(r io.Reader) (map[string]*family, error) {
	types := map[string]string{}
	fams := map[string]*family{}
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if m := typeLine.FindStringSubmatch(line); m != nil {
			types[m[1]] = m[2]
			continue
		}
		if line == "" || line[0] == '#' {
			continue
		}
		m := sampleLine.FindStringSubmatch(line)
		if m == nil {
			return nil, fmt.Errorf("not a sample: %q", line)
		}
		typ, ok := types[m[1]]
		if !ok {
			for _, suffix := range []string{"_bucket", "_count", "_sum"} {
				if base, cut := strings.CutSuffix(m[1], suffix); cut && (types[base] == "histogram" || types[base] == "summary") {
					typ, ok = types[base], true
				}
			}
		}
		if !ok {
			return nil, fmt.Errorf("sample %s has no # TYPE", m[1])
		}
		f := fams[m[1]]
		if f == nil {
			f = &family{typ: typ, labels: map[string]bool{}}
			fams[m[1]] = f
		}
		for _, l := range sampleLabel.FindAllStringSubmatch(m[2], -1) {
			f.labels[l[1]] = true
		}
	}
	return fams, sc.Err()
}

var (
	// A function over a range and the metric it is given.
	promRangeFn = regexp.MustCompile(`\b(rate|irate|increase|deriv|delta|idelta|predict_linear)\s*\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)`)
)

// checkScraped checks a PromQL expression against a scrape: each metric
// it names is there, each label it groups, joins or matches on is one of
// its metrics' (or instance and job, which Prometheus adds), rate(),
// irate() and increase() take a counter or a histogram's series, and
// deriv(), delta() and the like a gauge (rate() of a gauge counts every
// fall as a reset, deriv() of a counter a reset as a fall).
func checkScraped(expr string, fams map[string]*family) []string {
	var errs []string
	allowed := map[string]bool{"instance": true, "job": true}
	for _, name := range testenv.PromMetrics(expr) {
		f, ok := fams[name]
		if !ok {
			errs = append(errs, fmt.Sprintf("metric %s is not in the scrape", name))
			continue
		}
		for l := range f.labels {
			allowed[l] = true
		}
	}
	for _, m := range promRangeFn.FindAllStringSubmatch(expr, -1) {
		f, ok := fams[m[2]]
		if !ok {
			continue // said above
		}
		switch fn := m[1]; {
		case (fn == "rate" || fn == "irate" || fn == "increase") && f.typ != "counter" && f.typ != "histogram":
			errs = append(errs, fmt.Sprintf("%s(%s): %s is a %s, not a counter", fn, m[2], m[2], f.typ))
		case fn != "rate" && fn != "irate" && fn != "increase" && f.typ != "gauge":
			errs = append(errs, fmt.Sprintf("%s(%s): %s is a %s, not a gauge", fn, m[2], m[2], f.typ))
		}
	}
	for _, l := range testenv.PromLabels(expr) {
		if !allowed[l] {
			errs = append(errs, fmt.Sprintf("label %s is not one of its metrics'", l))
		}
	}
	return errs
}

// Every PromQL expression of the Grafana dashboard names metrics and
// labels that a real `tq serve --metrics` exports, after a few puts and
// fetches, with the types its functions take. Unlike the check in
// metrics/ (from the registry's descriptions) it reads what a scrape
// holds, types included; unlike TestPrometheusScrapesServe it needs no
// Prometheus.
func TestDashboardQueriesMatchServeScrape(t *testing.T) {
	bin := tqBinary(t)
	var metricsURL string
	p, err := spawnServe(t.TempDir(), nil, os.Stderr, func(l string) {
		if rest, ok := strings.CutPrefix(l, "tq serve: metrics on "); ok {
			metricsURL = rest
		}
	}, bin, "--listen", "127.0.0.1:0", "--unit-listen", "127.0.0.1:0", "--socket-dir", t.TempDir(),
		"--units", "1", "--capacity", "16MiB", "--metrics", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(p.kill)
	require.NotEmpty(t, metricsURL)

	ctx := t.Context()
	c, err := client.Connect(ctx, p.addr("tcp"), client.ConnectConfig{Token: p.token(t), WaitForUnits: true, Transport: client.TransportTCP})
	require.NoError(t, err)
	defer c.Close()
	for range 3 {
		xc, err := engine.DenseOf(make([]int64, 8))
		require.NoError(t, err)
		_, err = c.PutNew(ctx, "train", engine.MustBatch(engine.Field{Name: "x", Col: xc}))
		require.NoError(t, err)
	}
	m, err := c.GetMeta(ctx, client.MetaRequest{Partition: "train", Fields: []string{"x"}, BatchSize: 8, Task: "actor", Mode: client.Fetch})
	require.NoError(t, err)
	b, err := c.GetCopy(ctx, m)
	require.NoError(t, err)
	b.Release()
	_, err = c.Meta().(*client.RemoteMeta).Stats(ctx, "no-such-partition")
	require.Error(t, err, "an error, for tq_request_errors_total")

	// A request is counted once its reply is sent, so the error may be
	// counted only after the client has it.
	var fams map[string]*family
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(metricsURL)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		fams, err = parseScrape(resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		if fams["tq_request_errors_total"] != nil {
			break
		}
		require.True(t, time.Now().Before(deadline), "no tq_request_errors_total in a scrape after 10 s")
		time.Sleep(50 * time.Millisecond)
	}

	exprs := dashboardExprs(t)
	require.NotEmpty(t, exprs)
	var problems []string
	for _, e := range exprs {
		for _, err := range checkScraped(e.expr, fams) {
			problems = append(problems, fmt.Sprintf("panel %q: %s: %s", e.panel, e.expr, err))
		}
	}
	require.Empty(t, problems, "the dashboard's queries against a scrape of tq serve")

	// The README's metrics table names each metric's labels as
	// tq_name{a,b}: those are what the scrape has.
	readme, err := os.ReadFile("../../README.md")
	require.NoError(t, err)
	_, sect, ok := strings.Cut(string(readme), "\n## Metrics and the dashboard\n")
	require.True(t, ok, "README has no section \"Metrics and the dashboard\"")
	sect, _, _ = strings.Cut(sect, "\n## ")
	labelled := regexp.MustCompile("`(tq_[a-z0-9_]+)\\{([a-z_,]*)\\}`")
	named := 0
	for _, m := range labelled.FindAllStringSubmatch(sect, -1) {
		f := fams[m[1]]
		if f == nil {
			f = fams[m[1]+"_count"] // a histogram
		}
		if !assert.NotNil(t, f, "README: %s is not in the scrape", m[0]) {
			continue
		}
		var have []string
		for l := range f.labels {
			if l != "le" {
				have = append(have, l)
			}
		}
		assert.ElementsMatch(t, strings.Split(m[2], ","), have, "README: %s: the scrape's labels", m[0])
		named++
	}
	require.NotZero(t, named, "the README's table names no labels")

	// The check catches a gauge given to rate(), a counter to deriv(), a
	// renamed metric and a label a metric does not have.
	for expr, want := range map[string]string{
		`sum(rate(tq_partition_rows[5m]))`:                      "tq_partition_rows is a gauge, not a counter",
		`deriv(tq_unit_data_bytes_total[5m])`:                   "tq_unit_data_bytes_total is a counter, not a gauge",
		`rate(tq_request_duration_seconds_count[5m])`:           "",
		`sum(tq_partition_count)`:                               "metric tq_partition_count is not in the scrape",
		`sum by (dir) (rate(tq_unit_data_bytes_total[5m]))`:     "label dir is not one of its metrics'",
		`sum(tq_task_consumed_rows{partition="train",tsk="a"})`: "label tsk is not one of its metrics'",
	} {
		errs := checkScraped(expr, fams)
		if want == "" {
			require.Empty(t, errs, expr)
			continue
		}
		require.Contains(t, strings.Join(errs, "\n"), want, expr)
	}
}
