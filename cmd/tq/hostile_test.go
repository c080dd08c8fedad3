package main

// TestServeUnderHostilePeers: a `tq serve` process, limited to 256 file
// descriptors, meets slow and half-sent frames, pre-authentication
// floods, descriptor exhaustion and a client that truncates a shared
// memory segment, while a well-behaved client puts and gets throughout.
// The wire package tests each defence alone (wire/hostile_test.go,
// wire/accept_test.go); this test shows them holding together in the
// process a user runs.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/kvapi"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// hostileRSSBound is what the attacks below may add to the server's
// resident memory. Before issue 11, 20 half-sent 64 MiB bodies alone took
// 1.3 GB and 30 oversized HELLOs 2 GB.
const hostileRSSBound = 64 << 20

// syncBuffer is a bytes.Buffer safe for a writer and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// readRSS reads a process's resident set size in bytes.
func readRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

// helloFrame is a HELLO request with token.
func helloFrame(token string) []byte {
	b, _ := proto.Marshal(&wirepb.Hello{Version: wire.Version, Role: "client", Token: token, Name: "hostile"})
	h := wire.Header{Version: wire.Version, Op: wire.OpHello, ID: 1, BodyLen: uint32(len(b))}
	return append(h.Append(nil), b...)
}

// authenticated opens a TCP connection to addr that has passed the
// handshake.
func authenticated(t *testing.T, addr, token string) net.Conn {
	t.Helper()
	nc, err := net.Dial("tcp", strings.TrimPrefix(addr, "tcp://"))
	require.NoError(t, err)
	t.Cleanup(func() { nc.Close() })
	_, err = nc.Write(helloFrame(token))
	require.NoError(t, err)
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	hb := make([]byte, wire.HeaderSize)
	_, err = io.ReadFull(nc, hb)
	require.NoError(t, err)
	h, err := wire.DecodeHeader(hb)
	require.NoError(t, err)
	require.Zero(t, h.Flags&wire.FlagError, "handshake refused")
	_, err = io.CopyN(io.Discard, nc, int64(h.BodyLen)+int64(h.PayloadLen))
	require.NoError(t, err)
	nc.SetReadDeadline(time.Time{})
	return nc
}

// connError reads the connection error the server answers on nc with
// and returns its message.
func connError(t *testing.T, nc net.Conn) string {
	t.Helper()
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer nc.SetReadDeadline(time.Time{})
	hb := make([]byte, wire.HeaderSize)
	_, err := io.ReadFull(nc, hb)
	require.NoError(t, err)
	h, err := wire.DecodeHeader(hb)
	require.NoError(t, err)
	require.Equal(t, uint64(0), h.ID, "a connection error has request id 0")
	require.Equal(t, wire.FlagReply|wire.FlagError, h.Flags)
	body := make([]byte, h.BodyLen)
	_, err = io.ReadFull(nc, body)
	require.NoError(t, err)
	var e wirepb.Error
	require.NoError(t, proto.Unmarshal(body, &e))
	return e.Message
}

// closedWithin reports whether the server closes nc within d.
func closedWithin(nc net.Conn, d time.Duration) bool {
	nc.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, nc)
	ne, ok := err.(net.Error)
	return !ok || !ne.Timeout()
}

func TestServeUnderHostilePeers(t *testing.T) {
	bin := tqBinary(t)
	var stderr syncBuffer
	data, socks := t.TempDir(), t.TempDir()
	limit := []string{"sh", "-c", `ulimit -n 256 && exec "$0" "$@"`}
	p, err := spawnServe(data, limit, &stderr, func(l string) { t.Logf("serve: %s", l) }, bin,
		"--listen", "127.0.0.1:0", "--unit-listen", "127.0.0.1:0", "--socket-dir", socks, "--units", "1", "--capacity", "32MiB")
	require.NoError(t, err)
	t.Cleanup(p.kill)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("tq serve stderr:\n%s", stderr.String())
		}
	})
	pid := p.cmd.Process.Pid
	token := p.token(t)
	ctrlTCP, unitTCP := p.addr("tcp"), ""
	for _, a := range p.units[0] {
		if strings.HasPrefix(a, "tcp://") {
			unitTCP = a
		}
	}
	require.NotEmpty(t, ctrlTCP)
	require.NotEmpty(t, unitTCP)

	// The good client: shared memory to the unit, the controller's unix
	// socket. It puts and reads back a value every few milliseconds.
	ctx := t.Context()
	good, err := client.Connect(ctx, p.addr("unix"), client.ConnectConfig{Token: token, WaitForUnits: true, Name: "good"})
	require.NoError(t, err)
	defer good.Close()
	kv := kvapi.New(good)
	var ops, failures atomic.Int64
	var firstErr atomic.Value
	var slowest atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			start := time.Now()
			key := fmt.Sprintf("k%d", i%50)
			val := bytes.Repeat([]byte{byte(i)}, 1024)
			err := func() error {
				octx, cancel := context.WithTimeout(ctx, 10*time.Second)
				defer cancel()
				if _, err := kv.BatchPut(octx, "good", []string{key}, engine.MustBatch(engine.Field{Name: "v", Col: engine.BytesOf([][]byte{val})}), nil); err != nil {
					return err
				}
				b, err := kv.BatchGetCopy(octx, "good", []string{key})
				if err != nil {
					return err
				}
				if got := b.Col("v").RowBytes(0); !bytes.Equal(got, val) {
					return fmt.Errorf("%s read back %d bytes of %d, want %d of %d", key, len(got), got[0], len(val), val[0])
				}
				return nil
			}()
			if d := int64(time.Since(start)); d > slowest.Load() {
				slowest.Store(d)
			}
			ops.Add(1)
			if err != nil {
				failures.Add(1)
				firstErr.CompareAndSwap(nil, err)
			}
		}
	})
	defer func() { close(stop); wg.Wait() }()
	served := func(phase string) {
		t.Helper()
		n := ops.Load()
		require.Eventually(t, func() bool { return ops.Load() >= n+20 }, 10*time.Second, 10*time.Millisecond, "the good client stalled during %s", phase)
		require.Zero(t, failures.Load(), "the good client failed during %s: %v", phase, firstErr.Load())
	}
	served("warm-up")
	base, err := readRSS(pid)
	require.NoError(t, err)
	var peak atomic.Int64
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if rss, err := readRSS(pid); err == nil && rss > peak.Load() {
				peak.Store(rss)
			}
		}
	})

	// Slow and half-sent frames from authenticated peers: bodies and
	// payloads that claim the limits and send 1 KiB, to the controller
	// and to the unit.
	var stalled []net.Conn
	for i := range 20 {
		nc := authenticated(t, ctrlTCP, token)
		h := wire.Header{Version: wire.Version, Op: wire.OpFetch, ID: 2, BodyLen: wire.MaxBodyLen}
		_, err := nc.Write(append(h.Append(nil), make([]byte, 1<<10)...))
		require.NoError(t, err)
		stalled = append(stalled, nc)
		nc = authenticated(t, unitTCP, token)
		body, _ := proto.Marshal(&wirepb.WriteRequest{Sizes: []uint64{1 << 20}})
		h = wire.Header{Version: wire.Version, Op: wire.OpWrite, ID: uint64(2 + i), BodyLen: uint32(len(body)), PayloadLen: 1 << 20}
		_, err = nc.Write(append(append(h.Append(nil), body...), make([]byte, 1<<10)...))
		require.NoError(t, err)
		stalled = append(stalled, nc)
	}
	served("half-sent frames")

	// Before authentication: a HELLO claiming a 64 MiB body is closed at
	// once; garbage is closed at once; silence waits for the handshake
	// timeout.
	var preauth []net.Conn
	for i := range 60 {
		nc, err := net.Dial("tcp", strings.TrimPrefix(ctrlTCP, "tcp://"))
		require.NoError(t, err)
		t.Cleanup(func() { nc.Close() })
		switch i % 3 {
		case 0:
			h := wire.Header{Version: wire.Version, Op: wire.OpHello, ID: 1, BodyLen: 64 << 20}
			nc.Write(append(h.Append(nil), make([]byte, 4<<10)...))
			if i == 0 {
				// The peer is told why (a connection error, request id 0).
				assert.Contains(t, connError(t, nc), "HELLO of 67108864 bytes exceeds 4096")
			}
			assert.True(t, closedWithin(nc, 5*time.Second), "an oversized HELLO is refused at once")
		case 1:
			nc.Write(bytes.Repeat([]byte("GET / HTTP/1.1\r\n"), 256))
			assert.True(t, closedWithin(nc, 5*time.Second), "garbage is refused at once")
		default:
			preauth = append(preauth, nc)
		}
	}
	served("a pre-authentication flood")

	// Descriptor exhaustion: idle connections until the server has none
	// left (it keeps accepting what it can and backs off, logged), then
	// they go and a new client connects.
	var idle []net.Conn
	for range 300 {
		nc, err := net.DialTimeout("tcp", strings.TrimPrefix(ctrlTCP, "tcp://"), time.Second)
		if err != nil {
			break
		}
		idle = append(idle, nc)
	}
	time.Sleep(500 * time.Millisecond)
	served("descriptor exhaustion")
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	t.Logf("%d idle connections opened; the server holds %d descriptors of 256", len(idle), len(fds))
	assert.GreaterOrEqual(t, len(fds), 240, "the server ran out of descriptors")
	for _, nc := range append(append(idle, preauth...), stalled...) {
		nc.Close()
	}
	// Once descriptors are free the listener accepts again: a new client
	// connects over TCP (it was refused or queued while they ran out).
	require.Eventually(t, func() bool {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		c, err := client.Connect(cctx, ctrlTCP, client.ConnectConfig{Token: token, Name: "after", Transport: client.TransportTCP})
		if err != nil {
			t.Logf("connect after exhaustion: %v", err)
			return false
		}
		defer c.Close()
		_, err = kvapi.New(c).BatchPut(cctx, "after", []string{"x"}, engine.MustBatch(engine.Field{Name: "v", Col: engine.BytesOf([][]byte{[]byte("x")})}), nil)
		return err == nil
	}, 20*time.Second, 200*time.Millisecond, "a new client after descriptor exhaustion")
	assert.Contains(t, stderr.String(), "too many open files", "the server logs running out of descriptors")

	// Segment truncation: any process of this user can open the server's
	// memfds (shared memory segments and rings) through /proc and try to
	// shrink or grow them; the seals refuse, and the server lives on (an
	// unsealed segment shrunk under it killed tq serve with SIGBUS).
	memfds := 0
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	require.NoError(t, err)
	for _, e := range ents {
		path := fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name())
		target, _ := os.Readlink(path)
		if !strings.HasPrefix(target, "/memfd:") {
			continue
		}
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			continue // gone meanwhile
		}
		memfds++
		st, err := f.Stat()
		require.NoError(t, err)
		assert.ErrorIs(t, unix.Ftruncate(int(f.Fd()), 0), unix.EPERM, "shrinking %s", target)
		assert.ErrorIs(t, unix.Ftruncate(int(f.Fd()), st.Size()+1<<20), unix.EPERM, "growing %s", target)
		f.Close()
	}
	require.NotZero(t, memfds, "the server holds no memfd")
	t.Logf("%d memfds of the server refused truncation", memfds)
	served("segment truncation")

	grew := peak.Load() - base
	t.Logf("good client: %d puts and reads, %d failed, slowest %v; server RSS %d MiB before, peak %d MiB (grew %d MiB, bound %d MiB)",
		ops.Load(), failures.Load(), time.Duration(slowest.Load()).Round(time.Millisecond), base>>20, peak.Load()>>20, grew>>20, hostileRSSBound>>20)
	assert.Less(t, grew, int64(hostileRSSBound), "server memory under attack")
}
