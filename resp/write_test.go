package resp

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
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
