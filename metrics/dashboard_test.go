package metrics

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/internal/testenv"
)

// exported returns the metrics a Registry exports, each with its label
// names, and which of them are histograms (queried as NAME_bucket,
// NAME_count, NAME_sum).
func exported(t *testing.T) (labels map[string][]string, histograms map[string]bool) {
	t.Helper()
	r := New()
	labels, histograms = map[string][]string{}, map[string]bool{}
	fqName := regexp.MustCompile(`fqName: "([^"]+)"`)
	varLabels := regexp.MustCompile(`variableLabels: \{([^}]*)\}`)
	for _, c := range r.tq {
		ch := make(chan *prometheus.Desc, 64)
		c.Describe(ch)
		close(ch)
		for d := range ch {
			m := fqName.FindStringSubmatch(d.String())
			require.NotNil(t, m, "no name in %s", d)
			var names []string
			if v := varLabels.FindStringSubmatch(d.String()); v != nil && v[1] != "" {
				names = strings.Split(v[1], ",")
			}
			labels[m[1]] = names
			switch c.(type) {
			case *prometheus.HistogramVec, prometheus.Histogram:
				histograms[m[1]] = true
			}
		}
	}
	// The Go runtime and process collectors: what a scrape holds.
	mfs, err := r.Gatherer().Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if _, ok := labels[mf.GetName()]; ok {
			continue
		}
		var names []string
		if len(mf.GetMetric()) > 0 {
			for _, lp := range mf.GetMetric()[0].GetLabel() {
				names = append(names, lp.GetName())
			}
		}
		labels[mf.GetName()] = names
	}
	return labels, histograms
}

var (
	legend = regexp.MustCompile(`\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}`)
)

// checkDashboard checks every panel target of a Grafana dashboard: each
// metric its expr names is one tq serve exports (a histogram's with
// _bucket, _count or _sum), and each label its expr or legend names is
// one of those metrics' (or instance and job, which Prometheus adds, or
// le of a histogram's buckets). A panel on a renamed metric or label
// would show nothing, silently.
func checkDashboard(dash []byte, labels map[string][]string, histograms map[string]bool) error {
	var root any
	if err := json.Unmarshal(dash, &root); err != nil {
		return err
	}
	var errs []string
	var walk func(v any, panel string)
	walk = func(v any, panel string) {
		switch v := v.(type) {
		case []any:
			for _, x := range v {
				walk(x, panel)
			}
		case map[string]any:
			if title, ok := v["title"].(string); ok {
				panel = title
			}
			if expr, ok := v["expr"].(string); ok {
				legendFormat, _ := v["legendFormat"].(string)
				errs = append(errs, checkExpr(panel, expr, legendFormat, labels, histograms)...)
			}
			for _, x := range v {
				walk(x, panel)
			}
		}
	}
	walk(root, "")
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "\n"))
	}
	return nil
}

func checkExpr(panel, expr, legendFormat string, labels map[string][]string, histograms map[string]bool) []string {
	var errs []string
	allowed := map[string]bool{"instance": true, "job": true}
	names := 0
	for _, name := range testenv.PromMetrics(expr) {
		ls, ok := labels[name]
		if !ok {
			for _, suffix := range []string{"_bucket", "_count", "_sum"} {
				if base, cut := strings.CutSuffix(name, suffix); cut && histograms[base] {
					ls, ok = labels[base], true
					if suffix == "_bucket" {
						allowed["le"] = true
					}
				}
			}
		}
		if !ok {
			errs = append(errs, fmt.Sprintf("panel %q: %s: metric %s is not exported by tq serve", panel, expr, name))
			continue
		}
		names++
		for _, l := range ls {
			allowed[l] = true
		}
	}
	if names == 0 {
		return errs
	}
	used := testenv.PromLabels(expr)
	for _, m := range legend.FindAllStringSubmatch(legendFormat, -1) {
		used = append(used, m[1])
	}
	slices.Sort(used)
	for _, l := range slices.Compact(used) {
		if !allowed[l] {
			errs = append(errs, fmt.Sprintf("panel %q: %s (legend %q): label %s is not one of its metrics'", panel, expr, legendFormat, l))
		}
	}
	return errs
}

// Every query of deploy/grafana/tq.json names metrics and labels that tq
// serve exports. (TestPrometheusScrapesServe in cmd/tq runs the queries
// against a real Prometheus, where one is installed.)
func TestDashboardQueriesExportedMetrics(t *testing.T) {
	labels, histograms := exported(t)
	dash, err := os.ReadFile("../deploy/grafana/tq.json")
	require.NoError(t, err)
	require.NoError(t, checkDashboard(dash, labels, histograms))

	// The check catches a renamed metric, histogram suffix and label (old
	// and new as the JSON file spells them).
	for _, tc := range []struct{ old, new, want string }{
		{`sum(tq_partitions)`, `sum(tq_partition_count)`, "metric tq_partition_count is not exported"},
		{`rate(tq_journal_write_seconds_count`, `rate(tq_journal_records_written_total_count`, "metric tq_journal_records_written_total_count is not exported"},
		{`sum by (transport, direction) (rate(tq_unit_data_bytes_total`, `sum by (transport, dir) (rate(tq_unit_data_bytes_total`, "label dir is not one of its metrics'"},
		{`tq_units{state=\"alive\"}`, `tq_units{status=\"alive\"}`, "label status is not one of its metrics'"},
		{`"{{partition}} {{field}}"`, `"{{partition}} {{column}}"`, "label column is not one of its metrics'"},
	} {
		require.True(t, strings.Contains(string(dash), tc.old), "the dashboard has no %s", tc.old)
		broken := strings.Replace(string(dash), tc.old, tc.new, 1)
		err := checkDashboard([]byte(broken), labels, histograms)
		require.Error(t, err, "%s -> %s passes", tc.old, tc.new)
		require.Contains(t, err.Error(), tc.want)
	}
}

// The dashboard's rows are those README lists ("Rows: cluster overview,
// per-partition progress, ..."), in its order, and its uid is the one
// README gives.
func TestDashboardRowsAreREADMEs(t *testing.T) {
	b, err := os.ReadFile("../deploy/grafana/tq.json")
	require.NoError(t, err)
	var d struct {
		UID    string `json:"uid"`
		Panels []struct {
			Type, Title string
		} `json:"panels"`
	}
	require.NoError(t, json.Unmarshal(b, &d))
	var rows []string
	for _, p := range d.Panels {
		if p.Type == "row" {
			rows = append(rows, strings.ToLower(p.Title))
		}
	}
	readme, err := os.ReadFile("../README.md")
	require.NoError(t, err)
	m := regexp.MustCompile("is `deploy/grafana/tq.json` \\(uid `([^`]+)`\\)(?s:.*?)Rows: ([^.]+)\\.").FindSubmatch(readme)
	require.NotNil(t, m, "README names the dashboard's uid and rows")
	require.Equal(t, string(m[1]), d.UID)
	var want []string
	for r := range strings.SplitSeq(strings.ReplaceAll(string(m[2]), "\n", " "), ",") {
		want = append(want, strings.TrimSpace(r))
	}
	require.Equal(t, want, rows)
}
