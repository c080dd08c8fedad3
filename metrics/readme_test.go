package metrics

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
)

// TestReadmeListsEveryMetric: the README's metrics table names every
// tq_ metric the registry exports, and nothing else.
func TestReadmeListsEveryMetric(t *testing.T) {
	ch := make(chan *prometheus.Desc, 256)
	for _, c := range New().tq {
		c.Describe(ch)
	}
	close(ch)
	fqName := regexp.MustCompile(`fqName: "([^"]+)"`)
	var code []string
	for d := range ch {
		m := fqName.FindStringSubmatch(d.String())
		if m == nil {
			t.Fatalf("no name in %s", d)
		}
		code = append(code, m[1])
	}

	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, sect, ok := strings.Cut(string(b), "\n## Metrics and the dashboard\n")
	if !ok {
		t.Fatal("README has no section \"Metrics and the dashboard\"")
	}
	sect, _, _ = strings.Cut(sect, "\n## ")
	name := regexp.MustCompile("`(tq_[a-z0-9_]+)")
	var readme []string
	for line := range strings.Lines(sect) {
		if !strings.HasPrefix(line, "| `") {
			continue
		}
		first, _, _ := strings.Cut(line[1:], "|")
		for _, m := range name.FindAllStringSubmatch(first, -1) {
			readme = append(readme, m[1])
		}
	}
	slices.Sort(code)
	code = slices.Compact(code)
	slices.Sort(readme)
	readme = slices.Compact(readme)
	if diff := cmp.Diff(code, readme); diff != "" {
		t.Errorf("tq_ metrics: exported (-) and listed in the README's table (+) differ:\n%s", diff)
	}
}
