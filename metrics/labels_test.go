package metrics_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/embedded"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/metrics"
)

// TestNameLabels: the controller's Go API takes any string as a name, and
// names have no length bound; a scrape must neither panic on a name that
// is not valid UTF-8 (MustNewConstMetric does, ending the process) nor
// export a label value longer than a Prometheus label_value_length_limit
// would take, and two long names sharing a prefix stay two series.
func TestNameLabels(t *testing.T) {
	c, err := controller.New(controller.Config{})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	long := strings.Repeat("p", 5000)
	for _, p := range []string{"bad\xff", long + "a", long + "b", strings.Repeat("é", 3000)} {
		_, err := c.Insert(p, 1, []string{"f\xfe"})
		require.NoError(t, err)
	}
	reg := metrics.New()
	reg.AddController(c, nil)
	mfs, err := reg.Gatherer().Gather()
	require.NoError(t, err)
	var parts []string
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), "tq_partition") {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				v := lp.GetValue()
				assert.True(t, utf8.ValidString(v), "%s{%s=%q}", mf.GetName(), lp.GetName(), v)
				assert.LessOrEqual(t, len(v), 200, "%s{%s}", mf.GetName(), lp.GetName())
				if mf.GetName() == "tq_partition_rows" && lp.GetName() == "partition" {
					parts = append(parts, v)
				}
			}
		}
	}
	assert.Len(t, parts, 4, "one tq_partition_rows series per partition: %q", parts)
	assert.Contains(t, parts, `"bad\xff"`)
}

// partitionLabels scrapes reg and returns the partition label of each
// tq_partition_rows series.
func partitionLabels(t *testing.T, reg *metrics.Registry) []string {
	t.Helper()
	mfs, err := reg.Gatherer().Gather()
	require.NoError(t, err, "a scrape")
	var parts []string
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if mf.GetName() == "tq_partition_rows" && lp.GetName() == "partition" {
					parts = append(parts, lp.GetValue())
				}
			}
		}
	}
	return parts
}

// TestNameLabelsNeverCollide: a name changed into a label (Go-quoted, or
// cut and hashed) must not come out as another name's label. Two series
// of one name and labels fail the whole scrape (the handler answers 500,
// every dashboard goes blank), and any client that may create partitions
// could do that on purpose: name one after the label of another (the
// endpoint shows the labels to anyone). Each name is its own series.
// (Fields and tasks take their labels the same way.)
func TestNameLabelsNeverCollide(t *testing.T) {
	c, err := controller.New(controller.Config{})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	reg := metrics.New()
	reg.AddController(c, nil)

	long := strings.Repeat("p", 500)
	for _, p := range []string{long, "bad\xff"} { // the second only through the Go API
		_, err = c.Insert(p, 1, []string{"f"})
		require.NoError(t, err)
	}
	parts := partitionLabels(t, reg)
	require.Len(t, parts, 2)
	var longLabel string
	for _, p := range parts {
		if strings.HasPrefix(p, "ppp") {
			longLabel = p
		}
	}
	require.NotEmpty(t, longLabel)
	// Valid names, as a client over the wire may give them: each spelled
	// as the label of another.
	for _, p := range []string{longLabel, strconv.Quote("bad\xff")} {
		_, err = c.Insert(p, 1, []string{"f"})
		require.NoError(t, err)
	}

	h := httptest.NewServer(reg.Handler())
	t.Cleanup(h.Close)
	resp, err := http.Get(h.URL)
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, "a scrape: %s", body)

	parts = partitionLabels(t, reg)
	assert.Len(t, parts, 4, "one series per partition: %q", parts)
	assert.Len(t, slices.Compact(slices.Sorted(slices.Values(parts))), 4, "four labels: %q", parts)
	for _, v := range parts {
		assert.LessOrEqual(t, len(v), 200)
		assert.True(t, utf8.ValidString(v))
	}
}

// TestFieldSeriesAreBounded: fields come from the workload (a Redis
// HSET's field names are fields), up to 65535 per partition, and each
// used to be a tq_partition_field_produced_rows series of its own: a
// partition of hashes could put tens of thousands of series in every
// scrape. At most MaxFieldSeries fields of a partition (the first by
// name) get one; tq_partition_fields counts them all.
func TestFieldSeriesAreBounded(t *testing.T) {
	c, err := embedded.New(embedded.DefaultConfig())
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	const n = 3 * metrics.MaxFieldSeries
	var fs []engine.Field
	for i := range n {
		col, err := engine.NewOpaque([]int{0, 1}, []byte{'v'})
		require.NoError(t, err)
		fs = append(fs, engine.Field{Name: fmt.Sprintf("field%04d", i), Col: col})
	}
	b, err := engine.NewBatch(fs...)
	require.NoError(t, err)
	_, err = c.Client.PutKeys(t.Context(), "hashes", []string{"k"}, b, nil)
	require.NoError(t, err)

	reg := metrics.New()
	reg.AddController(c.Controller, nil)
	mfs, err := reg.Gatherer().Gather()
	require.NoError(t, err)
	var fields []string
	var count float64
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			switch mf.GetName() {
			case "tq_partition_field_produced_rows":
				for _, lp := range m.GetLabel() {
					if lp.GetName() == "field" {
						fields = append(fields, lp.GetValue())
					}
				}
			case "tq_partition_fields":
				count = m.GetGauge().GetValue()
			}
		}
	}
	assert.Len(t, fields, metrics.MaxFieldSeries, "field series of one partition")
	assert.Equal(t, "field0000", fields[0])
	assert.Equal(t, float64(n), count, "tq_partition_fields")
}
