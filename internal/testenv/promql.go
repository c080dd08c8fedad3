package testenv

import (
	"regexp"
	"strings"
)

// What the dashboard tests read in a PromQL expression (a few patterns,
// not a parser: the dashboard's expressions are simple).
var (
	promMetric = regexp.MustCompile(`\b((?:tq|go|process)_[a-zA-Z0-9_]+)\b`)
	// by (a, b), on (a), without (...), ignoring (...), group_left (...)
	promGrouping = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)`)
	promSelector = regexp.MustCompile(`\{([^}]*)\}`)
	promMatcher  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"`)
)

// PromMetrics returns the names of TQ's and Go's metrics that a PromQL
// expression names (tq_*, go_*, process_*), in order, repeats included.
func PromMetrics(expr string) []string {
	var out []string
	for _, m := range promMetric.FindAllStringSubmatch(expr, -1) {
		out = append(out, m[1])
	}
	return out
}

// PromLabels returns the labels a PromQL expression groups, joins or
// matches on (by, without, on, ignoring, group_left/right, and the
// selectors' matchers), in order, repeats included.
func PromLabels(expr string) []string {
	var used []string
	for _, m := range promGrouping.FindAllStringSubmatch(expr, -1) {
		for l := range strings.SplitSeq(m[1], ",") {
			if l = strings.TrimSpace(l); l != "" {
				used = append(used, l)
			}
		}
	}
	for _, sel := range promSelector.FindAllStringSubmatch(expr, -1) {
		for _, m := range promMatcher.FindAllStringSubmatch(sel[1], -1) {
			used = append(used, m[1])
		}
	}
	return used
}
