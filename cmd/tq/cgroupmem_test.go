package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// memoryCgroupV1 makes a cgroup v1 memory cgroup under this process's
// own, limited to limit bytes, removed at cleanup, and returns its
// directory. It skips the test where it cannot: not root, no v1 memory
// controller mounted (a cgroup v2 host would need the controller
// delegated to a leaf of its own).
func memoryCgroupV1(t *testing.T, limit int64) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("making a cgroup needs root")
	}
	var path string
	cg, err := os.ReadFile("/proc/self/cgroup")
	require.NoError(t, err)
	for line := range strings.Lines(string(cg)) {
		parts := strings.SplitN(strings.TrimSpace(line), ":", 3)
		if len(parts) == 3 && strings.Contains(","+parts[1]+",", ",memory,") {
			path = parts[2]
		}
	}
	var mount, root string
	mi, err := os.Open("/proc/self/mountinfo")
	require.NoError(t, err)
	defer mi.Close()
	sc := bufio.NewScanner(mi)
	for sc.Scan() {
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if ok && len(f) >= 5 && len(g) >= 3 && g[0] == "cgroup" && strings.Contains(","+g[2]+",", ",memory,") {
			root, mount = f[3], f[4]
		}
	}
	if path == "" || mount == "" {
		t.Skip("no cgroup v1 memory controller here")
	}
	rel, ok := strings.CutPrefix(path, root)
	if !ok {
		t.Skipf("this process's memory cgroup %s is outside the mount's root %s", path, root)
	}
	dir := filepath.Join(mount, rel, fmt.Sprintf("tq-test-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Skipf("cannot make a memory cgroup: %v", err)
	}
	t.Cleanup(func() { os.Remove(dir) })
	require.NoError(t, os.WriteFile(filepath.Join(dir, "memory.limit_in_bytes"), fmt.Appendf(nil, "%d", limit), 0))
	return dir
}

// A --capacity past the memory limit of the cgroup tq serve runs in (a
// container's, or a pod's: lower than the host's memory) is refused at
// start as one past the host's memory is, naming the limit: started, the
// unit registered it, and was killed (out of memory) once its data
// outgrew the limit. A capacity within it passes the check.
func TestCapacityPastTheCgroupsMemoryLimitIsRefused(t *testing.T) {
	bin := tqBinary(t)
	dir := memoryCgroupV1(t, 1<<30)
	run := func(capacity string) (string, error) {
		cmd := exec.Command("sh", "-c", `echo $$ > "$0/cgroup.procs" && exec "$@"`, dir, bin, "serve", "--insecure", "--role", "unit",
			"--controller", "tcp://127.0.0.1:1", "--controller-wait", "0s", "--capacity", capacity, "--socket-dir", t.TempDir())
		cmd.Env = append(os.Environ(), "TQ_DATA_DIR="+t.TempDir())
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := run("2GiB")
	require.Error(t, err, out)
	assert.Contains(t, out, "--capacity 2 GiB: more than this process's cgroup memory limit (a container's) (1 GiB)")
	assert.Contains(t, out, "give at most 1 GiB")

	out, err = run("512MiB")
	require.Error(t, err, "no controller at tcp://127.0.0.1:1") // it gets past the check
	assert.NotContains(t, out, "memory limit", out)
}
