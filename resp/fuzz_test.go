package resp

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strconv"
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
