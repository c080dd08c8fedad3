package main

import (
	"errors"
	"flag"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseArgsTakesFlagsAfterArguments(t *testing.T) {
	for _, tc := range []struct {
		args     []string
		wantPos  []string
		wantJSON bool
		wantN    int
	}{
		{[]string{"ADDR"}, []string{"ADDR"}, false, 0},
		{[]string{"--json", "ADDR"}, []string{"ADDR"}, true, 0},
		{[]string{"ADDR", "--json"}, []string{"ADDR"}, true, 0},
		{[]string{"save", "ADDR", "-n", "3", "NAME", "--json"}, []string{"save", "ADDR", "NAME"}, true, 3},
		{[]string{"ADDR", "--", "--json"}, []string{"ADDR", "--json"}, false, 0},
		{[]string{"--", "-x", "--json"}, []string{"-x", "--json"}, false, 0},
		{nil, nil, false, 0},
	} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		asJSON := fs.Bool("json", false, "")
		n := fs.Int("n", 0, "")
		pos, err := parseArgs(fs, tc.args, io.Discard)
		require.NoError(t, err, "%q", tc.args)
		assert.Equal(t, tc.wantPos, pos, "%q", tc.args)
		assert.Equal(t, tc.wantJSON, *asJSON, "%q: --json", tc.args)
		assert.Equal(t, tc.wantN, *n, "%q: -n", tc.args)
	}
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	_, err := parseArgs(fs, []string{"ADDR", "--nope"}, io.Discard)
	require.ErrorContains(t, err, "flag provided but not defined: -nope")
}

// tq stat, checkpoint and unit take their flags after the address, the
// name or the unit id too: each case's error shows the flag was read.
func TestCommandsTakeFlagsAfterArguments(t *testing.T) {
	t.Setenv("TQ_TOKEN", "t")
	t.Setenv("TQ_CONTROLLER", "")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"stat", "tcp://127.0.0.1:1", "--interval", "0s"}, "--interval 0s: must be positive"},
		{[]string{"stat", "tcp://127.0.0.1:1", "--json", "--nope"}, "flag provided but not defined: -nope"},
		{[]string{"stat", "tcp://127.0.0.1:1", "tcp://127.0.0.1:2"}, "stat takes one address, got 2 arguments"},
		{[]string{"checkpoint", "save", "tcp://127.0.0.1:1", "NAME", "--nope"}, "flag provided but not defined: -nope"},
		{[]string{"unit", "drain", "2", "--controller", "unix:///nonexistent/controller.sock", "--timeout", "5s"}, "nonexistent"},
		{[]string{"unit", "rebalance", "--controller", "x", "2"}, "takes no unit id"},
	} {
		t.Run(tc.args[0], func(t *testing.T) {
			err := run(t.Context(), tc.args, io.Discard, io.Discard)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want, "%q", tc.args)
		})
	}
}

// tq stat, checkpoint and unit refuse a --timeout of 0 or below up front,
// naming the flag and the value; they used to dial with it and fail with
// "context deadline exceeded", naming neither.
func TestClientCommandsRefuseANonPositiveTimeout(t *testing.T) {
	t.Setenv("TQ_TOKEN", "t")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"stat", "--timeout", "0", "tcp://127.0.0.1:1"}, "--timeout 0s: must be positive"},
		{[]string{"stat", "--timeout", "-1s", "--watch", "tcp://127.0.0.1:1"}, "--timeout -1s: must be positive"},
		{[]string{"checkpoint", "--timeout", "0", "list", "tcp://127.0.0.1:1"}, "checkpoint: --timeout 0s: must be positive"},
		{[]string{"unit", "drain", "--controller", "tcp://127.0.0.1:1", "--timeout", "0", "2"}, "unit drain: --timeout 0s: must be positive"},
		{[]string{"unit", "rebalance", "--controller", "tcp://127.0.0.1:1", "--timeout", "-5m"}, "unit rebalance: --timeout -5m0s: must be positive"},
	} {
		err := run(t.Context(), tc.args, io.Discard, io.Discard)
		if assert.Error(t, err, "%q", tc.args) {
			assert.Contains(t, err.Error(), tc.want, "%q", tc.args)
		}
	}
}

// tq unit drain and rebalance refuse a negative --progress up front,
// naming the flag and the value; it used to be taken and act as 0 (a
// report after every page). 0 itself is still taken: the dial is what
// fails then.
func TestUnitRefusesANegativeProgress(t *testing.T) {
	t.Setenv("TQ_TOKEN", "t")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"unit", "drain", "--controller", "tcp://127.0.0.1:1", "--progress", "-1s", "2"}, "unit drain: --progress -1s: want 0 or more"},
		{[]string{"unit", "rebalance", "--controller", "tcp://127.0.0.1:1", "--progress", "-5ms"}, "unit rebalance: --progress -5ms: want 0 or more"},
		{[]string{"unit", "drain", "--controller", "tcp://127.0.0.1:1", "--timeout", "5s", "--progress", "0", "2"}, "refused"},
	} {
		err := run(t.Context(), tc.args, io.Discard, io.Discard)
		if assert.Error(t, err, "%q", tc.args) {
			assert.Contains(t, err.Error(), tc.want, "%q", tc.args)
		}
	}
}

// `tq unit -h` prints the unit usage (to stdout) and returns flag.ErrHelp, which main
// does not print as an error, as every other command does ("Run "tq
// <command> -h" for a command's flags"); it used to fail with `unit:
// unknown verb "-h"`.
func TestEveryCommandTakesHelp(t *testing.T) {
	for _, args := range [][]string{{"unit", "-h"}, {"unit", "--help"}, {"unit", "drain", "-h"}} {
		var out strings.Builder
		err := run(t.Context(), args, &out, io.Discard)
		assert.ErrorIs(t, err, flag.ErrHelp, "%q", args)
		assert.Contains(t, out.String(), "tq unit drain --controller ADDR", "%q: the usage", args)
	}
	for _, cmd := range []string{"stat", "checkpoint", "serve", "demo", "bench"} {
		err := run(t.Context(), []string{cmd, "-h"}, io.Discard, io.Discard)
		assert.ErrorIs(t, err, flag.ErrHelp, "tq %s -h", cmd)
	}
}

// `tq <command> -h` (or --help) prints the command's usage to stdout and
// exits 0: asking for help is no error. It used to print the usage to
// stderr and exit 2, as for a bad flag, which still does both.
func TestHelpExitsZeroWithUsageOnStdout(t *testing.T) {
	bin := tqBinary(t)
	runTQ := func(args ...string) (code int, stdout, stderr string) {
		var out, errOut strings.Builder
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), "TQ_DATA_DIR="+t.TempDir())
		cmd.Stdout, cmd.Stderr = &out, &errOut
		err := cmd.Run()
		var exit *exec.ExitError
		if err != nil && !errors.As(err, &exit) {
			t.Fatalf("tq %q: %v", args, err)
		}
		return cmd.ProcessState.ExitCode(), out.String(), errOut.String()
	}
	for _, tc := range []struct {
		args []string
		want string // in the usage
	}{
		{[]string{"serve"}, "-check-config"},
		{[]string{"stat"}, "usage: tq stat"},
		{[]string{"checkpoint"}, "tq checkpoint save"},
		{[]string{"unit"}, "tq unit drain --controller ADDR"},
		{[]string{"unit", "drain"}, "tq unit drain --controller ADDR"},
		{[]string{"demo"}, "-units"},
		{[]string{"bench"}, "usage: tq bench"},
	} {
		for _, help := range []string{"-h", "--help"} {
			args := append(append([]string{}, tc.args...), help)
			code, out, errOut := runTQ(args...)
			assert.Equal(t, 0, code, "tq %q: exit status", args)
			assert.Contains(t, out, tc.want, "tq %q: the usage on stdout", args)
			assert.Empty(t, errOut, "tq %q: stderr", args)
		}
		args := append(append([]string{}, tc.args...), "--no-such-flag")
		code, out, errOut := runTQ(args...)
		assert.Equal(t, 2, code, "tq %q: exit status", args)
		assert.Empty(t, out, "tq %q: stdout", args)
		assert.Contains(t, errOut, "flag provided but not defined: -no-such-flag", "tq %q: stderr", args)
		assert.Contains(t, errOut, tc.want, "tq %q: the usage on stderr", args)
	}
}

// tq unit, given the wrong number of arguments, names them, as tq stat
// does: it used to say only "got 2 arguments".
func TestUnitNamesTheArgumentsItDidNotWant(t *testing.T) {
	t.Setenv("TQ_TOKEN", "t")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"unit", "drain", "--controller", "tcp://127.0.0.1:1", "1", "2"}, `unit drain: want one unit ID, got 2 arguments: ["1" "2"]`},
		{[]string{"unit", "drain", "--controller", "tcp://127.0.0.1:1"}, `unit drain: want one unit ID, got 0 arguments`},
		{[]string{"unit", "rebalance", "--controller", "tcp://127.0.0.1:1", "2"}, `unit rebalance: takes no unit id, got 1 argument: ["2"]`},
	} {
		err := run(t.Context(), tc.args, io.Discard, io.Discard)
		if assert.Error(t, err, "%q", tc.args) {
			assert.Contains(t, err.Error(), tc.want, "%q", tc.args)
		}
	}
}

// A flag given twice is refused, naming it, before anything is dialed or
// started: the flag package would keep the last value and drop the first
// without a word (`tq checkpoint save ADDR NAME --metadata A --metadata B`
// saved B and lost A; `tq unit drain --controller X ... --controller Y`
// drained on Y).
func TestCommandsRefuseAFlagGivenTwice(t *testing.T) {
	t.Setenv("TQ_TOKEN", "t")
	t.Setenv("TQ_CONTROLLER", "")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"stat", "--limit", "5", "tcp://127.0.0.1:1", "--limit", "0"}, "stat: --limit is given more than once"},
		{[]string{"stat", "--json", "tcp://127.0.0.1:1", "-json"}, "stat: --json is given more than once"},
		{[]string{"checkpoint", "save", "tcp://127.0.0.1:1", "c", "--metadata", `{"a":1}`, "--metadata={\"b\":2}"}, "checkpoint: --metadata is given more than once"},
		{[]string{"unit", "drain", "--controller", "tcp://127.0.0.1:1", "3", "--controller", "tcp://127.0.0.1:2"}, "unit: --controller is given more than once"},
		{[]string{"demo", "--units", "1", "--units", "3"}, "demo: --units is given more than once"},
		{[]string{"bench", "--iters", "1", "--iters", "2"}, "bench: --iters is given more than once"},
	} {
		t.Run(tc.args[0], func(t *testing.T) {
			err := run(t.Context(), tc.args, io.Discard, io.Discard)
			require.Error(t, err, "%q", tc.args)
			assert.Contains(t, err.Error(), tc.want, "%q", tc.args)
		})
	}
	// A value that looks like a flag is a value, and after "--" nothing
	// is a flag: neither counts.
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	meta := fs.String("metadata", "", "")
	pos, err := parseArgs(fs, []string{"--metadata", "--metadata", "ADDR", "--", "--metadata"}, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, "--metadata", *meta)
	assert.Equal(t, []string{"ADDR", "--metadata"}, pos)
}

// A controller address that cannot be dialed (an unknown scheme, a port
// out of range) is refused before any dial, naming where it came from:
// --controller, $TQ_CONTROLLER (which the user may have forgotten is
// set), or tq stat's and tq checkpoint's ADDR.
func TestClientCommandsNameABadControllerAddress(t *testing.T) {
	t.Setenv("TQ_TOKEN", "t")
	for _, tc := range []struct {
		env  string
		args []string
		want string
	}{
		{"http://x:1", []string{"unit", "drain", "3"}, `unit drain: $TQ_CONTROLLER "http://x:1": unknown scheme`},
		{"tcp://127.0.0.1:99999", []string{"unit", "rebalance"}, `unit rebalance: $TQ_CONTROLLER "tcp://127.0.0.1:99999": port "99999": want a number from 1 to 65535`},
		{"tcp://127.0.0.1:1", []string{"unit", "undrain", "--controller", "http://x:1", "3"}, `unit undrain: --controller "http://x:1": unknown scheme`},
		{"", []string{"unit", "drain", "--controller", "tcp://127.0.0.1", "3"}, `unit drain: --controller "tcp://127.0.0.1": want tcp://HOST:PORT`},
		{"", []string{"stat", "tcp://127.0.0.1:0"}, `stat: address "tcp://127.0.0.1:0": port "0": want a number from 1 to 65535`},
		{"", []string{"checkpoint", "list", "127.0.0.1:70000"}, `checkpoint list: address "127.0.0.1:70000": port "70000": want a number from 1 to 65535`},
	} {
		t.Run(tc.args[0], func(t *testing.T) {
			t.Setenv("TQ_CONTROLLER", tc.env)
			err := run(t.Context(), tc.args, io.Discard, io.Discard)
			require.Error(t, err, "%q", tc.args)
			assert.Contains(t, err.Error(), tc.want, "%q", tc.args)
		})
	}
}

// tq serve refuses a flag given twice too, naming it, before it makes or
// binds anything: `tq serve --capacity 1GiB --capacity 2GiB` started with
// 2GiB and dropped the first without a word. A --config file's key or a
// $TQ_ variable under a flag is a layer the flag overrides, not a repeat.
func TestServeRefusesAFlagGivenTwice(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer held.Close()
	data, socks := filepath.Join(t.TempDir(), "data"), t.TempDir()
	t.Setenv("TQ_DATA_DIR", data)
	for _, args := range [][]string{
		{"--listen", held.Addr().String(), "--socket-dir", socks, "--capacity", "1GiB", "--capacity", "2GiB"},
		{"--check-config", "--capacity=1GiB", "--listen", "127.0.0.1:0", "-capacity", "2GiB"},
		{"--config", "a.yaml", "--config", "b.yaml"},
	} {
		name := strings.TrimLeft(args[len(args)-2], "-")
		err := run(t.Context(), append([]string{"serve"}, args...), io.Discard, io.Discard)
		require.Error(t, err, "%q", args)
		assert.Contains(t, err.Error(), "serve: --"+name+" is given more than once", "%q", args)
	}
	assert.NoDirExists(t, data, "tq serve made its data directory before refusing")
	entries, err := os.ReadDir(socks)
	require.NoError(t, err)
	assert.Empty(t, entries, "tq serve made sockets before refusing")

	// The file's capacity and $TQ_DATA_DIR under flags: the flags win.
	file := filepath.Join(t.TempDir(), "tq.yaml")
	require.NoError(t, os.WriteFile(file, []byte("capacity: 1GiB\n"), 0o600))
	cfg, _, err := parseServeConfig([]string{"--check-config", "--config", file, "--capacity", "2GiB", "--data-dir", socks}, io.Discard)
	require.NoError(t, err)
	assert.EqualValues(t, 2<<30, cfg.Capacity)
	assert.Equal(t, socks, cfg.DataDir)
}

// A duration flag given without its unit, or as no duration at all, is
// refused saying what is wrong and how to write one; every command's
// duration flags used to fail with the flag package's bare `invalid
// value "5" for flag -timeout: parse error`. Their -h still names them
// durations.
func TestDurationFlagsSayHowToWriteADuration(t *testing.T) {
	t.Setenv("TQ_TOKEN", "t")
	for _, tc := range []struct {
		args []string
		want []string // each in the error
	}{
		{[]string{"stat", "--timeout", "5", "tcp://127.0.0.1:1"}, []string{`"5"`, "-timeout", "a duration needs a unit, like 5s or 500ms"}},
		{[]string{"stat", "--watch", "--interval", "2", "tcp://127.0.0.1:1"}, []string{`"2"`, "-interval", "a duration needs a unit"}},
		{[]string{"checkpoint", "--timeout", "10", "list", "tcp://127.0.0.1:1"}, []string{"-timeout", "a duration needs a unit"}},
		{[]string{"unit", "drain", "--controller", "tcp://127.0.0.1:1", "--timeout", "-3", "2"}, []string{`"-3"`, "a duration needs a unit"}},
		{[]string{"unit", "rebalance", "--controller", "tcp://127.0.0.1:1", "--progress", "1"}, []string{"-progress", "a duration needs a unit"}},
		{[]string{"serve", "--shutdown-timeout", "30"}, []string{"-shutdown-timeout", "a duration needs a unit"}},
		{[]string{"serve", "--heartbeat", "1"}, []string{"-heartbeat", "a duration needs a unit"}},
		{[]string{"serve", "--shm-quarantine", "soon"}, []string{`"soon"`, "not a duration: want a number and a unit, like 5s, 500ms or 1h30m"}},
		{[]string{"stat", "--timeout", "5sec", "tcp://127.0.0.1:1"}, []string{`unknown unit "sec"`, "ns, us, ms, s, m or h"}},
		{[]string{"stat", "--timeout=", "tcp://127.0.0.1:1"}, []string{"-timeout", "empty"}},
	} {
		var stderr strings.Builder
		err := run(t.Context(), tc.args, io.Discard, &stderr)
		if assert.Error(t, err, "%q", tc.args) {
			for _, w := range tc.want {
				assert.Contains(t, err.Error(), w, "%q", tc.args)
			}
			assert.NotContains(t, err.Error(), "parse error", "%q", tc.args)
		}
	}
	for cmd, names := range map[string][]string{
		"stat":       {"timeout", "interval"},
		"checkpoint": {"timeout"},
		"unit":       {"timeout", "progress"},
		"serve":      {"kept-batch-ttl", "held-fetch-ttl", "peer-timeout", "held-client-grace", "heartbeat-interval", "heartbeat", "reconcile-interval", "reconcile-grace", "reserve-wait", "shutdown-timeout", "controller-wait", "shm-quarantine"},
	} {
		var usage strings.Builder
		run(t.Context(), []string{cmd, "-h"}, &usage, &usage)
		for _, name := range names {
			assert.Regexp(t, `(?m)^  -`+name+` duration\n`, usage.String(), "tq %s -h: --%s", cmd, name)
		}
	}
}
