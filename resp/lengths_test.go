package resp

import (
	"io"
	"testing"

	"github.com/stretchr/testify/assert"
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
