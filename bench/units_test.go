package bench

// Throughput against the number of storage units on one host. A server
// process (this test binary re-executed as TestUnitsServer) runs a
// controller and N storage units, each a full unit with its own TCP
// listener, unix socket and shared-memory socket, registered with the
// controller as separate `tq serve --role unit` processes would be (they
// share one process here so that the figures do not depend on how the
// kernel schedules N+1 processes on a loaded machine). The clients run in
// the benchmark process. Names are key=value for benchstat:
//
//	go test -run '^$' -bench 'Units' -count 5 ./bench | tee units.txt
//	benchstat -col /units -row /transport,/op units.txt
//
// BenchmarkUnitsSpan: one client puts and gets (into a reused buffer)
// the small workload (288 MiB, 1024 rows × 9 fields) with hash placement,
// so one put or get spans every unit and its unit requests run in
// parallel (Config.MaxUnitIO). units=1 is the same bytes on one unit;
// units=4/maxio=1 is four units talked to one after another, as before
// parallel unit I/O.
//
// BenchmarkUnitsAggregate: four clients (each its own connections) at
// once, local-first, each putting and getting a quarter of the small
// workload; GB/s is all four's bytes over the wall time. With one unit
// they all share it; with several, local-first spreads them (the first
// local unit is chosen by the put's lowest row index).

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/kvapi"
)

const unitsServerEnv = "TQ_BENCH_UNITS_SERVER"

// unitsCapacity is each unit's capacity: the whole small workload fits
// one unit.
const unitsCapacity = 512 << 20

// TestUnitsServer is the server process of the Units benchmarks: a
// controller and $TQ_BENCH_UNITS_SERVER storage units. It prints the
// controller's address and serves until its stdin closes.
func TestUnitsServer(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv(unitsServerEnv))
	if n == 0 {
		t.Skip("runs only as the Units benchmarks' server process")
	}
	_, _, caddr, stopCtrl := serveController(t, controller.DefaultConfig(), "")
	defer stopCtrl()
	dir, err := os.MkdirTemp("", "tq-bench-units-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	for i := range n {
		_, stop := serveUnit(t, caddr, unitsCapacity, filepath.Join(dir, fmt.Sprintf("unit-%d.sock", i)))
		defer stop()
	}
	fmt.Printf("ADDRS %s - -\n", caddr)
	io.Copy(io.Discard, os.Stdin)
}

// unitCounts are the cluster sizes measured.
var unitCounts = []int{1, 2, 4}

// unitsServers starts one server process per cluster size.
func unitsServers(b *testing.B) map[int]string {
	out := map[int]string{}
	for _, n := range unitCounts {
		p := startUnitsServer(b, n)
		out[n] = p
	}
	return out
}

func startUnitsServer(b *testing.B, n int) string {
	b.Helper()
	old := os.Getenv(serverFlagsEnv)
	os.Setenv(serverFlagsEnv, "-test.run=^TestUnitsServer$")
	defer os.Setenv(serverFlagsEnv, old)
	return startBenchServer(b, fmt.Sprintf("%s=%d", unitsServerEnv, n)).ctrl
}

// connectUnits connects a client to a cluster of n units and waits until
// it knows all of them.
func connectUnits(b *testing.B, addr, transport string, n int, place client.Placement, maxIO int) *client.Client {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		c, err := client.Connect(ctx, addr, client.ConnectConfig{WaitForUnits: true, Transport: transport, Client: client.Config{Placement: place, MaxUnitIO: maxIO}})
		if err != nil {
			b.Fatal(err)
		}
		if len(c.Units()) == n {
			b.Cleanup(func() { c.Close() })
			return c
		}
		c.Close()
		time.Sleep(20 * time.Millisecond)
	}
}

// unitsTransports are the data planes the units benchmarks run: the
// clients are on the units' host, so TQ's stream transport reaches them
// over their unix sockets (labelled unix; "tcp" until 2026-12-06).
var unitsTransports = []struct{ label, transport string }{
	{"shm", client.TransportShm},
	{"unix", client.TransportTCP},
}

func BenchmarkUnitsSpan(b *testing.B) {
	servers := unitsServers(b)
	w := small
	batch, keys := w.make(b)
	into := make([]byte, w.bytes())
	for i := 0; i < len(into); i += 4096 {
		into[i] = 1
	}
	for _, tr := range unitsTransports {
		for _, op := range []string{"put", "get_into"} {
			for _, pt := range []struct{ units, maxIO int }{{1, 8}, {2, 8}, {4, 8}, {4, 1}} {
				kv := kvapi.New(connectUnits(b, servers[pt.units], tr.transport, pt.units, client.Hash, pt.maxIO))
				b.Run(fmt.Sprintf("transport=%s/op=%s/units=%d/maxio=%d", tr.label, op, pt.units, pt.maxIO), func(b *testing.B) {
					benchUnitsOp(b, op, w, []*kvapi.KV{kv}, [][]string{keys}, []*engine.Batch{batch}, [][]byte{into})
				})
			}
		}
	}
}

func BenchmarkUnitsAggregate(b *testing.B) {
	servers := unitsServers(b)
	const clients = 4
	w := workload{small.name, small.batch / clients, small.fields, small.seq}
	batch, _ := w.make(b)
	batches := make([]*engine.Batch, clients)
	keys := make([][]string, clients)
	into := make([][]byte, clients)
	for c := range clients {
		batches[c] = batch
		for i := range w.batch {
			keys[c] = append(keys[c], fmt.Sprintf("c%d_key_%d", c, i))
		}
		into[c] = make([]byte, w.bytes())
		for i := 0; i < len(into[c]); i += 4096 {
			into[c][i] = 1 // faulted in, as BenchmarkUnitsSpan's buffer
		}
	}
	for _, tr := range unitsTransports {
		for _, op := range []string{"put", "get_into"} {
			for _, n := range unitCounts {
				kvs := make([]*kvapi.KV, clients)
				for c := range kvs {
					kvs[c] = kvapi.New(connectUnits(b, servers[n], tr.transport, n, client.LocalFirst, 0))
				}
				b.Run(fmt.Sprintf("transport=%s/op=%s/units=%d/clients=%d", tr.label, op, n, clients), func(b *testing.B) {
					benchUnitsOp(b, op, w, kvs, keys, batches, into)
				})
			}
		}
	}
}

// benchUnitsOp times op by every client at once (client c: kvs[c],
// keys[c], batches[c], into[c]): put is BatchPut (then an untimed Clear),
// get_into BatchGetInto into a reused buffer.
func benchUnitsOp(b *testing.B, op string, w workload, kvs []*kvapi.KV, keys [][]string, batches []*engine.Batch, into [][]byte) {
	ctx := context.Background()
	const part = "units"
	each := func(f func(c int) error) {
		var wg sync.WaitGroup
		errs := make([]error, len(kvs))
		for c := range kvs {
			wg.Go(func() { errs[c] = f(c) })
		}
		wg.Wait()
		for c, err := range errs {
			if err != nil {
				b.Fatalf("client %d: %v", c, err)
			}
		}
	}
	put := func(c int) error { _, err := kvs[c].BatchPut(ctx, part, keys[c], batches[c], nil); return err }
	clear := func(c int) error { return kvs[c].Clear(ctx, part, keys[c]) }
	each(put) // warm up: segments mapped and faulted
	if op == "put" {
		each(clear)
	}
	defer each(clear)
	n := w.bytes() * int64(len(kvs))
	b.SetBytes(n)
	b.ReportAllocs()
	var took time.Duration
	iters := 0
	for b.Loop() {
		t0 := time.Now()
		switch op {
		case "put":
			each(put)
			took += time.Since(t0)
			b.StopTimer()
			each(clear)
			b.StartTimer()
		case "get_into":
			each(func(c int) error {
				got, err := kvs[c].BatchGetInto(ctx, part, keys[c], into[c])
				if err == nil && (got.Rows() != w.batch || got.NumFields() != w.fields) {
					err = fmt.Errorf("got %d rows × %d fields, want %d × %d", got.Rows(), got.NumFields(), w.batch, w.fields)
				}
				return err
			})
			took += time.Since(t0)
		}
		iters++
	}
	b.ReportMetric(float64(n)*float64(iters)/took.Seconds()/1e9, op+"_GB/s")
}
