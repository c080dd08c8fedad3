package resp

import (
	"context"
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

// TestDurablePipelineFullUnit: a pipeline of SETs (HSETs) that overwrite
// one key, or of DELs each followed by a SET (an MSET) of a new key, on a
// unit with room for one value more than it holds succeeds, as it does
// one command at a time: each new value takes the room a change before it
// dropped. The dropped cells, freed only once their changes are durable,
// were held until the replies went out, so the second write waited for
// room only its own connection could give back, and was answered OOM
// after CommandTimeout; they are now freed (the connection waiting for
// the log) before a write waits for room.
func TestDurablePipelineFullUnit(t *testing.T) {
	for _, cmd := range []string{"SET", "HSET", "DEL", "MSET"} {
		t.Run(cmd, func(t *testing.T) {
			cfg := controller.DefaultConfig()
			cfg.Dir, cfg.Fsync = t.TempDir(), journal.FsyncBatch
			e, _, u := endpointOnOneUnit(t, cfg, 64<<10, Config{CommandTimeout: 2 * time.Second}) // one slab: 64 cells of 1 KiB

			val := strings.Repeat("v", 1000)
			w, wr := e.raw(t)
			var fill strings.Builder
			for i := range 62 {
				fill.WriteString(cmdline("SET", fmt.Sprint("f", i), val))
			}
			fill.WriteString(cmdline("HSET", "h", "x", val)) // all but one cell taken
			_, err := io.WriteString(w, fill.String())
			require.NoError(t, err)
			for i := range 62 {
				require.Equal(t, "+OK", wr.line(t), "filler %d", i)
			}
			require.Equal(t, ":1", wr.line(t), "HSET h x")
			require.Equal(t, 63, u.Stats().Extents)

			const n = 8
			var sb strings.Builder
			for i := range n {
				switch cmd {
				case "SET":
					sb.WriteString(cmdline("SET", "f0", val))
				case "HSET":
					sb.WriteString(cmdline("HSET", "h", "x", val))
				case "DEL":
					sb.WriteString(cmdline("DEL", fmt.Sprint("f", i)))
					sb.WriteString(cmdline("SET", fmt.Sprint("g", i), val))
				case "MSET":
					sb.WriteString(cmdline("DEL", fmt.Sprint("f", i)))
					sb.WriteString(cmdline("MSET", fmt.Sprint("g", i), val))
				}
			}
			_, err = io.WriteString(w, sb.String())
			require.NoError(t, err)
			for i := range n {
				switch cmd {
				case "SET":
					require.Equal(t, "+OK", wr.line(t), "SET %d", i)
				case "HSET":
					require.Equal(t, ":0", wr.line(t), "HSET %d", i)
				case "DEL":
					require.Equal(t, ":1", wr.line(t), "DEL %d", i)
					require.Equal(t, "+OK", wr.line(t), "SET g%d", i)
				case "MSET":
					require.Equal(t, ":1", wr.line(t), "DEL %d", i)
					require.Equal(t, "+OK", wr.line(t), "MSET g%d", i)
				}
			}
		})
	}
}

// heldLog is a durable endpoint whose log writer can be held: while it
// is, nothing more becomes durable.
func heldLog(t *testing.T) (e *endpoint, hold, release func()) {
	var mu sync.Mutex
	var held atomic.Bool
	e = newDurableEndpoint(t, journal.FsyncBatch, func(cfg *controller.Config) {
		cfg.OnJournalWrite = func(time.Duration, int) {
			if held.Load() {
				mu.Lock()
				mu.Unlock()
			}
		}
	})
	hold = func() { mu.Lock(); held.Store(true) }
	release = func() { held.Store(false); mu.Unlock() }
	return e, hold, release
}

// noReply checks that nothing reaches the client for a while.
func noReply(t *testing.T, w net.Conn, what string) {
	t.Helper()
	w.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	var buf [1]byte
	_, err := w.Read(buf[:])
	var ne net.Error
	require.ErrorAs(t, err, &ne, "%s: a reply came before the log was durable: %q", what, buf[:])
	require.True(t, ne.Timeout())
	w.SetReadDeadline(time.Time{})
}

// TestDurablePipelineHeldReplies: replies held for the log do not go out
// by the other ways to the socket either: the large value of an EXEC
// after its SETs (written from where it lies, after a flush), the reads
// and the error that follow owed writes in one pipeline, a QUIT. Each
// goes out once the log is durable, with the values the pipeline wrote.
func TestDurablePipelineHeldReplies(t *testing.T) {
	e, hold, release := heldLog(t)
	big := strings.Repeat("b", 256<<10)
	w, wr := e.raw(t)
	_, err := io.WriteString(w, cmdline("SET", "big", big)+cmdline("MULTI")+cmdline("SET", "a", "1")+cmdline("DEL", "x")+cmdline("GET", "big"))
	require.NoError(t, err)
	require.Equal(t, "+OK", wr.line(t))
	require.Equal(t, "+OK", wr.line(t))
	require.Equal(t, "+QUEUED", wr.line(t))
	require.Equal(t, "+QUEUED", wr.line(t))
	require.Equal(t, "+QUEUED", wr.line(t))

	hold()
	_, err = io.WriteString(w, cmdline("EXEC"))
	require.NoError(t, err)
	noReply(t, w, "EXEC of SET, DEL, GET of a large value")
	release()
	require.Equal(t, "*3", wr.line(t))
	require.Equal(t, "+OK", wr.line(t))
	require.Equal(t, ":0", wr.line(t))
	require.Equal(t, big, string(wr.bulk(t)))

	hold()
	_, err = io.WriteString(w, cmdline("SET", "a", "2")+cmdline("HSET", "h", "f", "v")+cmdline("EXISTS", "a", "h")+
		cmdline("NOSUCH")+cmdline("DEL", "a")+cmdline("QUIT"))
	require.NoError(t, err)
	noReply(t, w, "SET, HSET, EXISTS, an unknown command, DEL, QUIT")
	release()
	require.Equal(t, "+OK", wr.line(t))
	require.Equal(t, ":1", wr.line(t))
	require.Equal(t, ":2", wr.line(t))
	require.Contains(t, wr.line(t), "-ERR unknown command")
	require.Equal(t, ":1", wr.line(t))
	require.Equal(t, "+OK", wr.line(t))
}

// TestDurablePipelineShutdown: Shutdown lets held replies wait for the
// log and go out before it closes the connection.
func TestDurablePipelineShutdown(t *testing.T) {
	e, hold, release := heldLog(t)
	w, wr := e.raw(t)
	hold()
	_, err := io.WriteString(w, cmdline("SET", "a", "1")+cmdline("DEL", "a"))
	require.NoError(t, err)
	noReply(t, w, "SET, DEL")
	done := make(chan error, 1)
	go func() { done <- e.srv.Shutdown(context.Background()) }()
	noReply(t, w, "SET, DEL with Shutdown begun")
	release()
	require.Equal(t, "+OK", wr.line(t))
	require.Equal(t, ":1", wr.line(t))
	require.NoError(t, <-done)
	_, err = wr.r.line(1 << 20)
	require.Error(t, err, "the connection is closed after its replies")
}
