package resp

import (
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/controller/journal"
)

// slowLog makes each write of the controller's log take at least d (as a
// disk's fsync does) and counts the writes.
func slowLog(groups *atomic.Int64, d time.Duration) func(*controller.Config) {
	return func(cfg *controller.Config) {
		cfg.OnJournalWrite = func(time.Duration, int) {
			groups.Add(1)
			time.Sleep(d)
		}
	}
}

// TestDurablePipelineWaitsForTheLogOnce: a pipeline of SETs (or HSETs)
// on a durable controller waits for the log once for all those read
// together, not once per command (each took a group commit of its own:
// about 4k SET/s from one client however deep its pipeline), and their
// replies go out only once it is durable.
func TestDurablePipelineWaitsForTheLogOnce(t *testing.T) {
	for _, cmd := range []string{"SET", "HSET"} {
		t.Run(cmd, func(t *testing.T) {
			var groups atomic.Int64
			e := newDurableEndpoint(t, journal.FsyncBatch, slowLog(&groups, 20*time.Millisecond))
			const n = 200
			var sb strings.Builder
			for i := range n {
				v := strings.Repeat("v", i+1)
				if cmd == "SET" {
					sb.WriteString(cmdline("SET", "k", v))
				} else {
					sb.WriteString(cmdline("HSET", "k", "value", v))
				}
			}
			w, wr := e.raw(t)
			before := groups.Load()
			_, err := io.WriteString(w, sb.String())
			require.NoError(t, err)
			for i := range n {
				want := "+OK"
				if cmd == "HSET" {
					want = map[bool]string{true: ":1", false: ":0"}[i == 0]
				}
				require.Equal(t, want, wr.line(t), "reply %d", i)
			}
			// Without the shared wait: one log write per command, n in all.
			assert.LessOrEqual(t, groups.Load()-before, int64(n/10), "log writes for %d pipelined %ss", n, cmd)
			io.WriteString(w, cmdline("GET", "k"))
			assert.Equal(t, strings.Repeat("v", n), string(wr.bulk(t)))
			// The 199 values replaced are freed once their change is durable.
			u := e.srv.st.units[0]
			require.Eventually(t, func() bool { return u.Stats().Extents == 1 }, 10*time.Second, 10*time.Millisecond,
				"extents held after the pipeline: %d", u.Stats().Extents)
		})
	}
}

// TestDurablePipelineDeletes: a pipeline of DELs (or HDELs) waits for
// the log once too, and the cells they dropped are freed after.
func TestDurablePipelineDeletes(t *testing.T) {
	for _, cmd := range []string{"DEL", "HDEL"} {
		t.Run(cmd, func(t *testing.T) {
			var groups atomic.Int64
			e := newDurableEndpoint(t, journal.FsyncBatch, slowLog(&groups, 5*time.Millisecond))
			const n = 200
			var puts, dels strings.Builder
			for i := range n {
				if cmd == "DEL" {
					puts.WriteString(cmdline("SET", fmt.Sprint("k", i), "v"))
					dels.WriteString(cmdline("DEL", fmt.Sprint("k", i)))
				} else {
					puts.WriteString(cmdline("HSET", "k", fmt.Sprint("f", i), "v"))
					dels.WriteString(cmdline("HDEL", "k", fmt.Sprint("f", i)))
				}
			}
			w, wr := e.raw(t)
			_, err := io.WriteString(w, puts.String())
			require.NoError(t, err)
			for range n {
				wr.line(t)
			}
			u := e.srv.st.units[0]
			require.Equal(t, n, u.Stats().Extents)
			before := groups.Load()
			_, err = io.WriteString(w, dels.String())
			require.NoError(t, err)
			for i := range n {
				require.Equal(t, ":1", wr.line(t), "reply %d", i)
			}
			assert.LessOrEqual(t, groups.Load()-before, int64(n/10), "log writes for %d pipelined %ss", n, cmd)
			require.Eventually(t, func() bool { return u.Stats().Extents == 0 }, 10*time.Second, 10*time.Millisecond,
				"extents held after the deletes: %d", u.Stats().Extents)
		})
	}
}

// TestDurablePipelineRepliesWaitForTheLog: the replies of a pipeline of
// SETs do not go out before their changes are durable.
func TestDurablePipelineRepliesWaitForTheLog(t *testing.T) {
	var hold sync.Mutex
	var held atomic.Bool
	e := newDurableEndpoint(t, journal.FsyncBatch, func(cfg *controller.Config) {
		cfg.OnJournalWrite = func(time.Duration, int) {
			if held.Load() {
				hold.Lock() // the log's writer waits here: nothing more is durable
				hold.Unlock()
			}
		}
	})
	w, wr := e.raw(t)
	hold.Lock()
	held.Store(true)
	_, err := io.WriteString(w, cmdline("SET", "a", "1")+cmdline("SET", "b", "2")+cmdline("SET", "c", "3"))
	require.NoError(t, err)
	w.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	var buf [1]byte
	_, err = w.Read(buf[:])
	var ne net.Error
	require.ErrorAs(t, err, &ne, "a reply came before the log was durable: %q", buf[:])
	require.True(t, ne.Timeout())
	held.Store(false)
	hold.Unlock()
	w.SetReadDeadline(time.Time{})
	for range 3 {
		require.Equal(t, "+OK", wr.line(t))
	}
}

// TestDurablePipelineClientGone: a client that sends a pipeline of SETs
// and goes before their replies leaves no replaced cell unfreed.
func TestDurablePipelineClientGone(t *testing.T) {
	var groups atomic.Int64
	e := newDurableEndpoint(t, journal.FsyncBatch, slowLog(&groups, 20*time.Millisecond))
	w, _ := e.raw(t)
	var sb strings.Builder
	for i := range 50 {
		sb.WriteString(cmdline("SET", "k", strings.Repeat("x", i+1)))
	}
	_, err := io.WriteString(w, sb.String())
	require.NoError(t, err)
	w.Close()
	u := e.srv.st.units[0]
	require.Eventually(t, func() bool { return u.Stats().Extents == 1 }, 10*time.Second, 10*time.Millisecond,
		"extents held after the client went: %d", u.Stats().Extents)
}
