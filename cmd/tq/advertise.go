package main

// The address a server gives out for a TCP listener: what storage units
// register with the controller, and what tq serve prints for clients. A
// listener on a wildcard (0.0.0.0, ::, or no host) accepts on every
// address of the host but can be dialed at none of those, so it is given
// out as a routable address of this host: the source address the kernel
// picks for the default route (a UDP "connect" sends nothing and reveals
// it), else the first address of an interface that is up, else loopback.
// --advertise and --unit-advertise override the choice.

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
)

// routeProbes are the public addresses whose route reveals this host's
// outgoing address; nothing is ever sent to them.
var routeProbes = map[string]string{"udp4": "8.8.8.8:9", "udp6": "[2001:4860:4860::8888]:9"}

// hostAddrs is where advertiseIP looks: the kernel's routes and the
// interfaces. Tests replace it.
type hostAddrs struct {
	// route returns the source address for a datagram to dst over
	// network ("udp4" or "udp6").
	route func(network, dst string) (net.IP, error)
	// ifaceAddrs returns the addresses of the interfaces that are up, in
	// interface order.
	ifaceAddrs func() ([]net.IP, error)
}

var systemAddrs = hostAddrs{route: routeSource, ifaceAddrs: upInterfaceAddrs}

func routeSource(network, dst string) (net.IP, error) {
	c, err := net.Dial(network, dst) // UDP: no packet leaves
	if err != nil {
		return nil, err
	}
	defer c.Close()
	ua, ok := c.LocalAddr().(*net.UDPAddr)
	if !ok {
		return nil, fmt.Errorf("local address %v is not UDP", c.LocalAddr())
	}
	return ua.IP, nil
}

func upInterfaceAddrs() ([]net.IP, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	var ips []net.IP
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagUp == 0 {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok {
				ips = append(ips, n.IP)
			}
		}
	}
	return ips, nil
}

// usable reports whether another host could dial ip: not loopback, not
// unspecified, not link-local (which needs a zone to be dialed), and of
// the family a listener accepts.
func usable(ip net.IP, v4, v6 bool) bool {
	if ip == nil || ip.IsLoopback() || ip.IsUnspecified() || ip.IsLinkLocalUnicast() || ip.IsMulticast() {
		return false
	}
	if ip.To4() != nil {
		return v4
	}
	return v6
}

// advertiseIP returns the address of this host to give out for a listener
// on a wildcard accepting IPv4 (v4) and/or IPv6 (v6): IPv4 first, where
// both are accepted.
func (h hostAddrs) advertiseIP(v4, v6 bool) net.IP {
	var families []string
	if v4 {
		families = append(families, "udp4")
	}
	if v6 {
		families = append(families, "udp6")
	}
	for _, network := range families {
		if ip, err := h.route(network, routeProbes[network]); err == nil && usable(ip, v4, v6) {
			return ip
		}
	}
	if ips, err := h.ifaceAddrs(); err == nil {
		for _, want4 := range []bool{true, false} {
			for _, ip := range ips {
				if (ip.To4() != nil) == want4 && usable(ip, v4, v6) {
					return ip
				}
			}
		}
	}
	if v4 {
		return net.IPv4(127, 0, 0, 1)
	}
	return net.IPv6loopback
}

// isWildcard reports whether a listen host accepts on every address.
func isWildcard(host string) bool {
	if host == "" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsUnspecified()
}

// wildcardFamilies says which families a wildcard listen host accepts:
// 0.0.0.0 IPv4 only; :: and "" both (Go listens dual-stack there).
func wildcardFamilies(host string) (v4, v6 bool) {
	if ip := net.ParseIP(host); ip != nil && ip.To4() != nil {
		return true, false
	}
	return true, true
}

// advertised returns the host:port to give out for a TCP listener that
// was asked to listen on listenAddr and is bound to bound. override, if
// not empty, is a host or host:port that replaces the choice (its port,
// if any, the listener's). Without one, a wildcard listen host becomes
// [hostAddrs.advertiseIP]'s, and any other the bound address as it is.
func (h hostAddrs) advertised(listenAddr string, bound *net.TCPAddr, override string) (string, error) {
	port := strconv.Itoa(bound.Port)
	if override != "" {
		host, p, err := splitHostMaybePort(override)
		if err != nil {
			return "", err
		}
		if p != "" {
			port = p
		}
		return net.JoinHostPort(host, port), nil
	}
	host, _, err := net.SplitHostPort(listenAddr)
	if err != nil {
		return "", err
	}
	if !isWildcard(host) {
		return bound.String(), nil
	}
	v4, v6 := wildcardFamilies(host)
	return net.JoinHostPort(h.advertiseIP(v4, v6).String(), port), nil
}

// splitHostMaybePort splits "host", "host:port", "[v6]" or "[v6]:port";
// a bare IPv6 address is a host.
func splitHostMaybePort(s string) (host, port string, err error) {
	if ip := net.ParseIP(s); ip != nil {
		return s, "", nil
	}
	if h, ok := strings.CutPrefix(s, "["); ok && strings.HasSuffix(h, "]") {
		return strings.TrimSuffix(h, "]"), "", nil
	}
	if !strings.Contains(s, ":") {
		if s == "" {
			return "", "", errors.New("empty address")
		}
		return s, "", nil
	}
	host, port, err = net.SplitHostPort(s)
	if err != nil {
		return "", "", err
	}
	if host == "" {
		return "", "", fmt.Errorf("address %q has no host", s)
	}
	if n, err := strconv.Atoi(port); err != nil || n <= 0 || n > 65535 {
		return "", "", fmt.Errorf("address %q: port %q is not a number from 1 to 65535", s, port)
	}
	return host, port, nil
}
