package bench

import (
	"encoding/csv"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// BenchmarkRedisBenchmark runs redis-benchmark (Debian redis-tools), the
// load generator Redis users know, against redis-server and against TQ's
// Redis-protocol endpoint (the one tq serve --resp runs) in the same run:
// SET then GET of 1 KiB values over 10,000 keys, with 16 and 64 clients.
// It reports each server's requests per second, its CPU per request and
// redis-benchmark's p50/p99 latencies, and TQ's requests per second over
// Redis's. An iteration is one redis-benchmark run of 100,000 requests per
// command; b.N is the number of runs.
//
//	go test -run '^$' -bench RedisBenchmark -benchtime 3x ./bench
func BenchmarkRedisBenchmark(b *testing.B) {
	rb, err := exec.LookPath("redis-benchmark")
	if err != nil {
		b.Skipf("redis-benchmark is not installed (apt-get install redis-tools): %v", err)
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		b.Skipf("redis-server is not installed (apt-get install redis-server): %v", err)
	}
	srv := startBenchServer(b)
	redisAddr, redisPID := startRedis(b)
	const requests = 100000
	for _, clients := range []int{16, 64} {
		var redisRPS baselineRuns
		for _, store := range []string{"redis", "tq"} {
			b.Run(fmt.Sprintf("store=%s/clients=%d", store, clients), func(b *testing.B) {
				addr, pid := redisAddr, redisPID
				if store == "tq" {
					addr, pid = srv.resp, srv.pid
				}
				cpu := runRedisBenchmark(b, rb, addr, pid, &redisRPS, store == "redis", []string{"SET", "GET"},
					"-t", "set,get", "-n", strconv.Itoa(requests), "-c", strconv.Itoa(clients), "-d", "1024", "-r", "10000")
				reportCPU(b, cpu, 2*requests*b.N, "server_us/req")
			})
		}
	}
}

// BenchmarkDurablePipeline runs redis-benchmark's SET from one client
// pipelining 1, 16 and 64 commands (-P) against redis-server with its
// append-only file synced before every reply (appendonly yes,
// appendfsync always) and against TQ's Redis-protocol endpoint with the
// controller's log (fsync batch, tq serve's default) in the same run: what
// a durable write costs when a client does not wait for each reply. Both
// sync once for what a connection sent together; the disk's fsync bounds
// both. They do not make the same thing durable: redis-server's file holds
// each SET's 1 KiB value, TQ's log holds the key and where its cell is,
// not the value, which stays in the storage unit's memory (a unit that
// restarts loses it, README's "Restarts and failures"), so TQ writes and
// syncs fewer bytes per SET. Metrics as BenchmarkRedisBenchmark's.
//
//	go test -run '^$' -bench DurablePipeline -benchtime 3x ./bench
func BenchmarkDurablePipeline(b *testing.B) {
	rb, err := exec.LookPath("redis-benchmark")
	if err != nil {
		b.Skipf("redis-benchmark is not installed (apt-get install redis-tools): %v", err)
	}
	srv := startBenchServer(b, "TQ_BENCH_SERVER_LOG=batch")
	redisAddr, _, redisPID := startRedisSock(b, "--appendonly", "yes", "--appendfsync", "always")
	const requests = 20000
	for _, depth := range []int{1, 16, 64} {
		var redisRPS baselineRuns
		for _, store := range []string{"redis", "tq"} {
			b.Run(fmt.Sprintf("store=%s/pipeline=%d", store, depth), func(b *testing.B) {
				addr, pid := redisAddr, redisPID
				if store == "tq" {
					addr, pid = srv.resp, srv.pid
				}
				cpu := runRedisBenchmark(b, rb, addr, pid, &redisRPS, store == "redis", []string{"SET"},
					"-t", "set", "-n", strconv.Itoa(requests), "-c", "1", "-P", strconv.Itoa(depth), "-d", "1024", "-r", "10000")
				reportCPU(b, cpu, requests*b.N, "server_us/req")
			})
		}
	}
}

// runRedisBenchmark runs redis-benchmark with args against the server at
// addr (process pid) b.N times and reports, for each of tests, the median
// over the runs of its requests per second and of its p50/p99 latencies, and the ratio to redisRPS's
// (which a run with baseline fills; under -count, its run of the same number). It returns the
// server's CPU time.
func runRedisBenchmark(b *testing.B, rb, addr string, pid int, redisRPS *baselineRuns, baseline bool, tests []string, args ...string) time.Duration {
	host, port, _ := strings.Cut(addr, ":")
	res := map[string][]rbResult{}
	var cpu time.Duration
	for range b.N {
		before, err := procCPU(pid)
		if err != nil {
			b.Fatal(err)
		}
		out, err := exec.Command(rb, append([]string{"-h", host, "-p", port, "--csv"}, args...)...).Output()
		if err != nil {
			b.Fatalf("redis-benchmark: %v\n%s", err, out)
		}
		after, err := procCPU(pid)
		if err != nil {
			b.Fatal(err)
		}
		cpu += after.total() - before.total()
		rs, err := parseRedisBenchmark(out)
		if err != nil {
			b.Fatal(err)
		}
		for _, r := range rs {
			res[r.test] = append(res[r.test], r)
		}
	}
	for _, test := range tests {
		rs := res[test]
		if len(rs) == 0 {
			b.Fatalf("no %s line in redis-benchmark's output", test)
		}
		m := medianRB(rs)
		name := strings.ToLower(test)
		b.ReportMetric(m.rps, name+"_req/s")
		b.ReportMetric(m.p50*1000, name+"_p50_us")
		b.ReportMetric(m.p99*1000, name+"_p99_us")
		if baseline {
			redisRPS.set(test, b, m.rps)
		} else {
			reportRatio(b, m.rps, redisRPS.of(test, b), name+"_tq/redis", "the store=redis row of the same configuration")
		}
	}
	return cpu
}

// rbResult is one line of redis-benchmark --csv: requests per second and
// latency percentiles in milliseconds.
type rbResult struct {
	test          string
	rps, p50, p99 float64
}

// medianRB is the median over runs of one test's requests per second
// and of its p50 and p99 latencies, each taken on its own; one slow run
// (another process on the host) moves it less than a mean.
func medianRB(rs []rbResult) rbResult {
	of := func(f func(rbResult) float64) float64 {
		vs := make([]float64, len(rs))
		for i, r := range rs {
			vs[i] = f(r)
		}
		return statOf(vs).Median
	}
	m := rbResult{
		rps: of(func(r rbResult) float64 { return r.rps }),
		p50: of(func(r rbResult) float64 { return r.p50 }),
		p99: of(func(r rbResult) float64 { return r.p99 }),
	}
	if len(rs) > 0 {
		m.test = rs[0].test
	}
	return m
}

func parseRedisBenchmark(out []byte) ([]rbResult, error) {
	rows, err := csv.NewReader(strings.NewReader(string(out))).ReadAll()
	if err != nil {
		return nil, fmt.Errorf("redis-benchmark --csv: %w\n%s", err, out)
	}
	if len(rows) < 2 {
		return nil, fmt.Errorf("redis-benchmark --csv printed %d lines:\n%s", len(rows), out)
	}
	col := map[string]int{}
	for i, h := range rows[0] {
		col[h] = i
	}
	for _, h := range []string{"test", "rps", "p50_latency_ms", "p99_latency_ms"} {
		if _, ok := col[h]; !ok {
			return nil, fmt.Errorf("redis-benchmark --csv has no %q column: %q", h, rows[0])
		}
	}
	var rs []rbResult
	for _, row := range rows[1:] {
		var r rbResult
		r.test = row[col["test"]]
		var errs [3]error
		r.rps, errs[0] = strconv.ParseFloat(row[col["rps"]], 64)
		r.p50, errs[1] = strconv.ParseFloat(row[col["p50_latency_ms"]], 64)
		r.p99, errs[2] = strconv.ParseFloat(row[col["p99_latency_ms"]], 64)
		for _, err := range errs {
			if err != nil {
				return nil, fmt.Errorf("redis-benchmark --csv line %q: %w", row, err)
			}
		}
		rs = append(rs, r)
	}
	return rs, nil
}

func TestParseRedisBenchmark(t *testing.T) {
	out := []byte(`"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
"SET","143884.89","0.066","0.016","0.063","0.095","0.159","0.615"
"GET","141843.97","0.066","0.016","0.063","0.095","0.167","0.407"
`)
	rs, err := parseRedisBenchmark(out)
	if err != nil {
		t.Fatal(err)
	}
	want := []rbResult{{"SET", 143884.89, 0.063, 0.159}, {"GET", 141843.97, 0.063, 0.167}}
	if fmt.Sprint(rs) != fmt.Sprint(want) {
		t.Fatalf("parsed %v, want %v", rs, want)
	}
	for _, bad := range []string{"", `"test","rps"` + "\n" + `"SET","1"`, `"test","rps","p50_latency_ms","p99_latency_ms"` + "\n" + `"SET","x","1","2"`} {
		if _, err := parseRedisBenchmark([]byte(bad)); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

// TestMedianRB: the runs of a test are summarized by their medians, as
// every ratio of the benchmarks is, so that one disturbed run of three
// does not move the tq/redis ratio. (They were averaged: runs of 100k,
// 10k and 110k SET/s reported 73k.)
func TestMedianRB(t *testing.T) {
	rs := []rbResult{{"SET", 100e3, 0.1, 0.3}, {"SET", 10e3, 1.5, 9}, {"SET", 110e3, 0.2, 0.4}}
	require.Equal(t, rbResult{"SET", 100e3, 0.2, 0.4}, medianRB(rs))
	require.Equal(t, rbResult{"GET", 150, 1.5, 2.5}, medianRB([]rbResult{{"GET", 100, 1, 2}, {"GET", 200, 2, 3}}))
}
