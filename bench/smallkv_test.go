package bench

// BenchmarkSmallKV: TQ against redis-server at the same concurrency and
// value size, both from this process to a server process on this host:
// TQ's Go KV API over tcp and shm, and TQ's Redis-protocol endpoint (the
// one tq serve --resp runs) through the same RESP clients as Redis (a
// minimal one, and go-redis). Each iteration is SET key value then GET
// key, checked. Every figure comes with the server process's CPU time per
// operation (in all, server_us/op, and its user part, server_user_us/op),
// this process's (client_us/op) and p50/p99 latencies.

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/kvapi"
	"github.com/tqgo/tq/transport/shm"
)

// smallKVKeys is how many keys each client rotates over.
const smallKVKeys = 4

// The rows of BenchmarkSmallKV: value sizes, numbers of clients, the rows
// through a RESP client, and TQ's Go client's transports and kinds.
var (
	smallKVSizes    = []int{1 << 10, 1 << 20}
	smallKVClients  = []int{16, 64}
	smallKVRESPRows = []struct{ store, transport, client string }{
		{"redis", "resp", "raw"}, {"redis", "unix", "raw"}, {"tq", "resp", "raw"}, {"tq", "unix", "raw"},
		{"redis", "resp", "go-redis"}, {"tq", "resp", "go-redis"},
	}
	smallKVGoTransports = []string{client.TransportTCP, client.TransportShm}
	smallKVGoClients    = []string{"go", "go-shared"}
)

// smallKVRows names every row BenchmarkSmallKV runs, in its order.
func smallKVRows() []string {
	var rows []string
	for _, size := range smallKVSizes {
		for _, clients := range smallKVClients {
			conf := fmt.Sprintf("value=%s/clients=%d", sizeName(size), clients)
			for _, rc := range smallKVRESPRows {
				rows = append(rows, fmt.Sprintf("store=%s/transport=%s/client=%s/%s", rc.store, rc.transport, rc.client, conf))
			}
			rows = append(rows, "store=tq/transport=tcp/client=raw/"+conf)
			for _, tr := range smallKVGoTransports {
				for _, cl := range smallKVGoClients {
					rows = append(rows, fmt.Sprintf("store=tq/transport=%s/client=%s/%s", tr, cl, conf))
				}
			}
		}
	}
	return rows
}

// BenchmarkSmallKV runs clients concurrent clients (TQ: also as callers
// sharing one client, client=go-shared), each with its own
// connections, doing SET then GET of one key (TQ: kv.Put of a one-row
// batch, then kv.BatchGet of that key; Redis: SET, GET), and reports ops/s
// counting a SET and a GET as two ops, latency percentiles of each, and
// for TQ its ops/s over Redis's at the same value size and concurrency in
// this run (under -count, each run over the redis row's run of the same
// number: baselineRuns). Every GET is
// checked: its length and a stamp at both ends that the SET before it
// wrote.
//
// TQ over "tcp" is a client as on another host: it reaches the
// controller and the unit over loopback TCP. TQ over "shm" is a client on
// their host: it reaches the unit through shared memory and the
// controller through the unix socket the controller names in its
// handshake. Redis is reached over loopback TCP (transport=resp: the
// baseline of both, tq/redis) and over its unix socket (transport=unix:
// the same-host baseline of shm, tq/redis-unix).
//
// TQ over "tcp" with client=raw is TQ's own protocol through a minimal
// client (rawTQ: one request at a time, answered in the caller's
// goroutine, as the RESP rows' client): the server's share without the
// Go client's.
//
// The store=redis half runs when redis-server is installed, and is
// skipped with a message otherwise. The TQ runs also report the wire
// round trips a SET and a GET make (counted once per configuration,
// outside the timed loop).
//
// The server process can be profiled:
//
//	TQ_BENCH_SERVER_FLAGS=-test.cpuprofile=/tmp/server.cpu \
//	  go test -run '^$' -bench 'SmallKV/store=tq/transport=tcp/client=go/value=1KiB/clients=16$' -cpuprofile /tmp/client.cpu ./bench
//
// and run with another number of event loops (TQ_BENCH_SERVER_LOOPS=2,
// as tq serve --loops 2 --resp-loops 2; docs/small-values.md says what that did on
// two cores).
func BenchmarkSmallKV(b *testing.B) {
	srv := startBenchServer(b)
	caddr := srv.ctrl
	redisAddr, redisSock, redisPID, noRedis := "", "", 0, ""
	if _, err := exec.LookPath("redis-server"); err != nil {
		noRedis = fmt.Sprintf("redis-server is not installed (apt-get install redis-server): no redis baseline: %v", err)
		b.Log(noRedis)
	} else {
		redisAddr, redisSock, redisPID = startRedisSock(b)
	}
	const maxClients = 64
	pools := map[string][]*kvapi.KV{}
	owner := b // the clients live until the whole benchmark ends
	pool := func(b *testing.B, tr string) []*kvapi.KV {
		for len(pools[tr]) < maxClients {
			c, err := connectWith(owner, caddr, benchConnect(tr, 1))
			if err != nil {
				b.Fatal(err)
			}
			pools[tr] = append(pools[tr], kvapi.New(c))
		}
		return pools[tr]
	}
	// RESP connections by server address and client library, grown as
	// the concurrency grows.
	rconns := map[string][]*respConn{}
	gconns := map[string][]*redis.Client{}
	raw := func(b *testing.B, addr string, n int) []*respConn {
		for len(rconns[addr]) < n {
			c, err := dialRedis(addr)
			if err != nil {
				b.Fatal(err)
			}
			owner.Cleanup(func() { c.close() })
			rconns[addr] = append(rconns[addr], c)
		}
		return rconns[addr][:n]
	}
	goRedis := func(b *testing.B, addr string, n int) []*redis.Client {
		for len(gconns[addr]) < n {
			c := redis.NewClient(&redis.Options{Addr: addr, PoolSize: 1, Protocol: 2})
			owner.Cleanup(func() { c.Close() })
			// go-redis dials on a client's first command: dial now.
			if err := c.Ping(context.Background()).Err(); err != nil {
				b.Fatalf("go-redis to %s: %v", addr, err)
			}
			gconns[addr] = append(gconns[addr], c)
		}
		return gconns[addr][:n]
	}
	var rawConns []*rawTQ
	rawTQs := func(b *testing.B, n int) []*rawTQ {
		for len(rawConns) < n {
			c, err := dialRawTQ(caddr)
			if err != nil {
				b.Fatal(err)
			}
			owner.Cleanup(func() { c.close() })
			rawConns = append(rawConns, c)
		}
		return rawConns[:n]
	}
	var redisOps baselineRuns
	trips := map[string]func(*testing.B){}
	// Every row it runs is one of smallKVRows, which the test of the
	// docs' -bench patterns matches them against.
	rows := smallKVRows()
	run := func(name string, f func(b *testing.B)) {
		if !slices.Contains(rows, name) {
			b.Fatalf("row %s is not in smallKVRows", name)
		}
		b.Run(name, f)
	}
	for _, size := range smallKVSizes {
		for _, clients := range smallKVClients {
			conf := fmt.Sprintf("value=%s/clients=%d", sizeName(size), clients)
			// The same RESP client against redis-server and TQ's endpoint
			// over TCP, and both over their unix sockets (redis-server's is the
			// same-host baseline of TQ's shm transport).
			for _, rc := range smallKVRESPRows {
				name := fmt.Sprintf("store=%s/transport=%s/client=%s/%s", rc.store, rc.transport, rc.client, conf)
				run(name, func(b *testing.B) {
					addr, pid := srv.resp, srv.pid
					if rc.transport == "unix" {
						addr = srv.respSock
					}
					if rc.store == "redis" {
						if redisAddr == "" {
							b.Skip(noRedis)
						}
						addr, pid = redisAddr, redisPID
						if rc.transport == "unix" {
							addr = redisSock
						}
					}
					// Connections are made before the measured part, as
					// TQ's clients' are (pool), so that neither the server's
					// CPU nor this process's counts their setup.
					var run func() float64
					if rc.client == "raw" {
						conns := raw(b, addr, clients)
						run = func() float64 { return runRESPSmallKV(b, conns, size) }
					} else {
						cs := goRedis(b, addr, clients)
						run = func() float64 { return runGoRedisSmallKV(b, cs, size) }
					}
					var ops float64
					serverCPU(b, pid, func() { ops = run() })
					base := fmt.Sprintf("store=redis/transport=%s/client=%s/%s", rc.transport, rc.client, conf)
					if rc.store == "redis" {
						redisOps.set(base, b, ops)
					} else {
						reportRatio(b, ops, redisOps.of(base, b), "tq/redis", base)
					}
				})
			}
			// TQ's own protocol through a minimal client (rawTQ), as the
			// RESP rows' client: what the server costs without the Go
			// client's own.
			run(fmt.Sprintf("store=tq/transport=tcp/client=raw/%s", conf), func(b *testing.B) {
				conns := rawTQs(b, clients)
				var ops float64
				serverCPU(b, srv.pid, func() { ops = runRawTQSmallKV(b, conns, size) })
				base := "store=redis/transport=resp/client=raw/" + conf
				reportRatio(b, ops, redisOps.of(base, b), "tq/redis", base)
			})
			for _, tr := range smallKVGoTransports {
				// go: a client (and connections) per caller, as Redis has
				// a connection per client; go-shared: one client for
				// every caller, as the goroutines of one Go process share
				// it (their requests share frames and syscalls).
				for _, cl := range smallKVGoClients {
					run(fmt.Sprintf("store=tq/transport=%s/client=%s/%s", tr, cl, conf), func(b *testing.B) {
						kvs := pool(b, tr)[:clients]
						if cl == "go-shared" {
							kvs = slices.Repeat(kvs[:1], clients)
						}
						if trips[tr+conf] == nil {
							trips[tr+conf] = countTrips(b, kvs[0].Client(), tr, size)
						}
						var ops float64
						serverCPU(b, srv.pid, func() { ops = runTQSmallKV(b, kvs, size) })
						trips[tr+conf](b)
						// Against redis-server over TCP; over shm (a client
						// on the controller's host, which takes its unix
						// socket) also against redis-server's unix socket;
						// over tcp also against redis-server through
						// go-redis, the client a Go program would use (the
						// minimal RESP client does less than any real one).
						ratio := func(metric, base string) { reportRatio(b, ops, redisOps.of(base, b), metric, base) }
						ratio("tq/redis", "store=redis/transport=resp/client=raw/"+conf)
						if tr == client.TransportTCP {
							ratio("tq/redis-goredis", "store=redis/transport=resp/client=go-redis/"+conf)
						} else {
							ratio("tq/redis-unix", "store=redis/transport=unix/client=raw/"+conf)
						}
					})
				}
			}
		}
	}
}

// serverCPU runs fn and reports the CPU time the server process pid spent
// meanwhile (user and system, from /proc) per operation, a SET and a GET
// counting as two, the user part of it on its own (the system part is
// mostly the socket calls, which cost the same for any server making
// them), and the same total for this process (the clients, with the
// benchmark's own bookkeeping).
func serverCPU(b *testing.B, pid int, fn func()) {
	before, err := procCPU(pid)
	if err != nil {
		b.Fatal(err)
	}
	self, err := procCPU(os.Getpid())
	if err != nil {
		b.Fatal(err)
	}
	fn()
	after, err := procCPU(pid)
	if err != nil {
		b.Fatal(err)
	}
	selfAfter, err := procCPU(os.Getpid())
	if err != nil {
		b.Fatal(err)
	}
	reportCPU(b, after.total()-before.total(), 2*b.N, "server_us/op")
	reportCPU(b, after.user-before.user, 2*b.N, "server_user_us/op")
	reportCPU(b, selfAfter.total()-self.total(), 2*b.N, "client_us/op")
}

// minCPUTicks is the least CPU time, in /proc's clock ticks of 10 ms, a
// figure per operation is reported from: /proc counts whole ticks, so
// below this one tick more or less moves the figure by over 10%, and a
// run shorter than one tick reads as no CPU at all.
const minCPUTicks = 10

// reportCPU reports d, a CPU time read from /proc, per operation (ops of
// them) as metric in µs, or, when d is under minCPUTicks ticks, says in
// the benchmark's log that the run was too short to measure it rather
// than report a figure that is only the ticks' rounding.
func reportCPU(b *testing.B, d time.Duration, ops int, metric string) {
	if d < minCPUTicks*clockTick {
		b.Logf("%s not reported: %v of CPU time in the run, under the %d clock ticks (%v) it takes to measure; run longer (-benchtime)",
			metric, d, minCPUTicks, minCPUTicks*clockTick)
		return
	}
	b.ReportMetric(float64(d.Nanoseconds())/1e3/float64(ops), metric)
}

// reportRatio reports ops/base as metric, or, when base is 0 because the
// baseline row (named by baseline) did not run in this run — skipped, or
// left out by -bench — says so in the benchmark's log instead of leaving
// the ratio out without a word.
func reportRatio(b *testing.B, ops, base float64, metric, baseline string) {
	if base <= 0 {
		b.Logf("%s not reported: its baseline (%s) did not run before this row in this run (skipped, or left out by -bench)", metric, baseline)
		return
	}
	b.ReportMetric(ops/base, metric)
}

// baselineRuns pairs the runs (-count) of a row with those of its
// baseline row. The testing package runs a sub-benchmark's runs one
// after another, so every run of a redis row comes before the runs of
// the TQ rows compared with it: the i-th run of a row is compared with
// the i-th run of its baseline (the latest one when the baseline ran
// fewer times), as "ratios per run against redis-server in the same run"
// means. A run is one *testing.B, whose function the testing package
// calls again with growing b.N; the run's figure is its last call's.
type baselineRuns struct {
	runs map[string][]*testing.B // per row, the B of each of its runs in the order they began
	figs map[*testing.B]float64  // per baseline run, its latest figure
}

// run returns the number of b's run of the row named key (from 0).
func (r *baselineRuns) run(key string, b *testing.B) int {
	if r.runs == nil {
		r.runs, r.figs = map[string][]*testing.B{}, map[*testing.B]float64{}
	}
	if i := slices.Index(r.runs[key], b); i >= 0 {
		return i
	}
	r.runs[key] = append(r.runs[key], b)
	return len(r.runs[key]) - 1
}

// set records v as the figure of b's run of the baseline row named key.
func (r *baselineRuns) set(key string, b *testing.B, v float64) {
	r.run(key, b)
	r.figs[b] = v
}

// of returns the figure of the baseline row named key that b's run of
// the row it measures is compared with, or 0 when that row has not run.
func (r *baselineRuns) of(key string, b *testing.B) float64 {
	i := r.run("compared "+b.Name(), b)
	runs := r.runs[key]
	if len(runs) == 0 {
		return 0
	}
	return r.figs[runs[min(i, len(runs)-1)]]
}

// cpuTime is a process's CPU time so far.
type cpuTime struct{ user, sys time.Duration }

func (c cpuTime) total() time.Duration { return c.user + c.sys }

// procCPU reads a process's user and system CPU time from /proc.
func procCPU(pid int) (cpuTime, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return cpuTime{}, err
	}
	// The command name (field 2) may hold spaces: count from after it.
	rest := raw[bytes.LastIndexByte(raw, ')')+2:]
	f := strings.Fields(string(rest))
	if len(f) < 13 {
		return cpuTime{}, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return cpuTime{}, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return cpuTime{user: time.Duration(utime) * clockTick, sys: time.Duration(stime) * clockTick}, nil
}

// clockTick is the unit of /proc's CPU times: Linux reports them in clock
// ticks of 1/100 s (USER_HZ) on every architecture Go runs on.
const clockTick = 10 * time.Millisecond

// runRESPSmallKV is runSmallKV over RESP connections (SET, GET).
func runRESPSmallKV(b *testing.B, conns []*respConn, size int) float64 {
	bufs := make([][]byte, len(conns))
	for w := range bufs {
		bufs[w] = make([]byte, size)
	}
	return runSmallKV(b, size, bufs, func(w int, key string, val []byte, lat latencies) ([]byte, func(), error) {
		c := conns[w]
		t0 := time.Now()
		if err := c.set([]byte(key), val); err != nil {
			return nil, nil, err
		}
		t1 := time.Now()
		got, err := c.get([]byte(key))
		lat.add(0, t1.Sub(t0))
		lat.add(1, time.Since(t1))
		return got, nil, err
	})
}

// runGoRedisSmallKV is runSmallKV through go-redis, one client (of one
// connection) per worker.
func runGoRedisSmallKV(b *testing.B, clients []*redis.Client, size int) float64 {
	ctx := context.Background()
	bufs := make([][]byte, len(clients))
	for w := range bufs {
		bufs[w] = make([]byte, size)
	}
	return runSmallKV(b, size, bufs, func(w int, key string, val []byte, lat latencies) ([]byte, func(), error) {
		c := clients[w]
		t0 := time.Now()
		if err := c.Set(ctx, key, val, 0).Err(); err != nil {
			return nil, nil, err
		}
		t1 := time.Now()
		got, err := c.Get(ctx, key).Bytes()
		lat.add(0, t1.Sub(t0))
		lat.add(1, time.Since(t1))
		return got, nil, err
	})
}

// runTQSmallKV runs runSmallKV with TQ's KV API: each of kvs puts a
// one-row batch of size bytes (the value runSmallKV stamps) and gets it
// back.
func runTQSmallKV(b *testing.B, kvs []*kvapi.KV, size int) float64 {
	ctx := context.Background()
	vals := make([]*engine.Batch, len(kvs))
	bufs := make([][]byte, len(kvs))
	for w := range vals {
		vals[w] = engine.MustBatch(engine.Field{Name: "v", Col: engine.BytesOf([][]byte{make([]byte, size)})})
		bufs[w] = vals[w].Col("v").Data()
	}
	return runSmallKV(b, size, bufs, func(w int, key string, _ []byte, lat latencies) ([]byte, func(), error) {
		kv := kvs[w]
		t0 := time.Now()
		if _, err := kv.Put(ctx, "small", key, vals[w], nil); err != nil {
			return nil, nil, err
		}
		t1 := time.Now()
		got, err := kv.BatchGet(ctx, "small", []string{key}, "v")
		lat.add(0, t1.Sub(t0))
		lat.add(1, time.Since(t1))
		if err != nil {
			return nil, nil, err
		}
		if got.Rows() != 1 {
			got.Release()
			return nil, nil, fmt.Errorf("get of one key gave %d rows", got.Rows())
		}
		// Over shm the value is a view into storage: checked in place,
		// then released.
		return got.Col("v").RowBytes(0), got.Release, nil
	})
}

// runSmallKV runs SET+GET iterations on len(vals) workers, each rotating
// over its own smallKVKeys keys; op does one SET and GET of vals[w] (of
// size bytes, stamped anew each time) under key and returns what the GET
// read, which must be that value, and what releases it (or nil). It
// reports and returns ops/s.
func runSmallKV(b *testing.B, size int, vals [][]byte, op func(w int, key string, val []byte, lat latencies) ([]byte, func(), error)) float64 {
	clients := len(vals)
	keys := make([][]string, clients)
	for w := range keys {
		for k := range smallKVKeys {
			keys[w] = append(keys[w], fmt.Sprintf("c%d_k%d", w, k))
		}
		for i := range vals[w] {
			vals[w][i] = byte(i*7 + w)
		}
	}
	b.SetBytes(2 * int64(size))
	b.ReportAllocs()
	wall, lats := runWorkers(b, clients, 2, func(w, i int, lat latencies) error {
		val := vals[w]
		stamp := uint64(w)<<40 | uint64(i) + 1
		binary.LittleEndian.PutUint64(val, stamp)
		binary.LittleEndian.PutUint64(val[len(val)-8:], ^stamp)
		got, release, err := op(w, keys[w][i%smallKVKeys], val, lat)
		if err != nil {
			return err
		}
		if release != nil {
			defer release()
		}
		if len(got) != size || binary.LittleEndian.Uint64(got) != stamp || binary.LittleEndian.Uint64(got[size-8:]) != ^stamp {
			return fmt.Errorf("read back %d bytes, stamp %x, want %d bytes, stamp %x", len(got), got[:min(8, len(got))], size, stamp)
		}
		return nil
	})
	ops := 2 * float64(b.N) / wall.Seconds()
	b.ReportMetric(ops, "ops/s")
	reportLatency(b, lats, 0, "set")
	reportLatency(b, lats, 1, "get")
	return ops
}

func sizeName(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprintf("%dB", n)
}

// countTrips does a few SET+GET pairs through a client that counts the
// calls its metadata service and storage units serve, and returns a
// function that reports the wire round trips per SET and per GET to the
// controller (set_ctrl_rt, get_ctrl_rt) and to the unit (set_unit_rt,
// get_unit_rt) and logs the calls. A unit call's round trips depend on the
// transport (see unitTrips).
func countTrips(b *testing.B, c *client.Client, transport string, size int) func(*testing.B) {
	const pairs = 16
	var set, get tripCount
	count := &set
	var units []client.DataUnit
	for _, u := range c.Units() {
		units = append(units, countingUnit{u, &count})
	}
	cc, err := client.New(countingMeta{c.Meta(), &count}, units, client.DefaultConfig())
	if err != nil {
		b.Fatal(err)
	}
	kv := kvapi.New(cc)
	ctx := context.Background()
	val := engine.MustBatch(engine.Field{Name: "v", Col: engine.BytesOf([][]byte{make([]byte, size)})})
	for i := range pairs + 1 {
		if i == 1 { // the first pair creates the key: not counted
			set, get = tripCount{}, tripCount{}
		}
		count = &set
		if _, err := kv.Put(ctx, "trips", "k", val, nil); err != nil {
			b.Fatal(err)
		}
		count = &get
		got, err := kv.BatchGet(ctx, "trips", []string{"k"}, "v")
		if err != nil {
			b.Fatal(err)
		}
		got.Release()
	}
	sc, su := set.trips(transport, size)
	gc, gu := get.trips(transport, size)
	calls := fmt.Sprintf("%s, per SET: %s; per GET: %s", transport, set.String(pairs), get.String(pairs))
	return func(b *testing.B) {
		b.ReportMetric(float64(sc)/pairs, "set_ctrl_rt")
		b.ReportMetric(float64(su)/pairs, "set_unit_rt")
		b.ReportMetric(float64(gc)/pairs, "get_ctrl_rt")
		b.ReportMetric(float64(gu)/pairs, "get_unit_rt")
		b.Log(calls)
	}
}

// tripCount counts calls by name ("ctrl.Commit", "unit.Write", ...).
// The counting client is used by one goroutine.
type tripCount map[string]int

func (t *tripCount) add(name string) {
	if *t == nil {
		*t = tripCount{}
	}
	(*t)[name]++
}

// unitTrips is the wire round trips of one unit call by transport, from
// the transports' code: over shm a write is RESERVE then COMMIT and a read
// is ACQUIRE then RELEASE (Acquire's RELEASE is counted when the lease is
// released), except that values of at most shm.InlineMax go through the
// control ring in one WRITE or READ (see inlineTrips); over tcp (or the
// unit's unix socket) each call of a small value is one request and its
// reply.
var unitTrips = map[string]map[string]int{
	client.TransportShm: {"unit.Write": 2, "unit.Acquire": 1, "unit.Release": 1, "unit.ReadInto": 2, "unit.Free": 1},
	client.TransportTCP: {"unit.Write": 1, "unit.Acquire": 1, "unit.Release": 0, "unit.ReadInto": 1, "unit.Free": 1},
}

// inlineTrips overrides unitTrips for shm values of at most
// shm.InlineMax (with the default ring control).
var inlineTrips = map[string]int{"unit.Write": 1, "unit.ReadInto": 1}

// trips returns the controller and unit round trips counted for values
// of size bytes.
func (t tripCount) trips(transport string, size int) (ctrl, unit int) {
	for name, n := range t {
		if strings.HasPrefix(name, "ctrl.") {
			ctrl += n
			continue
		}
		per := unitTrips[transport][name]
		if k, ok := inlineTrips[name]; ok && transport == client.TransportShm && size <= shm.InlineMax {
			per = k
		}
		unit += n * per
	}
	return ctrl, unit
}

func (t tripCount) String(per int) string {
	names := make([]string, 0, len(t))
	for name := range t {
		names = append(names, name)
	}
	slices.Sort(names)
	var sb strings.Builder
	for i, name := range names {
		if i > 0 {
			sb.WriteString(", ")
		}
		fmt.Fprintf(&sb, "%s %.3g", name, float64(t[name])/float64(per))
	}
	return sb.String()
}

// countingUnit counts a storage unit's calls into *n.
type countingUnit struct {
	client.DataUnit
	n **tripCount
}

func (u countingUnit) Write(ctx context.Context, extents [][][]byte) ([]engine.RemoteAddr, error) {
	(*u.n).add("unit.Write")
	return u.DataUnit.Write(ctx, extents)
}

func (u countingUnit) Acquire(ctx context.Context, addrs []engine.RemoteAddr) (client.Lease, error) {
	(*u.n).add("unit.Acquire")
	l, err := u.DataUnit.Acquire(ctx, addrs)
	if err != nil {
		return nil, err
	}
	return &countingLease{Lease: l, n: *u.n}, nil
}

// Inline passes the unit's choice of small reads through (see client's
// inliner): without it a counted shm get would lease what the real one
// reads inline.
func (u countingUnit) Inline(n uint64) bool {
	in, ok := u.DataUnit.(interface{ Inline(uint64) bool })
	return ok && in.Inline(n)
}

func (u countingUnit) ReadInto(ctx context.Context, addrs []engine.RemoteAddr, dst [][]byte) error {
	(*u.n).add("unit.ReadInto")
	return u.DataUnit.ReadInto(ctx, addrs, dst)
}

func (u countingUnit) Free(ctx context.Context, cells []engine.RemoteAddr) error {
	(*u.n).add("unit.Free")
	return u.DataUnit.Free(ctx, cells)
}

type countingLease struct {
	client.Lease
	n    *tripCount
	done atomic.Bool
}

func (l *countingLease) Release() {
	if l.done.CompareAndSwap(false, true) {
		l.n.add("unit.Release")
	}
	l.Lease.Release()
}

// countingMeta counts every metadata call into *n: each is one round trip
// to the controller.
type countingMeta struct {
	m client.MetaService
	n **tripCount
}

var _ client.MetaService = countingMeta{}

func (c countingMeta) count(name string) { (*c.n).add("ctrl." + name) }

func (c countingMeta) Insert(ctx context.Context, partition string, n int, fields []string) (*engine.BatchMeta, error) {
	c.count("Insert")
	return c.m.Insert(ctx, partition, n, fields)
}

func (c countingMeta) Fetch(ctx context.Context, req engine.FetchRequest) (*engine.BatchMeta, error) {
	c.count("Fetch")
	return c.m.Fetch(ctx, req)
}

func (c countingMeta) ForceFetch(ctx context.Context, partition string, fields []string) (*engine.BatchMeta, error) {
	c.count("ForceFetch")
	return c.m.ForceFetch(ctx, partition, fields)
}

func (c countingMeta) RowsMeta(ctx context.Context, partition string, indexes []uint64, fields []string) (*engine.BatchMeta, error) {
	c.count("RowsMeta")
	return c.m.RowsMeta(ctx, partition, indexes, fields)
}

func (c countingMeta) Commit(ctx context.Context, req engine.CommitRequest) error {
	c.count("Commit")
	return c.m.Commit(ctx, req)
}

func (c countingMeta) ResolveKeys(ctx context.Context, partition string, keys, fields []string, create bool) (*engine.BatchMeta, []int, error) {
	c.count("ResolveKeys")
	return c.m.ResolveKeys(ctx, partition, keys, fields, create)
}

func (c countingMeta) CommitKeys(ctx context.Context, req engine.KeysCommit) (engine.KeysCommitted, error) {
	c.count("CommitKeys")
	return c.m.CommitKeys(ctx, req)
}

func (c countingMeta) KeysOf(ctx context.Context, partition string, indexes []uint64) ([]string, error) {
	c.count("KeysOf")
	return c.m.KeysOf(ctx, partition, indexes)
}

func (c countingMeta) SetTags(ctx context.Context, partition string, indexes []uint64, tags []engine.Tags) error {
	c.count("SetTags")
	return c.m.SetTags(ctx, partition, indexes, tags)
}

func (c countingMeta) ListKeys(ctx context.Context, partition string) (map[string][]engine.KeyInfo, error) {
	c.count("ListKeys")
	return c.m.ListKeys(ctx, partition)
}

func (c countingMeta) ProductionStatus(ctx context.Context, partition string, fields []string) (engine.ProductionStatus, error) {
	c.count("ProductionStatus")
	return c.m.ProductionStatus(ctx, partition, fields)
}

func (c countingMeta) ConsumptionStatus(ctx context.Context, partition, task string) (engine.ConsumptionStatus, error) {
	c.count("ConsumptionStatus")
	return c.m.ConsumptionStatus(ctx, partition, task)
}

func (c countingMeta) ResetConsumption(ctx context.Context, partition, task string) error {
	c.count("ResetConsumption")
	return c.m.ResetConsumption(ctx, partition, task)
}

func (c countingMeta) ClearRows(ctx context.Context, partition string, indexes []uint64) error {
	c.count("ClearRows")
	return c.m.ClearRows(ctx, partition, indexes)
}

func (c countingMeta) ClearKeys(ctx context.Context, partition string, keys []string) error {
	c.count("ClearKeys")
	return c.m.ClearKeys(ctx, partition, keys)
}

func (c countingMeta) ClearPartition(ctx context.Context, partition string) error {
	c.count("ClearPartition")
	return c.m.ClearPartition(ctx, partition)
}

func (c countingMeta) Partitions(ctx context.Context) ([]string, error) {
	c.count("Partitions")
	return c.m.Partitions(ctx)
}

func (c countingMeta) Stats(ctx context.Context, partition string) (engine.PartitionStats, error) {
	c.count("Stats")
	return c.m.Stats(ctx, partition)
}

func (c countingMeta) Fields(ctx context.Context, partition string) ([]engine.FieldStats, error) {
	c.count("Fields")
	return c.m.Fields(ctx, partition)
}

// The one-round-trip KV calls, counted like the others, when the wrapped
// service has them.
var _ client.KeyDataService = countingMeta{}

func (c countingMeta) KeyDataSupported() bool {
	kd, ok := c.m.(client.KeyDataService)
	return ok && kd.KeyDataSupported()
}

func (c countingMeta) PutKeysData(ctx context.Context, req engine.KeysCommit, b *engine.Batch) (engine.KeysCommitted, error) {
	c.count("KVPut")
	return c.m.(client.KeyDataService).PutKeysData(ctx, req, b)
}

func (c countingMeta) GetKeysData(ctx context.Context, partition string, keys, fields []string, maxBytes int) (*engine.BatchMeta, *engine.Batch, error) {
	c.count("KVGet")
	return c.m.(client.KeyDataService).GetKeysData(ctx, partition, keys, fields, maxBytes)
}
