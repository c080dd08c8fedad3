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

// TestReadmeLabelsMatchMetrics: where the README's metrics table gives a
// metric's labels (`tq_x{a,b}`), they are the ones it is exported with;
// and every label of a tq_ metric is one README's list of labels names.
func TestReadmeLabelsMatchMetrics(t *testing.T) {
	ch := make(chan *prometheus.Desc, 256)
	for _, c := range New().tq {
		c.Describe(ch)
	}
	close(ch)
	desc := regexp.MustCompile(`fqName: "([^"]+)".*variableLabels: \{([^}]*)\}`)
	code := map[string][]string{}
	for d := range ch {
		m := desc.FindStringSubmatch(d.String())
		if m == nil {
			t.Fatalf("no name or labels in %s", d)
		}
		var labels []string
		if m[2] != "" {
			labels = strings.Split(m[2], ",")
		}
		slices.Sort(labels)
		code[m[1]] = labels
	}

	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, sect, _ := strings.Cut(string(b), "\n## Metrics and the dashboard\n")
	sect, _, _ = strings.Cut(sect, "\n## ")
	listed := regexp.MustCompile("labels are bounded: ([a-z, \n]+), never a key").FindStringSubmatch(sect)
	if listed == nil {
		t.Fatal(`README's metrics section has no "labels are bounded: ..., never a key"`)
	}
	bounded := map[string]bool{}
	for l := range strings.SplitSeq(strings.ReplaceAll(listed[1], "\n", " "), ",") {
		bounded[strings.TrimSpace(l)] = true
	}
	withLabels := regexp.MustCompile("`(tq_[a-z0-9_]+)\\{([a-z_,]+)\\}`")
	n := 0
	for line := range strings.Lines(sect) {
		if !strings.HasPrefix(line, "| `") {
			continue
		}
		first, _, _ := strings.Cut(line[1:], "|")
		for _, m := range withLabels.FindAllStringSubmatch(first, -1) {
			n++
			want := strings.Split(m[2], ",")
			slices.Sort(want)
			got, ok := code[m[1]]
			if !ok {
				t.Errorf("README's %s: no such metric", m[0])
				continue
			}
			if !slices.Equal(got, want) {
				t.Errorf("README gives %s; it is exported with labels %v", m[0], got)
			}
		}
	}
	if n == 0 {
		t.Fatal("README's table gives no metric's labels")
	}
	for name, labels := range code {
		for _, l := range labels {
			if !bounded[l] {
				t.Errorf("%s has label %q, which README's list of labels (%s) does not name", name, l, listed[1])
			}
		}
	}
}
