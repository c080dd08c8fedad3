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
	needIP(t)
	id := os.Getpid() % 10000
	n := &Netns{
		A: fmt.Sprintf("tqA%d", id), B: fmt.Sprintf("tqB%d", id),
		IPA: fmt.Sprintf("10.213.%d.1", id%250), IPB: fmt.Sprintf("10.213.%d.2", id%250),
	}
	vethA, vethB := fmt.Sprintf("tqa%d", id), fmt.Sprintf("tqb%d", id)
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

// needIP skips the test unless it can make network namespaces: it runs
// as root and iproute2 is installed.
func needIP(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("iproute2 (ip) is not installed")
	}
}

// ip runs iproute2's ip with args; its error carries what ip printed.
func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// In is the command prefix that runs a program in namespace ns.
func (n *Netns) In(ns string) []string { return []string{"ip", "netns", "exec", ns} }

// Hosts is n network namespaces standing for n machines on one network:
// each holds one end of a veth pair whose other end is on a bridge in a
// further "switch" namespace, so every host reaches every other and
// nothing reaches the machine's own network. Made by a test and removed
// when it ends.
type Hosts struct {
	Names []string // namespace names, one per host
	IPs   []string // their addresses
	link  []string // each host's end of its veth pair
}

// NewHosts makes n hosts, or skips the test when it cannot (not root, no
// iproute2, no namespace or bridge support).
func NewHosts(t testing.TB, n int) *Hosts {
	t.Helper()
	needIP(t)
	id := os.Getpid() % 10000
	sw := fmt.Sprintf("tqS%d", id)
	if err := ip("netns", "add", sw); err != nil {
		t.Skipf("ip netns does not work here: %v", err)
	}
	h := &Hosts{}
	t.Cleanup(func() {
		for _, ns := range h.Names {
			exec.Command("ip", "netns", "del", ns).Run()
		}
		exec.Command("ip", "netns", "del", sw).Run()
	})
	if err := ip("-n", sw, "link", "add", "br0", "type", "bridge"); err != nil {
		t.Skipf("cannot make a bridge: %v", err)
	}
	steps := [][]string{{"-n", sw, "link", "set", "br0", "up"}}
	for i := range n {
		ns := fmt.Sprintf("tqH%d-%d", i, id)
		addr := fmt.Sprintf("10.214.%d.%d", id%250, i+1)
		end, port := fmt.Sprintf("tqh%d", i), fmt.Sprintf("tqp%d-%d", i, id)
		h.Names, h.IPs, h.link = append(h.Names, ns), append(h.IPs, addr), append(h.link, end)
		if err := ip("netns", "add", ns); err != nil {
			t.Skipf("cannot add namespace %s: %v", ns, err)
		}
		steps = append(steps,
			[]string{"link", "add", port, "type", "veth", "peer", "name", end, "netns", ns},
			[]string{"link", "set", port, "netns", sw},
			[]string{"-n", sw, "link", "set", port, "master", "br0"},
			[]string{"-n", sw, "link", "set", port, "up"},
			[]string{"-n", ns, "addr", "add", addr + "/24", "dev", end},
			[]string{"-n", ns, "link", "set", end, "up"},
			[]string{"-n", ns, "link", "set", "lo", "up"},
		)
	}
	for _, args := range steps {
		if err := ip(args...); err != nil {
			t.Skipf("cannot build the hosts' network: %v", err)
		}
	}
	return h
}

// In is the command prefix that runs a program on host i: in its
// namespace, with $TQ_HOST_ID naming the host, since namespaces share the
// kernel's boot id.
func (h *Hosts) In(i int) []string {
	return []string{"ip", "netns", "exec", h.Names[i], "env", "TQ_HOST_ID=" + h.Names[i]}
}

// Unplug takes host i off the network: its link goes down, so packets to
// and from it are dropped (peers see timeouts, not refusals).
func (h *Hosts) Unplug(t testing.TB, i int) {
	t.Helper()
	if out, err := exec.Command("ip", "-n", h.Names[i], "link", "set", h.link[i], "down").CombinedOutput(); err != nil {
		t.Fatalf("unplug host %d: %v: %s", i, err, out)
	}
}

// Guest is a network namespace made by a test, joined to the test's own
// (the machine's) by a veth pair on a subnet of their own: a process run
// in it (In) is a host of its own that the test process reaches at
// GuestIP and that reaches the test process at HostIP. Removed when the
// test ends, the pair with it.
type Guest struct {
	Name            string
	HostIP, GuestIP string
	link            string // the guest's end of the pair
}

// NewGuest makes the namespace, or skips the test when it cannot (not
// root, no iproute2, no namespace support).
func NewGuest(t testing.TB) *Guest {
	t.Helper()
	needIP(t)
	id := os.Getpid() % 10000
	g := &Guest{
		Name:   fmt.Sprintf("tqG%d", id),
		HostIP: fmt.Sprintf("10.215.%d.1", id%250), GuestIP: fmt.Sprintf("10.215.%d.2", id%250),
		link: fmt.Sprintf("tqg%d", id),
	}
	host := fmt.Sprintf("tqv%d", id)
	if err := ip("netns", "add", g.Name); err != nil {
		t.Skipf("ip netns does not work here: %v", err)
	}
	t.Cleanup(func() {
		exec.Command("ip", "netns", "del", g.Name).Run() // takes the pair with it
		exec.Command("ip", "link", "del", host).Run()
	})
	for _, args := range [][]string{
		{"link", "add", host, "type", "veth", "peer", "name", g.link, "netns", g.Name},
		{"addr", "add", g.HostIP + "/30", "dev", host},
		{"link", "set", host, "up"},
		{"-n", g.Name, "addr", "add", g.GuestIP + "/30", "dev", g.link},
		{"-n", g.Name, "link", "set", g.link, "up"},
		{"-n", g.Name, "link", "set", "lo", "up"},
	} {
		if err := ip(args...); err != nil {
			t.Skipf("cannot join a namespace to this one: %v", err)
		}
	}
	return g
}

// In is the command prefix that runs a program in the guest.
func (g *Guest) In() []string { return []string{"ip", "netns", "exec", g.Name} }

// Unplug takes the guest off the network, as a host that crashed: its
// link goes down, so packets to and from it are dropped (the test's end
// sees its peers there stop answering, not close).
func (g *Guest) Unplug(t testing.TB) {
	t.Helper()
	if out, err := exec.Command("ip", "-n", g.Name, "link", "set", g.link, "down").CombinedOutput(); err != nil {
		t.Fatalf("unplug %s: %v: %s", g.Name, err, out)
	}
}
