package metrics_test

import (
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
