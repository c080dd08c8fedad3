package bench

// Two-process benchmarks over loopback TCP. The benchmark process is the
// client; a server process (this test binary re-executed as
// TestBenchServer) runs a controller, a storage unit, and — as baselines in
// the same process — a raw TCP sink/source and a ping-pong echo, so every
// figure is measured next to a plain socket between the same two processes.

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/controller/journal"
	"github.com/tqgo/tq/embedded"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/kvapi"
	"github.com/tqgo/tq/resp"
	"github.com/tqgo/tq/storage"
)

// TestBenchServer is the server process of the remote benchmarks; it does
// nothing in a normal test run.
func TestBenchServer(t *testing.T) {
	if os.Getenv("TQ_BENCH_SERVER") == "" {
		t.Skip("runs only as the benchmarks' server process")
	}
	// TQ_BENCH_SERVER_CPUPROFILE=file profiles the server side of a
	// benchmark (the profile is written when the benchmark ends).
	if p := os.Getenv("TQ_BENCH_SERVER_CPUPROFILE"); p != "" {
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			t.Fatal(err)
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	// TQ_BENCH_SERVER_LOG=batch|always|never keeps the controller's
	// state in a durable log (BenchmarkLog).
	ccfg := controller.DefaultConfig()
	if mode := os.Getenv("TQ_BENCH_SERVER_LOG"); mode != "" && mode != "off" {
		var err error
		if ccfg.Fsync, err = journal.ParseFsync(mode); err != nil {
			t.Fatal(err)
		}
		ccfg.Dir = t.TempDir()
	}
	// Unix sockets (the controller's, a unit's) and the unit's memfd
	// socket, as tq serve has them.
	dir, err := os.MkdirTemp("", "tq-bench-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ctrl, cs, caddr, stopCtrl := serveController(t, ccfg, filepath.Join(dir, "controller.sock"))
	defer stopCtrl()
	u, stop := serveUnit(t, caddr, 2<<30, filepath.Join(dir, "unit.sock"))
	defer stop()

	raw := listen(t)
	go serveRaw(raw)
	defer raw.Close()
	// The controller takes small KV puts and gets with their bytes, and
	// the Redis-protocol endpoint serves the same controller and unit, as
	// tq serve runs them.
	if os.Getenv("TQ_BENCH_SERVER_NOKV") == "" {
		kvd, err := embedded.KVData(ctrl, u)
		if err != nil {
			t.Fatal(err)
		}
		cs.ServeKV(kvd)
	}
	rs, err := resp.NewServer(ctrl, []*storage.Unit{u}, resp.Config{Loops: loopsEnv(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	rl := listen(t)
	go rs.Serve(rl)
	rsock := filepath.Join(dir, "resp.sock") // as tq serve --resp-socket
	ul, err := net.Listen("unix", rsock)
	if err != nil {
		t.Fatal(err)
	}
	go rs.Serve(ul)
	fmt.Printf("ADDRS %s %s %s %s\n", caddr, raw.Addr().String(), rl.Addr().String(), rsock)
	io.Copy(io.Discard, os.Stdin) // until the benchmark closes our stdin
}

// loopsEnv is TQ_BENCH_SERVER_LOOPS, the server's event loops (the
// controller's and the Redis-protocol endpoint's, as tq serve --loops and
// --resp-loops; -1: none); unset: their default.
func loopsEnv(t testing.TB) int {
	v := os.Getenv("TQ_BENCH_SERVER_LOOPS")
	if v == "" {
		return 0
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < -1 {
		t.Fatalf("TQ_BENCH_SERVER_LOOPS=%q: want a number of event loops (-1: none, 0: the default)", v)
	}
	return n
}

// serveController runs a controller with cfg on a TCP listener, and on
// the unix socket sock unless it is "" (which it names to clients on
// this host, as tq serve does); stop ends it.
func serveController(t testing.TB, cfg controller.Config, sock string) (ctrl *controller.Controller, cs *controller.Server, caddr string, stop func()) {
	ctrl, err := controller.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var scfg controller.ServerConfig
	scfg.Loops = loopsEnv(t)
	if sock != "" {
		scfg.LocalAddrs = []string{"unix://" + sock}
	}
	cs = controller.NewServer(ctrl, scfg)
	cl := listen(t)
	go cs.Serve(cl)
	if sock != "" {
		ul, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		go cs.Serve(ul)
	}
	return ctrl, cs, "tcp://" + cl.Addr().String(), func() { cs.Close(); ctrl.Close() }
}

// serveUnit runs a storage unit of capacity bytes as tq serve does, on a
// TCP listener, the unix socket sock and the memfd socket next to it,
// registered with the controller at caddr; stop ends it.
func serveUnit(t testing.TB, caddr string, capacity int64, sock string) (u *storage.Unit, stop func()) {
	ctx := context.Background()
	cfg := storage.DefaultConfig()
	cfg.Capacity = capacity
	u, err := storage.NewUnit(0, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var stops []func() error
	stop = func() {
		for _, f := range slices.Backward(stops) {
			f()
		}
	}
	fail := func(err error) {
		stop()
		t.Fatal(err)
	}
	stops = append(stops, func() error { u.Close(); return nil })
	if _, err := storage.AssignID(ctx, caddr, u, storage.JoinConfig{}); err != nil {
		fail(err)
	}
	us := storage.NewServer(u, storage.ServerConfig{})
	stops = append(stops, us.Close)
	ul := listen(t)
	go us.Serve(ul)
	xl, err := net.Listen("unix", sock)
	if err != nil {
		fail(err)
	}
	go us.Serve(xl)
	fl, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock + ".shm", Net: "unix"})
	if err != nil {
		fail(err)
	}
	us.RegisterShm(fl)
	go us.ServeShm(fl)
	m, err := storage.Join(ctx, caddr, u, storage.JoinConfig{Addrs: []string{
		"tcp://" + ul.Addr().String(), "unix://" + sock, "shm://" + sock + ".shm"}})
	if err != nil {
		fail(err)
	}
	stops = append(stops, m.Close)
	return u, stop
}

func listen(t testing.TB) net.Listener {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// serveRaw is the baseline peer: 'W' n → read n bytes, ack one byte;
// 'R' n → write n bytes; 'P' → echo 64-byte messages until EOF.
func serveRaw(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			buf := make([]byte, 1<<20)
			var hdr [9]byte
			for {
				if _, err := io.ReadFull(c, hdr[:]); err != nil {
					return
				}
				n := int64(binary.LittleEndian.Uint64(hdr[1:]))
				switch hdr[0] {
				case 'W':
					if _, err := io.CopyBuffer(io.Discard, io.LimitReader(c, n), buf); err != nil {
						return
					}
					c.Write([]byte{1})
				case 'R':
					for n > 0 {
						k := min(n, int64(len(buf)))
						if _, err := c.Write(buf[:k]); err != nil {
							return
						}
						n -= k
					}
				case 'P':
					msg := make([]byte, 64)
					for {
						if _, err := io.ReadFull(c, msg); err != nil {
							return
						}
						if _, err := c.Write(msg); err != nil {
							return
						}
					}
				}
			}
		}()
	}
}

// benchServer starts the server process and returns the controller's and
// the raw peer's addresses.
func benchServer(b *testing.B) (string, string) {
	b.Helper()
	return benchServerFlags(b)
}

// rawConn is the baseline: a plain Go TCP stream to the same process. A
// failed write or read fails the benchmark (b), rather than timing
// nothing.
type rawConn struct {
	c net.Conn
	b *testing.B
}

func dialRaw(b *testing.B, addr string) *rawConn {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return &rawConn{c, b}
}

func (r *rawConn) check(what string, err error) {
	if err != nil {
		r.b.Fatalf("baseline stream: %s: %v", what, err)
	}
}

func (r *rawConn) cmd(op byte, n int64) {
	var hdr [9]byte
	hdr[0] = op
	binary.LittleEndian.PutUint64(hdr[1:], uint64(n))
	_, err := r.c.Write(hdr[:])
	r.check("command", err)
}

// write streams the batch's columns in 1 MiB writes and waits for the ack.
func (r *rawConn) write(bt *engine.Batch) time.Duration {
	t0 := time.Now()
	r.cmd('W', int64(bt.Size()))
	for _, f := range bt.Fields() {
		d := f.Col.Data()
		for len(d) > 0 {
			k := min(len(d), 1<<20)
			_, err := r.c.Write(d[:k])
			r.check("write", err)
			d = d[k:]
		}
	}
	var ack [1]byte
	_, err := io.ReadFull(r.c, ack[:])
	r.check("read the ack", err)
	return time.Since(t0)
}

// read pulls n bytes into dst.
func (r *rawConn) read(dst []byte) time.Duration {
	t0 := time.Now()
	r.cmd('R', int64(len(dst)))
	_, err := io.ReadFull(r.c, dst)
	r.check("read", err)
	return time.Since(t0)
}

func connect(b *testing.B, addr, transport string, conns int) *client.Client {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := client.Connect(ctx, addr, benchConnect(transport, conns))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c
}

// BenchmarkRemote runs the reference flow's put and get of the small
// workload (288 MiB) through the KV API from this process to a server
// process over loopback TCP, next to a plain Go TCP stream of the same
// bytes between the same two processes, in the same iteration.
//
// Target: put and get ≥ 0.8× the plain stream. "get" allocates the
// result (fresh memory: first touch of new pages is the slowest thing on
// this machine); "get_into" reads into a reused buffer, as the baseline
// does.
func BenchmarkRemote(b *testing.B) {
	caddr, raddr := benchServer(b)
	w := small
	batch, keys := w.make(b)
	raw := dialRaw(b, raddr)
	dst := make([]byte, w.bytes())
	for i := 0; i < len(dst); i += 4096 {
		dst[i] = 1
	}
	into := make([]byte, w.bytes())
	for i := 0; i < len(into); i += 4096 {
		into[i] = 1
	}
	for _, tr := range []string{client.TransportTCP, client.TransportShm} {
		kv := kvapi.New(connect(b, caddr, tr, 0))
		ops := []string{"put", "get", "get_into"}
		if tr == client.TransportShm {
			ops = append(ops, "get_view", "put_reserved")
		}
		for _, op := range ops {
			benchRemoteOp(b, tr, op, w, batch, keys, kv, raw, dst, into)
		}
	}
}

func benchRemoteOp(b *testing.B, tr, op string, w workload, batch *engine.Batch, keys []string, kv *kvapi.KV, raw *rawConn, dst, into []byte) {
	ctx := context.Background()
	{
		// The limit for tcp is a plain TCP stream between the same two
		// processes; for shm it is a copy() of the same bytes.
		baseName := "tcp_stream"
		base := func(f func() time.Duration) time.Duration { return f() }
		if tr == client.TransportShm {
			cp := newCopier(w.bytes())
			baseName = "memcpy"
			base = func(func() time.Duration) time.Duration { return cp.run(batch) }
		}
		b.Run(fmt.Sprintf("transport=%s/workload=%s/op=%s", tr, w.name, op), func(b *testing.B) {
			raw.b = b                                                          // its failures are this benchmark's
			if _, err := kv.BatchPut(ctx, "p", keys, batch, nil); err != nil { // warm up
				b.Fatal(err)
			}
			if op == "put" {
				kv.Clear(ctx, "p", keys)
			}
			var s side
			var fill time.Duration // put_reserved: the caller writing its data in place
			specs := make([]client.FieldSpec, 0, batch.NumFields())
			for _, f := range batch.Fields() {
				specs = append(specs, client.FieldSpec{Name: f.Name, DType: f.Col.DType(), Shape: f.Col.Shape()})
			}
			if op == "put_reserved" {
				// Warm up as the other ops do: the first reservations land
				// in segments this client has not mapped yet (a one-time
				// cost of a few ms per segment, like dialing).
				kv.Clear(ctx, "p", keys)
				for range 2 {
					pb, err := kv.ReservePut(ctx, "p", keys, specs...)
					if err != nil {
						b.Fatal(err)
					}
					if _, err := pb.Commit(ctx); err != nil {
						b.Fatal(err)
					}
					kv.Clear(ctx, "p", keys)
				}
			}
			b.SetBytes(w.bytes())
			for b.Loop() {
				t0 := time.Now()
				switch op {
				case "put":
					if _, err := kv.BatchPut(ctx, "p", keys, batch, nil); err != nil {
						b.Fatal(err)
					}
					s.op += time.Since(t0)
					kv.Clear(ctx, "p", keys)
					s.base += base(func() time.Duration { return raw.write(batch) })
				case "put_reserved":
					// Reserve, fill in place, commit: the put moves no
					// bytes. The fill is the producer writing its data,
					// which it does wherever the data goes; it is timed
					// apart.
					pb, err := kv.ReservePut(ctx, "p", keys, specs...)
					if err != nil {
						b.Fatal(err)
					}
					t1 := time.Now()
					for _, f := range batch.Fields() {
						copyChunks(pb.Column(f.Name).Data(), f.Col.Data())
					}
					t2 := time.Now()
					if _, err := pb.Commit(ctx); err != nil {
						b.Fatal(err)
					}
					s.op += t1.Sub(t0) + time.Since(t2)
					fill += t2.Sub(t1)
					kv.Clear(ctx, "p", keys)
					s.base += base(func() time.Duration { return raw.write(batch) })
				case "get":
					got, err := kv.BatchGet(ctx, "p", keys)
					if err != nil {
						b.Fatal(err)
					}
					s.op += time.Since(t0)
					if got.Rows() != w.batch {
						b.Fatalf("%d rows", got.Rows())
					}
					got.Release() // views over shm
					s.base += base(func() time.Duration { return raw.read(dst) })
				case "get_view":
					v, err := kv.BatchGetView(ctx, "p", keys)
					if err != nil {
						b.Fatal(err)
					}
					s.op += time.Since(t0)
					if v.Rows() != w.batch {
						b.Fatalf("%d rows", v.Rows())
					}
					v.Release()
					s.base += base(func() time.Duration { return raw.read(dst) })
				case "get_into":
					got, err := kv.BatchGetInto(ctx, "p", keys, into)
					if err != nil {
						b.Fatal(err)
					}
					s.op += time.Since(t0)
					if got.Rows() != w.batch {
						b.Fatalf("%d rows", got.Rows())
					}
					s.base += base(func() time.Duration { return raw.read(dst) })
				}
				s.n++
			}
			gbps := func(d time.Duration) float64 { return float64(w.bytes()) * float64(s.n) / d.Seconds() / 1e9 }
			b.ReportMetric(gbps(s.op), op+"_GB/s")
			b.ReportMetric(gbps(s.base), baseName+"_GB/s")
			b.ReportMetric(s.base.Seconds()/s.op.Seconds(), op+"/"+baseName)
			if fill > 0 {
				b.ReportMetric(gbps(fill), "fill_GB/s")
			}
			kv.Clear(ctx, "p", keys)
		})
	}
}

// BenchmarkRemoteControl times a control-plane round trip (listing a
// partition of one key) next to a bare 64-byte ping-pong over TCP between
// the same two processes. Target: ≤ 1.5× the ping-pong.
func BenchmarkRemoteControl(b *testing.B) {
	caddr, raddr := benchServer(b)
	ctx := context.Background()
	c := connect(b, caddr, client.TransportTCP, 0)
	kv := kvapi.New(c)
	one := engine.MustBatch(engine.Field{Name: "v", Col: engine.StringsOf([]string{"x"})})
	if _, err := kv.Put(ctx, "one", "k", one, nil); err != nil {
		b.Fatal(err)
	}
	raw := dialRaw(b, raddr)
	raw.cmd('P', 0)
	msg := make([]byte, 64)
	var op, base time.Duration
	n := 0
	for b.Loop() {
		t0 := time.Now()
		if l, err := kv.List(ctx, "one"); err != nil || len(l["one"]) != 1 {
			b.Fatalf("list: %v %v", l, err)
		}
		t1 := time.Now()
		_, err := raw.c.Write(msg)
		raw.check("ping", err)
		_, err = io.ReadFull(raw.c, msg)
		raw.check("pong", err)
		base += time.Since(t1)
		op += t1.Sub(t0)
		n++
	}
	b.ReportMetric(float64(op.Nanoseconds())/float64(n), "list_ns")
	b.ReportMetric(float64(base.Nanoseconds())/float64(n), "pingpong_ns")
	b.ReportMetric(op.Seconds()/base.Seconds(), "list/pingpong")
}

// BenchmarkRemoteSmallKV: 64 concurrent clients, each with its own
// connections, doing KV put + get of a 1 KiB value; reports ops/s (a put
// and a get are two ops).
func BenchmarkRemoteSmallKV(b *testing.B) {
	caddr, _ := benchServer(b)
	const clients = 64
	kvs := make([]*kvapi.KV, clients)
	for i := range kvs {
		kvs[i] = kvapi.New(connect(b, caddr, client.TransportTCP, 1))
	}
	val := engine.MustBatch(engine.Field{Name: "v", Col: engine.BytesOf([][]byte{make([]byte, 1024)})})
	ctx := context.Background()
	// b.N put + get pairs in all, shared by the clients.
	wall, _ := runWorkers(b, clients, 0, func(w, i int, _ latencies) error {
		kv, key := kvs[w], fmt.Sprintf("c%d_%d", w, i%16)
		if _, err := kv.Put(ctx, "small", key, val, nil); err != nil {
			return err
		}
		got, err := kv.BatchGet(ctx, "small", []string{key}, "v")
		if err != nil {
			return err
		}
		got.Release()
		return nil
	})
	b.ReportMetric(float64(2*b.N)/wall.Seconds(), "ops/s")
}

// copyChunks copies in pieces below 1 MiB, where Go's memmove stays
// cache-temporal (as the shm transport does).
func copyChunks(dst, src []byte) {
	for len(src) > 0 {
		n := copy(dst, src[:min(len(src), 1<<20-4<<10)])
		dst, src = dst[n:], src[n:]
	}
}
