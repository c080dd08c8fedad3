package resp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/controller/journal"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/storage"
)

// onLoop counts the endpoint's connections a loop serves.
func (e *endpoint) onLoop() int {
	e.srv.mu.Lock()
	loops := e.srv.loops
	e.srv.mu.Unlock()
	n := 0
	for _, lp := range loops {
		n += lp.set.Len()
	}
	return n
}

// cmdline encodes args as a RESP array.
func cmdline(args ...string) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&sb, "$%d\r\n%s\r\n", len(a), a)
	}
	return sb.String()
}

func (rr *replyReader) bulk(t *testing.T) []byte {
	t.Helper()
	head := rr.line(t)
	require.True(t, strings.HasPrefix(head, "$"), "a bulk reply, not %q", head)
	var n int
	_, err := fmt.Sscanf(head, "$%d", &n)
	require.NoError(t, err)
	b := make([]byte, n+2)
	_, err = io.ReadFull(rr.r.br, b)
	require.NoError(t, err)
	return b[:n]
}

// TestLoop checks what a loop serves itself and each way a connection
// leaves it for a goroutine: every reply arrives, in order, and the
// connection goes on working.
func TestLoop(t *testing.T) {
	t.Run("small commands stay on the loop", func(t *testing.T) {
		e := newEndpoint(t, Config{})
		nc, rr := e.raw(t)
		io.WriteString(nc, cmdline("SET", "a", "1")+cmdline("GET", "a")+cmdline("PING")+cmdline("EXISTS", "a", "b")+
			cmdline("HGET", "a", "value")+cmdline("SELECT", "p")+cmdline("GET", "a")+cmdline("GET", "{default}a"))
		for _, want := range []string{"+OK", "$1", "1", "+PONG", ":1", "$1", "1", "+OK", "$-1", "$1", "1"} {
			assert.Equal(t, want, rr.line(t))
		}
		assert.Equal(t, 1, e.onLoop())
	})
	t.Run("empty and null arrays stay on the loop", func(t *testing.T) {
		// Redis skips "*0" and "*-1" with no reply; before, a loop took
		// only counts of 1 or more, and either sent its connection to a
		// goroutine for good.
		e := newEndpoint(t, Config{})
		nc, rr := e.raw(t)
		io.WriteString(nc, "*0\r\n"+cmdline("PING")+"*-1\r\n*0\r\n"+cmdline("SET", "a", "1")+"*-1\r\n")
		assert.Equal(t, "+PONG", rr.line(t))
		assert.Equal(t, "+OK", rr.line(t))
		io.WriteString(nc, "*0\r\n")
		io.WriteString(nc, cmdline("GET", "a"))
		assert.Equal(t, "1", string(rr.bulk(t)))
		assert.Equal(t, 1, e.onLoop())
	})
	t.Run("a command the loop does not take", func(t *testing.T) {
		e := newEndpoint(t, Config{})
		nc, rr := e.raw(t)
		io.WriteString(nc, cmdline("SET", "a", "1")+cmdline("MSET", "b", "2", "c", "3")+cmdline("GET", "c")+cmdline("GET", "a"))
		for _, want := range []string{"+OK", "+OK", "$1", "3", "$1", "1"} {
			assert.Equal(t, want, rr.line(t))
		}
		assert.Equal(t, 0, e.onLoop())
		io.WriteString(nc, cmdline("GET", "b"))
		assert.Equal(t, "2", string(rr.bulk(t)))
	})
	t.Run("a command cut in two", func(t *testing.T) {
		e := newEndpoint(t, Config{CommandTimeout: 5 * time.Second})
		nc, rr := e.raw(t)
		set := cmdline("SET", "k", "v")
		io.WriteString(nc, cmdline("PING")+set[:9])
		assert.Equal(t, "+PONG", rr.line(t), "the whole command before is answered at once")
		time.Sleep(50 * time.Millisecond)
		io.WriteString(nc, set[9:]+cmdline("GET", "k"))
		assert.Equal(t, "+OK", rr.line(t))
		assert.Equal(t, "v", string(rr.bulk(t)))
		assert.Equal(t, 0, e.onLoop())
	})
	t.Run("a large reply", func(t *testing.T) {
		e := newEndpoint(t, Config{})
		big := bytes.Repeat([]byte("0123456789abcdef"), 8<<10) // 128 KiB
		b, err := engine.NewBatch(engine.Field{Name: "value", Col: engine.BytesOf([][]byte{big})})
		require.NoError(t, err)
		_, err = e.kv.Put(context.Background(), "default", "big", b, nil)
		require.NoError(t, err)
		nc, rr := e.raw(t)
		io.WriteString(nc, cmdline("SET", "small", "s")+cmdline("GET", "big")+cmdline("GET", "small"))
		assert.Equal(t, "+OK", rr.line(t))
		assert.True(t, bytes.Equal(big, rr.bulk(t)))
		assert.Equal(t, "s", string(rr.bulk(t)))
		assert.Equal(t, 0, e.onLoop())
	})
	t.Run("a client that does not read", func(t *testing.T) {
		e := newEndpoint(t, Config{})
		val := bytes.Repeat([]byte{7}, 60<<10)
		b, err := engine.NewBatch(engine.Field{Name: "value", Col: engine.BytesOf([][]byte{val})})
		require.NoError(t, err)
		_, err = e.kv.Put(context.Background(), "default", "v", b, nil)
		require.NoError(t, err)
		nc, rr := e.raw(t)
		// 200 replies of 60 KiB: more than the socket takes at once,
		// so the loop cannot write them all; nothing is read yet.
		io.WriteString(nc, strings.Repeat(cmdline("GET", "v"), 200))
		require.Eventually(t, func() bool { return e.onLoop() == 0 }, 10*time.Second, time.Millisecond)
		for i := range 200 {
			require.True(t, bytes.Equal(val, rr.bulk(t)), "reply %d", i)
		}
	})
	t.Run("input that is not plain RESP", func(t *testing.T) {
		e := newEndpoint(t, Config{})
		nc, rr := e.raw(t)
		io.WriteString(nc, cmdline("SET", "a", "1")+"GET a\r\n"+cmdline("GET", "a"))
		for _, want := range []string{"+OK", "$1", "1", "$1", "1"} {
			assert.Equal(t, want, rr.line(t))
		}
		assert.Equal(t, 0, e.onLoop())
		io.WriteString(nc, "*1\r\n$x\r\n")
		assert.Contains(t, rr.line(t), "-ERR Protocol error", "the connection's reader names what was wrong")
	})
	t.Run("authentication", func(t *testing.T) {
		e := newEndpoint(t, Config{Token: "secret", AuthTimeout: 200 * time.Millisecond})
		nc, rr := e.raw(t)
		io.WriteString(nc, cmdline("GET", "a")+cmdline("AUTH", "wrong")+cmdline("AUTH", "secret")+cmdline("SET", "a", "1"))
		assert.Equal(t, "-NOAUTH Authentication required.", rr.line(t))
		assert.Equal(t, "-"+errWrongPass, rr.line(t))
		assert.Equal(t, "+OK", rr.line(t))
		assert.Equal(t, "+OK", rr.line(t))
		time.Sleep(400 * time.Millisecond) // past AuthTimeout: authenticated, it stays
		io.WriteString(nc, cmdline("GET", "a"))
		assert.Equal(t, "1", string(rr.bulk(t)))
		assert.Equal(t, 1, e.onLoop())

		// One that does not authenticate is closed by its loop; a
		// command over the limits before AUTH sends it to its reader,
		// which refuses it.
		_, idle := e.raw(t)
		start := time.Now()
		_, err := idle.r.line(100)
		require.Error(t, err)
		assert.Less(t, time.Since(start), 5*time.Second)
		big, rr := e.raw(t)
		io.WriteString(big, cmdline("AUTH", strings.Repeat("x", 5000)))
		assert.Contains(t, rr.line(t), "exceeds the limit of 4096 before AUTH")
	})
	t.Run("quit", func(t *testing.T) {
		e := newEndpoint(t, Config{})
		nc, rr := e.raw(t)
		io.WriteString(nc, cmdline("PING")+cmdline("QUIT")+cmdline("PING"))
		assert.Equal(t, "+PONG", rr.line(t))
		assert.Equal(t, "+OK", rr.line(t))
		_, err := rr.r.line(100)
		assert.True(t, errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF), "closed after QUIT: %v", err)
	})
	t.Run("close", func(t *testing.T) {
		e := newEndpoint(t, Config{})
		nc, rr := e.raw(t)
		io.WriteString(nc, cmdline("PING"))
		assert.Equal(t, "+PONG", rr.line(t))
		require.NoError(t, e.srv.Close())
		_, err := rr.r.line(100)
		assert.Error(t, err)
		_, err = net.Dial("tcp", e.addr)
		assert.Error(t, err)
	})
	t.Run("no loops", func(t *testing.T) {
		e := newEndpoint(t, Config{Loops: -1})
		nc, rr := e.raw(t)
		io.WriteString(nc, cmdline("SET", "a", "1")+cmdline("GET", "a"))
		assert.Equal(t, "+OK", rr.line(t))
		assert.Equal(t, "1", string(rr.bulk(t)))
		assert.Empty(t, e.srv.loops)
	})
}

// TestLoopDurable: with a durable controller a SET leaves the loop (its
// commit waits for the log), and reads of what is durable stay on it.
func TestLoopDurable(t *testing.T) {
	e := newDurableEndpoint(t, journal.FsyncBatch)

	w, wr := e.raw(t)
	io.WriteString(w, cmdline("SET", "a", "1")+cmdline("SET", "b", "2"))
	assert.Equal(t, "+OK", wr.line(t))
	assert.Equal(t, "+OK", wr.line(t))
	assert.Equal(t, 0, e.onLoop(), "the writer left its loop")
	r, rr := e.raw(t)
	io.WriteString(r, cmdline("GET", "a")+cmdline("HGET", "b", "value")+cmdline("EXISTS", "a", "b", "c")+cmdline("GET", "c"))
	assert.Equal(t, "1", string(rr.bulk(t)))
	assert.Equal(t, "2", string(rr.bulk(t)))
	assert.Equal(t, ":2", rr.line(t))
	assert.Equal(t, "$-1", rr.line(t))
	assert.Equal(t, 1, e.onLoop(), "the reader stays on its loop")
}

// FuzzLoopParse checks the loop's framing against the connection's
// reader: a command the loop frames, the reader reads the same, and what
// the loop leaves is the rest of the input.
func FuzzLoopParse(f *testing.F) {
	for _, s := range []string{
		cmdline("SET", "k", "v"), cmdline("PING") + cmdline("GET", "k"), "*1\r\n$3\r\nab", "*01\r\n$004\r\nPING\r\n",
		"*2\r\n$1\r\na\r\n$99999999999\r\n", "*1\r\n$-1\r\n", "*0\r\n", "PING\r\n", "*1\r\n$1\r\nab\r\n",
	} {
		f.Add([]byte(s), true)
	}
	lp := &loop{}
	f.Fuzz(func(t *testing.T, in []byte, authed bool) {
		args, rest, ok := lp.parse(in, authed)
		if !ok {
			return
		}
		require.True(t, bytes.HasSuffix(in, rest))
		r := newReader(bytes.NewReader(in[:len(in)-len(rest)]), 1<<30)
		r.authed = authed
		back, err := r.next()
		require.NoError(t, err, "the loop framed %q", in)
		require.Equal(t, len(back), len(args))
		for i := range args {
			require.True(t, bytes.Equal(args[i], back[i]))
		}
		_, err = r.next()
		require.ErrorIs(t, err, io.EOF, "the reader reads no more than the loop did")
	})
}

// newDurableEndpoint serves an endpoint over a controller with a journal
// (fsync as given; opts change the rest of its configuration) and one
// storage unit.
func newDurableEndpoint(t *testing.T, fsync journal.Fsync, opts ...func(*controller.Config)) *endpoint {
	t.Helper()
	cfg := controller.DefaultConfig()
	cfg.Dir, cfg.Fsync = t.TempDir(), fsync
	for _, o := range opts {
		o(&cfg)
	}
	e, _, _ := endpointOnOneUnit(t, cfg, 16<<20, Config{})
	return e
}

// endpointOnOneUnit serves an endpoint (cfg) over a controller (ccfg)
// and one storage unit of capacity bytes in one segment, which it
// returns too.
func endpointOnOneUnit(t *testing.T, ccfg controller.Config, capacity int64, cfg Config) (*endpoint, *controller.Controller, *storage.Unit) {
	t.Helper()
	ctrl, err := controller.New(ccfg)
	require.NoError(t, err)
	t.Cleanup(func() { ctrl.Close() })
	scfg := storage.DefaultConfig()
	scfg.Capacity, scfg.SegmentSize = capacity, capacity
	u, err := storage.NewUnit(0, scfg)
	require.NoError(t, err)
	t.Cleanup(func() { u.Close() })
	id, err := ctrl.Units().Register(engine.UnitInfo{Incarnation: u.Incarnation(), Host: "h", Name: "u", Capacity: scfg.Capacity}, true)
	require.NoError(t, err)
	u.SetID(id)
	srv, err := NewServer(ctrl, []*storage.Unit{u}, cfg)
	require.NoError(t, err)
	return &endpoint{addr: serve(t, srv), srv: srv}, ctrl, u
}
