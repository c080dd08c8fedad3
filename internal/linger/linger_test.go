package linger

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp", l.Addr().String())
	require.NoError(t, err)
	server = <-accepted
	require.NotNil(t, server)
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// A server answers from the first bytes of a large request and ends the
// connection while the client is still sending the rest: with Drain
// before the close, the client's whole write goes through and it reads
// the answer, then the end.
func TestAnswerSurvivesTheRestOfTheRequest(t *testing.T) {
	client, server := tcpPair(t)
	const size = 32 << 20 // far more than the socket buffers hold
	wrote := make(chan error, 1)
	go func() {
		_, err := client.Write(bytes.Repeat([]byte{'x'}, size))
		wrote <- err
	}()
	head := make([]byte, 16)
	_, err := io.ReadFull(server, head)
	require.NoError(t, err)
	_, err = server.Write([]byte("refused: too large\n"))
	require.NoError(t, err)
	drained := make(chan int64, 1)
	go func() {
		drained <- Drain(server, 10*time.Second)
		server.Close()
	}()
	require.NoError(t, <-wrote, "the client's write must not be cut short by a reset")
	got, err := io.ReadAll(client)
	require.NoError(t, err, "the client reads the answer, then an orderly end")
	assert.Equal(t, "refused: too large\n", string(got))
	client.Close()
	assert.Equal(t, int64(size-len(head)), <-drained, "Drain discards the rest of the request")
}

// A peer that neither sends nor closes holds Drain for d, no longer.
func TestDrainIsBounded(t *testing.T) {
	_, server := tcpPair(t)
	start := time.Now()
	Drain(server, 100*time.Millisecond)
	assert.Less(t, time.Since(start), 5*time.Second)
}

// Closing the connection from elsewhere ends Drain at once (a server
// shutting down does not wait out its lingering connections).
func TestDrainEndsWhenClosed(t *testing.T) {
	_, server := tcpPair(t)
	time.AfterFunc(50*time.Millisecond, func() { server.Close() })
	start := time.Now()
	Drain(server, time.Minute)
	assert.Less(t, time.Since(start), 30*time.Second)
}

// A connection with no sending side to shut (net.Pipe) is left to the
// caller's close.
func TestDrainWithoutCloseWrite(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	assert.Zero(t, Drain(a, time.Minute))
}
