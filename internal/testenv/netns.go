package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// Netns is a pair of network namespaces joined by a veth pair, made by a
// test and removed when it ends. Traffic stays between them.
type Netns struct {
	A, B     string // namespace names
	IPA, IPB string // their addresses on the veth pair
}

// NewNetns makes the pair, or skips the test when it cannot (not root,
// no iproute2, no namespace support).
func NewNetns(t testing.TB) *Netns {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("iproute2 (ip) is not installed")
	}
	id := os.Getpid() % 10000
	n := &Netns{
		A: fmt.Sprintf("tqA%d", id), B: fmt.Sprintf("tqB%d", id),
		IPA: fmt.Sprintf("10.213.%d.1", id%250), IPB: fmt.Sprintf("10.213.%d.2", id%250),
	}
	vethA, vethB := fmt.Sprintf("tqa%d", id), fmt.Sprintf("tqb%d", id)
	ip := func(args ...string) error {
		out, err := exec.Command("ip", args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	if err := ip("netns", "add", n.A); err != nil {
		t.Skipf("ip netns does not work here: %v", err)
	}
	t.Cleanup(func() {
		exec.Command("ip", "netns", "del", n.A).Run()
		exec.Command("ip", "netns", "del", n.B).Run()
	})
	for _, args := range [][]string{
		{"netns", "add", n.B},
		{"link", "add", vethA, "type", "veth", "peer", "name", vethB},
		{"link", "set", vethA, "netns", n.A},
		{"link", "set", vethB, "netns", n.B},
		{"-n", n.A, "addr", "add", n.IPA + "/24", "dev", vethA},
		{"-n", n.B, "addr", "add", n.IPB + "/24", "dev", vethB},
		{"-n", n.A, "link", "set", vethA, "up"},
		{"-n", n.B, "link", "set", vethB, "up"},
		{"-n", n.A, "link", "set", "lo", "up"},
		{"-n", n.B, "link", "set", "lo", "up"},
	} {
		if err := ip(args...); err != nil {
			t.Skipf("cannot build the veth pair: %v", err)
		}
	}
	return n
}

// In is the command prefix that runs a program in namespace ns.
func (n *Netns) In(ns string) []string { return []string{"ip", "netns", "exec", ns} }
