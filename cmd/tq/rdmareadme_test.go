package main

import (
	"context"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/internal/auth"
	"github.com/tqgo/tq/kvapi"
	"github.com/tqgo/tq/transport/rdma"
)

// rdmaHardware reports whether this host has an RDMA device that is not
// emulated (automatic selection would pick it).
func rdmaHardware(t *testing.T) bool {
	devs, err := rdma.Devices()
	if err != nil {
		return false
	}
	return slices.ContainsFunc(devs, func(d rdma.DeviceInfo) bool { return !d.Emulated })
}

// connectAs connects to p's controller as a client on another host (no
// shared memory) with transport and RDMA device dev.
func connectAs(t *testing.T, p *serveProc, transport, dev string) (*client.Client, error) {
	t.Helper()
	return connectFrom(t, p, "another-host", transport, dev)
}

// connectFrom is connectAs from host (the client's host id; "": this
// host's).
func connectFrom(t *testing.T, p *serveProc, host, transport, dev string) (*client.Client, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := client.Connect(ctx, p.addr("tcp"), client.ConnectConfig{Token: p.token(t), WaitForUnits: true, Name: "rdma-readme",
		Transport: transport, RDMA: rdma.Config{Device: dev}, Client: client.Config{Host: host}})
	if err == nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, err
}

func unitTransports(c *client.Client) []string {
	var out []string
	for _, u := range c.Units() {
		out = append(out, u.Transport())
	}
	return out
}

// TestRDMAReadmeSelection holds the README's "RDMA between hosts" to a
// real tq serve: --rdma-device emu0 advertises rdma://emu0; a client on
// another host that names no device never picks the emulated one (tcp),
// and forcing rdma without one is an error that says so; one that names
// it moves bytes over rdma, automatically or forced. On the unit's host
// automatic selection is shm, and Transport "rdma" is rdma.
func TestRDMAReadmeSelection(t *testing.T) {
	if !rdma.Supported {
		t.Skip("this build has no RDMA transport (make test builds it with libibverbs-dev)")
	}
	bin := tqBinary(t)
	p := startServe(t, nil, bin, "--listen=127.0.0.1:0", "--unit-listen=127.0.0.1:0", "--units=1", "--capacity=64MiB", "--socket-dir="+t.TempDir(), "--rdma-device", "emu0")
	require.Len(t, p.units, 1, "%v", p.units)
	assert.Contains(t, p.units[0], "rdma://emu0")

	if !rdmaHardware(t) {
		c, err := connectAs(t, p, "", "")
		require.NoError(t, err)
		assert.Equal(t, []string{"tcp"}, unitTransports(c), "the emulated device is never picked automatically")
		_, err = connectAs(t, p, "rdma", "")
		require.Error(t, err)
		assert.Contains(t, err.Error(), "no RDMA device on this host")
	}
	for _, tr := range []string{"", "rdma"} {
		c, err := connectAs(t, p, tr, "emu0")
		require.NoError(t, err, "transport %q", tr)
		assert.Equal(t, []string{"rdma"}, unitTransports(c), "transport %q with emu0 named", tr)
		kv := kvapi.New(c)
		col := engine.BytesOf([][]byte{[]byte("over rdma " + tr)})
		_, err = kv.BatchPut(context.Background(), "p", []string{"k" + tr}, engine.MustBatch(engine.Field{Name: "v", Col: col}), nil)
		require.NoError(t, err)
		b, err := kv.BatchGetCopy(context.Background(), "p", []string{"k" + tr}, "v")
		require.NoError(t, err)
		assert.Equal(t, "over rdma "+tr, b.Col("v").String(0))
	}

	// On the unit's own host automatic selection takes shared memory, and
	// Transport "rdma" still requires rdma.
	c, err := connectFrom(t, p, "", "", "emu0")
	require.NoError(t, err)
	assert.Equal(t, []string{"shm"}, unitTransports(c), "automatic selection on the unit's host")
	c, err = connectFrom(t, p, "", "rdma", "emu0")
	require.NoError(t, err)
	assert.Equal(t, []string{"rdma"}, unitTransports(c), `Transport "rdma" on the unit's host`)
}

// TestRDMAReadmeRefusals: forcing rdma to a unit that serves none is an
// error that says so, and tq serve with a --rdma-device that does not
// exist stops with an error naming it.
func TestRDMAReadmeRefusals(t *testing.T) {
	if !rdma.Supported {
		t.Skip("this build has no RDMA transport (make test builds it with libibverbs-dev)")
	}
	bin := tqBinary(t)

	plain := startServe(t, nil, bin, "--listen=127.0.0.1:0", "--unit-listen=127.0.0.1:0", "--units=1", "--capacity=64MiB", "--socket-dir="+t.TempDir())
	_, err := connectAs(t, plain, "rdma", "emu0")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "serves no RDMA")

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "serve", "--listen=127.0.0.1:0", "--unit-listen=127.0.0.1:0", "--capacity=64MiB", "--socket-dir="+t.TempDir(), "--rdma-device", "mlx5_tq_absent")
	cmd.Env = append(cmd.Environ(), auth.EnvDataDir+"="+t.TempDir())
	out, err := cmd.CombinedOutput()
	require.Error(t, err, "%s", out)
	assert.Contains(t, string(out), "--rdma-device mlx5_tq_absent")
	assert.False(t, strings.Contains(string(out), "tq serve: ready"), "%s", out)
}
