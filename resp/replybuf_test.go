package resp

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestManyRepliesOfOneCommandAreNotBuffered checks that a command whose
// reply is many values under 64 KiB (MGET of one key named many times,
// EXEC of many GETs) writes them as they collect rather than building the
// whole reply in memory first: before, an MGET of 8 MB naming a 60 KiB
// value a million times built a 60 GiB reply in the connection's buffer.
func TestManyRepliesOfOneCommandAreNotBuffered(t *testing.T) {
	e := newEndpoint(t, Config{Loops: -1})
	const size, n = 60 << 10, 1000 // a reply of 60 MB
	val := bytes.Repeat([]byte{'v'}, size)
	for _, tc := range []struct {
		name string
		send func(w *bufio.Writer)
	}{
		{"MGET", func(w *bufio.Writer) {
			fmt.Fprintf(w, "*%d\r\n$4\r\nMGET\r\n", n+1)
			for range n {
				w.WriteString("$1\r\nk\r\n")
			}
		}},
		{"EXEC", func(w *bufio.Writer) {
			w.WriteString(cmdline("MULTI"))
			for range n {
				w.WriteString(cmdline("GET", "k"))
			}
			w.WriteString(cmdline("EXEC"))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nc, err := net.Dial("tcp", e.addr)
			require.NoError(t, err)
			defer nc.Close()
			br := bufio.NewReader(nc)
			fmt.Fprintf(nc, "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n%s\r\n", size, val)
			line, err := br.ReadString('\n')
			require.NoError(t, err)
			require.Equal(t, "+OK\r\n", line)

			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			w := bufio.NewWriter(nc)
			tc.send(w)
			require.NoError(t, w.Flush())
			// Every QUEUED, then the array of n values.
			for {
				line, err = br.ReadString('\n')
				require.NoError(t, err)
				if !strings.HasPrefix(line, "+") {
					break
				}
			}
			require.Equal(t, fmt.Sprintf("*%d\r\n", n), line)
			for range n {
				line, err = br.ReadString('\n')
				require.NoError(t, err)
				require.Equal(t, fmt.Sprintf("$%d\r\n", size), line)
				_, err = io.CopyN(io.Discard, br, size+2)
				require.NoError(t, err)
			}
			runtime.ReadMemStats(&after)
			assert.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(size*n/4), "bytes allocated for a reply of %d", size*n)
		})
	}
}
