package resp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestFailedWriteEndsConnection checks that a reply cut short by its write
// deadline (a client that did not read for longer than CommandTimeout)
// ends the connection: the client reads a prefix of its replies, never
// later replies after a hole.
func TestFailedWriteEndsConnection(t *testing.T) {
	ctx := context.Background()
	e := newEndpoint(t, Config{CommandTimeout: 300 * time.Millisecond, Loops: -1})
	rc := e.client(t, nil)
	var keys []string
	for i := range 200 {
		k := fmt.Sprintf("s%d", i)
		require.NoError(t, rc.Set(ctx, k, bytes.Repeat([]byte{byte('a' + i%26)}, 60<<10), 0).Err())
		keys = append(keys, k)
	}
	big := bytes.Repeat([]byte("B"), 4<<20)
	require.NoError(t, rc.Set(ctx, "big", big, 0).Err())
	keys = append(keys, "big")

	var want bytes.Buffer
	fmt.Fprintf(&want, "*%d\r\n", len(keys))
	for i := range 200 {
		fmt.Fprintf(&want, "$%d\r\n%s\r\n", 60<<10, bytes.Repeat([]byte{byte('a' + i%26)}, 60<<10))
	}
	fmt.Fprintf(&want, "$%d\r\n%s\r\n+PONG\r\n", len(big), big)

	nc, err := net.Dial("tcp", e.addr)
	require.NoError(t, err)
	defer nc.Close()
	_, err = io.WriteString(nc, cmdline(append([]string{"MGET"}, keys...)...)+cmdline("PING"))
	require.NoError(t, err)
	time.Sleep(time.Second) // not reading, past CommandTimeout
	nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, _ := io.ReadAll(nc)
	if !bytes.HasPrefix(want.Bytes(), got) {
		i := 0
		for i < len(got) && got[i] == want.Bytes()[i] {
			i++
		}
		t.Fatalf("read %d bytes that are not a prefix of the %d-byte reply: they differ at byte %d", len(got), want.Len(), i)
	}
}

// TestPipelineSentWholeBeforeReading checks that a client that writes
// its whole pipeline before it reads a reply (redis-py's pipeline and
// go-redis's Pipelined do) gets every reply, as from redis-server, which
// buffers them: here replies far larger than the socket buffers hold, of
// many small GETs and of large SETs and GETs in turn.
func TestPipelineSentWholeBeforeReading(t *testing.T) {
	for _, loops := range []int{0, -1} {
		t.Run(fmt.Sprintf("loops=%d", loops), func(t *testing.T) {
			ctx := context.Background()
			e := newEndpoint(t, Config{CommandTimeout: 5 * time.Second, Loops: loops})
			rc := e.client(t, nil)
			small := bytes.Repeat([]byte("s"), 1<<10)
			big := bytes.Repeat([]byte("B"), 1<<20)
			require.NoError(t, rc.Set(ctx, "small", small, 0).Err())
			require.NoError(t, rc.Set(ctx, "big", big, 0).Err())

			var req, want bytes.Buffer
			for range 50000 {
				req.WriteString(cmdline("GET", "small"))
				fmt.Fprintf(&want, "$%d\r\n%s\r\n", len(small), small)
			}
			for i := range 32 {
				req.WriteString(cmdline("SET", fmt.Sprint("k", i), string(big)))
				req.WriteString(cmdline("GET", "big"))
				fmt.Fprintf(&want, "+OK\r\n$%d\r\n%s\r\n", len(big), big)
			}

			nc, err := net.Dial("tcp", e.addr)
			require.NoError(t, err)
			defer nc.Close()
			nc.SetDeadline(time.Now().Add(time.Minute)) // a safety limit
			_, err = nc.Write(req.Bytes())
			require.NoError(t, err, "writing the whole pipeline before reading")
			got := make([]byte, want.Len())
			_, err = io.ReadFull(nc, got)
			require.NoError(t, err)
			require.True(t, bytes.Equal(want.Bytes(), got), "the replies differ from what was asked")
		})
	}
}

// TestClientThatNeverReadsIsClosed checks that a client that goes on
// sending while it reads none of its replies is closed once it has sent
// more than a connection reads ahead (its MaxValue), not held for
// CommandTimeout nor read into memory without end.
func TestClientThatNeverReadsIsClosed(t *testing.T) {
	ctx := context.Background()
	e := newEndpoint(t, Config{CommandTimeout: time.Minute, MaxValue: 1 << 20, Loops: -1})
	rc := e.client(t, nil)
	require.NoError(t, rc.Set(ctx, "big", bytes.Repeat([]byte("B"), 1<<20), 0).Err())
	nc, err := net.Dial("tcp", e.addr)
	require.NoError(t, err)
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(30 * time.Second)) // a safety limit, well before CommandTimeout
	get := []byte(cmdline("GET", "big"))
	for err == nil {
		_, err = nc.Write(get)
	}
	require.False(t, errors.Is(err, os.ErrDeadlineExceeded), "the server was still reading after 30 s: %v", err)
}

// TestWriteAllocatesNothing: a reply written to a connection served on a
// goroutine costs no allocation (the raw write's function is bound once).
func TestWriteAllocatesNothing(t *testing.T) {
	e := newEndpoint(t, Config{Loops: -1})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	client, err := net.Dial("tcp", l.Addr().String())
	require.NoError(t, err)
	defer client.Close()
	nc, err := l.Accept()
	require.NoError(t, err)
	defer nc.Close()
	go io.Copy(io.Discard, client)
	c := e.srv.newConn(nc)
	reply := []byte("+OK\r\n")
	require.NoError(t, c.write(reply))
	allocs := testing.AllocsPerRun(100, func() { c.write(reply) })
	require.Zero(t, allocs, "allocations per reply written")
}

// TestUnauthenticatedClientReadsLittleAhead checks that a client that
// has not authenticated, sending commands while it reads none of its
// replies, is closed once it has sent a little more than one command
// before AUTH may be, not read ahead up to MaxValue (512 MiB here, and
// the budget for large values shared with authenticated clients).
func TestUnauthenticatedClientReadsLittleAhead(t *testing.T) {
	e := newEndpoint(t, Config{Token: "secret", CommandTimeout: time.Minute, Loops: -1})
	nc, err := net.Dial("tcp", e.addr)
	require.NoError(t, err)
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(30 * time.Second)) // a safety limit
	ping := bytes.Repeat([]byte(cmdline("PING")), 4096)
	const limit = 64 << 20 // far above the sockets' buffers and the bound
	sent := 0
	for err == nil && sent < limit {
		var n int
		n, err = nc.Write(ping)
		sent += n
	}
	require.Error(t, err, "an unauthenticated client sent %d bytes without reading a reply and was not closed", sent)
	require.False(t, errors.Is(err, os.ErrDeadlineExceeded), "the server stopped reading without closing: %v", err)
}
