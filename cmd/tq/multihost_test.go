package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/tqgo/tq/bench"
	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/internal/hostid"
	"github.com/tqgo/tq/internal/testenv"
	"github.com/tqgo/tq/kvapi"
	"github.com/tqgo/tq/transport/rdma"
	"golang.org/x/sync/errgroup"
)

// TestMultiHostRehearsal runs a cluster of four hosts, each a network
// namespace with its own host identity ($TQ_HOST_ID) on one bridge: the
// controller on host 0, a storage unit on every host, clients on every
// host. It checks what a cluster user relies on:
//   - local-first writes stay on the writer's host, reached through
//     shared memory;
//   - reads of other hosts' cells cross the network: over TCP, and over
//     the emulated RDMA device for the host that forces it (when this
//     build has the RDMA transport);
//   - a unit drained from another host moves its cells to the other
//     hosts' units, where readers find them, and takes no more puts;
//   - a host that drops off the network turns its cells into
//     engine.ErrLost for readers elsewhere, nothing waits on it for long,
//     and the other hosts keep writing and reading.
func TestMultiHostRehearsal(t *testing.T) {
	bin := tqBinary(t)
	const nHosts = 4
	h := testenv.NewHosts(t, nHosts)
	const token = "multihost-rehearsal-token"
	ctrl := startServe(t, h.In(0), bin, "--role", "controller", "--listen", h.IPs[0]+":7370",
		"--socket-dir", t.TempDir(), "--token", token, "--heartbeat", "200ms")
	caddr := ctrl.addr("tcp")
	var rdmaArgs []string
	if rdma.Supported {
		rdmaArgs = []string{"--rdma-device", "emu0"}
	}
	for i := range nHosts {
		startServe(t, h.In(i), bin, append([]string{"--role", "unit", "--controller", caddr,
			"--unit-listen", h.IPs[i] + ":0", "--socket-dir", t.TempDir(), "--token", token,
			"--capacity", "64MiB"}, rdmaArgs...)...)
	}
	env := func(i int, extra ...string) []string {
		return append([]string{"TQ_ADDR=" + caddr, "TQ_TOKEN=" + token, "TQ_PART=" + part(i)}, extra...)
	}

	var writers []*exec.Cmd
	for i := range nHosts {
		writers = append(writers, helper(t, h.In(i), "mh-write", env(i)...))
	}
	runHelpers(t, writers...)

	var readers []*exec.Cmd
	for i := range nHosts {
		var others []string
		for j := range nHosts {
			if j != i {
				others = append(others, part(j))
			}
		}
		extra := []string{"TQ_READ=" + strings.Join(others, ",")}
		if i == 1 && rdma.Supported {
			extra = append(extra, "TQ_TRANSPORT=rdma", "TQ_RDMA_DEVICE=emu0", "TQ_WANT_TRANSPORT=rdma")
		}
		readers = append(readers, helper(t, h.In(i), "mh-read", env(i, extra...)...))
	}
	runHelpers(t, readers...)

	// Host 2's unit is drained from host 0: its cells move to the other
	// hosts' units (read over the network from host 2, written to the
	// others), host 1 reads them back from their new places, and host 2's
	// own puts go elsewhere while it drains.
	drained := unitOn(t, bin, h, caddr, token, 2)
	drain := exec.Command(h.In(0)[0], append(h.In(0)[1:], bin, "unit", "drain", "--controller", caddr, "--token", token, "--wait",
		"--timeout", "60s", fmt.Sprint(drained.ID))...)
	if out, err := drain.CombinedOutput(); err != nil {
		t.Fatalf("tq unit drain %d: %v\n%s", drained.ID, err, out)
	}
	if u := unitOn(t, bin, h, caddr, token, 2); !u.Draining || u.Used != 0 {
		t.Fatalf("after the drain host 2's unit is %+v, want draining and holding nothing", u)
	}
	runHelpers(t,
		helper(t, h.In(1), "mh-read", env(1, "TQ_READ="+part(2), fmt.Sprintf("TQ_NOT_ON=%d", drained.ID))...),
		helper(t, h.In(2), "mh-drained", env(2, fmt.Sprintf("TQ_NOT_ON=%d", drained.ID))...))

	// Host 3 drops off the network: its unit stops answering and its
	// heartbeats stop reaching the controller.
	h.Unplug(t, 3)
	runHelpers(t, helper(t, h.In(1), "mh-lost", env(1, "TQ_LOST="+part(3), "TQ_READ="+part(0)+","+part(2))...))
}

func part(host int) string { return fmt.Sprintf("host%d", host) }

// unitOn returns the unit that host i runs, as `tq stat --json` on host 0
// reports it: the one whose TCP address is on host i.
func unitOn(t *testing.T, bin string, h *testenv.Hosts, caddr, token string, i int) unitJSON {
	t.Helper()
	cmd := exec.Command(h.In(0)[0], append(h.In(0)[1:], bin, "stat", "--json", "--token", token, caddr)...)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("tq stat --json: %v", err)
	}
	var st statJSON
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("tq stat --json: %v\n%s", err, out)
	}
	for _, u := range st.Units {
		for _, a := range u.Addrs {
			if strings.HasPrefix(a, "tcp://"+h.IPs[i]+":") {
				return u
			}
		}
	}
	t.Fatalf("no unit of host %d (%s) in %s", i, h.IPs[i], out)
	return unitJSON{}
}

// multiHostHelper is the body of the rehearsal's client processes.
func multiHostHelper(ctx context.Context, t *testing.T, c *client.Client, kv *kvapi.KV, role string) {
	me := hostid.ID()
	local := map[engine.UnitID]bool{}
	for _, u := range c.Units() {
		if u.Host() == me {
			local[u.ID()] = true
		}
	}
	keys := helperKeys(0, helperRows)
	switch role {
	case "mh-write":
		if len(local) != 1 {
			t.Fatalf("host %s: %d local units among %d, want 1", me, len(local), len(c.Units()))
		}
		for _, u := range c.Units() {
			if local[u.ID()] && u.Transport() != "shm" {
				t.Fatalf("host %s: local unit %d reached over %q, want shm", me, u.ID(), u.Transport())
			}
		}
		p := os.Getenv("TQ_PART")
		if _, err := kv.BatchPut(ctx, p, keys, helperBatch(0, helperRows), nil); err != nil {
			t.Fatalf("put %s: %v", p, err)
		}
		meta, b, err := getRows(ctx, c, p)
		if err != nil {
			t.Fatalf("get %s: %v", p, err)
		}
		checkRows(t, p, b)
		for f, cells := range meta.Cells {
			for r, cell := range cells {
				if !local[cell.Unit] {
					t.Fatalf("host %s: %s row %d field %s went to unit %d, not this host's", me, p, r, f, cell.Unit)
				}
			}
		}
	case "mh-read":
		want := os.Getenv("TQ_WANT_TRANSPORT")
		for _, u := range c.Units() {
			tr := u.Transport()
			switch {
			case local[u.ID()]:
			case want != "" && tr != want:
				t.Fatalf("host %s: unit %d on host %s reached over %q, want %q", me, u.ID(), u.Host(), tr, want)
			case tr != "tcp" && tr != "rdma":
				t.Fatalf("host %s: unit %d on host %s reached over %q, want a network transport", me, u.ID(), u.Host(), tr)
			}
		}
		readParts(ctx, t, c, os.Getenv("TQ_READ"))
		notOn(ctx, t, c, os.Getenv("TQ_READ"))
	case "mh-drained":
		// This host's unit is drained: what was put here reads back from
		// other hosts' units, and a new put goes to them too.
		p := os.Getenv("TQ_PART")
		readParts(ctx, t, c, p)
		notOn(ctx, t, c, p)
		after := p + "-drained"
		if _, err := kv.BatchPut(ctx, after, keys, helperBatch(0, helperRows), nil); err != nil {
			t.Fatalf("put on a host whose unit drained: %v", err)
		}
		readParts(ctx, t, c, after)
		notOn(ctx, t, c, after)
	case "mh-lost":
		lost := os.Getenv("TQ_LOST")
		start := time.Now()
		for {
			_, b, err := getRows(ctx, c, lost)
			if err == nil {
				b.Release()
			}
			if errors.Is(err, engine.ErrLost) {
				fmt.Printf("host %s: %s reads as lost after %v: %v\n", me, lost, time.Since(start).Round(time.Millisecond), err)
				break
			}
			if err != nil && !errors.Is(err, engine.ErrUnavailable) {
				t.Fatalf("read of a gone host's cells: %v, want an error wrapping %v", err, engine.ErrLost)
			}
			if err == nil {
				t.Fatalf("read %s from a host that is off the network: no error", lost)
			}
			if time.Since(start) > 30*time.Second {
				t.Fatalf("reads of a gone host's cells still fail with %v after 30 s, not %v", err, engine.ErrLost)
			}
			time.Sleep(100 * time.Millisecond)
		}
		// The rest of the cluster goes on: writes stay local, other
		// hosts' cells read back.
		p := os.Getenv("TQ_PART") + "-after"
		if _, err := kv.BatchPut(ctx, p, keys, helperBatch(0, helperRows), nil); err != nil {
			t.Fatalf("put after a host left: %v", err)
		}
		readParts(ctx, t, c, os.Getenv("TQ_READ")+","+p)
	default:
		t.Fatalf("unknown helper role %q", role)
	}
}

// getRows reads every field of the rows mh-write put into p.
func getRows(ctx context.Context, c *client.Client, p string) (*engine.BatchMeta, *engine.Batch, error) {
	meta, err := c.MetaByKeys(ctx, p, helperKeys(0, helperRows), nil, false)
	if err != nil {
		return nil, nil, err
	}
	b, err := c.Get(ctx, meta)
	return meta, b, err
}

func readParts(ctx context.Context, t *testing.T, c *client.Client, parts string) {
	for p := range strings.SplitSeq(parts, ",") {
		_, b, err := getRows(ctx, c, p)
		if err != nil {
			t.Fatalf("host %s: read %s: %v", hostid.ID(), p, err)
		}
		checkRows(t, p, b)
	}
}

// notOn checks that no cell of parts lies on unit $TQ_NOT_ON, if set.
func notOn(ctx context.Context, t *testing.T, c *client.Client, parts string) {
	not := os.Getenv("TQ_NOT_ON")
	if not == "" {
		return
	}
	for p := range strings.SplitSeq(parts, ",") {
		meta, err := c.MetaByKeys(ctx, p, helperKeys(0, helperRows), nil, false)
		if err != nil {
			t.Fatalf("meta of %s: %v", p, err)
		}
		for f, cells := range meta.Cells {
			for r, cell := range cells {
				if fmt.Sprint(cell.Unit) == not {
					t.Fatalf("%s row %d field %s is still on unit %s", p, r, f, not)
				}
			}
		}
	}
}

// checkRows checks b against what mh-write put.
func checkRows(t *testing.T, p string, b *engine.Batch) {
	defer b.Release()
	want := helperBatch(0, helperRows)
	for _, f := range want.Fields() {
		if got := b.Col(f.Name); got == nil || !got.Equal(f.Col) {
			t.Fatalf("%s field %s differs from what was put", p, f.Name)
		}
	}
	if n := len(b.Fields()); n != len(want.Fields()) {
		t.Fatalf("%s: %d fields, want %d", p, n, len(want.Fields()))
	}
}

var mhWorkload = flag.String("mh.workload", "small", "workload of BenchmarkMultiHost (small, medium or tiny)")

// BenchmarkMultiHost measures the aggregate throughput of the small
// workload (bench.Small, 288 MiB a batch) with 1, 2 and 4 hosts, each a
// network namespace with a unit, a writer and a reader: every writer puts
// its batch to its own partition (local-first: to its host's unit, over
// shared memory), all at once; then every reader gets the partition of
// the next host's writer (over TCP between hosts; with one host, its
// own), all at once. put_GB/s and get_GB/s are all bytes moved over the
// wall time of the phase (get: the default batch get, views over shared
// memory and fresh memory otherwise; get_into: into a buffer faulted in
// beforehand); tcp_stream_GB/s is the baseline, the same bytes sent by
// the writers over plain TCP streams into such buffers along the same
// paths as the gets, all at once, and get_into/tcp_stream their ratio. Needs root; on one machine the hosts share its
// cores, so the curve shows what crossing hosts costs and whether phases
// serialize, not what a real cluster would reach:
//
//	go test -run '^$' -bench MultiHost -benchtime 3x -count 3 ./cmd/tq | tee mh.txt
//	benchstat -col /hosts mh.txt
func BenchmarkMultiHost(b *testing.B) {
	ws, err := bench.Workloads(*mhWorkload)
	if err != nil {
		b.Fatal(err)
	}
	w := ws[0]
	bin := tqBinary(b)
	h := testenv.NewHosts(b, 4)
	for _, n := range []int{1, 2, 4} {
		b.Run(fmt.Sprintf("hosts=%d", n), func(b *testing.B) { benchHosts(b, bin, h, n, w) })
	}
}

func benchHosts(b *testing.B, bin string, h *testenv.Hosts, n int, w bench.Workload) {
	const token = "multihost-bench-token"
	size := w.Bytes(bench.Simple)
	ctrl, err := spawnServe(b.TempDir(), h.In(0), io.Discard, func(string) {}, bin, "--role", "controller",
		"--listen", h.IPs[0]+":7371", "--socket-dir", b.TempDir(), "--token", token)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(ctrl.kill)
	caddr := ctrl.addr("tcp")
	capacity := fmt.Sprintf("%dMiB", (2*size>>20)+64)
	for i := range n {
		u, err := spawnServe(b.TempDir(), h.In(i), io.Discard, func(string) {}, bin, "--role", "unit", "--controller", caddr,
			"--unit-listen", h.IPs[i]+":0", "--socket-dir", b.TempDir(), "--token", token, "--capacity", capacity)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(u.kill)
	}
	writers := make([]*bench.Child, n)
	readers := make([]*bench.Child, n)
	for i := range n {
		cfg := bench.ChildConfig{Controller: caddr, Token: token, Partition: part(i), Workload: w, Case: bench.Simple}
		if writers[i], err = bench.StartWriter(os.Args[0], h.In(i), cfg); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(writers[i].Close)
		cfg.Partition, cfg.Listen = part((i+1)%n), h.IPs[i]+":0"
		if readers[i], err = bench.StartReader(os.Args[0], h.In(i), cfg); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(readers[i].Close)
	}
	// The baseline: the same bytes over a plain TCP stream along the
	// same path, from host i+1 to host i.
	for i := range n {
		if err := bench.Connect(writers[(i+1)%n], readers[i], readers[i].Listening()); err != nil {
			b.Fatal(err)
		}
	}
	phase := func(f func(i int) error) time.Duration {
		var g errgroup.Group
		t0 := time.Now()
		for i := range n {
			g.Go(func() error { return f(i) })
		}
		if err := g.Wait(); err != nil {
			b.Fatal(err)
		}
		return time.Since(t0)
	}
	var put, get, into, stream time.Duration
	b.ResetTimer()
	for range b.N {
		put += phase(func(i int) error { _, err := writers[i].Put(); return err })
		get += phase(func(i int) error { _, err := readers[i].Get(writers[(i+1)%n].Sum()); return err })
		into += phase(func(i int) error { _, err := readers[i].GetInto(writers[(i+1)%n].Sum()); return err })
		b.StopTimer()
		phase(func(i int) error { return writers[i].Clear() })
		stream += phase(func(i int) error { _, err := bench.Send(writers[(i+1)%n], readers[i]); return err })
		b.StartTimer()
	}
	moved := float64(size) * float64(n) * float64(b.N)
	b.ReportMetric(moved/put.Seconds()/1e9, "put_GB/s")
	b.ReportMetric(moved/get.Seconds()/1e9, "get_GB/s")
	b.ReportMetric(moved/stream.Seconds()/1e9, "tcp_stream_GB/s")
	b.ReportMetric(moved/into.Seconds()/1e9, "get_into_GB/s")
	b.ReportMetric(stream.Seconds()/into.Seconds(), "get_into/tcp_stream")
}
