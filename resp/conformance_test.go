package resp

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// startRedis starts redis-server on a free loopback port with persistence
// off and returns its address; the server is killed in t's cleanup. It
// skips t when redis-server is not installed.
func startRedis(t *testing.T, args ...string) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skipf("redis-server is not installed (apt-get install redis-server): %v", err)
	}
	// redis-server has no --port 0: take a free port from the kernel and
	// hand it over (another process could grab it in between; then the
	// wait below fails loudly).
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	l.Close()
	dir := t.TempDir()
	cmd := exec.Command(bin, "--bind", "127.0.0.1", "--port", port,
		"--save", "", "--appendonly", "no", "--daemonize", "no",
		"--dir", dir, "--logfile", filepath.Join(dir, "redis.log"))
	cmd.Args = append(cmd.Args, args...)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	addr := net.JoinHostPort("127.0.0.1", port)
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := dialRaw(addr)
		if err == nil {
			var reply string
			reply, err = c.do("PING")
			c.Close()
			// PING answers NOAUTH with --requirepass: it still answers.
			if err == nil && (reply == "+PONG\r\n" || strings.HasPrefix(reply, "-NOAUTH")) {
				return addr
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis-server on %s does not answer: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// rawConn sends commands and reads each whole reply as the bytes sent.
type rawConn struct {
	net.Conn
	r *bufio.Reader
}

func dialRaw(addr string) (*rawConn, error) {
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	return &rawConn{Conn: nc, r: bufio.NewReader(nc)}, nil
}

// do sends args as a RESP array and returns the reply's bytes, nested
// arrays included.
func (c *rawConn) do(args ...string) (string, error) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second)) // a safety limit only
	if _, err := c.Write(b.Bytes()); err != nil {
		return "", err
	}
	var out strings.Builder
	err := c.reply(&out)
	return out.String(), err
}

func (c *rawConn) reply(out *strings.Builder) error {
	l, err := c.r.ReadString('\n')
	if err != nil {
		return err
	}
	out.WriteString(l)
	if len(l) < 3 {
		return fmt.Errorf("short reply line %q", l)
	}
	switch l[0] {
	case '$':
		n, err := strconv.Atoi(l[1 : len(l)-2])
		if err != nil || n < 0 {
			return err
		}
		b := make([]byte, n+2)
		if _, err := io.ReadFull(c.r, b); err != nil {
			return err
		}
		out.Write(b)
	case '*':
		n, err := strconv.Atoi(l[1 : len(l)-2])
		if err != nil {
			return err
		}
		for range n {
			if err := c.reply(out); err != nil {
				return err
			}
		}
	}
	return nil
}

// TestErrorsMatchRedis sends the same commands to TQ's endpoint and to a
// real redis-server (skipped when it is not installed) and compares the
// replies byte for byte: wrong arity, unknown commands, subcommands and
// options, non-integers and counts out of range, before and after AUTH.
// Where TQ differs on purpose (wire/resp.md) the case is left out.
func TestErrorsMatchRedis(t *testing.T) {
	const token = "conformance-token"
	redisAddr := startRedis(t, "--requirepass", token)
	e := newEndpoint(t, Config{Token: token})
	dial := func(t *testing.T, addr string) *rawConn {
		c, err := dialRaw(addr)
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		return c
	}
	// compareAt sends each command to both servers, tq and rd, after AUTH
	// when authed, and compares the replies.
	compareAt := func(t *testing.T, tq, rd *rawConn, authed bool, cases [][]string) {
		if authed {
			cases = slices.Concat([][]string{{"AUTH", token}}, cases)
		}
		for _, args := range cases {
			want, err := rd.do(args...)
			require.NoError(t, err, "redis-server: %q", args)
			got, err := tq.do(args...)
			require.NoError(t, err, "tq: %q", args)
			if got != want {
				t.Errorf("%q: got %q, want %q (redis-server's)", args, got, want)
			}
		}
	}
	// compare is compareAt on new connections to the two servers, which
	// hold no key: a walk or a read answers alike.
	compare := func(t *testing.T, authed bool, cases [][]string) {
		compareAt(t, dial(t, e.addr), dial(t, redisAddr), authed, cases)
	}
	t.Run("scan", func(t *testing.T) { compare(t, true, scanCases) })
	// Before the subtests that leave keys: SCAN lists every key.
	t.Run("scan TYPE", func(t *testing.T) { compare(t, true, scanTypeCases) })
	t.Run("before AUTH", func(t *testing.T) { compare(t, false, beforeAuthCases) })
	t.Run("subcommands", func(t *testing.T) { compare(t, true, subcommandCases) })
	t.Run("subcommands before AUTH", func(t *testing.T) { compare(t, false, subcommandCases[:4]) })
	t.Run("without a password", func(t *testing.T) {
		// Both let every client in; AUTH says no password is set.
		open := newEndpoint(t, Config{})
		compareAt(t, dial(t, open.addr), dial(t, startRedis(t)), false, noPasswordCases)
	})
	t.Run("CONFIG GET", func(t *testing.T) { compare(t, true, configCases) })
	t.Run("arity", func(t *testing.T) { compare(t, true, arityCases) })
	t.Run("options", func(t *testing.T) { compare(t, true, optionCases) })
	t.Run("HELLO", func(t *testing.T) { compare(t, true, helloCases) })
	t.Run("MULTI", func(t *testing.T) { compare(t, true, multiCases) })
	t.Run("HELLO before AUTH", func(t *testing.T) {
		compare(t, false, slices.Concat(helloCases, [][]string{
			{"HELLO"},
			{"HELLO", "2"},
			{"HELLO", "2", "AUTH", "default", "wrong"},
			{"HELLO", "2", "AUTH", "someone", token},
			{"HELLO", "2", "SETNAME", "a b"},
			// Redis 7.0 acts on each option as it reads it: the AUTH
			// before a bad option has authenticated.
			{"HELLO", "2", "AUTH", "default", token, "NOSUCH"},
			{"GET", "k"},
		}))
	})
}

// noPasswordCases are AUTH and CLIENT with no password set.
var noPasswordCases = [][]string{
	{"AUTH", "x"},
	{"AUTH", "default", "x"},
	{"AUTH", "someone", "x"},
	{"AUTH", "a", "b", "c"},
	{"CLIENT", "SETNAME", "n1"},
	{"CLIENT", "GETNAME"},
	{"CLIENT", "SETNAME", ""},
	{"CLIENT", "GETNAME"},
	{"GET", "k"},
}

// configCases are CONFIG GET of the parameters TQ answers: each once,
// named as asked when not a glob. (Redis orders several by a hash table's
// walk; a client reads them as a map.)
var configCases = [][]string{
	{"CONFIG", "GET", "save"},
	{"CONFIG", "GET", "SAVE"},
	{"CONFIG", "GET", "save", "SAVE"},
	{"CONFIG", "GET", "sav*"},
	{"CONFIG", "GET", "SAV?"},
	{"CONFIG", "GET", "SAV*", "SAVE"},
	{"CONFIG", "GET", "SAVE", "SAV*"},
	{"CONFIG", "GET", "appendonl[xy]", "nosuch"},
	{"CONFIG", "GET", "nosuch"},
}

// arityCases give each command TQ serves too few or too many arguments.
var arityCases = [][]string{
	{"PING", "a", "b"},
	{"ECHO"},
	{"ECHO", "a", "b"},
	{"AUTH"},
	{"AUTH", "a", "b", "c"},
	{"SELECT"},
	{"SELECT", "a", "b"},
	{"DBSIZE", "x"},
	{"SET"},
	{"SET", "k"},
	{"GET"},
	{"GET", "a", "b"},
	{"MSET"},
	{"MSET", "k"},
	{"MSET", "k", "v", "k2"},
	{"MGET"},
	{"DEL"},
	{"UNLINK"},
	{"EXISTS"},
	{"TYPE"},
	{"TYPE", "a", "b"},
	{"KEYS"},
	{"KEYS", "a", "b"},
	{"SCAN"},
	{"HSET", "k"},
	{"HSET", "k", "f"},
	{"HSET", "k", "f", "v", "f2"},
	{"HMSET", "k", "f"},
	{"HMSET", "k", "f", "v", "f2"},
	{"HGET", "k"},
	{"HGET", "k", "f", "x"},
	{"HMGET", "k"},
	{"HGETALL"},
	{"HGETALL", "k", "x"},
	{"HDEL", "k"},
	{"HKEYS"},
	{"HKEYS", "k", "x"},
	{"HLEN"},
	{"HLEN", "k", "x"},
	{"HEXISTS", "k"},
	{"HEXISTS", "k", "f", "x"},
	{"FLUSHDB", "ASYNC", "x"},
	{"FLUSHALL", "SYNC", "SYNC"},
}

// optionCases give commands options Redis does not know, and unknown
// commands.
var optionCases = [][]string{
	{"NOSUCHCOMMAND"},
	{"NOSUCHCOMMAND", "a", "b", "c", "d", "e", "f"},
	{"nosuchcommand", strings.Repeat("x", 100), strings.Repeat("y", 100)},
	{strings.Repeat("Z", 200)},
	{"FLUSHDB", "x"},
	{"FLUSHALL", "x"},
	{"SET", "k", "v", "NOSUCH"},
	{"SET", "k", "v", "EX"},
	{"SET", "k", "v", "PX"},
	{"SET", "k", "v", "EXAT"},
	{"SET", "k", "v", "NX", "NOSUCH"},
	{"SET", "k", "v", "NX", "XX"},
	{"SET", "k", "v", "xx", "nx"},
	{"SET", "k", "v", "EX", "1", "PX", "1"},
	{"SET", "k", "v", "KEEPTTL", "EX", "1"},
	{"SET", "k", "v", "PXAT", "1", "KEEPTTL"},
	{"SET", "k", "v", "GET", "EX"},
	{"GET", "k"},
	{"EXISTS", "k"},
	{"DEL", "k"},
	{"TYPE", "k"},
	{"KEYS", "*"},
	{"DBSIZE"},
	{"HLEN", "k"},
	{"HGETALL", "k"},
	{"HMGET", "k", "f"},
}

// multiCases are transactions and their refusals: a nested MULTI is
// refused without discarding the transaction, a command refused as it
// is queued discards it.
var multiCases = [][]string{
	{"MULTI"},
	{"MULTI"},
	{"SET", "multi-k", "v"},
	{"EXEC"},
	{"GET", "multi-k"},
	{"MULTI"},
	{"NOSUCH"},
	{"SET", "multi-k", "w"},
	{"EXEC"},
	{"GET", "multi-k"},
	{"EXEC"},
	{"DISCARD"},
	// An EXEC refused (here for its arity) discards the transaction and
	// answers EXECABORT naming why, in MULTI or not, as in Redis: the
	// connection is not left queueing.
	{"MULTI"},
	{"SET", "multi-k", "x"},
	{"EXEC", "x"},
	{"DISCARD"},
	{"GET", "multi-k"},
	{"EXEC", "x"},
}

// helloCases are HELLO's refusals: Redis reads the protocol version as a
// strict integer, answers NOPROTO below 2 (TQ also for 3: it speaks RESP2
// only), and names the option it could not read as it was given.
var helloCases = [][]string{
	{"HELLO", "x"},
	{"HELLO", "02"},
	{"HELLO", "+2"},
	{"HELLO", "9223372036854775808"},
	{"HELLO", "1"},
	{"HELLO", "-1"},
	{"HELLO", "2", "NOSUCH"},
	{"HELLO", "2", "auth", "a"},
	{"HELLO", "2", "SETNAME"},
	{"HELLO", "2", "SETNAME", "a", "b"},
	{"HELLO", "2", "SETNAME", "a", "AUTH", "default"},
	{"HELLO", "2", "SETNAME", "n1", "NOSUCH"},
	{"CLIENT", "GETNAME"},
}

// subcommandCases are CLIENT's, CONFIG's and COMMAND's subcommands that
// Redis does not know, or gives the wrong number of arguments. Redis
// checks both before NOAUTH.
var subcommandCases = [][]string{
	{"CLIENT", "NOSUCH"},
	{"CLIENT", "GETNAME", "x"},
	{"CONFIG", "GET"},
	{"COMMAND", "COUNT", "x"},
	{"CLIENT"},
	{"CLIENT", "getname", "x"},
	{"CLIENT", "ID", "x"},
	{"CLIENT", "INFO", "x"},
	{"CLIENT", "SETNAME"},
	{"CLIENT", "SETNAME", "a", "b"},
	{"CLIENT", "SETNAME", "a b"},
	{"CLIENT", "GETNAME"},
	{"CLIENT", "KILL"},
	{"CONFIG"},
	{"CONFIG", "NOSUCH"},
	{"CONFIG", "SET"},
	{"CONFIG", "SET", "a"},
	{"CONFIG", "RESETSTAT", "x"},
	{"CONFIG", "GET", "save"},
	{"COMMAND", "NOSUCH"},
	{"COMMAND", "GETKEYS", "GET"},
}

// beforeAuthCases are answered before AUTH: Redis reports an unknown
// command or a wrong number of arguments before NOAUTH.
var beforeAuthCases = [][]string{
	{"GET", "k"},
	{"GET"},
	{"GET", "a", "b"},
	{"HSET", "h", "f"},
	{"SCAN"},
	{"ECHO"},
	{"AUTH"},
	{"NOSUCHCOMMAND", "a"},
	{"AUTH", "a", "b", "c"},
	{"AUTH", "wrong"},
	{"EXEC"},
	{"EXEC", "x"},
}

// scanCases are SCAN's cursors, options and counts. Redis reads the
// cursor as C's strtoul does (-1 is the largest cursor), and a count as a
// strict integer of at least 1.
var scanCases = [][]string{
	{"SCAN", "0"},
	{"SCAN", "x"},
	{"SCAN", "-1"},
	{"SCAN", "+1"},
	{"SCAN", "-18446744073709551615"},
	{"SCAN", "18446744073709551615"},
	{"SCAN", "18446744073709551616"},
	{"SCAN", "-18446744073709551616"},
	{"SCAN", " 0"},
	{"SCAN", "0 "},
	{"SCAN", "+"},
	{"SCAN", "-"},
	{"SCAN", "1x"},
	{"SCAN", ""},
	{"SCAN", "0", "COUNT", "1"},
	{"SCAN", "0", "COUNT", "0"},
	{"SCAN", "0", "COUNT", "-1"},
	{"SCAN", "0", "COUNT", "x"},
	{"SCAN", "0", "COUNT", "+5"},
	{"SCAN", "0", "COUNT", "05"},
	{"SCAN", "0", "COUNT", "-0"},
	{"SCAN", "0", "COUNT", "99999999999999999999"},
	{"SCAN", "0", "COUNT", "9223372036854775807"},
	{"SCAN", "0", "NOSUCH", "1"},
	{"SCAN", "0", "MATCH"},
	{"SCAN", "0", "COUNT"},
	{"SCAN", "0", "TYPE"},
	{"SCAN", "0", "TYPE", "nosuch"},
	{"SCAN", "0", "count", "0", "MATCH", "*"},
}

// scanTypeCases are SCAN's TYPE filter over one key: a type no key has,
// the empty one included, selects nothing.
var scanTypeCases = [][]string{
	{"SET", "scan-k", "v"},
	{"SCAN", "0", "TYPE", "string"},
	{"SCAN", "0", "TYPE", "STRING"},
	{"SCAN", "0", "TYPE", "hash"},
	{"SCAN", "0", "TYPE", ""},
	{"SCAN", "0", "TYPE", "", "MATCH", "*"},
	{"DEL", "scan-k"},
}

// TestInlineMatchesRedis types inline commands at TQ's endpoint and at a
// real redis-server and compares the replies byte for byte: Redis's
// escapes (\a \b \xHH, \' in single quotes), quotes opening in a word,
// \r between words, and the unbalanced-quotes error. Each line gets a
// connection of its own (an error closes it).
func TestInlineMatchesRedis(t *testing.T) {
	rd := startRedis(t)
	e := newEndpoint(t, Config{})
	typed := func(addr, line string) string {
		c, err := dialRaw(addr)
		require.NoError(t, err)
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		_, err = io.WriteString(c, line)
		require.NoError(t, err)
		var out strings.Builder
		require.NoError(t, c.reply(&out), "%q", line)
		return out.String()
	}
	for _, line := range []string{
		"ECHO \"\\a\\b\\n\\r\\t\\q\"\r\n", "ECHO 'it\\'s'\r\n", "ECHO 'a\\b'\r\n", "ECHO a\"b c\"\r\n",
		"ECHO a'b c'\r\n", "ECHO \"a\"\"b\"\r\n", "ECHO a\rb\r\n", "ECHO \"\\x4g\"\r\n", "ECHO \"\\xfF\\x41\"\r\n",
		"ECHO ''\r\n", "ECHO \"\"\r\n", "   \t\r\nPING\r\n", "ECHO \"unbalanced\r\n", "ECHO 'open\r\n",
		"ECHO \"a\"b\r\n", "ECHO x \"\\\"\"\r\n", "ECHO \"ends\\\r\n", "\vECHO\fx\r\n",
	} {
		assert.Equal(t, typed(rd, line), typed(e.addr, line), "%q", line)
	}
}
