//go:build linux && cgo && rdma

package rdma

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/engine/enginetest"
	"github.com/tqgo/tq/internal/testenv"
)

// testDevice is the device the transport tests run on: the emulated
// emu0, or the one $TQ_RDMA_TEST_DEVICE names (make test-rdma-hw).
func testDevice(t testing.TB) string {
	name := os.Getenv("TQ_RDMA_TEST_DEVICE")
	if name == "" {
		return "emu0"
	}
	d, err := OpenDevice(name)
	testenv.SkipIfNotSupported(t, err)
	d.Close()
	return name
}

// testConfig is a client config on the test device that notices a dead
// peer quickly.
func testConfig(t testing.TB) Config {
	return Config{Device: testDevice(t), AckTimeout: 10, RetryCnt: 3}
}

func TestConformance(t *testing.T) {
	enginetest.Run(t, func(t *testing.T) (engine.DataConn, func()) {
		p := startUnitProc(t, testDevice(t), "")
		t.Logf("unit at %s", p.addr)
		tr := New(testConfig(t))
		t.Cleanup(func() {
			if err := tr.Close(); err != nil {
				t.Errorf("transport Close: %v", err)
			}
		})
		conn, err := tr.Dial(t.Context(), engine.PeerInfo{Unit: 7, Incarnation: p.inc, Addr: p.addr})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn, p.kill
	})
}

func dialUnit(t *testing.T, tr *Transport, p *unitProc) *Conn {
	t.Helper()
	c, err := tr.DialConn(t.Context(), engine.PeerInfo{Unit: 7, Incarnation: p.inc, Addr: p.addr})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

func newTransport(t *testing.T, cfg Config) *Transport {
	tr := New(cfg)
	t.Cleanup(func() { assert.NoError(t, tr.Close()) })
	return tr
}

// A queue pair that fails (an error completion) is torn down: the call
// fails with ErrUnavailable and the next one brings new queue pairs up.
func TestQPReestablishedAfterError(t *testing.T) {
	p := startUnitProc(t, testDevice(t), "")
	tr := newTransport(t, testConfig(t))
	c := dialUnit(t, tr, p)
	data := bytes.Repeat([]byte("tq"), 3<<19) // 3 MiB: three slices
	addrs, err := c.Write(t.Context(), [][][]byte{{data}})
	require.NoError(t, err)
	dev, err := tr.Device()
	require.NoError(t, err)
	if !dev.Emulated() {
		t.Skip("injects faults: emulated device only")
	}
	require.NoError(t, dev.InjectFault(2, 0, 1, int(WCGeneralErr)))
	dst := make([]byte, len(data))
	err = c.Read(t.Context(), addrs, [][]byte{dst})
	require.ErrorIs(t, err, engine.ErrUnavailable)
	assert.Contains(t, err.Error(), "general error")
	assert.Equal(t, int64(1), c.Reconnects())

	require.NoError(t, c.Read(t.Context(), addrs, [][]byte{dst}))
	assert.Equal(t, data, dst)
	assert.Equal(t, int64(2), c.Reconnects(), "new queue pairs")

	// A failed post does the same.
	require.NoError(t, dev.InjectFault(1, 0, 1, int(syscall.EIO)))
	_, err = c.Write(t.Context(), [][][]byte{{data}})
	require.ErrorIs(t, err, engine.ErrUnavailable)
	_, err = c.Write(t.Context(), [][][]byte{{data}})
	require.NoError(t, err)
	assert.Equal(t, int64(3), c.Reconnects())
}

// A unit that restarts (same address, new incarnation): the old
// connection, which still knows the old unit's segments and rkeys, fails
// and reads nothing; a dial that means the old incarnation is refused
// with ErrLost. (A location of the old unit reaches the new one only
// through a connection dialed for the old incarnation, which is refused:
// generations restart with the unit, so that refusal is what keeps its
// bytes from being taken for the old ones.)
func TestUnitRestart(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	l.Close()
	p := startUnitProc(t, testDevice(t), addr)
	tr := newTransport(t, testConfig(t))
	c := dialUnit(t, tr, p)
	data := bytes.Repeat([]byte{0xab}, 100000)
	addrs, err := c.Write(t.Context(), [][][]byte{{data}})
	require.NoError(t, err)

	p.kill()
	p.cmd.Wait()
	q := startUnitProc(t, testDevice(t), addr)
	require.NotEqual(t, p.inc, q.inc)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	dst := make([]byte, len(data))
	err = c.Read(ctx, addrs, [][]byte{dst})
	require.ErrorIs(t, err, engine.ErrUnavailable, "read through the dead unit's connection")
	assert.Equal(t, make([]byte, len(data)), dst, "nothing was read into the buffer")

	_, err = tr.DialConn(t.Context(), engine.PeerInfo{Unit: 7, Incarnation: p.inc, Addr: addr2url(addr)})
	require.ErrorIs(t, err, engine.ErrLost, "dial meaning the old incarnation")

	c2 := dialUnit(t, tr, q)
	fresh := bytes.Repeat([]byte{0xcd}, 100000)
	addrs2, err := c2.Write(t.Context(), [][][]byte{{fresh}})
	require.NoError(t, err)
	require.NoError(t, c2.Read(t.Context(), addrs2, [][]byte{dst}))
	assert.Equal(t, fresh, dst)
}

func addr2url(a string) string { return "tcp://" + a }

// Reads into and writes from memory the caller registered move without
// staging; the bytes are the same.
func TestRegisteredBuffers(t *testing.T) {
	p := startUnitProc(t, testDevice(t), "")
	tr := newTransport(t, testConfig(t))
	c := dialUnit(t, tr, p)
	mem, err := unix.Mmap(-1, 0, 8<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	require.NoError(t, err)
	t.Cleanup(func() { unix.Munmap(mem) })
	require.NoError(t, tr.Register(mem))
	src, dst := mem[:3<<20], mem[4<<20:7<<20]
	for i := range src {
		src[i] = byte(i % 251)
	}
	_, ok := tr.lookup(src)
	require.True(t, ok)
	_, ok = tr.lookup(make([]byte, 10))
	require.False(t, ok)
	addrs, err := c.Write(t.Context(), [][][]byte{{src[:1<<20], src[1<<20:]}})
	require.NoError(t, err)
	require.NoError(t, c.Read(t.Context(), addrs, [][]byte{dst}))
	require.Equal(t, src, dst)
}

// Config checks and device choice.
func TestConfigAndPick(t *testing.T) {
	require.ErrorIs(t, Config{QPs: 17}.Validate(), engine.ErrInvalid)
	require.ErrorIs(t, Config{SliceSize: -1}.Validate(), engine.ErrInvalid)
	tr := New(Config{Device: "mlx5_none"})
	defer tr.Close()
	_, err := tr.Dial(t.Context(), engine.PeerInfo{Addr: "tcp://127.0.0.1:1"})
	require.ErrorIs(t, err, engine.ErrNotSupported)
	devs := []DeviceInfo{{Name: "emu0", Emulated: true, NUMANode: 1}, {Name: "mlx5_0", NUMANode: 0}, {Name: "mlx5_1", NUMANode: 1}}
	name, err := PickDevice(devs, 1)
	require.NoError(t, err)
	assert.Equal(t, "mlx5_1", name)
	name, _ = PickDevice(devs, 3)
	assert.Equal(t, "mlx5_0", name)
}

// The conformance suite with the client in one network namespace and the
// unit in another: the test binary runs TestConformance again inside
// namespace B, starting its unit processes inside namespace A.
func TestConformanceAcrossNamespaces(t *testing.T) {
	if os.Getenv(unitNetnsEnv) != "" {
		t.Skip("runs only from the root namespace")
	}
	if testing.Short() {
		t.Skip("starts processes in network namespaces")
	}
	n := testenv.NewNetns(t)
	cmd := exec.Command("ip", "netns", "exec", n.B, os.Args[0], "-test.run=^TestConformance$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), unitNetnsEnv+"="+n.A, unitListenEnv+"="+n.IPA+":0")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Contains(t, string(out), "--- PASS: TestConformance/PeerDeath")
	require.Contains(t, string(out), "tcp://"+n.IPA, "the unit listened in the other namespace")
}
