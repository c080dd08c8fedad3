package metrics_test

import (
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
