package main

import (
	"bytes"
	"regexp"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The defaults the README states for the streaming loader's serve flags,
// tq stat and tq bench are what each command's -h says it uses.
func TestReadmeStatedDefaultsAreTheFlagsDefaults(t *testing.T) {
	for _, c := range []struct{ cmd, flag, def string }{
		// "The streaming loader", Stopping.
		{"serve", "held-fetch-ttl", "10m0s"},
		{"serve", "held-client-grace", "15s"},
		{"serve", "peer-timeout", "30s"},
		{"serve", "kept-batch-ttl", "10m0s"},
		// tq stat: "the default interval is 2s", "--limit ... 20 by default".
		{"stat", "interval", "2s"},
		{"stat", "limit", "20"},
		// tq bench: "small workload, every transport and case", "the default --log off".
		{"bench", "workload", `"small"`},
		{"bench", "transport", `"all"`},
		{"bench", "case", `"all"`},
		{"bench", "log", `"off"`},
	} {
		var usage bytes.Buffer
		run(t.Context(), []string{c.cmd, "-h"}, &usage, &usage)
		m := regexp.MustCompile(`(?ms)^  -` + regexp.QuoteMeta(c.flag) + `\b.*?(?:^  -|\z)`).FindString(usage.String())
		require.NotEmpty(t, m, "tq %s -h lists no -%s", c.cmd, c.flag)
		assert.Contains(t, m, "(default "+c.def+")", "tq %s -%s", c.cmd, c.flag)
	}
}
