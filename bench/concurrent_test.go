package bench

// Helpers for the scaling and small-KV benchmarks: a server process that
// can be profiled, and a runner that spreads b.N operations over a fixed
// number of concurrent clients and reports ops/s and latency percentiles.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/kvapi"
	"github.com/tqgo/tq/transport/tcp"
)

// serverFlagsEnv names extra test flags for the server process, e.g.
//
//	TQ_BENCH_SERVER_FLAGS='-test.cpuprofile=/tmp/server.cpu'
//
// The server writes its profiles when the benchmark ends (it exits after
// the benchmark closes its stdin).
const serverFlagsEnv = "TQ_BENCH_SERVER_FLAGS"

// benchServerFlags is benchServer with the test flags from
// TQ_BENCH_SERVER_FLAGS passed to the server process, and env added to
// its environment.
func benchServerFlags(b *testing.B, env ...string) (string, string) {
	b.Helper()
	p := startBenchServer(b, env...)
	return p.ctrl, p.raw
}

// benchProc is the benchmarks' server process: a controller, a storage
// unit, a raw peer and a Redis-protocol endpoint over the same cluster.
type benchProc struct {
	ctrl, raw, resp string
	respSock        string // the Redis-protocol endpoint's unix socket
	pid             int
}

// startBenchServer starts the server process with the test flags from
// TQ_BENCH_SERVER_FLAGS and env added to its environment.
func startBenchServer(b testing.TB, env ...string) benchProc {
	b.Helper()
	args := append([]string{"-test.run=^TestBenchServer$"}, strings.Fields(os.Getenv(serverFlagsEnv))...)
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(append(os.Environ(), "TQ_BENCH_SERVER=1"), env...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	copied := make(chan struct{})
	b.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second): // time to write a profile
			cmd.Process.Kill()
			<-done
		}
		<-copied
	})
	sc := bufio.NewScanner(stdout)
	var said []string // what the server printed before, the last lines of it
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 5 && f[0] == "ADDRS" {
			go func() { io.Copy(io.Discard, stdout); close(copied) }()
			return benchProc{ctrl: f[1], raw: f[2], resp: f[3], respSock: f[4], pid: cmd.Process.Pid}
		}
		said = append(said[max(0, len(said)-19):], sc.Text())
	}
	close(copied)
	b.Fatalf("server process ended before printing its addresses; its output ended with:\n%s", strings.Join(said, "\n"))
	return benchProc{}
}

// connectOwned is connect for a client that owner closes in its cleanup,
// so that sub-benchmarks can share it.
func connectOwned(owner *testing.B, addr, transport string, conns int) (*client.Client, error) {
	return connectWith(owner, addr, benchConnect(transport, conns))
}

// benchConnect is a benchmark client's configuration for transport. A
// tcp client is one as on another host: loopback TCP to the controller
// and the units, not their unix sockets, which a client on their host
// takes whatever transport it asked for.
func benchConnect(transport string, conns int) client.ConnectConfig {
	cfg := client.ConnectConfig{WaitForUnits: true, Transport: transport, TCP: tcp.Config{Conns: conns}}
	if transport == client.TransportTCP {
		cfg.Client.Host = "bench-another-host"
	}
	return cfg
}

// connectWith is connectOwned with the whole configuration.
func connectWith(owner testing.TB, addr string, cfg client.ConnectConfig) (*client.Client, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := client.Connect(ctx, addr, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect over %s: %w", cfg.Transport, err)
	}
	owner.Cleanup(func() { c.Close() })
	return c, nil
}

// latencies are one worker's samples of each kind of operation.
type latencies [][]time.Duration

func (l latencies) add(kind int, d time.Duration) { l[kind] = append(l[kind], d) }

// runWorkers runs b.N iterations spread over workers goroutines, each
// taking the next iteration from a shared counter, and returns the wall
// time and every worker's latency samples. step(w, i) does iteration i on
// worker w and records its operations' latencies in lat; a failure stops
// every worker. b.Loop cannot be shared between goroutines, so this uses
// b.N.
func runWorkers(b *testing.B, workers, kinds int, step func(w, i int, lat latencies) error) (time.Duration, []latencies) {
	var next atomic.Int64
	var failed atomic.Bool
	lats := make([]latencies, workers)
	for w := range lats {
		lats[w] = make(latencies, kinds)
		for k := range lats[w] {
			lats[w][k] = make([]time.Duration, 0, b.N/workers+1)
		}
	}
	var wg sync.WaitGroup
	b.ResetTimer()
	t0 := time.Now()
	for w := range workers {
		wg.Go(func() {
			for !failed.Load() {
				i := int(next.Add(1)) - 1
				if i >= b.N {
					return
				}
				if err := step(w, i, lats[w]); err != nil {
					failed.Store(true)
					b.Errorf("worker %d, iteration %d: %v", w, i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	wall := time.Since(t0)
	b.StopTimer()
	return wall, lats
}

// reportLatency reports the p50 and p99 of one kind of sample over all
// workers, in µs, as name_p50_us and name_p99_us.
func reportLatency(b *testing.B, lats []latencies, kind int, name string) {
	var all []time.Duration
	for _, l := range lats {
		all = append(all, l[kind]...)
	}
	if len(all) == 0 {
		return
	}
	slices.Sort(all)
	at := func(q float64) float64 { // the nearest rank: ceil(q·n)
		i := int(math.Ceil(q*float64(len(all)))) - 1
		return float64(all[min(max(i, 0), len(all)-1)].Nanoseconds()) / 1e3
	}
	b.ReportMetric(at(0.50), name+"_p50_us")
	b.ReportMetric(at(0.99), name+"_p99_us")
}

// TestBenchConnectTCP: a benchmark's tcp client is one as on another
// host, whose controller and unit connections are loopback TCP, as the
// rows labelled tcp and their TCP baselines say. (It used to follow the
// controller's and the unit's unix sockets, which a client on their host
// takes whatever transport it asked for.)
func TestBenchConnectTCP(t *testing.T) {
	p := startBenchServer(t)
	before := unixSockets(t)
	c, err := connectWith(t, p.ctrl, benchConnect(client.TransportTCP, 1))
	require.NoError(t, err)
	require.NotEmpty(t, c.Units())
	for _, u := range c.Units() {
		require.Equal(t, "tcp", u.Transport(), "unit %d", u.ID())
	}
	_, err = kvapi.New(c).Put(t.Context(), "p", "k", nil, engine.Tags{"a": 1})
	require.NoError(t, err)
	for fd := range unixSockets(t) {
		require.True(t, before[fd], "fd %d, a unix socket: the tcp client reached the controller or a unit over its unix socket", fd)
	}
}

// unixSockets returns this process's unix socket descriptors.
func unixSockets(t *testing.T) map[int]bool {
	fds, err := os.ReadDir("/proc/self/fd")
	require.NoError(t, err)
	out := map[int]bool{}
	for _, fd := range fds {
		n, err := strconv.Atoi(fd.Name())
		if err != nil {
			continue
		}
		if sa, err := unix.Getsockname(n); err == nil {
			if _, ok := sa.(*unix.SockaddrUnix); ok {
				out[n] = true
			}
		}
	}
	return out
}

// reportLatency's percentiles are nearest-rank ones: of 1..100 µs, p99
// is 99 and p50 is 50 (the maximum and the upper median before).
func TestReportLatencyRank(t *testing.T) {
	r := testing.Benchmark(func(b *testing.B) {
		l := latencies{nil}
		for i := 1; i <= 100; i++ {
			l.add(0, time.Duration(i)*time.Microsecond)
		}
		reportLatency(b, []latencies{l}, 0, "x")
	})
	require.Equal(t, 99.0, r.Extra["x_p99_us"])
	require.Equal(t, 50.0, r.Extra["x_p50_us"])
}
