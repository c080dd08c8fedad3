package main

import (
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/tqgo/tq/internal/testenv"
	"github.com/tqgo/tq/transport/rdma"
)

// netns is testenv.Netns with the names this file has always used.
type netns struct{ *testenv.Netns }

func newNetns(t *testing.T) *netns {
	t.Helper()
	n := testenv.NewNetns(t)
	return &netns{n}
}

func (n *netns) in(ns string) []string { return n.In(ns) }

// A controller in one namespace, a storage unit in another, a client in
// the controller's namespace: every byte of the put and the get crosses
// the veth pair over TCP (the unit offers no unix socket).
func TestServeAcrossNamespaces(t *testing.T) {
	bin := tqBinary(t)
	n := newNetns(t)
	const token = "netns-test-token"
	ctrl := startServe(t, n.in(n.A), bin, "--role", "controller", "--listen", n.IPA+":7370",
		"--socket-dir", t.TempDir(), "--token", token, "--heartbeat", "200ms")
	caddr := ctrl.addr("tcp")
	startServe(t, n.in(n.B), bin, "--role", "unit", "--controller", caddr, "--unit-listen", n.IPB+":0",
		"--socket-dir", "", "--token", token, "--capacity", "64MiB")
	runHelpers(t, helper(t, n.in(n.A), "roundtrip", "TQ_ADDR="+caddr, "TQ_TOKEN="+token, "TQ_NS="+n.A))
	out, err := exec.Command("ip", "netns", "exec", n.A, bin, "stat", "--token", token, caddr).CombinedOutput()
	if err != nil {
		t.Fatalf("tq stat: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "tcp://"+n.IPB) {
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
	ctrl := startServe(t, n.in(n.A), bin, "--role", "controller", "--listen", n.IPA+":7370",
		"--socket-dir", t.TempDir(), "--token", token, "--heartbeat", "200ms")
	caddr := ctrl.addr("tcp")
	unit := startServe(t, n.in(n.B), bin, "--role", "unit", "--controller", caddr, "--unit-listen", n.IPB+":0",
		"--socket-dir", "", "--token", token, "--capacity", "64MiB", "--rdma-device", "emu0")
	if len(unit.units) != 1 || !slices.Contains(unit.units[0], "rdma://emu0") {
		t.Fatalf("the unit advertises %v, want rdma://emu0 among them", unit.units)
	}
	runHelpers(t, helper(t, n.in(n.A), "roundtrip", "TQ_ADDR="+caddr, "TQ_TOKEN="+token, "TQ_NS="+n.A,
		"TQ_TRANSPORT=rdma", "TQ_RDMA_DEVICE=emu0"))
	out, err := exec.Command("ip", "netns", "exec", n.A, bin, "stat", "--token", token, caddr).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "rdma://emu0(emulated)") {
		t.Fatalf("tq stat does not show the emulated device as such (%v):\n%s", err, out)
	}
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
	ctrl := startServe(t, n.in(n.A), bin, "--role", "controller", "--listen", "0.0.0.0:7370",
		"--socket-dir", t.TempDir(), "--token", token, "--heartbeat", "200ms")
	caddr := ctrl.addr("tcp")
	if want := "tcp://" + n.IPA + ":7370"; caddr != want {
		t.Fatalf("the controller on 0.0.0.0 gives out %q, want %q", caddr, want)
	}
	unit := startServe(t, n.in(n.B), bin, "--role", "unit", "--controller", caddr, "--unit-listen", "[::]:0",
		"--socket-dir", "", "--token", token, "--capacity", "64MiB")
	if len(unit.units) != 1 || len(unit.units[0]) != 1 || !strings.HasPrefix(unit.units[0][0], "tcp://"+n.IPB+":") {
		t.Fatalf("the unit on [::] gives out %v, want tcp://%s:PORT", unit.units, n.IPB)
	}
	runHelpers(t, helper(t, n.in(n.A), "roundtrip", "TQ_ADDR="+caddr, "TQ_TOKEN="+token, "TQ_NS="+n.A))
	out, err := exec.Command("ip", "netns", "exec", n.A, bin, "stat", "--token", token, caddr).CombinedOutput()
	if err != nil {
		t.Fatalf("tq stat: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "tcp://"+n.IPB) || strings.Contains(string(out), "[::]") || strings.Contains(string(out), "0.0.0.0") {
		t.Fatalf("the unit did not register a routable address:\n%s", out)
	}
	ctrl.stop(t)
}
