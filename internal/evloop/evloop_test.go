package evloop

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// pair returns the two ends of a loopback TCP connection.
func pair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	client, err = net.Dial("tcp", l.Addr().String())
	require.NoError(t, err)
	server, err = l.Accept()
	require.NoError(t, err)
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// TestPollerWaits: Wait returns a descriptor once it has input, nothing
// after its timeout or a Poke, and waits no longer than asked.
func TestPollerWaits(t *testing.T) {
	p, err := NewPoller()
	require.NoError(t, err)
	defer p.Close()
	client, server := pair(t)
	fd, ok := Take(server)
	require.True(t, ok)
	defer unix.Close(fd)
	require.NoError(t, p.Add(fd))

	start := time.Now()
	ready, err := p.Wait(50)
	require.NoError(t, err)
	assert.Empty(t, ready, "nothing sent yet")
	assert.Less(t, time.Since(start), 2*time.Second, "a 50 ms wait")

	go func() { time.Sleep(20 * time.Millisecond); p.Poke() }()
	ready, err = p.Wait(-1)
	require.NoError(t, err)
	assert.Empty(t, ready, "a poke wakes the wait with nothing")

	_, err = client.Write([]byte("ping"))
	require.NoError(t, err)
	ready, err = p.Wait(5000)
	require.NoError(t, err)
	require.Equal(t, []int{fd}, ready)
	buf := make([]byte, 16)
	n, err := Read(fd, buf)
	require.NoError(t, err)
	assert.Equal(t, "ping", string(buf[:n]))
	_, err = Read(fd, buf)
	assert.Equal(t, unix.EAGAIN, err, "the socket never blocks")

	// Level-triggered: input left unread is reported again.
	_, err = client.Write([]byte("pong"))
	require.NoError(t, err)
	for range 2 {
		ready, err = p.Wait(5000)
		require.NoError(t, err)
		require.Equal(t, []int{fd}, ready)
	}
	p.Del(fd)
	ready, err = p.Wait(20)
	require.NoError(t, err)
	assert.Empty(t, ready, "not watched after Del")
}

// TestFlushAndGive: Flush writes what the socket takes and returns the
// rest with EAGAIN; Give turns the descriptor back into a net.Conn that
// carries on where the loop stopped.
func TestFlushAndGive(t *testing.T) {
	client, server := pair(t)
	fd, ok := Take(server)
	require.True(t, ok)
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<18) // 4 MiB: more than the socket buffers
	rest, err := Flush(fd, bytes.Clone(big))
	require.Equal(t, unix.EAGAIN, err)
	require.NotEmpty(t, rest)
	require.Less(t, len(rest), len(big))

	nc, err := Give(fd, "test")
	require.NoError(t, err)
	defer nc.Close()
	got := make(chan []byte)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(client, int64(len(big))))
		got <- b
	}()
	_, err = nc.Write(rest)
	require.NoError(t, err)
	require.Equal(t, big, <-got, "what Flush wrote, then the rest through the net.Conn, in order")

	out, err := Flush(-1, nil)
	assert.NoError(t, err, "nothing to write")
	assert.Empty(t, out)
}

// A wait that finds nothing ready, and blocks in Go's poller until its
// deadline, allocates nothing: a loop waits so on every idle pass.
func TestPollerIdleWaitAllocatesNothing(t *testing.T) {
	p, err := NewPoller()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	p.Wait(1) // the deadline's timer is made once
	allocs := testing.AllocsPerRun(20, func() {
		if ready, err := p.Wait(1); err != nil || len(ready) != 0 {
			t.Fatalf("idle wait: ready %v, err %v", ready, err)
		}
	})
	if allocs != 0 {
		t.Fatalf("an idle wait allocated %.1f times; want none", allocs)
	}
}
