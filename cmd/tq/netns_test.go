package main

import (
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/tqgo/tq/transport/rdma"
)

// netns is a pair of network namespaces joined by a veth pair, made by
// the test and removed afterwards. Traffic stays between them.
type netns struct {
	a, b     string
	ipA, ipB string
}

func newNetns(t *testing.T) *netns {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("iproute2 (ip) is not installed")
	}
	id := os.Getpid() % 10000
	n := &netns{
		a: fmt.Sprintf("tqA%d", id), b: fmt.Sprintf("tqB%d", id),
		ipA: fmt.Sprintf("10.213.%d.1", id%250), ipB: fmt.Sprintf("10.213.%d.2", id%250),
	}
	vethA, vethB := fmt.Sprintf("tqa%d", id), fmt.Sprintf("tqb%d", id)
	ip := func(args ...string) error {
		out, err := exec.Command("ip", args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	if err := ip("netns", "add", n.a); err != nil {
		t.Skipf("ip netns does not work here: %v", err)
	}
	t.Cleanup(func() {
		exec.Command("ip", "netns", "del", n.a).Run()
		exec.Command("ip", "netns", "del", n.b).Run()
	})
	for _, args := range [][]string{
		{"netns", "add", n.b},
		{"link", "add", vethA, "type", "veth", "peer", "name", vethB},
		{"link", "set", vethA, "netns", n.a},
		{"link", "set", vethB, "netns", n.b},
		{"-n", n.a, "addr", "add", n.ipA + "/24", "dev", vethA},
		{"-n", n.b, "addr", "add", n.ipB + "/24", "dev", vethB},
		{"-n", n.a, "link", "set", vethA, "up"},
		{"-n", n.b, "link", "set", vethB, "up"},
		{"-n", n.a, "link", "set", "lo", "up"},
		{"-n", n.b, "link", "set", "lo", "up"},
	} {
		if err := ip(args...); err != nil {
			t.Skipf("cannot build the veth pair: %v", err)
		}
	}
	return n
}

func (n *netns) in(ns string) []string { return []string{"ip", "netns", "exec", ns} }

// A controller in one namespace, a storage unit in another, a client in
// the controller's namespace: every byte of the put and the get crosses
// the veth pair over TCP (the unit offers no unix socket).
func TestServeAcrossNamespaces(t *testing.T) {
	bin := tqBinary(t)
	n := newNetns(t)
	const token = "netns-test-token"
	ctrl := startServe(t, n.in(n.a), bin, "--role", "controller", "--listen", n.ipA+":7370",
		"--socket-dir", t.TempDir(), "--token", token, "--heartbeat", "200ms")
	caddr := ctrl.addr("tcp")
	startServe(t, n.in(n.b), bin, "--role", "unit", "--controller", caddr, "--unit-listen", n.ipB+":0",
		"--socket-dir", "", "--token", token, "--capacity", "64MiB", "--heartbeat", "200ms")
	runHelpers(t, helper(t, n.in(n.a), "roundtrip", "TQ_ADDR="+caddr, "TQ_TOKEN="+token, "TQ_NS="+n.a))
	out, err := exec.Command("ip", "netns", "exec", n.a, bin, "stat", "--token", token, caddr).CombinedOutput()
	if err != nil {
		t.Fatalf("tq stat: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "tcp://"+n.ipB) {
		t.Fatalf("the unit did not register its address in the other namespace:\n%s", out)
	}
	ctrl.stop(t)
}

// The same across namespaces over RDMA: the unit serves the emulated
// device, the client in the other namespace is forced onto RDMA (no
// silent fallback to TCP), and every payload byte moves by one-sided RDMA
// READ and WRITE; only the control requests cross the veth pair.
func TestServeRDMAAcrossNamespaces(t *testing.T) {
	if !rdma.Supported {
		t.Skip("this build has no RDMA transport (make test builds it with libibverbs-dev)")
	}
	bin := tqBinary(t)
	n := newNetns(t)
	const token = "netns-test-token"
	ctrl := startServe(t, n.in(n.a), bin, "--role", "controller", "--listen", n.ipA+":7370",
		"--socket-dir", t.TempDir(), "--token", token, "--heartbeat", "200ms")
	caddr := ctrl.addr("tcp")
	unit := startServe(t, n.in(n.b), bin, "--role", "unit", "--controller", caddr, "--unit-listen", n.ipB+":0",
		"--socket-dir", "", "--token", token, "--capacity", "64MiB", "--heartbeat", "200ms", "--rdma-device", "emu0")
	if len(unit.units) != 1 || !slices.Contains(unit.units[0], "rdma://emu0") {
		t.Fatalf("the unit advertises %v, want rdma://emu0 among them", unit.units)
	}
	runHelpers(t, helper(t, n.in(n.a), "roundtrip", "TQ_ADDR="+caddr, "TQ_TOKEN="+token, "TQ_NS="+n.a,
		"TQ_TRANSPORT=rdma", "TQ_RDMA_DEVICE=emu0"))
	ctrl.stop(t)
}

// Servers listening on wildcards give out addresses another host can
// dial: the controller on 0.0.0.0 prints the namespace's address, the unit
// on [::] registers its own namespace's address (never tcp://[::]:PORT,
// which a client elsewhere would take for itself), and a client in the
// other namespace reaches it.
func TestServeWildcardAcrossNamespaces(t *testing.T) {
	bin := tqBinary(t)
	n := newNetns(t)
	const token = "netns-test-token"
	ctrl := startServe(t, n.in(n.a), bin, "--role", "controller", "--listen", "0.0.0.0:7370",
		"--socket-dir", t.TempDir(), "--token", token, "--heartbeat", "200ms")
	caddr := ctrl.addr("tcp")
	if want := "tcp://" + n.ipA + ":7370"; caddr != want {
		t.Fatalf("the controller on 0.0.0.0 gives out %q, want %q", caddr, want)
	}
	unit := startServe(t, n.in(n.b), bin, "--role", "unit", "--controller", caddr, "--unit-listen", "[::]:0",
		"--socket-dir", "", "--token", token, "--capacity", "64MiB", "--heartbeat", "200ms")
	if len(unit.units) != 1 || len(unit.units[0]) != 1 || !strings.HasPrefix(unit.units[0][0], "tcp://"+n.ipB+":") {
		t.Fatalf("the unit on [::] gives out %v, want tcp://%s:PORT", unit.units, n.ipB)
	}
	runHelpers(t, helper(t, n.in(n.a), "roundtrip", "TQ_ADDR="+caddr, "TQ_TOKEN="+token, "TQ_NS="+n.a))
	out, err := exec.Command("ip", "netns", "exec", n.a, bin, "stat", "--token", token, caddr).CombinedOutput()
	if err != nil {
		t.Fatalf("tq stat: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "tcp://"+n.ipB) || strings.Contains(string(out), "[::]") || strings.Contains(string(out), "0.0.0.0") {
		t.Fatalf("the unit did not register a routable address:\n%s", out)
	}
	ctrl.stop(t)
}
