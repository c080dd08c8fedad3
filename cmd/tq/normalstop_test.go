package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/kvapi"
)

// termExitsZero sends p SIGTERM and requires a clean exit (status 0):
// a routine shutdown is never reported as one that failed (status 1).
func termExitsZero(t *testing.T, p *serveProc, stderr *syncBuilder) {
	t.Helper()
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case err := <-p.done:
		p.done <- err
		require.NoError(t, err, "tq serve after SIGTERM; stderr:\n%s", stderr.String())
	case <-time.After(30 * time.Second):
		t.Fatal("tq serve still running 30 s after SIGTERM")
	}
	assert.NotContains(t, stderr.String(), "shutdown incomplete")
}

// A SIGTERM with everything a tq serve serves in use — clients over
// unix, tcp and shm, a Redis client, the metrics and profile endpoints
// (a profile being taken), puts in flight — is a normal shutdown:
// status 0.
func TestSIGTERMWithEverythingInUseExitsZero(t *testing.T) {
	bin := tqBinary(t)
	socks := t.TempDir()
	var stderr syncBuilder
	var pprofURL atomic.Value
	p, err := spawnServe(t.TempDir(), nil, &stderr, func(l string) {
		t.Logf("serve: %s", l)
		if u, ok := strings.CutPrefix(l, "tq serve: profiles on "); ok {
			pprofURL.Store(u)
		}
	}, bin, "--listen", "127.0.0.1:0", "--unit-listen", "127.0.0.1:0", "--socket-dir", socks, "--capacity", "16MiB",
		"--metrics", "127.0.0.1:0", "--pprof", "127.0.0.1:0", "--resp", "127.0.0.1:0", "--resp-socket", filepath.Join(socks, "resp.sock"),
		"--shutdown-timeout", "10s")
	require.NoError(t, err)
	t.Cleanup(p.kill)
	tok := p.token(t)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	for i, cc := range []struct{ addr, transport string }{
		{p.addr("unix"), client.TransportShm},
		{p.addr("unix"), client.TransportTCP},
		{p.addr("tcp"), client.TransportTCP},
	} {
		c, err := client.Connect(ctx, cc.addr, client.ConnectConfig{Token: tok, Name: "stop", WaitForUnits: true, Transport: cc.transport})
		require.NoError(t, err, "connect %s over %s", cc.addr, cc.transport)
		defer c.Close()
		kv := kvapi.New(c)
		_, err = kv.Put(ctx, "p", fmt.Sprintf("first-%d", i), nil, engine.Tags{"v": i})
		require.NoError(t, err)
		// Puts go on until the process has stopped: some are in flight
		// at SIGTERM.
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ctx.Err() == nil; n++ {
				if _, err := kv.Put(ctx, "p", fmt.Sprintf("k%d-%d", i, n), nil, engine.Tags{"v": n}); err != nil {
					return
				}
			}
		}()
	}
	// Redis clients, authenticated and idle, over TCP and the socket.
	for _, a := range []struct{ network, addr string }{{"tcp", p.resp}, {"unix", p.respSock}} {
		rc, err := net.Dial(a.network, a.addr)
		require.NoError(t, err)
		defer rc.Close()
		fmt.Fprintf(rc, "AUTH %s\r\nSET a b\r\n", tok)
		r := bufio.NewReader(rc)
		for range 2 {
			l, err := r.ReadString('\n')
			require.NoError(t, err)
			require.Equal(t, "+OK\r\n", l)
		}
	}
	// A metrics connection kept alive, and a CPU profile being taken.
	res, err := http.Get(p.metricsURL)
	require.NoError(t, err)
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	u, _ := pprofURL.Load().(string)
	require.NotEmpty(t, u)
	profiling := make(chan struct{})
	go func() {
		defer close(profiling)
		if res, err := http.Get(u + "profile?seconds=20"); err == nil {
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
		}
	}()
	time.Sleep(time.Second) // the profile under way (it runs 20 s)
	termExitsZero(t, p, &stderr)
	cancel()
	<-profiling
}

// The controller and a storage unit in processes of their own each stop
// with status 0, whichever goes first.
func TestSIGTERMOfSplitRolesExitsZero(t *testing.T) {
	bin := tqBinary(t)
	for _, unitFirst := range []bool{true, false} {
		t.Run(fmt.Sprintf("unitFirst=%v", unitFirst), func(t *testing.T) {
			data, socks := t.TempDir(), t.TempDir()
			var cerr, uerr syncBuilder
			ctrl, err := spawnServe(data, nil, &cerr, func(l string) { t.Logf("controller: %s", l) }, bin,
				"--role", "controller", "--listen", "", "--socket-dir", socks)
			require.NoError(t, err)
			t.Cleanup(ctrl.kill)
			unit, err := spawnServe(data, nil, &uerr, func(l string) { t.Logf("unit: %s", l) }, bin,
				"--role", "unit", "--controller", ctrl.addr("unix"), "--unit-listen", "", "--socket-dir", socks, "--capacity", "16MiB")
			require.NoError(t, err)
			t.Cleanup(unit.kill)
			c, err := client.Connect(t.Context(), ctrl.addr("unix"), client.ConnectConfig{Token: ctrl.token(t), Name: "stop", WaitForUnits: true})
			require.NoError(t, err)
			_, err = kvapi.New(c).Put(t.Context(), "p", "k", nil, engine.Tags{"v": 1})
			require.NoError(t, err)
			defer c.Close()
			if unitFirst {
				termExitsZero(t, unit, &uerr)
				termExitsZero(t, ctrl, &cerr)
			} else {
				termExitsZero(t, ctrl, &cerr)
				termExitsZero(t, unit, &uerr)
			}
		})
	}
}

// A unit drained before SIGTERM stops with the rest, status 0.
func TestSIGTERMAfterADrainExitsZero(t *testing.T) {
	bin := tqBinary(t)
	socks := t.TempDir()
	var stderr syncBuilder
	p, err := spawnServe(t.TempDir(), nil, &stderr, func(l string) { t.Logf("serve: %s", l) }, bin,
		"--listen", "", "--unit-listen", "", "--socket-dir", socks, "--capacity", "16MiB", "--units", "2")
	require.NoError(t, err)
	t.Cleanup(p.kill)
	c, err := client.Connect(t.Context(), p.addr("unix"), client.ConnectConfig{Token: p.token(t), Name: "stop", WaitForUnits: true})
	require.NoError(t, err)
	defer c.Close()
	kv := kvapi.New(c)
	for i := range 20 {
		_, err := kv.Put(t.Context(), "p", fmt.Sprintf("k%d", i), nil, engine.Tags{"v": i})
		require.NoError(t, err)
	}
	drain := exec.Command(bin, "unit", "drain", "--controller", p.addr("unix"), "1")
	drain.Env = append(drain.Environ(), p.env()...)
	out, err := drain.CombinedOutput()
	require.NoError(t, err, "tq unit drain:\n%s", out)
	termExitsZero(t, p, &stderr)
}
