package main

import (
	"bytes"
	"os"
	"regexp"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Every --flag the README names is a flag of some tq command (as its -h
// lists it), but for those of the other programs it shows (pip, redis-cli,
// python -m tq.bench): a renamed or dropped flag does not linger in the
// newcomer's guide.
func TestReadmeNamesOnlyRealFlags(t *testing.T) {
	others := []string{
		"break-system-packages", "no-build-isolation", "system-site-packages", // pip
		"user", "pass", // redis-cli
		"device", "address", // python -m tq.bench
	}
	b, err := os.ReadFile("../../README.md")
	require.NoError(t, err)
	known := map[string]bool{}
	flagLine := regexp.MustCompile(`(?m)^  -([a-z][a-z0-9-]*)`)
	for _, cmd := range []string{"serve", "stat", "checkpoint", "unit", "demo", "bench"} {
		var usage bytes.Buffer
		run(t.Context(), []string{cmd, "-h"}, &usage, &usage)
		for _, m := range flagLine.FindAllStringSubmatch(usage.String(), -1) {
			known[m[1]] = true
		}
	}
	require.Contains(t, known, "listen", "no flags read from the commands' usage")
	seen := map[string]bool{}
	for _, m := range regexp.MustCompile(`--([a-z][a-z0-9-]*)`).FindAllStringSubmatch(string(b), -1) {
		f := m[1]
		if seen[f] || slices.Contains(others, f) {
			continue
		}
		seen[f] = true
		assert.True(t, known[f], "README names --%s, which no tq command takes", f)
	}
}
