package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
)

// The text views show at most --limit partitions (20 by default; 0: all),
// most rows first, and say how many more there are; --partition shows
// only the partitions its glob matches, in the text views and in --json.
// --json lists every partition otherwise, --limit or not.
func TestStatLimitAndPartitionGlob(t *testing.T) {
	rows := map[string]int{}
	for i := range 30 {
		rows[fmt.Sprintf("train-%02d", i)] = i + 1
	}
	for i := range 5 {
		rows[fmt.Sprintf("eval-%d", i)] = 100 + i
	}
	addr := startStatController(t, rows, nil)
	partLines := func(out string) (names []string) {
		_, table, ok := strings.Cut(out, "\nPARTITIONS\n")
		require.True(t, ok, "no partition table:\n%s", out)
		table, _, _ = strings.Cut(table, "\n\n")
		for _, l := range strings.Split(table, "\n")[1:] { // past the header
			if f := strings.Fields(l); len(f) > 0 && (strings.HasPrefix(f[0], "train-") || strings.HasPrefix(f[0], "eval-")) {
				names = append(names, f[0])
			}
		}
		return names
	}
	want := func(names ...string) []string { return names }

	out, err := runStat(t, addr)
	require.NoError(t, err)
	t.Logf("tq stat:\n%s", out)
	assert.Contains(t, out, "35 partitions")
	got := partLines(out)
	require.Len(t, got, 20, "the default --limit")
	assert.Equal(t, want("eval-4", "eval-3", "eval-2", "eval-1", "eval-0", "train-29", "train-28"), got[:7], "most rows first")
	assert.Contains(t, out, "15 more partitions")

	out, err = runStat(t, addr, "--limit", "2")
	require.NoError(t, err)
	assert.Equal(t, want("eval-4", "eval-3"), partLines(out))
	assert.Contains(t, out, "33 more partitions")

	out, err = runStat(t, addr, "--limit", "0")
	require.NoError(t, err)
	assert.Len(t, partLines(out), 35)
	assert.NotContains(t, out, "more partitions")

	out, err = runStat(t, addr, "--partition", "train-0?")
	require.NoError(t, err)
	t.Logf("tq stat --partition train-0?:\n%s", out)
	assert.Contains(t, out, `10 of 35 partitions match "train-0?"`)
	assert.Equal(t, want("train-09", "train-08", "train-07", "train-06", "train-05", "train-04", "train-03", "train-02", "train-01", "train-00"), partLines(out))
	assert.NotContains(t, out, "more partitions")

	out, err = runStat(t, addr, "--partition", "nothing-*")
	require.NoError(t, err)
	assert.Contains(t, out, `0 of 35 partitions match "nothing-*"`)

	jsonNames := func(args ...string) (names []string) {
		out, err := runStat(t, addr, append([]string{"--json"}, args...)...)
		require.NoError(t, err)
		var s statJSON
		require.NoError(t, json.Unmarshal([]byte(out), &s), out)
		for _, p := range s.Partitions {
			names = append(names, p.Partition)
		}
		return names
	}
	assert.Len(t, jsonNames("--limit", "2"), 35, "--json lists every partition")
	assert.Equal(t, want("eval-0", "eval-1", "eval-2", "eval-3", "eval-4"), jsonNames("--partition", "eval-*"), "by name")

	// --watch shows the same selection.
	m, err := client.DialMeta(t.Context(), addr, client.RemoteConfig{Token: statTestToken})
	require.NoError(t, err)
	defer m.Close()
	s, err := takeSnapshot(t.Context(), m, addr, statTestToken)
	require.NoError(t, err)
	s.limit = 3
	var watch bytes.Buffer
	require.NoError(t, s.printWatch(&watch, nil, time.Second))
	t.Logf("tq stat --watch --limit 3:\n%s", watch.String())
	assert.Contains(t, watch.String(), "eval-2 (102 rows")
	assert.NotContains(t, watch.String(), "eval-1 ")
	assert.Contains(t, watch.String(), "32 more partitions")
}

// Bad flags are refused with an error that names them, before tq stat
// dials anyone.
func TestStatRefusesBadFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--partition", "train-[", "tcp://127.0.0.1:1"}, `--partition "train-[": syntax error in pattern`},
		{[]string{"--partition", `a\`, "tcp://127.0.0.1:1"}, `--partition "a\\": syntax error in pattern`},
		{[]string{"--limit", "-1", "tcp://127.0.0.1:1"}, "--limit -1: must not be negative"},
		// --interval paces --watch; without it, it would do nothing.
		{[]string{"--interval", "1s", "tcp://127.0.0.1:1"}, "stat: --interval is for --watch; without --watch it does nothing"},
		{[]string{"--json", "--interval=5s", "tcp://127.0.0.1:1"}, "stat: --interval is for --watch"},
		{[]string{"--watch=false", "--interval", "1s", "tcp://127.0.0.1:1"}, "stat: --interval is for --watch"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var out, errb bytes.Buffer
			err := stat(t.Context(), tc.args, &out, &errb)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}
