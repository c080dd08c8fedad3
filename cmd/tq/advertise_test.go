package main

import (
	"errors"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeHost is a host with the given default-route sources (by network;
// none: no route) and interface addresses.
func fakeHost(routes map[string]string, ifaces ...string) hostAddrs {
	return hostAddrs{
		route: func(network, _ string) (net.IP, error) {
			if a, ok := routes[network]; ok {
				return net.ParseIP(a), nil
			}
			return nil, errors.New("network is unreachable")
		},
		ifaceAddrs: func() ([]net.IP, error) {
			ips := make([]net.IP, len(ifaces))
			for i, a := range ifaces {
				ips[i] = net.ParseIP(a)
			}
			return ips, nil
		},
	}
}

func TestAdvertised(t *testing.T) {
	routed := fakeHost(map[string]string{"udp4": "192.0.2.2", "udp6": "fd00::2"}, "127.0.0.1", "192.0.2.2", "fd00::2")
	v6Only := fakeHost(map[string]string{"udp6": "fd00::2"}, "127.0.0.1", "::1", "fe80::1", "fd00::2")
	noRoute := fakeHost(nil, "127.0.0.1", "::1", "fe80::1", "10.213.1.2", "fd00::9")
	noRouteV6 := fakeHost(nil, "127.0.0.1", "::1", "fe80::1", "fd00::9")
	isolated := fakeHost(nil, "127.0.0.1", "::1", "fe80::1")
	for _, tc := range []struct {
		name     string
		host     hostAddrs
		listen   string
		port     int
		override string
		want     string
	}{
		{"0.0.0.0: the default route's source", routed, "0.0.0.0:7370", 7370, "", "192.0.2.2:7370"},
		{"[::]: IPv4 first", routed, "[::]:0", 41000, "", "192.0.2.2:41000"},
		{"empty host: as [::]", routed, ":0", 41000, "", "192.0.2.2:41000"},
		{"[::] on an IPv6-only route", v6Only, "[::]:0", 41000, "", "[fd00::2]:41000"},
		{"0.0.0.0 never takes IPv6", v6Only, "0.0.0.0:0", 41000, "", "127.0.0.1:41000"},
		{"no route: the first interface address", noRoute, "0.0.0.0:0", 41000, "", "10.213.1.2:41000"},
		{"no route, [::]: IPv4 interfaces first", noRoute, "[::]:0", 41000, "", "10.213.1.2:41000"},
		{"no route, no IPv4: skip link-local", noRouteV6, "[::]:0", 41000, "", "[fd00::9]:41000"},
		{"nothing but loopback", isolated, "0.0.0.0:0", 41000, "", "127.0.0.1:41000"},
		{"[::] with nothing but loopback", isolated, "[::]:0", 41000, "", "127.0.0.1:41000"},
		{"a named address as it is", routed, "10.0.0.7:0", 41000, "", "10.0.0.7:41000"},
		{"loopback as it is", routed, "127.0.0.1:0", 41000, "", "127.0.0.1:41000"},
		{"override host", routed, "0.0.0.0:0", 41000, "tq-1.example", "tq-1.example:41000"},
		{"override host:port", routed, "0.0.0.0:7370", 7370, "gw.example:17370", "gw.example:17370"},
		{"override IPv6", routed, "[::]:0", 41000, "fd00::5", "[fd00::5]:41000"},
		{"override [IPv6]", routed, "[::]:0", 41000, "[fd00::5]", "[fd00::5]:41000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			host, _, err := net.SplitHostPort(tc.listen)
			require.NoError(t, err)
			bound := &net.TCPAddr{IP: net.ParseIP(host), Port: tc.port}
			got, err := tc.host.advertised(tc.listen, bound, tc.override)
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

// On this machine: a wildcard listener is never given out as a wildcard,
// and it is reachable where it is given out.
func TestAdvertisedWildcardIsDialable(t *testing.T) {
	for _, listen := range []string{"0.0.0.0:0", "[::]:0", ":0"} {
		t.Run(listen, func(t *testing.T) {
			l, err := net.Listen("tcp", listen)
			if err != nil {
				t.Skipf("cannot listen on %s: %v", listen, err)
			}
			defer l.Close()
			got, err := systemAddrs.advertised(listen, l.Addr().(*net.TCPAddr), "")
			require.NoError(t, err)
			host, _, err := net.SplitHostPort(got)
			require.NoError(t, err)
			assert.False(t, isWildcard(host), "advertised %s", got)
			assert.False(t, strings.HasPrefix(got, "[::]") || strings.HasPrefix(got, "0.0.0.0"), got)
			c, err := net.Dial("tcp", got)
			require.NoError(t, err, "dial the advertised %s", got)
			c.Close()
		})
	}
}

func TestAdvertiseFlags(t *testing.T) {
	for _, tc := range []struct {
		name, advertise, unitAdvertise string
		want                           string // "" when accepted
		unitHost                       string // for a wildcard --unit-listen
	}{
		{"none", "", "", "", ""},
		{"host", "tq.example", "", "", "tq.example"},
		{"host:port", "tq.example:7370", "", "", "tq.example"},
		{"unit host", "", "10.0.0.2", "", "10.0.0.2"},
		{"unit host wins", "tq.example", "10.0.0.2", "", "10.0.0.2"},
		{"unit IPv6", "", "fd00::2", "", "fd00::2"},
		{"wildcard", "0.0.0.0", "", "cannot be dialed", ""},
		{"unit wildcard", "", "::", "cannot be dialed", ""},
		{"unit with a port", "", "10.0.0.2:9000", "each unit registers its own port", ""},
		{"bad port", "tq.example:http", "", "port", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := defaultServeConfig()
			c.DataDir = t.TempDir()
			c.Advertise, c.UnitAdvertise = tc.advertise, tc.unitAdvertise
			err := c.validate()
			if tc.want != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.want)
				return
			}
			require.NoError(t, err)
			for _, wildcard := range []string{":0", "0.0.0.0:7371", "[::]:0"} {
				assert.Equal(t, tc.unitHost, c.unitAdvertise(wildcard), wildcard)
			}
			// A listener bound to one address takes --unit-advertise only.
			assert.Equal(t, tc.unitAdvertise, c.unitAdvertise("127.0.0.1:0"))
		})
	}
}

// --advertise names this host for clients on other hosts, but a listener
// bound to one address accepts on that one only. The storage units'
// --unit-listen and --metrics bound to loopback (their defaults) were
// given out with --advertise's host, where nothing listens: every dial
// of a unit registered so, or of the metrics address, was refused. They
// are now given out as bound.
func TestAdvertiseLeavesALoopbackListenerAsBound(t *testing.T) {
	// An address of this host the loopback listeners do not accept on:
	// its routed address, else another loopback address.
	host := "127.0.0.2"
	if ip := systemAddrs.advertiseIP(true, false); !ip.IsLoopback() {
		host = ip.String()
	}
	s := startInProcess(t, "--advertise", host, "--unit-listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0")
	// startInProcess does not start --metrics; do it as serve does.
	require.NoError(t, s.startMetrics())
	dial := func(hostport string) error {
		c, err := net.DialTimeout("tcp", hostport, 2*time.Second)
		if err == nil {
			c.Close()
		}
		return err
	}
	u, err := url.Parse(s.metricsURL)
	require.NoError(t, err)
	assert.Equal(t, "127.0.0.1", u.Hostname(), "metrics given out as %s", s.metricsURL)
	assert.NoError(t, dial(u.Host), "metrics given out as %s", s.metricsURL)
	var tcpAddrs int
	for _, ui := range s.ctrlSrv.Units() {
		for _, a := range ui.Addrs {
			if hp, ok := strings.CutPrefix(a, "tcp://"); ok {
				tcpAddrs++
				assert.True(t, strings.HasPrefix(hp, "127.0.0.1:"), "storage unit %d registered %s", ui.ID, a)
				assert.NoError(t, dial(hp), "storage unit %d registered %s", ui.ID, a)
			}
		}
	}
	assert.Equal(t, 1, tcpAddrs, "the storage unit's TCP addresses")
}
