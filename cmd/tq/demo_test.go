package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

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

// Under a $TMPDIR long enough that tq serve's sockets could not be bound
// there, the demo makes its directory under /tmp: it used to fail with
// tq serve's refusal of a --socket-dir the user never gave.
func TestDemoStreamUnderALongTMPDIR(t *testing.T) {
	bin := tqBinary(t)
	long := filepath.Join(t.TempDir(), strings.Repeat("d", 60), strings.Repeat("e", 60))
	require.NoError(t, os.MkdirAll(long, 0o700))
	cmd := exec.Command(bin, "demo", "--stream")
	cmd.Env = append(os.Environ(), "TMPDIR="+long)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), "ok: the ranks of each DP group saw identical micro-batches")
	assert.NotContains(t, string(out), "--socket-dir")
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
		{[]string{"demo", "--capacity", "0"}, "--capacity 0 bytes: must be positive"},
		{[]string{"demo", "--capacity", "100"}, "demo --units 2 --capacity 100 bytes: start storage unit: storage config: capacity 100 is below the smallest segment"},
		{[]string{"demo", "--partition", ""}, `--partition "": empty partition name`},
		{[]string{"demo", "--partition", "\xff"}, `--partition "\xff": partition "\xff" is not valid UTF-8`},
	} {
		var out bytes.Buffer
		err := run(t.Context(), tc.args, &out, io.Discard)
		require.Error(t, err, "%q ran:\n%s", tc.args, out.String())
		assert.Contains(t, err.Error(), tc.want, "%q", tc.args)
		assert.Empty(t, out.String(), "%q started a cluster", tc.args)
	}
}

// `tq demo --stream | head -1`, or a demo killed outright, ends the tq
// serve it started: the demo used to die of SIGPIPE at its second line
// of output and leave tq serve running for good, reparented to init,
// with its temporary directory (the token, the sockets) behind.
func TestDemoStreamEndsItsServerWhenItsOutputCloses(t *testing.T) {
	bin := tqBinary(t)
	for _, how := range []string{"stdout closed", "killed"} {
		t.Run(how, func(t *testing.T) {
			// Short: t.TempDir's would make tq serve's socket paths too long.
			tmp, err := os.MkdirTemp("", "tqd-")
			require.NoError(t, err)
			t.Cleanup(func() { os.RemoveAll(tmp) })
			cmd := exec.Command(bin, "demo", "--stream")
			cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
			// A file, not a pipe: tq serve, which shares it, must not
			// hold up cmd.Wait.
			stderrFile, err := os.CreateTemp(t.TempDir(), "stderr")
			require.NoError(t, err)
			defer stderrFile.Close()
			cmd.Stderr = stderrFile
			stderr := func() string { b, _ := os.ReadFile(stderrFile.Name()); return string(b) }
			stdout, err := cmd.StdoutPipe()
			require.NoError(t, err)
			require.NoError(t, cmd.Start())
			first, err := bufio.NewReader(stdout).ReadString('\n')
			require.NoError(t, err, "stderr:\n%s", stderr())
			m := regexp.MustCompile(`tq serve \(pid (\d+)\)`).FindStringSubmatch(first)
			require.NotNil(t, m, "first line %q", first)
			pid, err := strconv.Atoi(m[1])
			require.NoError(t, err)
			isServe := func() bool {
				b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
				return err == nil && strings.Contains(string(b), "serve")
			}
			t.Cleanup(func() {
				if isServe() {
					syscall.Kill(pid, syscall.SIGKILL)
				}
			})
			if how == "killed" {
				require.NoError(t, cmd.Process.Kill())
			} else {
				require.NoError(t, stdout.Close())
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				if how == "stdout closed" {
					// An error that says so, not death by SIGPIPE.
					require.Error(t, err)
					assert.Contains(t, stderr(), "stdout")
				}
			case <-time.After(time.Minute):
				cmd.Process.Kill()
				t.Fatalf("tq demo --stream still runs a minute after its output closed\nstderr:\n%s", stderr())
			}
			require.Eventually(t, func() bool { return !isServe() }, 30*time.Second, 50*time.Millisecond,
				"tq serve (pid %d) outlived tq demo --stream", pid)
			if how == "stdout closed" {
				left, err := filepath.Glob(filepath.Join(tmp, "tq-demo-stream-*"))
				require.NoError(t, err)
				assert.Empty(t, left, "the demo's temporary directory is left behind")
			}
		})
	}
}

// The internal --stream-role names an unknown role, and a worker started
// by hand rather than by tq demo --stream names the variable it lacks;
// both used to fail dialing, with `dial: address "" is empty`.
func TestDemoStreamRoleNamesWhatIsWrong(t *testing.T) {
	t.Setenv(demoAddrEnv, "")
	for _, tc := range []struct {
		role string
		want string
	}{
		{"bogus", `--stream-role "bogus": want producer or rank`},
		{"producer", "$" + demoAddrEnv + " is not set"},
	} {
		err := run(t.Context(), []string{"demo", "--stream-role", tc.role}, io.Discard, io.Discard)
		if assert.Error(t, err, tc.role) {
			assert.Contains(t, err.Error(), tc.want, tc.role)
		}
	}
}
