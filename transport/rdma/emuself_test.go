//go:build linux && cgo && rdma

package rdma

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The emulated device's own two-process self-test (csrc/emu_selftest.c),
// built with the sanitizers when the compiler has them.
func TestEmulatorSelfTest(t *testing.T) {
	cc, err := exec.LookPath("cc")
	if err != nil {
		t.Skip("no C compiler")
	}
	bin := filepath.Join(t.TempDir(), "emu_selftest")
	src := []string{"../../csrc/emu_selftest.c", "../../csrc/emu.c"}
	args := append([]string{"-O1", "-g", "-Wall", "-Wextra", "-Werror", "-fsanitize=address,undefined", "-o", bin}, append(src, "-libverbs")...)
	if out, err := exec.Command(cc, args...).CombinedOutput(); err != nil {
		t.Logf("build with sanitizers failed (%v), building without:\n%s", err, out)
		args = append([]string{"-O1", "-g", "-Wall", "-Wextra", "-o", bin}, append(src, "-libverbs")...)
		if out, err := exec.Command(cc, args...).CombinedOutput(); err != nil {
			t.Fatalf("build the self-test: %v\n%s", err, out)
		}
	}
	out, err := exec.Command(bin).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "PASS:") {
		t.Fatalf("self-test: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	t.Log(lines[len(lines)-1])
}
