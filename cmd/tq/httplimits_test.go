package main

import (
	"bufio"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// serveLimited serves a /healthz endpoint as --metrics does, within lim,
// and returns its host:port.
func serveLimited(t *testing.T, lim httpLimits) string {
	t.Helper()
	s := &server{cfg: defaultServeConfig(), out: io.Discard, log: slog.New(slog.DiscardHandler)}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", s.healthz)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	url, err := s.serveHTTP("--metrics", l, "127.0.0.1:0", mux, lim)
	require.NoError(t, err)
	t.Cleanup(func() {
		for _, c := range s.closers {
			c()
		}
	})
	return strings.TrimPrefix(url, "http://")
}

// get sends a keep-alive GET /healthz on c and reads its reply.
func get(t *testing.T, c net.Conn, r *bufio.Reader) {
	t.Helper()
	_, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	require.NoError(t, err)
	resp, err := http.ReadResponse(r, nil)
	require.NoError(t, err)
	_, err = io.Copy(io.Discard, resp.Body)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
}

// A keep-alive connection that sends nothing more is closed after the
// idle timeout: a client cannot hold the process's fds for ever.
func TestHTTPEndpointClosesIdleConnections(t *testing.T) {
	lim := metricsLimits
	lim.idle = 100 * time.Millisecond
	addr := serveLimited(t, lim)
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	r := bufio.NewReader(c)
	get(t, c, r)
	require.NoError(t, c.SetReadDeadline(time.Now().Add(10*time.Second))) // a safety limit
	_, err = r.ReadByte()
	require.ErrorIs(t, err, io.EOF, "the idle connection is closed by the server")
}

// Connections beyond the cap wait to be accepted until one closes
// (--pprof's endpoint).
func TestHTTPEndpointCapsConnections(t *testing.T) {
	lim := pprofLimits
	lim.conns = 2
	addr := serveLimited(t, lim)
	var held []net.Conn
	for range lim.conns {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		defer c.Close()
		get(t, c, bufio.NewReader(c))
		held = append(held, c)
	}
	extra, err := net.Dial("tcp", addr) // the kernel's backlog takes it
	require.NoError(t, err)
	defer extra.Close()
	_, err = io.WriteString(extra, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	require.NoError(t, err)
	r := bufio.NewReader(extra)
	require.NoError(t, extra.SetReadDeadline(time.Now().Add(200*time.Millisecond)))
	_, err = r.ReadByte()
	var ne net.Error
	require.ErrorAs(t, err, &ne, "no answer while the cap is reached")
	require.True(t, ne.Timeout(), "got %v, want a timeout", err)

	held[0].Close()
	require.NoError(t, extra.SetReadDeadline(time.Now().Add(10*time.Second))) // a safety limit
	resp, err := http.ReadResponse(r, nil)
	require.NoError(t, err, "answered once a connection closed")
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
}

// --metrics' endpoint serves the liveness probe: a connection past the cap
// closes the oldest rather than waiting, so that a client holding every
// connection (the port asks no token) cannot keep the probe out and have
// the process restarted. The probe used to wait for the idle ones to time
// out, longer than a probe waits.
func TestMetricsEndpointEvictsTheOldestConnection(t *testing.T) {
	lim := metricsLimits
	lim.conns = 3
	addr := serveLimited(t, lim)
	var held []net.Conn
	for range lim.conns {
		c, err := net.Dial("tcp", addr) // silent: no request
		require.NoError(t, err)
		defer c.Close()
		held = append(held, c)
	}
	probe, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer probe.Close()
	require.NoError(t, probe.SetDeadline(time.Now().Add(2*time.Second)))
	get(t, probe, bufio.NewReader(probe))

	require.NoError(t, held[0].SetReadDeadline(time.Now().Add(10*time.Second))) // a safety limit
	_, err = held[0].Read(make([]byte, 1))
	require.ErrorIs(t, err, io.EOF, "the oldest connection was closed for the probe")
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.SetDeadline(time.Now().Add(2*time.Second)))
	get(t, c, bufio.NewReader(c))
}

// A request header past maxHTTPHeader is refused (431) rather than
// buffered: each connection could make the server hold Go's default of
// 1 MiB. A header of ordinary size passes.
func TestHTTPEndpointBoundsRequestHeaders(t *testing.T) {
	addr := serveLimited(t, metricsLimits)
	send := func(extra int) int {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		defer c.Close()
		require.NoError(t, c.SetDeadline(time.Now().Add(10*time.Second)))
		_, err = io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: "+strings.Repeat("a", extra)+"\r\n\r\n")
		require.NoError(t, err)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	require.Equal(t, http.StatusOK, send(1<<10))
	require.Equal(t, http.StatusRequestHeaderFieldsTooLarge, send(64<<10))
}

// A peer that sends half a request header and stays, or drips one a byte
// at a time, is cut off at readHeader (slowloris); peers that go in the
// middle of a header cost nothing; a probe is answered throughout.
func TestHTTPEndpointCutsOffSlowHeaders(t *testing.T) {
	lim := metricsLimits
	lim.readHeader = 200 * time.Millisecond
	addr := serveLimited(t, lim)
	probe := func(phase string) {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err, phase)
		defer c.Close()
		require.NoError(t, c.SetDeadline(time.Now().Add(10*time.Second))) // a safety limit
		get(t, c, bufio.NewReader(c))
	}

	half, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer half.Close()
	_, err = io.WriteString(half, "GET /healthz HTTP/1.1\r\nHost: x\r\n")
	require.NoError(t, err)

	slow, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer slow.Close()
	stop, dripped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(dripped)
		for _, b := range []byte("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + strings.Repeat("a", 200) + "\r\n\r\n") {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if _, err := slow.Write([]byte{b}); err != nil {
				return // cut off
			}
		}
	}()
	defer func() { close(stop); <-dripped }()

	// Killed mid-header: gone before the header ends.
	for range 50 {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		io.WriteString(c, "GET /healthz HTTP/1.1\r\nHo")
		c.Close()
	}
	probe("while peers send headers slowly")

	for name, c := range map[string]net.Conn{"half-sent": half, "slow": slow} {
		require.NoError(t, c.SetReadDeadline(time.Now().Add(10*time.Second))) // a safety limit
		b, err := io.ReadAll(c)
		var ne net.Error
		if errors.As(err, &ne) {
			require.False(t, ne.Timeout(), "the %s header was not cut off", name)
		}
		if len(b) > 0 { // net/http answers 400 to a header cut off midway
			require.Regexp(t, `^HTTP/1\.1 4\d\d `, string(b), "the %s header", name)
		}
	}
	probe("after")
}
