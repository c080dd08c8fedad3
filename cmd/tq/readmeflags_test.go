package main

import (
	"bytes"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
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
	for _, flags := range commandFlags(t) {
		for f := range flags {
			known[f] = true
		}
	}
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

// readmeCommands are the tq commands whose flags the README tests check.
var readmeCommands = []string{"serve", "stat", "checkpoint", "unit", "demo", "bench"}

// commandFlags is, per tq command, the flags its -h lists.
func commandFlags(t *testing.T) map[string]map[string]bool {
	t.Helper()
	flagLine := regexp.MustCompile(`(?m)^  -([a-z][a-z0-9-]*)`)
	out := map[string]map[string]bool{}
	for _, cmd := range readmeCommands {
		var usage bytes.Buffer
		run(t.Context(), []string{cmd, "-h"}, &usage, &usage)
		out[cmd] = map[string]bool{}
		for _, m := range flagLine.FindAllStringSubmatch(usage.String(), -1) {
			out[cmd][m[1]] = true
		}
		require.NotEmpty(t, out[cmd], "no flags read from tq %s -h", cmd)
	}
	require.Contains(t, out["serve"], "listen", "no flags read from the commands' usage")
	return out
}

// readmeInvocations returns each `tq CMD ...` the README runs: in a code
// block, from "tq CMD" to the end of the line (lines joined at a trailing
// backslash), short of a # comment or a shell separator; in prose, from
// "tq CMD" to the end of its `code span`. Each comes with its line.
func readmeInvocations(readme string) (calls []readmeCall) {
	start := regexp.MustCompile(`(?:^|[\s/(])tq (` + strings.Join(readmeCommands, "|") + `)\b`)
	cut := regexp.MustCompile(`\s#|\|\||&&|[|;]`)
	add := func(line int, text string) {
		for _, loc := range start.FindAllStringSubmatchIndex(text, -1) {
			rest := text[loc[3]:]
			if m := cut.FindStringIndex(rest); m != nil {
				rest = rest[:m[0]]
			}
			calls = append(calls, readmeCall{line: line, cmd: text[loc[2]:loc[3]], args: strings.Fields(rest)})
		}
	}
	lines := strings.Split(readme, "\n")
	inBlock := false
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		if strings.HasPrefix(strings.TrimSpace(l), "```") {
			inBlock = !inBlock
			continue
		}
		if inBlock {
			n := i
			for strings.HasSuffix(l, "\\") && i+1 < len(lines) {
				i++
				l = strings.TrimSuffix(l, "\\") + " " + lines[i]
			}
			add(n+1, l)
			continue
		}
		// Code spans, which may run on to the next line.
		for j := i; ; {
			open := strings.Index(l, "`")
			if open < 0 {
				break
			}
			span, after, closed := strings.Cut(l[open+1:], "`")
			if !closed && j+1 < len(lines) && !strings.HasPrefix(strings.TrimSpace(lines[j+1]), "```") {
				j++
				l = l[open:] + " " + lines[j]
				continue
			}
			add(i+1, span)
			l = after
		}
	}
	return calls
}

type readmeCall struct {
	line int
	cmd  string
	args []string // after "tq CMD"
}

// Every `tq CMD ...` the README runs (in a code block or a code span)
// uses only flags of CMD, and of its verb for tq unit and tq checkpoint,
// as the command would take them: a flag moved from one command to
// another, or one that a verb refuses, does not linger there.
// TestReadmeNamesOnlyRealFlags checks only that a flag is some command's.
func TestReadmeInvocationsUseTheirCommandsFlags(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	require.NoError(t, err)
	checkReadmeInvocations(t, string(b))
}

func checkReadmeInvocations(t *testing.T, readme string) {
	flags := commandFlags(t)
	// The flags only some verbs take, as the commands refuse them.
	verbUse := map[string]map[string][]string{"unit": {}, "checkpoint": {"metadata": {"save"}}}
	for f, use := range unitFlagUse {
		verbUse["unit"][f] = use.verbs
	}
	verbs := map[string][]string{"unit": {"drain", "undrain", "rebalance"}, "checkpoint": {"save", "load", "list"}}
	calls := readmeInvocations(readme)
	require.NotEmpty(t, calls)
	checked := 0
	for _, c := range calls {
		var given []string
		for _, a := range c.args {
			if a == "--" {
				break
			}
			if name, ok := strings.CutPrefix(a, "--"); ok && name != "" && name[0] >= 'a' && name[0] <= 'z' {
				name, _, _ = strings.Cut(name, "=")
				given = append(given, name)
			}
		}
		verb := ""
		if len(c.args) > 0 && slices.Contains(verbs[c.cmd], c.args[0]) {
			verb = c.args[0]
			if verb == "drain" && slices.Contains(given, "cancel") {
				verb = "drain --cancel"
			}
		}
		for _, f := range given {
			checked++
			where := fmt.Sprintf("README.md:%d: tq %s %s", c.line, c.cmd, strings.Join(c.args, " "))
			if !flags[c.cmd][f] {
				t.Errorf("%s: tq %s takes no --%s", where, c.cmd, f)
				continue
			}
			if use, ok := verbUse[c.cmd][f]; ok && verb != "" && !slices.Contains(use, verb) {
				t.Errorf("%s: --%s is for %s, not %s", where, f, strings.Join(use, " or "), verb)
			}
			if c.cmd == "stat" && f == "interval" && !slices.Contains(given, "watch") {
				t.Errorf("%s: --interval is for --watch", where)
			}
		}
	}
	require.Positive(t, checked, "no flags found in the README's tq command lines")
}

// The commands tq's help lists are those the README's Layout names for
// cmd/tq, and those whose flags the README tests check: a new command is
// neither missing from the map nor left out of the flag checks.
func TestReadmeLayoutNamesEveryCommand(t *testing.T) {
	var help bytes.Buffer
	require.NoError(t, run(t.Context(), []string{"help"}, &help, &help))
	var listed []string
	for _, m := range regexp.MustCompile(`(?m)^  tq ([a-z]+)`).FindAllStringSubmatch(help.String(), -1) {
		if m[1] != "help" {
			listed = append(listed, m[1])
		}
	}
	require.NotEmpty(t, listed, "no commands read from tq help")

	b, err := os.ReadFile("../../README.md")
	require.NoError(t, err)
	row := regexp.MustCompile("(?m)^\\| `cmd/tq` \\| (.*) \\|$").FindStringSubmatch(string(b))
	require.NotNil(t, row, "the README's Layout has no cmd/tq row")
	var named []string
	for _, m := range regexp.MustCompile("`tq ([a-z]+)`").FindAllStringSubmatch(row[1], -1) {
		named = append(named, m[1])
	}
	assert.ElementsMatch(t, listed, named, "tq help's commands, and those the README's Layout names for cmd/tq")
	assert.ElementsMatch(t, listed, readmeCommands, "tq help's commands, and readmeCommands")
}
