package resp

import (
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestLengthsAsRedis sends length lines that redis-server 7 refuses or
// takes, and checks TQ answers each as it does, from a loop and from a
// connection's goroutine: a count or a size is "0" or digits without a
// leading zero, with no '+'; a count may be negative (a null array,
// skipped), a size may not. Before, the goroutine's reader took whatever
// strconv.ParseInt takes ("+1", "01", "-0"), and a loop took leading
// zeros, so "*01" ran its command where Redis closes the connection.
func TestLengthsAsRedis(t *testing.T) {
	ping := cmdline("PING")
	cases := []struct{ in, want string }{
		{"*+1\r\n" + ping[4:], `-ERR Protocol error: invalid multibulk length "+1"`},
		{"*01\r\n" + ping[4:], `-ERR Protocol error: invalid multibulk length "01"`},
		{"*00\r\n" + ping, `-ERR Protocol error: invalid multibulk length "00"`},
		{"*-0\r\n" + ping, `-ERR Protocol error: invalid multibulk length "-0"`},
		{"*-01\r\n" + ping, `-ERR Protocol error: invalid multibulk length "-01"`},
		{"*\r\n" + ping, `-ERR Protocol error: invalid multibulk length ""`},
		{"*-\r\n" + ping, `-ERR Protocol error: invalid multibulk length "-"`},
		{"* 1\r\n" + ping[4:], `-ERR Protocol error: invalid multibulk length " 1"`},
		{"*1 \r\n" + ping[4:], `-ERR Protocol error: invalid multibulk length "1 "`},
		{"*1\r\n$04\r\nPING\r\n", `-ERR Protocol error: invalid bulk length "04"`},
		{"*1\r\n$+4\r\nPING\r\n", `-ERR Protocol error: invalid bulk length "+4"`},
		{"*1\r\n$-0\r\n", `-ERR Protocol error: invalid bulk length "-0"`},
		{"*1\r\n$-1\r\n", `-ERR Protocol error: invalid bulk length "-1"`},
		{"*1\r\n$00\r\n\r\n", `-ERR Protocol error: invalid bulk length "00"`},
		{"*-1\r\n" + ping, "+PONG"},
		{"*-2\r\n" + ping, "+PONG"},
		{"*0\r\n" + ping, "+PONG"},
		{"*1\r\n$0\r\n\r\n", "-ERR unknown command '', with args beginning with: "},
	}
	for _, served := range []struct {
		name string
		cfg  Config
	}{{"loop", Config{}}, {"goroutine", Config{Loops: -1}}} {
		t.Run(served.name, func(t *testing.T) {
			e := newEndpoint(t, served.cfg)
			for _, tc := range cases {
				nc, rr := e.raw(t)
				io.WriteString(nc, tc.in)
				assert.Equal(t, tc.want, rr.line(t), "%q", tc.in)
			}
		})
	}
}

// TestLengthLineEndsInCRLF sends length lines that end in a bare LF to
// redis-server (when installed) and to TQ, from a loop and from a
// connection's goroutine. Redis looks for the CR, finds the next line's,
// and refuses what lies between ("1\n$4") as a length, then closes the
// connection; TQ answers with the same error, naming the line, and
// closes too. Before, TQ's reader took "*1\n" as a count of one and ran
// the command.
func TestLengthLineEndsInCRLF(t *testing.T) {
	cases := []struct{ in, redis, tq string }{
		{"*1\n$4\r\nPING\r\n",
			"-ERR Protocol error: invalid multibulk length",
			`-ERR Protocol error: invalid multibulk length "1" (it ends in a bare LF, not CRLF)`},
		{"*1\r\n$4\nPING\r\n",
			"-ERR Protocol error: invalid bulk length",
			`-ERR Protocol error: invalid bulk length "4" (it ends in a bare LF, not CRLF)`},
		{"*2\r\n$4\r\nECHO\r\n$2\nhi\r\n",
			"-ERR Protocol error: invalid bulk length",
			`-ERR Protocol error: invalid bulk length "2" (it ends in a bare LF, not CRLF)`},
	}
	// replyThenEOF is the line addr answers in with, and whether it then
	// closed the connection.
	replyThenEOF := func(t *testing.T, addr, in string) (string, bool) {
		c, err := dialRaw(addr)
		require.NoError(t, err)
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		_, err = io.WriteString(c, in)
		require.NoError(t, err)
		line, err := c.r.ReadString('\n')
		require.NoError(t, err, "%q", in)
		_, err = c.r.ReadByte()
		return strings.TrimSuffix(line, "\r\n"), errors.Is(err, io.EOF)
	}
	t.Run("redis-server", func(t *testing.T) {
		addr := startRedis(t)
		for _, tc := range cases {
			got, closed := replyThenEOF(t, addr, tc.in)
			assert.Equal(t, tc.redis, got, "%q", tc.in)
			assert.True(t, closed, "%q: the connection closed after", tc.in)
		}
	})
	for _, served := range []struct {
		name string
		cfg  Config
	}{{"loop", Config{}}, {"goroutine", Config{Loops: -1}}} {
		t.Run(served.name, func(t *testing.T) {
			e := newEndpoint(t, served.cfg)
			for _, tc := range cases {
				got, closed := replyThenEOF(t, e.addr, tc.in)
				assert.Equal(t, tc.tq, got, "%q", tc.in)
				assert.True(t, strings.HasPrefix(got, tc.redis), "%q: %q begins as redis-server's %q", tc.in, got, tc.redis)
				assert.True(t, closed, "%q: the connection closed after", tc.in)
			}
		})
	}
}
