package main

import (
	"bytes"
	"flag"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// startPprof starts tq serve's --pprof server alone on a loopback port
// and returns the URL it announces.
func startPprof(t *testing.T) string {
	t.Helper()
	var out bytes.Buffer
	cfg := defaultServeConfig()
	cfg.Pprof = "127.0.0.1:0"
	bound, err := cfg.bindTCP()
	require.NoError(t, err)
	t.Cleanup(bound.close)
	s := &server{cfg: cfg, out: &out, log: slog.New(slog.DiscardHandler), bound: bound}
	require.NoError(t, s.startPprof())
	t.Cleanup(func() {
		for _, c := range s.closers {
			c()
		}
	})
	_, url, ok := strings.Cut(strings.TrimSpace(out.String()), "profiles on ")
	require.True(t, ok, "announced: %q", out.String())
	return url
}

// --pprof asks for no token, so it does not serve the command line, which
// may carry --token; the profiles it does serve.
func TestPprofServesNoCommandLine(t *testing.T) {
	url := startPprof(t)

	code, body := probe(t, url+"cmdline")
	require.Equal(t, http.StatusNotFound, code)
	require.NotContains(t, body, os.Args[0])
	code, _ = probe(t, url+"goroutine?debug=1")
	require.Equal(t, http.StatusOK, code)
	code, body = probe(t, url)
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, body, "goroutine")
}

// Each command's --help says --token is visible to other users and
// points to $TQ_TOKEN.
func TestTokenFlagHelpWarnsOfTheProcessList(t *testing.T) {
	for _, args := range [][]string{{"serve", "-h"}, {"stat", "-h"}, {"checkpoint", "-h"}, {"unit", "drain", "-h"}} {
		t.Run(args[0], func(t *testing.T) {
			var stdout bytes.Buffer
			err := run(t.Context(), args, &stdout, io.Discard)
			require.ErrorIs(t, err, flag.ErrHelp)
			require.Contains(t, stdout.String(), "Prefer $TQ_TOKEN: other users of this host see a command line (ps)")
		})
	}
}

// --pprof serves CPU profiles, traces and delta profiles of up to 300 s,
// as README says: a longer one is refused at once, naming the limit. The
// write timeout (330 s) used to be the only bound, so seconds=301 to 329
// ran for that long.
func TestPprofRefusesProfilesPast300s(t *testing.T) {
	url := startPprof(t)
	for _, path := range []string{"profile?seconds=301", "trace?seconds=300.5", "heap?seconds=329", "allocs?seconds=1000"} {
		code, body := probe(t, url+path)
		require.Equal(t, http.StatusBadRequest, code, "%s: %s", path, body)
		require.Contains(t, body, "at most 300 s", path)
	}
	code, body := probe(t, url+"heap?seconds=1")
	require.Equal(t, http.StatusOK, code, "a short delta profile is served: %s", body)
}
