package resp

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/embedded"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/internal/auth"
	"github.com/tqgo/tq/kvapi"
)

// endpoint is a RESP server over an embedded cluster.
type endpoint struct {
	addr string
	srv  *Server
	kv   *kvapi.KV
	e    *embedded.Cluster
}

// used is the bytes the cluster's units hold.
func (e *endpoint) used() int64 {
	var n int64
	for _, u := range e.e.Units {
		n += u.Stats().Used
	}
	return n
}

func newEndpoint(t testing.TB, cfg Config) *endpoint {
	t.Helper()
	return newEndpointWith(t, cfg, nil)
}

// newEndpointWith is newEndpoint with the cluster's config changed by
// change first.
func newEndpointWith(t testing.TB, cfg Config, change func(*embedded.Config)) *endpoint {
	t.Helper()
	ecfg := embedded.DefaultConfig()
	ecfg.Storage.Capacity = 256 << 20
	ecfg.Storage.SegmentSize = 64 << 20
	if change != nil {
		change(&ecfg)
	}
	e, err := embedded.New(ecfg)
	require.NoError(t, err)
	t.Cleanup(func() { e.Close() })
	srv, err := NewServer(e.Controller, e.Units, cfg)
	require.NoError(t, err)
	return &endpoint{addr: serve(t, srv), srv: srv, kv: kvapi.New(e.Client), e: e}
}

// serve serves srv on a loopback port until the test ends, and returns
// its address.
func serve(t testing.TB, srv *Server) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(l)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return l.Addr().String()
}

func (e *endpoint) client(t testing.TB, opt *redis.Options) *redis.Client {
	t.Helper()
	if opt == nil {
		opt = &redis.Options{}
	}
	opt.Addr = e.addr
	rc := redis.NewClient(opt)
	t.Cleanup(func() { rc.Close() })
	return rc
}

// raw dials the endpoint and returns a connection and a reader of its
// replies.
func (e *endpoint) raw(t *testing.T) (net.Conn, *replyReader) {
	t.Helper()
	nc, err := net.Dial("tcp", e.addr)
	require.NoError(t, err)
	t.Cleanup(func() { nc.Close() })
	return nc, &replyReader{r: newReader(nc, 1<<30)}
}

// replyReader reads one reply line (or bulk) at a time, for tests that
// speak the protocol by hand.
type replyReader struct{ r *reader }

func (rr *replyReader) line(t *testing.T) string {
	t.Helper()
	l, err := rr.r.line(1 << 20)
	require.NoError(t, err)
	return string(l)
}

func TestStringsAndKeys(t *testing.T) {
	ctx := context.Background()
	e := newEndpoint(t, Config{})
	rc := e.client(t, nil)

	require.Equal(t, "PONG", rc.Ping(ctx).Val())
	require.Equal(t, "hi", rc.Echo(ctx, "hi").Val())
	require.NoError(t, rc.Set(ctx, "a", "1", 0).Err())
	require.NoError(t, rc.Set(ctx, "a", "one", 0).Err(), "overwrite")
	require.NoError(t, rc.MSet(ctx, "b", "2", "c", "", "b", "two").Err())
	assert.Equal(t, "one", rc.Get(ctx, "a").Val())
	assert.Equal(t, redis.Nil, rc.Get(ctx, "nope").Err())
	assert.Equal(t, []any{"one", "two", "", nil, "one"}, rc.MGet(ctx, "a", "b", "c", "nope", "a").Val())
	assert.Equal(t, int64(3), rc.Exists(ctx, "a", "b", "nope", "a").Val())
	assert.Equal(t, int64(3), rc.DBSize(ctx).Val())
	assert.Equal(t, "string", rc.Type(ctx, "a").Val())
	assert.Equal(t, "none", rc.Type(ctx, "nope").Val())
	assert.ElementsMatch(t, []string{"a", "b", "c"}, rc.Keys(ctx, "*").Val())
	assert.Equal(t, []string{"b"}, rc.Keys(ctx, "b*").Val())

	assert.Equal(t, int64(2), rc.Del(ctx, "a", "nope", "c").Val())
	assert.Equal(t, int64(1), rc.Unlink(ctx, "b").Val())
	assert.Equal(t, int64(0), rc.DBSize(ctx).Val())

	err := rc.Do(ctx, "SET", "k", "v", "EX", "10").Err()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "EX")
	err = rc.Do(ctx, "NOSUCH", "x").Err()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "unknown command 'NOSUCH'")
	err = rc.Do(ctx, "GET").Err()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "wrong number of arguments for 'get'")
}

func TestScanReturnsEachKeyOnce(t *testing.T) {
	ctx := context.Background()
	e := newEndpoint(t, Config{})
	rc := e.client(t, nil)
	want := map[string]bool{}
	for i := range 250 {
		k := fmt.Sprintf("k%03d", i)
		want[k] = true
		require.NoError(t, rc.Set(ctx, k, i, 0).Err())
	}
	require.NoError(t, rc.HSet(ctx, "h", "f", "v").Err())
	seen := map[string]int{}
	var cursor uint64
	deleted := false
	for {
		keys, next, err := rc.Scan(ctx, cursor, "k*", 30).Result()
		require.NoError(t, err)
		for _, k := range keys {
			seen[k]++
		}
		if !deleted {
			// Keys cleared and created meanwhile do not disturb the
			// others.
			require.NoError(t, rc.Del(ctx, "k000", "k001").Err())
			require.NoError(t, rc.Set(ctx, "k999", "new", 0).Err())
			delete(want, "k001")
			deleted = true
		}
		if next == 0 {
			break
		}
		cursor = next
	}
	for k := range want {
		if k == "k000" {
			continue // returned before it was cleared
		}
		assert.Equal(t, 1, seen[k], "key %s", k)
	}
	keys, _, err := rc.ScanType(ctx, 0, "*", 1000, "hash").Result()
	require.NoError(t, err)
	assert.Equal(t, []string{"h"}, keys)
}

func TestHashes(t *testing.T) {
	ctx := context.Background()
	e := newEndpoint(t, Config{})
	rc := e.client(t, nil)
	assert.Equal(t, int64(2), rc.HSet(ctx, "s1", "prompt", "hello", "response", "world").Val())
	assert.Equal(t, int64(1), rc.HSet(ctx, "s1", "response", "there", "reward", "0.5").Val())
	assert.Equal(t, "there", rc.HGet(ctx, "s1", "response").Val())
	assert.Equal(t, redis.Nil, rc.HGet(ctx, "s1", "nope").Err())
	assert.Equal(t, redis.Nil, rc.HGet(ctx, "nokey", "prompt").Err())
	assert.Equal(t, []any{"hello", nil, "0.5", "hello"}, rc.HMGet(ctx, "s1", "prompt", "nope", "reward", "prompt").Val())
	assert.Equal(t, map[string]string{"prompt": "hello", "response": "there", "reward": "0.5"}, rc.HGetAll(ctx, "s1").Val())
	assert.Equal(t, map[string]string{}, rc.HGetAll(ctx, "nokey").Val())
	assert.ElementsMatch(t, []string{"prompt", "response", "reward"}, rc.HKeys(ctx, "s1").Val())
	assert.Equal(t, int64(3), rc.HLen(ctx, "s1").Val())
	assert.True(t, rc.HExists(ctx, "s1", "reward").Val())
	assert.False(t, rc.HExists(ctx, "s1", "value").Val())
	assert.Equal(t, "hash", rc.Type(ctx, "s1").Val())
	// A second key holding fewer fields: reads of both fall back to
	// per-key reads, and each answers what it holds.
	require.NoError(t, rc.HSet(ctx, "s2", "prompt", "p2").Err())
	assert.Equal(t, []any{"p2", nil}, rc.HMGet(ctx, "s2", "prompt", "response").Val())
	require.NoError(t, rc.HMSet(ctx, "s2", "response", "r2").Err())
	assert.Equal(t, map[string]string{"prompt": "p2", "response": "r2"}, rc.HGetAll(ctx, "s2").Val())

	// HDEL drops fields; the key keeps the others and its tags.
	require.NoError(t, rc.Do(ctx, "TQ.TAG", "s1", "status", "done").Err())
	assert.Equal(t, int64(1), rc.HDel(ctx, "s1", "reward", "nope", "reward").Val())
	assert.Equal(t, map[string]string{"prompt": "hello", "response": "there"}, rc.HGetAll(ctx, "s1").Val())
	assert.Equal(t, []any{"status", "done"}, rc.Do(ctx, "TQ.TAGS", "s1").Val())
	assert.Equal(t, int64(0), rc.HDel(ctx, "nokey", "prompt").Val())
	assert.Equal(t, int64(2), rc.HDel(ctx, "s1", "prompt", "response").Val())
	assert.Equal(t, int64(1), rc.Exists(ctx, "s1").Val(), "a key with no fields left keeps its tags")
	// The bytes dropped are freed: the unit's live bytes fall back.
	require.NoError(t, rc.Set(ctx, "big", strings.Repeat("x", 1<<20), 0).Err())
	used := e.used()
	assert.Equal(t, int64(1), rc.HDel(ctx, "big", "value").Val())
	assert.Less(t, e.used(), used-(1<<20)+1)
}

func TestPartitions(t *testing.T) {
	ctx := context.Background()
	e := newEndpoint(t, Config{Partition: "train"})
	rc := e.client(t, &redis.Options{PoolSize: 1})
	require.NoError(t, rc.Set(ctx, "x", "in-train", 0).Err())
	require.NoError(t, rc.Set(ctx, "{eval}x", "in-eval", 0).Err())
	assert.Equal(t, "in-eval", rc.Get(ctx, "{eval}x").Val())
	assert.Equal(t, "in-train", rc.Get(ctx, "x").Val())
	assert.Equal(t, "train", rc.Do(ctx, "TQ.PARTITION").Val())

	// SELECT names a partition for the connection; SELECT 0 is the
	// default one.
	require.NoError(t, rc.Do(ctx, "SELECT", "eval").Err())
	assert.Equal(t, "in-eval", rc.Get(ctx, "x").Val())
	assert.Equal(t, int64(1), rc.DBSize(ctx).Val())
	require.NoError(t, rc.FlushDB(ctx).Err())
	assert.Equal(t, redis.Nil, rc.Get(ctx, "x").Err())
	require.NoError(t, rc.Do(ctx, "SELECT", "0").Err())
	assert.Equal(t, "in-train", rc.Get(ctx, "x").Val())

	// go-redis's DB option sends SELECT n.
	rc2 := e.client(t, &redis.Options{DB: 3})
	require.NoError(t, rc2.Set(ctx, "x", "in-3", 0).Err())
	assert.Equal(t, "in-3", rc.Get(ctx, "{3}x").Val())

	err := rc.Do(ctx, "SELECT", "").Err()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "empty partition id")
	err = rc.MSet(ctx, "a", "1", "{eval}b", "2").Err()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "two partitions")
	assert.Equal(t, []any{"in-train", "in-3"}, rc.MGet(ctx, "x", "{3}x").Val())
	assert.ElementsMatch(t, []any{"train", "3"}, rc.Do(ctx, "TQ.PARTITIONS").Val())
}

func TestTags(t *testing.T) {
	ctx := context.Background()
	e := newEndpoint(t, Config{})
	rc := e.client(t, nil)
	require.NoError(t, rc.Do(ctx, "TQ.TAG", "s1", "status", "running", "step", "3").Err())
	assert.Equal(t, []any{"status", "running", "step", "3"}, rc.Do(ctx, "TQ.TAGS", "s1").Val())
	require.NoError(t, rc.Do(ctx, "TQ.TAG", "s1", "status", "finished").Err())
	assert.Equal(t, []any{"status", "finished", "step", "3"}, rc.Do(ctx, "TQ.TAGS", "s1").Val())
	assert.Equal(t, []any{}, rc.Do(ctx, "TQ.TAGS", "nope").Val())
	// Tags written through the Go API read back, non-strings as JSON.
	_, err := e.kv.Put(ctx, "default", "s2", nil, engine.Tags{"score": 0.25, "ok": true})
	require.NoError(t, err)
	assert.Equal(t, []any{"ok", "true", "score", "0.25"}, rc.Do(ctx, "TQ.TAGS", "s2").Val())
	assert.Equal(t, "hash", rc.Type(ctx, "s2").Val(), "a tag-only key")
}

// TestInterop checks bytes written through RESP read back bit-exact
// through the Go KV API and the other way round, dense fields as their
// little-endian bytes.
func TestInterop(t *testing.T) {
	ctx := context.Background()
	e := newEndpoint(t, Config{})
	rc := e.client(t, nil)
	blob := make([]byte, 300<<10)
	for i := range blob {
		blob[i] = byte(i * 7)
	}
	require.NoError(t, rc.Set(ctx, "bin", blob, 0).Err())
	require.NoError(t, rc.HSet(ctx, "bin", "zero", "\x00\r\n\x00").Err())
	b, err := e.kv.BatchGetCopy(ctx, "default", []string{"bin"}, "value", "zero")
	require.NoError(t, err)
	assert.True(t, bytes.Equal(blob, b.Col("value").RowBytes(0)))
	assert.Equal(t, "\x00\r\n\x00", b.Col("zero").String(0))

	ids, err := engine.DenseOf([]int64{-1, 2, 1 << 40}, 3)
	require.NoError(t, err)
	txt := engine.StringsOf([]string{"from go"})
	_, err = e.kv.Put(ctx, "default", "g", engine.MustBatch(engine.Field{Name: "ids", Col: ids}, engine.Field{Name: "txt", Col: txt}), nil)
	require.NoError(t, err)
	got, err := rc.HGet(ctx, "g", "ids").Bytes()
	require.NoError(t, err)
	want := binary.LittleEndian.AppendUint64(nil, uint64(0xffffffffffffffff))
	want = binary.LittleEndian.AppendUint64(want, 2)
	want = binary.LittleEndian.AppendUint64(want, 1<<40)
	assert.Equal(t, want, got)
	assert.Equal(t, "from go", rc.HGet(ctx, "g", "txt").Val())

	// A SET to a partition whose value field is dense is refused the same
	// way, on the fast path.
	one, err := engine.DenseOf([]int64{7})
	require.NoError(t, err)
	_, err = e.kv.Put(ctx, "dense", "k", engine.MustBatch(engine.Field{Name: "value", Col: one}), nil)
	require.NoError(t, err)
	err = rc.Set(ctx, "{dense}k2", "text", 0).Err()
	require.Error(t, err)
	assert.True(t, strings.HasPrefix(err.Error(), "WRONGTYPE"), err.Error())
	assert.Contains(t, err.Error(), "int64")
	assert.Equal(t, int64(0), rc.Exists(ctx, "{dense}k2").Val(), "a refused SET creates no key")
	got, err = rc.Get(ctx, "{dense}k").Bytes()
	require.NoError(t, err)
	assert.Equal(t, []byte{7, 0, 0, 0, 0, 0, 0, 0}, got)

	// A RESP write to a dense field is refused, naming its dtype, and
	// changes nothing.
	err = rc.HSet(ctx, "g", "ids", "oops", "txt", "new").Err()
	require.Error(t, err)
	assert.True(t, strings.HasPrefix(err.Error(), "WRONGTYPE"), err.Error())
	assert.Contains(t, err.Error(), "int64")
	assert.Equal(t, "from go", rc.HGet(ctx, "g", "txt").Val())
}

func TestAuth(t *testing.T) {
	ctx := context.Background()
	e := newEndpoint(t, Config{Token: "s3cret"})
	rc := e.client(t, nil)
	err := rc.Get(ctx, "x").Err()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "NOAUTH")
	assert.Equal(t, "PONG", rc.Ping(ctx).Val(), "PING is open, as in Redis")

	bad := e.client(t, &redis.Options{Password: "wrong"})
	err = bad.Get(ctx, "x").Err()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "WRONGPASS")

	// go-redis asks HELLO 3 with AUTH, hears NOPROTO, and goes on with
	// AUTH in RESP2.
	good := e.client(t, &redis.Options{Password: "s3cret"})
	require.NoError(t, good.Set(ctx, "x", "y", 0).Err())
	assert.Equal(t, "y", good.Get(ctx, "x").Val())
	user := e.client(t, &redis.Options{Username: "default", Password: "s3cret", Protocol: 2})
	assert.Equal(t, "y", user.Get(ctx, "x").Val())

	// Before AUTH, a command may not be large.
	nc, rr := e.raw(t)
	fmt.Fprintf(nc, "*2\r\n$4\r\nAUTH\r\n$%d\r\n", 1<<20)
	line := rr.line(t)
	assert.Contains(t, line, "exceeds the limit of 4096 before AUTH")
	_, err = rr.r.line(100)
	assert.Error(t, err, "the connection is closed")
}

// TestAuthWithALongToken: a token longer than 4 KiB is refused where it
// is read (tq serve's $TQ_TOKEN and --token, as a token file; and here):
// an argument before AUTH may be as long as the token, so a token of any
// length let a peer that never authenticates make the endpoint buffer as
// much (8 arguments of it a connection). A token at the bound is sent by
// AUTH and HELLO … AUTH, by go-redis and by hand, on a loop and on a
// goroutine; an argument longer than it is refused.
func TestAuthWithALongToken(t *testing.T) {
	_, err := NewServer(nil, nil, Config{Token: strings.Repeat("t", auth.MaxToken+1)})
	require.ErrorIs(t, err, engine.ErrInvalid)
	assert.Contains(t, err.Error(), "Token of 4097 bytes, longer than the 4096 a token may have")

	ctx := context.Background()
	token := strings.Repeat("t", auth.MaxToken)
	for _, served := range []struct {
		name string
		cfg  Config
	}{{"loop", Config{Token: token}}, {"goroutine", Config{Token: token, Loops: -1}}} {
		t.Run(served.name, func(t *testing.T) {
			e := newEndpoint(t, served.cfg)
			rc := e.client(t, &redis.Options{Password: token})
			require.NoError(t, rc.Set(ctx, "x", "y", 0).Err())
			assert.Equal(t, "y", rc.Get(ctx, "x").Val())
			bad := e.client(t, &redis.Options{Password: strings.Repeat("u", auth.MaxToken)})
			err := bad.Get(ctx, "x").Err()
			require.Error(t, err)
			assert.Contains(t, err.Error(), "WRONGPASS")

			c, err := dialRaw(e.addr)
			require.NoError(t, err)
			defer c.Close()
			got, err := c.do("HELLO", "2", "AUTH", "default", token)
			require.NoError(t, err)
			assert.True(t, strings.HasPrefix(got, "*"), "HELLO … AUTH: %.40q", got)
			got, err = c.do("GET", "x")
			require.NoError(t, err)
			assert.Equal(t, "$1\r\ny\r\n", got)

			nc, rr := e.raw(t)
			fmt.Fprintf(nc, "*2\r\n$4\r\nAUTH\r\n$%d\r\n", len(token)+1)
			assert.Equal(t, "-ERR Protocol error: argument of 4097 bytes exceeds the limit of 4096 before AUTH", rr.line(t))
		})
	}
}

// TestInlineAuthOfATokenAtTheBound: a token as long as an argument may
// be before AUTH (4 KiB), typed inline as "AUTH <token>" or "HELLO 3 AUTH
// default <token>", fits the line before AUTH (before, the line had the
// argument's bound, so tokens from 4092 bytes up could not be typed).
func TestInlineAuthOfATokenAtTheBound(t *testing.T) {
	token := strings.Repeat("t", maxUnauthBulk)
	for _, served := range []struct {
		name string
		cfg  Config
	}{{"loop", Config{Token: token}}, {"goroutine", Config{Token: token, Loops: -1}}} {
		t.Run(served.name, func(t *testing.T) {
			e := newEndpoint(t, served.cfg)
			nc, rr := e.raw(t)
			fmt.Fprintf(nc, "AUTH %s\r\nPING\r\n", token)
			assert.Equal(t, "+OK", rr.line(t))
			assert.Equal(t, "+PONG", rr.line(t))
			nc, rr = e.raw(t)
			fmt.Fprintf(nc, "HELLO 2 AUTH default \"%s\"\r\n", token)
			assert.True(t, strings.HasPrefix(rr.line(t), "*"), "HELLO 2 AUTH default <token>")
		})
	}
}

// TestBoundsBeforeAuthAtAndOnePast: before AUTH a command of 8
// arguments of 4 KiB each is read (and answered NOAUTH or its error);
// one of 9, or an argument of 4097 bytes, is answered a protocol error
// naming the bound and closed, on a loop and on a goroutine.
func TestBoundsBeforeAuthAtAndOnePast(t *testing.T) {
	for _, served := range []struct {
		name string
		cfg  Config
	}{{"loop", Config{Token: "s3cret"}}, {"goroutine", Config{Token: "s3cret", Loops: -1}}} {
		t.Run(served.name, func(t *testing.T) {
			e := newEndpoint(t, served.cfg)
			at := slices.Repeat([]string{strings.Repeat("a", maxUnauthBulk)}, maxUnauthArgs-1)
			for _, tc := range []struct {
				args   []string
				want   string
				closed bool
			}{
				{append([]string{"GET"}, at...), "-ERR wrong number of arguments for 'get' command", false},
				{append([]string{"MGET"}, at...), "-NOAUTH Authentication required.", false},
				{append([]string{"MGET", "k"}, at...), "-ERR Protocol error: command of 9 arguments exceeds the limit of 8 before AUTH", true},
				{[]string{"AUTH", strings.Repeat("a", maxUnauthBulk+1)}, "-ERR Protocol error: argument of 4097 bytes exceeds the limit of 4096 before AUTH", true},
			} {
				nc, rr := e.raw(t)
				io.WriteString(nc, cmdline(tc.args...))
				assert.Equal(t, tc.want, rr.line(t), "%d arguments", len(tc.args))
				if tc.closed {
					_, err := rr.r.line(100)
					assert.Error(t, err, "closed after")
				} else {
					io.WriteString(nc, cmdline("PING"))
					assert.Equal(t, "+PONG", rr.line(t), "the connection goes on")
				}
			}
		})
	}
}

// TestAuthFailuresClose: a connection whose third AUTH (or HELLO … AUTH)
// fails is answered so and closed, on a loop and on its own goroutine,
// so that one connection cannot try tokens for its whole 10 s; a client
// that mistyped authenticates after, and one that does not is unaffected.
func TestAuthFailuresClose(t *testing.T) {
	for _, loops := range []int{0, -1} {
		t.Run(fmt.Sprintf("Loops=%d", loops), func(t *testing.T) {
			ctx := context.Background()
			e := newEndpoint(t, Config{Token: "s3cret", Loops: loops})

			nc, rr := e.raw(t)
			for i := range maxAuthFailures - 1 {
				io.WriteString(nc, cmdline("AUTH", "wrong"))
				assert.Equal(t, "-"+errWrongPass, rr.line(t), "failure %d", i+1)
			}
			io.WriteString(nc, cmdline("HELLO", "2", "AUTH", "default", "wrong"))
			last := rr.line(t)
			assert.True(t, strings.HasPrefix(last, "-WRONGPASS "), last)
			assert.Contains(t, last, "too many failed AUTH attempts (3); closing")
			io.WriteString(nc, cmdline("AUTH", "s3cret")) // may fail: closed
			nc.SetReadDeadline(time.Now().Add(10 * time.Second))
			l, err := rr.r.line(1 << 20)
			require.Error(t, err, "the connection is closed after its third failure, yet answered %q", l)

			// Pipelined: never more than three answers, the last that it
			// closes (fewer may reach the client if the close resets).
			nc, rr = e.raw(t)
			io.WriteString(nc, strings.Repeat(cmdline("AUTH", "wrong"), 4)+cmdline("AUTH", "s3cret"))
			nc.SetReadDeadline(time.Now().Add(10 * time.Second))
			var got []string
			for {
				l, err := rr.r.line(1 << 20)
				if err != nil {
					break
				}
				got = append(got, string(l))
			}
			require.LessOrEqual(t, len(got), maxAuthFailures, "%q", got)
			for i, l := range got {
				if i < maxAuthFailures-1 {
					assert.Equal(t, "-"+errWrongPass, l)
				} else {
					assert.Contains(t, l, "too many failed AUTH attempts")
				}
			}

			// Mistyped twice, then right: authenticated.
			nc, rr = e.raw(t)
			io.WriteString(nc, cmdline("AUTH", "wrong")+cmdline("AUTH", "default", "wrong")+cmdline("AUTH", "s3cret")+cmdline("SET", "a", "1"))
			for _, want := range []string{"-" + errWrongPass, "-" + errWrongPass, "+OK", "+OK"} {
				assert.Equal(t, want, rr.line(t))
			}

			// A client with the token, and one with a wrong one, as
			// often as they connect.
			for range 5 {
				good := e.client(t, &redis.Options{Password: "s3cret"})
				require.NoError(t, good.Set(ctx, "x", "y", 0).Err())
				bad := e.client(t, &redis.Options{Password: "wrong"})
				err := bad.Get(ctx, "x").Err()
				require.Error(t, err)
				assert.Contains(t, err.Error(), "WRONGPASS")
			}
		})
	}
}

func TestHostileClients(t *testing.T) {
	e := newEndpoint(t, Config{MaxValue: 1 << 20, CommandTimeout: 300 * time.Millisecond, AuthTimeout: 300 * time.Millisecond, MaxClients: 8})

	t.Run("oversized value", func(t *testing.T) {
		nc, rr := e.raw(t)
		fmt.Fprintf(nc, "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n", 2<<20)
		assert.Equal(t, "-ERR Protocol error: argument of 2097152 bytes exceeds the limit of 1048576", rr.line(t))
	})
	t.Run("oversized value sent whole", func(t *testing.T) {
		// A client that sends the whole value before it reads (redis-py
		// does) is not reset under its write: it reads the reason.
		nc, rr := e.raw(t)
		sendWhole(t, nc, "", 16<<20)
		assert.Equal(t, "-ERR Protocol error: argument of 16777216 bytes exceeds the limit of 1048576", rr.line(t))
		_, err := rr.r.line(100)
		assert.ErrorIs(t, err, io.ErrUnexpectedEOF, "then the end of the connection (no reset)")
	})
	t.Run("too many arguments", func(t *testing.T) {
		nc, rr := e.raw(t)
		fmt.Fprintf(nc, "*%d\r\n", MaxArgs+1)
		assert.Contains(t, rr.line(t), "command of 1048577 arguments exceeds the limit of 1048576")
	})
	t.Run("bad framing", func(t *testing.T) {
		for _, in := range []string{"*1\r\n+OK\r\n", "*x\r\n", "*1\r\n$-5\r\n", "*1\r\n$3\r\nGETxx", "\"unbalanced\r\n", strings.Repeat("a", maxInline+10) + "\r\n"} {
			nc, rr := e.raw(t)
			io.WriteString(nc, in)
			assert.Contains(t, rr.line(t), "-ERR Protocol error", "input %.20q", in)
		}
	})
	t.Run("half-sent command", func(t *testing.T) {
		nc, rr := e.raw(t)
		fmt.Fprintf(nc, "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100\r\nonly part")
		start := time.Now()
		_, err := rr.r.line(100)
		assert.Error(t, err, "closed after the command timeout")
		assert.Less(t, time.Since(start), 5*time.Second)
	})
	t.Run("idle before auth is fine without a token", func(t *testing.T) {
		nc, rr := e.raw(t)
		time.Sleep(500 * time.Millisecond)
		io.WriteString(nc, "PING\r\n")
		assert.Equal(t, "+PONG", rr.line(t))
	})
	t.Run("inline commands", func(t *testing.T) {
		nc, rr := e.raw(t)
		io.WriteString(nc, "SET \"a b\" 'c d'\r\nGET \"a b\"\r\nECHO \"\\x41\\n\"\r\n")
		assert.Equal(t, "+OK", rr.line(t))
		assert.Equal(t, "$3", rr.line(t))
		assert.Equal(t, "c d", rr.line(t))
		assert.Equal(t, "$2", rr.line(t))
		assert.Equal(t, "A", rr.line(t))
	})
	t.Run("max clients", func(t *testing.T) {
		// The connections of the subtests before are closed; the server
		// notices each on its own goroutine.
		require.Eventually(t, func() bool {
			e.srv.mu.Lock()
			defer e.srv.mu.Unlock()
			return len(e.srv.conns) == 0
		}, 10*time.Second, 5*time.Millisecond)
		var conns []net.Conn
		for range 8 {
			nc, rr := e.raw(t)
			io.WriteString(nc, "PING\r\n")
			require.Equal(t, "+PONG", rr.line(t))
			conns = append(conns, nc)
		}
		_, rr := e.raw(t)
		assert.Equal(t, "-ERR max number of clients reached", rr.line(t))
		// One that sends before it reads (a pipelined AUTH and more) gets
		// the answer too, not a reset under its write.
		nc, rr := e.raw(t)
		sendWhole(t, nc, "AUTH secret\r\n", 8<<20)
		assert.Equal(t, "-ERR max number of clients reached", rr.line(t))
		for _, c := range conns {
			c.Close()
		}
	})
}

// sendWhole writes before, then a SET of a size-byte value, as a client
// that sends a whole command before it reads does: the write must go
// through (the server reads what it refuses rather than resetting the
// connection under it), within 10 s.
func sendWhole(t *testing.T, nc net.Conn, before string, size int) {
	t.Helper()
	wrote := make(chan error, 1)
	go func() {
		_, err := fmt.Fprintf(nc, "%s*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n%s\r\n", before, size, bytes.Repeat([]byte{'v'}, size))
		wrote <- err
	}()
	select {
	case err := <-wrote:
		require.NoError(t, err, "the write must not meet a reset")
	case <-time.After(10 * time.Second):
		t.Fatal("the write did not end in 10 s")
	}
}

func TestUnauthenticatedIdleIsClosed(t *testing.T) {
	e := newEndpoint(t, Config{Token: "t", AuthTimeout: 200 * time.Millisecond})
	_, rr := e.raw(t)
	start := time.Now()
	_, err := rr.r.line(100)
	require.Error(t, err)
	assert.Less(t, time.Since(start), 5*time.Second)
	assert.False(t, errors.Is(err, io.ErrShortBuffer))
}

// A client that has not authenticated is closed at AuthTimeout even in
// the middle of a command: starting one must not buy it the longer
// CommandTimeout to finish it, and a command past AuthTimeout is not
// served.
func TestUnauthenticatedMidCommandIsClosed(t *testing.T) {
	for _, loops := range []int{-1, 0} {
		t.Run(fmt.Sprintf("loops=%d", loops), func(t *testing.T) {
			e := newEndpoint(t, Config{Token: "t", AuthTimeout: 200 * time.Millisecond, CommandTimeout: 10 * time.Second, Loops: loops})
			nc, rr := e.raw(t)
			start := time.Now()
			io.WriteString(nc, "*1\r\n") // a command begun, and left unfinished
			time.Sleep(time.Second)
			io.WriteString(nc, "$4\r\nPING\r\n")
			l, err := rr.r.line(100)
			require.Error(t, err, "a PING finished past AuthTimeout was answered %q", l)
			assert.Less(t, time.Since(start), 5*time.Second)
		})
	}
	t.Run("authenticated in time", func(t *testing.T) {
		// An AUTH that arrives in parts, with the next command begun
		// behind it: that command has CommandTimeout, not what was left
		// of AuthTimeout.
		e := newEndpoint(t, Config{Token: "t", AuthTimeout: 300 * time.Millisecond, CommandTimeout: 10 * time.Second, Loops: -1})
		nc, rr := e.raw(t)
		io.WriteString(nc, "*2\r\n$4\r\nAUTH\r\n")
		time.Sleep(50 * time.Millisecond)
		io.WriteString(nc, "$1\r\nt\r\n*1\r\n")
		assert.Equal(t, "+OK", rr.line(t))
		time.Sleep(time.Second) // past AuthTimeout
		io.WriteString(nc, "$4\r\nPING\r\n")
		assert.Equal(t, "+PONG", rr.line(t))
	})
}

// A client that streams commands (redis-cli --pipe, a bulk load), each
// cut across the server's reads, gives each command CommandTimeout for
// its rest, not the stream as a whole: every read then finds a command
// begun, and the deadline the first one armed must not be kept for
// those after it.
func TestStreamedCommandsEachGetCommandTimeout(t *testing.T) {
	for _, loops := range []int{-1, 0} {
		t.Run(fmt.Sprintf("loops=%d", loops), func(t *testing.T) {
			e := newEndpoint(t, Config{CommandTimeout: 1500 * time.Millisecond, Loops: loops})
			nc, rr := e.raw(t)
			const n = 40
			var stream []byte
			for i := range n {
				stream = fmt.Appendf(stream, "*3\r\n$3\r\nSET\r\n$4\r\nk%03d\r\n$1\r\nv\r\n", i)
			}
			// Writes that each end in the middle of a command, 50 ms
			// apart: each command is whole within 50 ms, the stream
			// takes 2 s, past CommandTimeout (30 times a command's
			// time: a loaded machine's late wake-ups, even of 300 ms
			// under a load of 19 on 2 cores, stay well inside it).
			size := len(stream) / n
			start := time.Now()
			for at, end := 0, size/2; at < len(stream); at, end = end, min(end+size, len(stream)) {
				_, err := nc.Write(stream[at:end])
				require.NoError(t, err, "%v into the stream", time.Since(start))
				time.Sleep(50 * time.Millisecond)
			}
			for i := range n {
				l, err := rr.r.line(100)
				require.NoError(t, err, "reply %d of %d: the connection was closed %v into a stream of commands each whole within 50 ms", i+1, n, time.Since(start))
				require.Equal(t, "+OK", string(l), "reply %d", i+1)
			}
		})
	}
}
func TestPipelineAndLargeValues(t *testing.T) {
	ctx := context.Background()
	e := newEndpoint(t, Config{})
	rc := e.client(t, nil)
	pipe := rc.Pipeline()
	for i := range 500 {
		pipe.Set(ctx, fmt.Sprint("p", i), i, 0)
	}
	gets := make([]*redis.StringCmd, 500)
	for i := range gets {
		gets[i] = pipe.Get(ctx, fmt.Sprint("p", i))
	}
	_, err := pipe.Exec(ctx)
	require.NoError(t, err)
	for i, g := range gets {
		assert.Equal(t, fmt.Sprint(i), g.Val())
	}
	big := bytes.Repeat([]byte("0123456789abcdef"), 4<<20) // 64 MiB
	big[12345] = 0
	require.NoError(t, rc.Set(ctx, "big", big, 0).Err())
	got, err := rc.Get(ctx, "big").Bytes()
	require.NoError(t, err)
	assert.True(t, bytes.Equal(big, got))
}

// TestTagCommands drives the KV API's tag operations through RESP: a
// status machine with compare-and-set, tag removal, a filtered listing
// and the change feed.
func TestTagCommands(t *testing.T) {
	ctx := context.Background()
	e := newEndpoint(t, Config{})
	rc := e.client(t, &redis.Options{PoolSize: 1})
	for _, k := range []string{"s1", "s2", "s3"} {
		require.NoError(t, rc.Do(ctx, "TQ.TAG", k, "status", "running").Err())
	}
	// Compare-and-set: only one of two claims wins.
	assert.Equal(t, []any{int64(1), "finished"}, rc.Do(ctx, "TQ.TAGCAS", "s1", "status", "OLD", "running", "NEW", "finished").Val())
	assert.Equal(t, []any{int64(0), "finished"}, rc.Do(ctx, "TQ.TAGCAS", "s1", "status", "OLD", "running", "NEW", "failed").Val())
	assert.Equal(t, []any{int64(1), "1"}, rc.Do(ctx, "TQ.TAGCAS", "s2", "owner", "ABSENT", "NEW", "1").Val())
	assert.Equal(t, []any{int64(1), "2"}, rc.Do(ctx, "TQ.TAGCAS", "s2", "n", "ABSENT", "NEWJSON", "2").Val(), "a number, shown as JSON")
	assert.Equal(t, []any{int64(1), nil}, rc.Do(ctx, "TQ.TAGCAS", "s2", "n", "OLDJSON", "2", "DELETE").Val())
	err := rc.Do(ctx, "TQ.TAGCAS", "s2", "n", "NEW", "x").Err()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "needs the old value")
	// JSON numbers as the Go API keeps them: an integer past a float64's
	// 53 bits (a timestamp in nanoseconds) stays exact and matches.
	assert.Equal(t, []any{int64(1), "1700000000123456789"}, rc.Do(ctx, "TQ.TAGCAS", "s3", "ts", "ABSENT", "NEWJSON", "1700000000123456789").Val())
	assert.Equal(t, []any{int64(1), "1700000000123456790"}, rc.Do(ctx, "TQ.TAGCAS", "s3", "ts", "OLDJSON", "1700000000123456789", "NEWJSON", "1700000000123456790").Val())
	all, err := e.kv.List(ctx, "default")
	require.NoError(t, err)
	assert.Equal(t, int64(1700000000123456790), all["default"][2].Tags["ts"])
	for _, bad := range []string{"", "1]", "1e400", "{", "12345678901234567890"} {
		err := rc.Do(ctx, "TQ.TAGCAS", "s3", "ts", "ABSENT", "NEWJSON", bad).Err()
		require.Error(t, err, "%q", bad)
		assert.Contains(t, err.Error(), "is not JSON", "%q", bad)
	}
	// Each side once: which of two old values was meant is not for the
	// server to guess (the last one won).
	for _, args := range [][]any{
		{"OLD", "a", "OLD", "b", "NEW", "c"}, {"ABSENT", "OLDJSON", "1", "NEW", "c"},
		{"OLD", "a", "NEW", "b", "DELETE"}, {"ABSENT", "NEWJSON", "1", "NEW", "c"},
	} {
		err := rc.Do(ctx, append([]any{"TQ.TAGCAS", "s3", "ts"}, args...)...).Err()
		require.Error(t, err, "%v", args)
		assert.Contains(t, err.Error(), "value is given already", "%v", args)
	}
	assert.Equal(t, []any{int64(0), "1700000000123456790"}, rc.Do(ctx, "TQ.TAGCAS", "s3", "ts", "OLD", "b", "NEW", "c").Val(), "nothing was set")
	require.NoError(t, rc.Do(ctx, "TQ.TAGDEL", "s3", "ts").Err())

	// The filter runs in the controller.
	list := rc.Do(ctx, "TQ.LIST", "EQ", "status", "running").Val().([]any)
	require.Len(t, list, 2)
	assert.Equal(t, "s2", list[0].([]any)[0])
	assert.Equal(t, []any{"owner", "1", "status", "running"}, list[0].([]any)[1])
	assert.Len(t, rc.Do(ctx, "TQ.LIST", "IN", "status", "2", "finished", "failed").Val(), 1)
	assert.Len(t, rc.Do(ctx, "TQ.LIST", "EXISTS", "owner", "EQ", "status", "running").Val(), 1)
	assert.Len(t, rc.Do(ctx, "TQ.LIST", "ABSENT", "owner").Val(), 2)
	assert.Len(t, rc.Do(ctx, "TQ.LIST").Val(), 3)
	err = rc.Do(ctx, "TQ.LIST", "LIKE", "status", "r*").Err()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "want EQ, IN, EXISTS or ABSENT")
	// A condition cut short names what it lacks.
	for _, tc := range []struct {
		args []any
		want string
	}{
		{[]any{"EQ", "status"}, "ERR TQ.LIST EQ needs a tag name and a value"},
		{[]any{"IN"}, "ERR TQ.LIST IN needs a tag name, a count and that many values"},
		{[]any{"EQ", "status", "running", "EXISTS"}, "ERR TQ.LIST EXISTS needs a tag name"},
		{[]any{"absent"}, "ERR TQ.LIST ABSENT needs a tag name"},
	} {
		err := rc.Do(ctx, append([]any{"TQ.LIST"}, tc.args...)...).Err()
		require.Error(t, err, "%q", tc.args)
		assert.Equal(t, tc.want, err.Error(), "%q", tc.args)
	}

	assert.Equal(t, int64(1), rc.Do(ctx, "TQ.TAGDEL", "s2", "owner", "nope").Val())
	assert.Equal(t, int64(0), rc.Do(ctx, "TQ.TAGDEL", "nokey", "owner").Val())
	assert.Equal(t, []any{"status", "running"}, rc.Do(ctx, "TQ.TAGS", "s2").Val())

	// The change feed: everything from the start, then only what changed.
	first := rc.Do(ctx, "TQ.CHANGES", "0").Val().([]any)
	require.Len(t, first, 4)
	assert.Len(t, first[3], 3)
	cursor := first[0].(string)
	err = rc.Do(ctx, "TQ.CHANGES", cursor, "TIMEOUT", "300001").Err()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "up to 300000")
	empty := rc.Do(ctx, "TQ.CHANGES", cursor, "TIMEOUT", "50").Val().([]any)
	assert.Equal(t, cursor, empty[0])
	assert.Empty(t, empty[3])
	go func() {
		time.Sleep(100 * time.Millisecond)
		e.kv.Put(ctx, "default", "s3", nil, engine.Tags{"status": "finished"})
		e.kv.Clear(ctx, "default", []string{"s1"})
	}()
	var got []any
	for len(got) < 2 {
		next := rc.Do(ctx, "TQ.CHANGES", cursor, "TIMEOUT", "5000").Val().([]any)
		got = append(got, next[3].([]any)...)
		cursor = next[0].(string)
	}
	assert.Equal(t, []any{"s3", int64(0), []any{"status", "finished"}}, got[0])
	assert.Equal(t, "s1", got[1].([]any)[0])
	assert.Equal(t, int64(1), got[1].([]any)[1], "s1 was cleared")
}

// TestReplyBeforeTheRestArrives: the reply to a command goes out even
// while the next command is only partly sent (a client may wait for it
// before sending the rest).
func TestReplyBeforeTheRestArrives(t *testing.T) {
	e := newEndpoint(t, Config{})
	nc, rr := e.raw(t)
	io.WriteString(nc, "*1\r\n$4\r\nPING\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nval")
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	assert.Equal(t, "+PONG", rr.line(t))
	io.WriteString(nc, "ue\r\n")
	assert.Equal(t, "+OK", rr.line(t))
}
