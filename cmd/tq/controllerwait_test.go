package main

import (
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/internal/auth"
	"github.com/tqgo/tq/internal/testenv"
)

// A unit started before its controller (as a Kubernetes DaemonSet's
// units come up beside a controller still starting) waits for it and
// registers once it answers, rather than exiting; with
// --controller-wait 0 it fails at once, naming the controller.
func TestUnitStartsBeforeController(t *testing.T) {
	bin := tqBinary(t)
	addr := testenv.FreeLoopbackAddr(t)
	const token = "controller-wait-token"
	unitArgs := []string{"--role", "unit", "--controller", "tcp://" + addr, "--unit-listen", "127.0.0.1:0",
		"--socket-dir", t.TempDir(), "--token", token, "--capacity", "16MiB"}

	cmd := exec.Command(bin, append(append([]string{"serve"}, unitArgs...), "--controller-wait", "0")...)
	cmd.Env = append(os.Environ(), auth.EnvDataDir+"="+t.TempDir())
	out, err := cmd.CombinedOutput()
	require.Error(t, err, "a unit with --controller-wait 0 and no controller: %s", out)
	require.Contains(t, string(out), addr)

	type started struct {
		p   *serveProc
		err error
	}
	unit := make(chan started, 1)
	go func() {
		p, err := spawnServe(t.TempDir(), nil, os.Stderr, func(l string) { t.Logf("unit: %s", l) }, bin, unitArgs...)
		unit <- started{p, err}
	}()
	time.Sleep(time.Second) // the unit finds no controller, at least once
	select {
	case u := <-unit:
		if u.p != nil {
			u.p.kill()
		}
		t.Fatalf("the unit ended its start before there was a controller: %v", u.err)
	default:
	}
	ctrl := startServe(t, nil, bin, "--role", "controller", "--listen", addr, "--socket-dir", t.TempDir(), "--token", token, "--heartbeat", "200ms")
	u := <-unit
	require.NoError(t, u.err, "the unit, once the controller answered")
	t.Cleanup(u.p.kill)
	st, err := exec.Command(bin, "stat", "--token", token, ctrl.addr("tcp")).CombinedOutput()
	require.NoError(t, err, "%s", st)
	require.True(t, strings.Contains(string(st), "alive"), "tq stat shows no live unit:\n%s", st)
}

// A unit keeps trying to reach its controller for all of --controller-wait
// before it exits, as the README says; it gave up as soon as its next
// backoff would pass the deadline: after 0.7 s of a 1 s wait, 1.5 s of
// 3 s (and up to 2 s short of the default 2 min).
func TestUnitWaitsAllOfControllerWait(t *testing.T) {
	bin := tqBinary(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	l.Close() // nothing listens there: every try is refused at once
	const wait = time.Second
	cmd := exec.Command(bin, "serve", "--role", "unit", "--controller", "tcp://"+addr, "--unit-listen", "127.0.0.1:0",
		"--socket-dir", "", "--token", "controller-wait-token", "--capacity", "16MiB", "--controller-wait", wait.String())
	cmd.Env = append(os.Environ(), auth.EnvDataDir+"="+t.TempDir())
	start := time.Now()
	out, err := cmd.CombinedOutput()
	took := time.Since(start)
	require.Error(t, err, "a unit with no controller: %s", out)
	require.Contains(t, string(out), "still unreachable after --controller-wait 1s")
	require.GreaterOrEqual(t, took, wait, "the unit gave up before --controller-wait %v ran out:\n%s", wait, out)
}
