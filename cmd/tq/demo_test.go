package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestDemo(t *testing.T) {
	// --capacity takes a size as tq serve's does, or bytes.
	for _, capacity := range []string{"8388608", "8MiB"} {
		var out, errb bytes.Buffer
		if err := run(context.Background(), []string{"demo", "-capacity", capacity}, &out, &errb); err != nil {
			t.Fatalf("demo --capacity %s: %v\nstderr:\n%s", capacity, err, errb.String())
		}
		s := out.String()
		for _, want := range []string{
			"2 storage units of 8 MiB each",
			"1_0", "2_0", "status=running", "[4 5 6]", "[40 50 60]", "status=done",
			`partition "test" holds 0 keys, storage holds 0 B`,
		} {
			if !strings.Contains(s, want) {
				t.Errorf("demo --capacity %s output lacks %q:\n%s", capacity, want, s)
			}
		}
	}
}

func TestUnknownCommand(t *testing.T) {
	var out, errb bytes.Buffer
	if err := run(context.Background(), []string{"frobnicate"}, &out, &errb); err == nil {
		t.Fatal("unknown command succeeded")
	}
	if err := run(context.Background(), nil, &out, &errb); err == nil {
		t.Fatal("no command succeeded")
	}
}

// TestDemoStream runs `tq demo --stream`: tq serve, a producer and four
// trainer ranks, each its own process.
func TestDemoStream(t *testing.T) {
	bin := tqBinary(t)
	cmd := exec.Command(bin, "demo", "--stream")
	cmd.Env = append(os.Environ(), "TMPDIR="+t.TempDir())
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	s := string(out)
	for _, want := range []string{"marked \"rollouts\" done", "DP group 1 micro-batch 7", "ok: the ranks of each DP group saw identical micro-batches"} {
		require.Contains(t, s, want)
	}
}

// tq demo takes no arguments and at least one unit: a stray word (which
// also hid every flag after it: `tq demo stray --units 1` ran two units)
// or --units 0 (which ran the default two) is an error naming it, before
// any cluster starts.
func TestDemoRefusesBadArguments(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"demo", "stray", "--units", "1"}, `demo takes no arguments, got ["stray" "--units" "1"]`},
		{[]string{"demo", "--units", "0"}, "--units 0: need at least one"},
		{[]string{"demo", "--units", "-3"}, "--units -3: need at least one"},
		{[]string{"demo", "--stream", "--units", "3", "--partition", "p"}, "demo --stream takes none of --partition, --units"},
	} {
		var out bytes.Buffer
		err := run(t.Context(), tc.args, &out, io.Discard)
		require.Error(t, err, "%q ran:\n%s", tc.args, out.String())
		assert.Contains(t, err.Error(), tc.want, "%q", tc.args)
		assert.Empty(t, out.String(), "%q started a cluster", tc.args)
	}
}
