package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/kvapi"
)

// startRESP runs tq serve with the Redis-protocol endpoint on a free
// port and returns it with its token.
func startRESP(t *testing.T, bin string, args ...string) (*serveProc, string) {
	t.Helper()
	// A socket directory of its own: the default one is shared by every
	// tq serve of this user, concurrent test runs included.
	// args replace these (tq serve refuses a flag given twice).
	args = serveArgs([]string{"--listen=127.0.0.1:0", "--resp=127.0.0.1:0", "--capacity=256MiB", "--socket-dir=" + t.TempDir()}, args...)
	p := startServe(t, nil, bin, args...)
	require.NotEmpty(t, p.resp, "tq serve printed no Redis-protocol address")
	return p, p.token(t)
}

func needTool(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s is not installed (apt-get install redis-tools; .ci/run installs it)", name)
	}
	return path
}

func hostPort(t *testing.T, addr string) (string, string) {
	t.Helper()
	i := strings.LastIndexByte(addr, ':')
	require.Positive(t, i)
	return addr[:i], addr[i+1:]
}

// TestRESPRedisCLI drives the endpoint with redis-cli: exit status and
// output checked, values read back through the Go KV API.
func TestRESPRedisCLI(t *testing.T) {
	cli := needTool(t, "redis-cli")
	bin := tqBinary(t)
	p, tok := startRESP(t, bin, "--resp-socket", filepath.Join(t.TempDir(), "resp.sock"))
	host, port := hostPort(t, p.resp)
	run := func(stdin []byte, args ...string) string {
		t.Helper()
		cmd := exec.Command(cli, append([]string{"-h", host, "-p", port, "--user", "default", "--pass", tok, "--no-auth-warning"}, args...)...)
		cmd.Stdin = bytes.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "redis-cli %q: %s", args, out)
		return strings.TrimRight(string(out), "\n")
	}
	assert.Equal(t, "PONG", run(nil, "PING"))
	assert.Equal(t, "OK", run(nil, "SET", "greeting", "hello world"))
	assert.Equal(t, "hello world", run(nil, "GET", "greeting"))
	assert.Equal(t, "2", run(nil, "HSET", "{rl}s1", "prompt", "2+2?", "reward", "1.0"))
	assert.Equal(t, "prompt\n2+2?\nreward\n1.0", run(nil, "HGETALL", "{rl}s1"))
	bin8 := []byte{0, 1, 2, '\r', '\n', 255}
	assert.Equal(t, "OK", run(bin8, "-x", "SET", "raw"))
	assert.Equal(t, "2", run(nil, "DBSIZE"))
	keys := strings.Fields(run(nil, "KEYS", "*"))
	assert.ElementsMatch(t, []string{"greeting", "raw"}, keys)

	// Without the token: refused, and it says why.
	cmd := exec.Command(cli, "-h", host, "-p", port, "GET", "greeting")
	out, _ := cmd.CombinedOutput()
	assert.Contains(t, string(out), "NOAUTH")

	// The unix socket (--resp-socket) serves the same store, and asks
	// for the token too.
	require.NotEmpty(t, p.respSock, "tq serve printed no Redis-protocol socket")
	out, err := exec.Command(cli, "-s", p.respSock, "--user", "default", "--pass", tok, "--no-auth-warning", "GET", "greeting").CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Equal(t, "hello world\n", string(out))
	out, _ = exec.Command(cli, "-s", p.respSock, "GET", "greeting").CombinedOutput()
	assert.Contains(t, string(out), "NOAUTH")
	fi, err := os.Stat(p.respSock)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "the socket is its user's alone")

	kv := kvapi.New(connectTo(t, p, p.addr("unix")))
	ctx := context.Background()
	b, err := kv.BatchGetCopy(ctx, "default", []string{"greeting", "raw"}, "value")
	require.NoError(t, err)
	assert.Equal(t, "hello world", b.Col("value").String(0))
	assert.Equal(t, bin8, b.Col("value").RowBytes(1), "redis-cli -x sends stdin as it is")
	b, err = kv.BatchGetCopy(ctx, "rl", []string{"s1"}, "prompt", "reward")
	require.NoError(t, err)
	assert.Equal(t, "2+2?", b.Col("prompt").String(0))
}

// TestRESPRedisBenchmark runs redis-benchmark against the endpoint and
// checks its report and what it wrote.
func TestRESPRedisBenchmark(t *testing.T) {
	rb := needTool(t, "redis-benchmark")
	bin := tqBinary(t)
	// With event loops (the default) and with a goroutine per connection.
	for _, loops := range []string{"0", "-1"} {
		t.Run("resp-loops="+loops, func(t *testing.T) {
			p, tok := startRESP(t, bin, "--resp-loops", loops)
			host, port := hostPort(t, p.resp)
			cmd := exec.Command(rb, "-h", host, "-p", port, "-a", tok, "-t", "set,get,mset", "-n", "3000", "-c", "8", "-d", "1024", "-r", "500", "-q")
			out, err := cmd.CombinedOutput()
			require.NoError(t, err, "%s", out)
			for _, op := range []string{"SET", "GET", "MSET (10 keys)"} {
				re := regexp.MustCompile(regexp.QuoteMeta(op) + `: ([0-9.]+) requests per second`)
				m := re.FindStringSubmatch(string(out))
				require.NotNil(t, m, "no %s figure in:\n%s", op, out)
				rps, _ := strconv.ParseFloat(m[1], 64)
				assert.Positive(t, rps)
			}
			assert.NotContains(t, string(out), "ERR")
			if cli, err := exec.LookPath("redis-cli"); err == nil {
				info, err := exec.Command(cli, "-h", host, "-p", port, "-a", tok, "--no-auth-warning", "INFO", "server").Output()
				require.NoError(t, err)
				m := regexp.MustCompile(`tq_event_loops:([0-9]+)`).FindStringSubmatch(string(info))
				require.NotNil(t, m, "INFO server: %s", info)
				if loops == "-1" {
					assert.Equal(t, "0", m[1], "--resp-loops -1: a goroutine per connection")
				} else {
					assert.NotEqual(t, "0", m[1], "--resp-loops 0: at least one loop")
				}
			}
			kv := kvapi.New(connectTo(t, p, p.addr("unix")))
			all, err := kv.List(context.Background(), "default")
			require.NoError(t, err)
			require.NotEmpty(t, all["default"])
			var keys []string
			for _, e := range all["default"] {
				require.Regexp(t, `^key:[0-9]{12}$`, e.Key)
				keys = append(keys, e.Key)
			}
			b, err := kv.BatchGetCopy(context.Background(), "default", keys, "value")
			require.NoError(t, err)
			for i := range keys {
				// redis-benchmark fills its values with random characters.
				require.Len(t, b.Col("value").RowBytes(i), 1024, "key %s", keys[i])
			}
		})
	}
}

const redisPyScript = `
import json, sys, redis
r = redis.Redis(host=sys.argv[1], port=int(sys.argv[2]), password=sys.argv[3])
out = {}
out["ping"] = r.ping()
r.set("py:bin", bytes(range(256)))
out["bin"] = list(r.get("py:bin"))
r.mset({"py:a": "1", "py:b": "2"})
out["mget"] = [v.decode() if v is not None else None for v in r.mget(["py:a", "py:nope", "py:b"])]
r.hset("py:h", mapping={"prompt": "hi", "score": "0.5"})
out["hgetall"] = {k.decode(): v.decode() for k, v in r.hgetall("py:h").items()}
out["scan"] = sorted(k.decode() for k in r.scan_iter(match="py:*", count=2))
p = r.pipeline(transaction=False)
for i in range(100):
    p.set("py:p%d" % i, i)
p.execute()
out["fromgo"] = list(r.hget("go:k", "ids"))
out["deleted"] = r.delete("py:a", "py:nope")
out["exists"] = r.exists("py:a", "py:b")
r.execute_command("TQ.TAG", "py:h", "status", "running")
out["cas"] = [r.execute_command("TQ.TAGCAS", "py:h", "status", "OLD", "running", "NEW", "finished")[0],
              r.execute_command("TQ.TAGCAS", "py:h", "status", "OLD", "running", "NEW", "failed")[0]]
out["finished"] = [k.decode() for k, _ in r.execute_command("TQ.LIST", "EQ", "status", "finished")]
out["hdel"] = r.hdel("py:h", "score")
out["hkeys"] = sorted(k.decode() for k in r.hkeys("py:h"))
try:
    r.set("x", "y", ex=10)
except redis.ResponseError as e:
    out["ex_error"] = str(e)
# A value over --resp-max-value: redis-py sends it whole before it reads
# the answer, so it gets the reason only if the server reads the rest
# rather than resetting the connection under the write.
try:
    r.set("py:big", b"x" * (8 << 20))
except redis.ResponseError as e:
    out["big_error"] = str(e)
except redis.ConnectionError as e:
    out["big_error"] = "connection error: " + str(e)
out["after_big"] = r.ping()
print(json.dumps(out))
`

// TestRESPRedisPy speaks to the endpoint with redis-py (Debian
// python3-redis), under the system Python that has it.
func TestRESPRedisPy(t *testing.T) {
	py := "/usr/bin/python3"
	if err := exec.Command(py, "-c", "import redis").Run(); err != nil {
		t.Skip("redis-py is not installed for /usr/bin/python3 (apt-get install python3-redis; .ci/run installs it)")
	}
	bin := tqBinary(t)
	p, tok := startRESP(t, bin, "--resp-max-value", "1MiB")
	host, port := hostPort(t, p.resp)
	kv := kvapi.New(connectTo(t, p, p.addr("unix")))
	ctx := context.Background()
	ids, err := engine.DenseOf([]int32{1, -2}, 2)
	require.NoError(t, err)
	_, err = kv.Put(ctx, "default", "go:k", engine.MustBatch(engine.Field{Name: "ids", Col: ids}), nil)
	require.NoError(t, err)

	script := filepath.Join(t.TempDir(), "client.py")
	require.NoError(t, os.WriteFile(script, []byte(redisPyScript), 0o600))
	out, err := exec.Command(py, script, host, port, tok).CombinedOutput()
	require.NoError(t, err, "%s", out)
	var got struct {
		Ping    bool              `json:"ping"`
		Bin     []int             `json:"bin"`
		MGet    []*string         `json:"mget"`
		HGetAll map[string]string `json:"hgetall"`
		Scan    []string          `json:"scan"`
		FromGo  []int             `json:"fromgo"`
		Deleted int               `json:"deleted"`
		Exists  int               `json:"exists"`
		ExErr   string            `json:"ex_error"`
		CAS     []int             `json:"cas"`
		Done    []string          `json:"finished"`
		HDel    int               `json:"hdel"`
		HKeys   []string          `json:"hkeys"`
		BigErr  string            `json:"big_error"`
		After   bool              `json:"after_big"`
	}
	require.NoError(t, json.Unmarshal(out, &got), "%s", out)
	assert.True(t, got.Ping)
	for i, v := range got.Bin {
		require.Equal(t, i, v)
	}
	require.Len(t, got.Bin, 256)
	assert.Equal(t, "1", *got.MGet[0])
	assert.Nil(t, got.MGet[1])
	assert.Equal(t, map[string]string{"prompt": "hi", "score": "0.5"}, got.HGetAll)
	assert.Equal(t, []string{"py:a", "py:b", "py:bin", "py:h"}, got.Scan)
	assert.Equal(t, []int{1, 0, 0, 0, 0xfe, 0xff, 0xff, 0xff}, got.FromGo, "int32 1, -2 little-endian")
	assert.Equal(t, 1, got.Deleted)
	assert.Equal(t, 1, got.Exists)
	assert.Contains(t, got.ExErr, "not supported")
	assert.Equal(t, []int{1, 0}, got.CAS, "a status machine: one claim wins")
	assert.Equal(t, []string{"py:h"}, got.Done)
	assert.Equal(t, 1, got.HDel)
	assert.Equal(t, []string{"prompt"}, got.HKeys)
	assert.Equal(t, "Protocol error: argument of 8388608 bytes exceeds the limit of 1048576", got.BigErr)
	assert.True(t, got.After, "redis-py reconnects after the protocol error")

	b, err := kv.BatchGetCopy(ctx, "default", []string{"py:bin", "py:p99"}, "value")
	require.NoError(t, err)
	want := make([]byte, 256)
	for i := range want {
		want[i] = byte(i)
	}
	assert.Equal(t, want, b.Col("value").RowBytes(0))
	assert.Equal(t, "99", b.Col("value").String(1))
}

// TestRESPLargeValuesBoundedMemory writes and reads 64 MiB values through
// go-redis, several times over: every byte comes back, and the server's
// memory stays within a few values' worth of where it began.
func TestRESPLargeValuesBoundedMemory(t *testing.T) {
	bin := tqBinary(t)
	p, tok := startRESP(t, bin, "--capacity", "512MiB", "--units", "1")
	rc := redis.NewClient(&redis.Options{Addr: p.resp, Password: tok})
	defer rc.Close()
	ctx := context.Background()
	require.NoError(t, rc.Set(ctx, "warm", "x", 0).Err())
	// The put mapped the unit's first segment (64 MiB), faulted in behind
	// it: wait for that, so that what follows counts the values alone.
	var before memUse
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if before = readMem(t, p.cmd.Process.Pid); before.shmem >= 64<<20 {
			break
		}
		require.True(t, time.Now().Before(deadline), "the first segment was not faulted in: RssShmem %d MiB", before.shmem>>20)
	}
	big := make([]byte, 64<<20)
	var peak, warm memUse
	for round := range 6 {
		// The pattern repeats every 256 bytes: fill a stretch, then copy it
		// (a byte at a time, 64 MiB took seconds a round under -race).
		for i := range 4096 {
			big[i] = byte(i*31 + round)
		}
		for n := 4096; n < len(big); n *= 2 {
			copy(big[n:], big[:n])
		}
		key := fmt.Sprint("big", round%2)
		require.NoError(t, rc.Set(ctx, key, big, 0).Err())
		got, err := rc.Get(ctx, key).Bytes()
		require.NoError(t, err)
		require.True(t, bytes.Equal(big, got), "round %d", round)
		m := readMem(t, p.cmd.Process.Pid)
		peak.anon, peak.shmem = max(peak.anon, m.anon), max(peak.shmem, m.shmem)
		if round == 2 {
			warm = peak
		}
		t.Logf("round %d: heap and stacks (RssAnon) %d MiB, arena touched (RssShmem) %d MiB; began at %d and %d MiB", round, m.anon>>20, m.shmem>>20, before.anon>>20, before.shmem>>20)
	}
	// The process holds one value in flight (the argument read; a read
	// is sent from the arena) and what the GC has not yet given back.
	assert.Less(t, peak.anon-before.anon, int64(3*64<<20), "the heap grew from %d to %d MiB", before.anon>>20, peak.anon>>20)
	// The arena holds the two keys and, while a key is overwritten, its
	// old value: at most three values.
	assert.LessOrEqual(t, peak.shmem-before.shmem, int64(3*64<<20+16<<20), "the arena grew from %d to %d MiB", before.shmem>>20, peak.shmem>>20)
	// Once warm, more rounds take no more memory.
	assert.Less(t, peak.anon+peak.shmem, warm.anon+warm.shmem+32<<20, "memory kept growing after the third round")
}

type memUse struct{ anon, shmem int64 }

// readMem reads a process's resident anonymous and shared memory.
func readMem(t *testing.T, pid int) memUse {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	require.NoError(t, err)
	var m memUse
	for _, l := range strings.Split(string(b), "\n") {
		for _, f := range []struct {
			name string
			v    *int64
		}{{"RssAnon:", &m.anon}, {"RssShmem:", &m.shmem}} {
			if rest, ok := strings.CutPrefix(l, f.name); ok {
				kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
				require.NoError(t, err)
				*f.v = kb << 10
			}
		}
	}
	return m
}

// TestRESPSetsAcrossDrains: go-redis clients keep setting and reading
// back their keys while tq serve's two storage units are drained in turn
// (each drain moving what was written to the unit, then the unit returned
// to service), then marked draining and returned to service for 2 s:
// no SET or GET fails, every GET returns what its client set last, and
// afterwards every key reads its last value through RESP and through the
// Go KV API. A SET racing a drain is written to the other unit by the
// controller (OneKey.Commit), or the general way: without that, SETs
// fail here as "lost".
func TestRESPSetsAcrossDrains(t *testing.T) {
	bin := tqBinary(t)
	p, tok := startRESP(t, bin, "--units", "2")
	addr := p.addr("tcp")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const writers, keysEach = 4, 16
	last := make([]map[string]string, writers)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var sets atomic.Int64
	errs := make(chan error, writers)
	for w := range writers {
		last[w] = map[string]string{}
		rc := redis.NewClient(&redis.Options{Addr: p.resp, Password: tok, PoolSize: 1, Protocol: 2})
		defer rc.Close()
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				key := fmt.Sprintf("w%d-k%d", w, i%keysEach)
				val := fmt.Sprintf("%d-%d-%s", w, i, strings.Repeat("x", i%300))
				if err := rc.Set(ctx, key, val, 0).Err(); err != nil {
					errs <- fmt.Errorf("SET %s (write %d): %w", key, i, err)
					return
				}
				sets.Add(1)
				last[w][key] = val
				got, err := rc.Get(ctx, key).Result()
				if err != nil || got != val {
					errs <- fmt.Errorf("GET %s (write %d) = %.20q, %v; want %.20q", key, i, got, err, val)
					return
				}
			}
		})
	}
	for _, unit := range []string{"1", "2"} {
		time.Sleep(100 * time.Millisecond) // writes land on both units
		out, err := runTQ(t, p, bin, "unit", "drain", "--controller", addr, "--wait", "--timeout", "30s", unit)
		require.NoError(t, err, "drain of unit %s: %s", unit, out)
		out, err = runTQ(t, p, bin, "unit", "undrain", "--controller", addr, unit)
		require.NoError(t, err, "undrain of unit %s: %s", unit, out)
	}
	// Then drains marked and lifted at once, many times over: a SET
	// whose unit is marked between its placement and its commit is
	// refused there, and must land anyway.
	m, err := client.DialMeta(ctx, addr, client.RemoteConfig{Token: tok})
	require.NoError(t, err)
	defer m.Close()
	marks := 0
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); marks++ {
		unit := engine.UnitID(1 + marks%2)
		_, err := m.DrainUnit(ctx, unit, true)
		require.NoError(t, err)
		_, err = m.DrainUnit(ctx, unit, false)
		require.NoError(t, err)
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("%d SETs across 2 drains and %d marked and lifted", sets.Load(), marks)
	require.Positive(t, sets.Load())

	rc := redis.NewClient(&redis.Options{Addr: p.resp, Password: tok, Protocol: 2})
	defer rc.Close()
	kv := kvapi.New(connectTo(t, p, addr))
	for w := range writers {
		for key, want := range last[w] {
			got, err := rc.Get(ctx, key).Result()
			require.NoError(t, err, key)
			assert.Equal(t, want, got, "RESP GET %s", key)
			b, err := kv.BatchGet(ctx, "default", []string{key}, "value")
			require.NoError(t, err, key)
			assert.Equal(t, want, string(b.Col("value").RowBytes(0)), "Go KV get %s", key)
			b.Release()
		}
	}
}
