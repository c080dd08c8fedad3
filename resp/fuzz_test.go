package resp

import (
	"bytes"
	"context"
	"errors"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// FuzzReader feeds arbitrary bytes to the command reader: it never
// panics, never hands out an argument longer than its limit, and a
// command it accepts re-encodes to one it reads back the same.
func FuzzReader(f *testing.F) {
	for _, s := range []string{
		"*1\r\n$4\r\nPING\r\n", "PING\r\n", "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n",
		"*-1\r\n", "*0\r\n", "*1\r\n$-1\r\n", "SET \"a\\x41\" 'b'\n", "*2\r\n$1\r\na\r\n$99999999999\r\n",
		"*1\r\n$3\r\nab", "\"open\r\n", "*1\r\n+x\r\n",
		"PING\r\nPING\nECHO x\r\n*1\r\n$4\r\nPING\r\n", "*1\r\n$4\r\nPI\rG\r\n", "PING a\rb\r\n",
		"*1\r\n$" + strings.Repeat("1", 32) + "\r\n", "*1\r\n$" + strings.Repeat("1", 33) + "\r\n", "*" + strings.Repeat("1", 31) + "\r\r\n",
	} {
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, in []byte, authed bool) {
		r := newReader(bytes.NewReader(in), 1<<16)
		r.authed = authed
		for range 64 {
			args, err := r.next()
			if err != nil {
				var pe *errProtocol
				if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.As(err, &pe) {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			limit := 1 << 16
			if !authed {
				limit = maxUnauthBulk
			}
			var enc []byte
			enc = append(enc, '*')
			enc = append(enc, strconv.Itoa(len(args))...)
			enc = append(enc, '\r', '\n')
			for _, a := range args {
				if len(a) > limit && len(a) > maxInline {
					t.Fatalf("argument of %d bytes passed a limit of %d", len(a), limit)
				}
				enc = append(enc, '$')
				enc = append(enc, strconv.Itoa(len(a))...)
				enc = append(enc, '\r', '\n')
				enc = append(enc, a...)
				enc = append(enc, '\r', '\n')
			}
			if len(args) == 0 {
				continue
			}
			again := newReader(bytes.NewReader(enc), 1<<30)
			again.authed = true
			back, err := again.next()
			require.NoError(t, err)
			require.Equal(t, len(args), len(back))
			for i := range args {
				require.True(t, bytes.Equal(args[i], back[i]))
			}
		}
	})
}

// FuzzReaderSplit reads arbitrary bytes whole, cut in three reads, and a
// byte a read: the reader reads the same commands, or refuses the same
// line, each way (a line's CR may come in one read, its LF in the next).
// The bound on a line before AUTH is small, so that lines reach it.
func FuzzReaderSplit(f *testing.F) {
	for _, s := range []struct {
		in     string
		c1, c2 uint16
		limit  uint8
	}{
		{"PING aaaaaaaaaaa\r\n", 17, 18, 16}, {"PING aaaaaaaaaaa\n", 16, 17, 16}, {"PING aaaaaaaaaaaa\n", 17, 17, 16},
		{"PING aaaaaaaaaaa\r\r\n", 17, 18, 16}, {"PING aaaaaaaaaaa\rx\r\n", 16, 17, 16}, {"PING aaaaaaaaaaa\r", 17, 17, 16},
		{"*1\r\n$4\r\nPING\r\nPING\nPING\r\n", 17, 22, 8}, {"*1\r\n$99999999999999999999999999999999\r\n", 37, 38, 8},
		{"*1\r\n$999999999999999999999999999999999\n", 38, 39, 8}, {"*2\r\n$4\r\nECHO\r\n$2\nhi\r\n", 18, 19, 8},
	} {
		f.Add([]byte(s.in), s.c1, s.c2, false, s.limit)
		f.Add([]byte(s.in), s.c1, s.c2, true, s.limit)
	}
	f.Fuzz(func(t *testing.T, in []byte, c1, c2 uint16, authed bool, limit uint8) {
		if len(in) > 4096 {
			return
		}
		n := max(int(limit)%48, 1)
		whole := readPieces(t, authed, n, in)
		require.Equal(t, whole, readPieces(t, authed, n, cut(in, int(c1), int(c2))...), "cut at %d and %d", c1, c2)
		var bytes [][]byte
		for i := range in {
			bytes = append(bytes, in[i:i+1])
		}
		require.Equal(t, whole, readPieces(t, authed, n, bytes...), "a byte a read")
	})
}

// FuzzServer sends arbitrary bytes to a live endpoint: the server
// answers or closes, never panics or hangs, and serves the next client.
func FuzzServer(f *testing.F) {
	f.Add([]byte("*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"))
	f.Add([]byte("*4\r\n$4\r\nHSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n$1\r\nx\r\n"))
	f.Add([]byte("MSET a 1 a 2\r\nDEL a k\r\nSCAN 0 COUNT 0\r\n"))
	f.Add([]byte("*1\r\n$8\r\nFLUSHALL\r\n"))
	e := newEndpoint(f, Config{MaxValue: 1 << 16, CommandTimeout: 200 * time.Millisecond})
	f.Fuzz(func(t *testing.T, in []byte) {
		ctx := context.Background()
		rc := redis.NewClient(&redis.Options{Addr: e.addr})
		defer rc.Close()
		nc, err := net.Dial("tcp", e.addr)
		require.NoError(t, err)
		defer nc.Close()
		nc.Write(in)
		nc.(*net.TCPConn).CloseWrite()
		nc.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = io.Copy(io.Discard, nc)
		require.NoError(t, err, "the server ends the connection once its input ends")
		require.NoError(t, rc.Set(ctx, "{fz}keep", "safe", 0).Err())
		require.Equal(t, "safe", rc.Get(ctx, "{fz}keep").Val())
	})
}

// Every command given arguments drawn from odd tokens (huge and negative
// counts, braces, bad UTF-8, option names out of place) answers without
// panicking: TQ.LIST IN with a count near the largest int once passed its
// check by overflow and crashed the server making the value list. A
// command that panics now answers an internal error instead of taking
// the process down; none of these may.
func TestCommandsWithOddArguments(t *testing.T) {
	e := newEndpoint(t, Config{})
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go io.Copy(io.Discard, b)
	c := e.srv.newConn(a)
	tokens := []string{"", "0", "1", "-1", "2", "3", "9223372036854775807", "-9223372036854775808", "18446744073709551615",
		"9223372036854775805", "4611686018427387903", "k", "{p}k", "{p}", "{}", "f", "value", "\xff", "*", "[", "\\", "?",
		"MATCH", "COUNT", "TYPE", "string", "hash", "EQ", "IN", "EXISTS", "ABSENT", "OLD", "NEW", "OLDJSON", "NEWJSON",
		"DELETE", "null", "[]", "1e400", "\"x\"", "1]", "TIMEOUT", "01", "GET", "SET", "AUTH", "default", "SETNAME",
		"ASYNC", "SYNC", "NX", "EX", "KEEPTTL", "LIB-NAME"}
	names := slices.Sorted(maps.Keys(commands))
	rng := rand.New(rand.NewPCG(1, 2))
	for range 20000 {
		args := [][]byte{[]byte(names[rng.IntN(len(names))])}
		for range rng.IntN(7) {
			args = append(args, []byte(tokens[rng.IntN(len(tokens))]))
		}
		c.dispatch(args)
		require.NotContains(t, string(c.out), "internal error", "%q", args)
		c.out, c.quit = c.out[:0], false
	}
	c.dispatch([][]byte{[]byte("TQ.LIST"), []byte("IN"), []byte("t"), []byte("9223372036854775805"), []byte("v")})
	require.Equal(t, "-ERR TQ.LIST IN t: want a count and that many values\r\n", string(c.out))
}
