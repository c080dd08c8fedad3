package resp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestHostileClientsOverUnixSocket: `tq serve --resp-socket` serves the
// same server on a unix socket, where the defences must hold too. Peers
// that send half a command and stay, drip one, claim an oversized value,
// skip AUTH or go in the middle of a SET with its value half sent are
// each cut off or refused with the reason, leave no key and no stored
// bytes behind, and a client that authenticated is served throughout;
// with event loops and without.
func TestHostileClientsOverUnixSocket(t *testing.T) {
	for _, loops := range []int{-1, 2} {
		t.Run(fmt.Sprintf("loops=%d", loops), func(t *testing.T) { hostileOverUnixSocket(t, loops) })
	}
}

func hostileOverUnixSocket(t *testing.T, loops int) {
	ctx := context.Background()
	e := newEndpoint(t, Config{Token: "s3cret", MaxValue: 1 << 20, CommandTimeout: 300 * time.Millisecond, AuthTimeout: 300 * time.Millisecond, Loops: loops})
	path := filepath.Join(t.TempDir(), "resp.sock")
	l, err := net.Listen("unix", path)
	require.NoError(t, err)
	go e.srv.Serve(l) // closed with the server when the test ends

	good := redis.NewClient(&redis.Options{Network: "unix", Addr: path, Password: "s3cret"})
	defer good.Close()
	served := func(phase string) {
		t.Helper()
		v := strings.Repeat(phase[:1], 4<<10)
		require.NoError(t, good.Set(ctx, "good", v, 0).Err(), phase)
		require.Equal(t, v, good.Get(ctx, "good").Val(), phase)
	}
	served("before")
	base := e.used()

	dial := func(auth bool) (net.Conn, *replyReader) {
		nc, err := net.Dial("unix", path)
		require.NoError(t, err)
		t.Cleanup(func() { nc.Close() })
		rr := &replyReader{r: newReader(nc, 1<<30)}
		if auth {
			io.WriteString(nc, "AUTH s3cret\r\n")
			require.Equal(t, "+OK", rr.line(t))
		}
		return nc, rr
	}
	closed := func(name string, rr *replyReader) {
		t.Helper()
		_, err := rr.r.line(1 << 20)
		require.Error(t, err, "%s: the connection ends", name)
		var ne net.Error
		require.False(t, errors.As(err, &ne) && ne.Timeout(), "%s: not cut off", name)
	}

	// Unauthenticated: a SET before AUTH is refused and named, and a
	// wrong token is.
	nc, rr := dial(false)
	io.WriteString(nc, "SET k v\r\n")
	assert.Contains(t, rr.line(t), "NOAUTH")
	io.WriteString(nc, "AUTH wrong\r\n")
	assert.Contains(t, rr.line(t), "WRONGPASS")

	// Oversized: a value past MaxValue is refused with the sizes.
	nc, rr = dial(true)
	fmt.Fprintf(nc, "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n", 2<<20)
	assert.Equal(t, "-ERR Protocol error: argument of 2097152 bytes exceeds the limit of 1048576", rr.line(t))

	// Half-sent, authenticated and not: cut off at their timeouts.
	half, halfR := dial(true)
	fmt.Fprintf(half, "*3\r\n$3\r\nSET\r\n$4\r\nhalf\r\n$100\r\nonly part")
	preauth, preauthR := dial(false)
	io.WriteString(preauth, "*2\r\n$4\r\nAUTH\r\n$6\r\ns3c")
	// Slow: a byte every 50 ms, past CommandTimeout for the command.
	slow, slowR := dial(true)
	stop, dripped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(dripped)
		for _, b := range []byte("*3\r\n$3\r\nSET\r\n$4\r\nslow\r\n$20\r\n01234567890123456789\r\n") {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			if _, err := slow.Write([]byte{b}); err != nil {
				return // cut off
			}
		}
	}()
	defer func() { close(stop); <-dripped }()

	// Killed mid-operation: SETs whose 64 KiB value is half sent when
	// the client goes.
	for i := range 50 {
		c, _ := dial(true)
		fmt.Fprintf(c, "*3\r\n$3\r\nSET\r\n$6\r\nvictim\r\n$%d\r\n%s", 64<<10, strings.Repeat("v", 32<<10+i))
		c.Close()
	}
	served("during")

	for _, p := range []struct {
		name string
		nc   net.Conn
		rr   *replyReader
	}{{"half-sent", half, halfR}, {"half-sent before AUTH", preauth, preauthR}, {"slow", slow, slowR}} {
		p.nc.SetReadDeadline(time.Now().Add(10 * time.Second)) // a safety limit
		closed(p.name, p.rr)
	}
	served("after")
	for _, k := range []string{"victim", "half", "slow", "k"} {
		assert.Equal(t, redis.Nil, good.Get(ctx, k).Err(), "key %q of a peer cut off", k)
	}
	assert.Equal(t, base, e.used(), "bytes the units hold after the peers went")
}
