package resp

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// churnToken and churnMaxValue are the churn endpoint's token and frame
// bound (Config.MaxValue).
const (
	churnToken    = "churn-token"
	churnMaxValue = 256 << 10
)

// respLevels is what a RESP endpoint holds that must not grow with the
// clients it served: the process's goroutines and descriptors, the units'
// bytes, the controller's partitions and keys, and the server's tables
// of connections.
type respLevels struct {
	goroutines, fds          int
	used                     int64
	parts, keys              int
	conns, unauthed, evicted int
	loopConns, loopUnauthed  int
	turningAway              int
	largeHeld                bool // the budget for large arguments is not whole
}

// settled waits (bounded) for the server to have no connection left,
// then measures.
func (e *endpoint) settled(t *testing.T) respLevels {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		e.srv.mu.Lock()
		n := len(e.srv.conns)
		e.srv.mu.Unlock()
		if n == 0 && e.srv.turningAway.Load() == 0 {
			break
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d connections still open 30 s after their clients closed them:\n%s", n, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(5 * time.Millisecond)
	}
	var l respLevels
	// Goroutines that end after their connection was unlisted (a
	// connection's goroutine returns just after) get a moment.
	for range 200 {
		runtime.GC()
		l.goroutines = runtime.NumGoroutine()
		ents, err := os.ReadDir("/proc/self/fd")
		require.NoError(t, err)
		l.fds = len(ents)
		if l.goroutines <= 64 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	l.used = e.used()
	ctrl := e.e.Controller
	for _, p := range ctrl.Partitions() {
		l.parts++
		st, err := ctrl.Stats(p)
		require.NoError(t, err)
		l.keys += st.Keys
	}
	s := e.srv
	s.mu.Lock()
	l.conns, l.unauthed, l.evicted = len(s.conns), s.unauthed.Len(), s.nevicted
	for _, lp := range s.loops {
		l.loopConns += lp.set.Len()
		l.loopUnauthed += int(lp.unauthed.Load())
	}
	s.mu.Unlock()
	l.turningAway = int(s.turningAway.Load())
	if s.large.TryAcquire(s.cfg.LargeInFlight) {
		s.large.Release(s.cfg.LargeInFlight)
	} else {
		l.largeHeld = true
	}
	return l
}

// churnDial dials the endpoint, authenticated when auth is set.
func churnDial(t *testing.T, e *endpoint, auth bool) *rawConn {
	t.Helper()
	c, err := dialRaw(e.addr)
	require.NoError(t, err)
	if auth {
		require.Equal(t, "+OK\r\n", churnDo(t, c, "AUTH", churnToken))
	}
	return c
}

func churnDo(t *testing.T, c *rawConn, args ...string) string {
	t.Helper()
	r, err := c.do(args...)
	require.NoError(t, err, "%v", args[0])
	return r
}

// respCommand is args as a RESP array.
func respCommand(args ...string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	return b.Bytes()
}

// churnRound is one round of clients, careful and careless, against e.
func churnRound(t *testing.T, e *endpoint, rng *rand.Rand, round int) {
	t.Helper()
	part := fmt.Sprintf("p%d", round)

	// A client that works: partition switching, a pipelined burst of
	// every kind of command, a SCAN left unfinished, a value at the frame
	// bound, then FLUSHDB.
	c := churnDial(t, e, true)
	require.Equal(t, "+OK\r\n", churnDo(t, c, "SELECT", part))
	var burst bytes.Buffer
	n := 8 + rng.IntN(24)
	for j := range n {
		k := fmt.Sprintf("k%d", j)
		burst.Write(respCommand("SET", k, strings.Repeat("v", rng.IntN(100))))
		burst.Write(respCommand("GET", k))
		burst.Write(respCommand("HSET", "h"+k, "f1", "a", "f2", "b"))
		burst.Write(respCommand("HDEL", "h"+k, "f1"))
		burst.Write(respCommand("TQ.TAG", k, "status", "running"))
		burst.Write(respCommand("TQ.TAGCAS", k, "status", "OLD", "running", "NEW", "done"))
		burst.Write(respCommand("TQ.TAGS", k))
		burst.Write(respCommand("TQ.TAGDEL", "h"+k, "none"))
	}
	burst.Write(respCommand("DEL", "k0", "hk0"))
	burst.Write(respCommand("KEYS", "k*"))
	burst.Write(respCommand("SCAN", "0", "COUNT", "2"))
	burst.Write(respCommand("TQ.LIST", "EQ", "status", "done"))
	burst.Write(respCommand("SELECT", "0"))
	burst.Write(respCommand("TQ.PARTITION", part))
	_, err := c.Write(burst.Bytes())
	require.NoError(t, err)
	var replies []string
	c.SetDeadline(time.Now().Add(10 * time.Second)) // a safety limit only
	for range 8*n + 6 {
		var out strings.Builder
		require.NoError(t, c.reply(&out))
		replies = append(replies, out.String())
	}
	for j := range n {
		r := replies[8*j : 8*j+8]
		require.Equal(t, "+OK\r\n", r[0], "SET k%d", j)
		require.NotEqual(t, '-', r[1][0], "GET k%d: %s", j, r[1])
		require.Equal(t, ":2\r\n", r[2], "HSET hk%d", j)
		require.Equal(t, ":1\r\n", r[3], "HDEL hk%d", j)
		require.Equal(t, "+OK\r\n", r[4], "TQ.TAG k%d", j)
		require.True(t, strings.HasPrefix(r[5], "*2\r\n:1\r\n"), "TQ.TAGCAS k%d: %q", j, r[5])
		require.Equal(t, ":0\r\n", r[7], "TQ.TAGDEL hk%d", j)
	}
	tail := replies[8*n:]
	require.Equal(t, ":2\r\n", tail[0], "DEL")
	require.True(t, strings.HasPrefix(tail[1], fmt.Sprintf("*%d\r\n", n-1)), "KEYS: %q", tail[1])
	require.True(t, strings.HasPrefix(tail[2], "*2\r\n"), "SCAN: %q", tail[2])
	big := make([]byte, churnMaxValue-rng.IntN(16))
	rand.NewChaCha8([32]byte{byte(round)}).Read(big)
	require.Equal(t, "+OK\r\n", churnDo(t, c, "SET", "big", string(big)))
	require.Equal(t, fmt.Sprintf("$%d\r\n%s\r\n", len(big), big), churnDo(t, c, "GET", "big"))
	require.Equal(t, "+OK\r\n", churnDo(t, c, "FLUSHDB"))
	require.Equal(t, ":0\r\n", churnDo(t, c, "DBSIZE"))
	c.Close()

	// Clients that leave half-way.
	switch round % 8 {
	case 0: // half a bulk string
		c := churnDial(t, e, true)
		_, err := c.Write([]byte("*3\r\n$3\r\nSET\r\n$4\r\ngone\r\n$100\r\nabc"))
		require.NoError(t, err)
		c.Close()
	case 1: // commands queued, no EXEC
		c := churnDial(t, e, true)
		require.Equal(t, "+OK\r\n", churnDo(t, c, "SELECT", part))
		require.Equal(t, "+OK\r\n", churnDo(t, c, "MULTI"))
		require.Equal(t, "+QUEUED\r\n", churnDo(t, c, "SET", "queued", "x"))
		require.Equal(t, "+QUEUED\r\n", churnDo(t, c, "HSET", "queued", "f", "x"))
		c.Close()
	case 2: // a failed AUTH, then gone
		c := churnDial(t, e, false)
		require.True(t, strings.HasPrefix(churnDo(t, c, "AUTH", "wrong"), "-WRONGPASS"))
		c.Close()
	case 3: // three failed AUTHs: the server closes it
		c := churnDial(t, e, false)
		for range 3 {
			require.True(t, strings.HasPrefix(churnDo(t, c, "AUTH", "wrong"), "-WRONGPASS"))
		}
		_, err := c.do("PING")
		require.Error(t, err, "PING after three failed AUTHs")
		c.Close()
	case 4: // a value over the frame bound: refused, named, closed
		c := churnDial(t, e, true)
		_, err := c.Write(fmt.Appendf(nil, "*3\r\n$3\r\nSET\r\n$4\r\nover\r\n$%d\r\n", churnMaxValue+1))
		require.NoError(t, err)
		var out strings.Builder
		require.NoError(t, c.reply(&out))
		require.True(t, strings.HasPrefix(out.String(), "-ERR ") && strings.Contains(out.String(), strconv.Itoa(churnMaxValue)), "over the bound: %q", out.String())
		c.Close()
	case 5: // connected, never a word
		c := churnDial(t, e, false)
		c.Close()
	case 6: // a pipeline sent, its replies never read
		c := churnDial(t, e, true)
		var b bytes.Buffer
		for j := range 200 {
			b.Write(respCommand("GET", fmt.Sprintf("{keep}k%d", j)))
		}
		_, err := c.Write(b.Bytes())
		require.NoError(t, err)
		c.Close()
	case 7: // waiting for a change (TQ.CHANGES … TIMEOUT), then gone
		c := churnDial(t, e, true)
		require.Equal(t, "+OK\r\n", churnDo(t, c, "SELECT", part))
		_, err := c.Write(respCommand("TQ.CHANGES", "0", "TIMEOUT", "300000"))
		require.NoError(t, err)
		c.Close()
	}
}

// TestRESPChurnLeavesNothing: clients that work, and clients that
// leave mid-command, mid-MULTI, after failed AUTHs, over the frame
// bound, while waiting in TQ.CHANGES, round after round. What the endpoint holds (goroutines,
// descriptors, the units' bytes, the controller's partitions and keys,
// its tables of connections, its budget for large values) is back where
// it was after a warm-up, and a value written first reads back
// bit-exact. RESP_CHURN_ROUNDS sets the rounds after the warm-up (60 by
// default; thousands for a long look).
func TestRESPChurnLeavesNothing(t *testing.T) {
	rounds := 60
	if s := os.Getenv("RESP_CHURN_ROUNDS"); s != "" {
		var err error
		rounds, err = strconv.Atoi(s)
		require.NoError(t, err, "RESP_CHURN_ROUNDS")
	}
	if testing.Short() {
		rounds = 20
	}
	for _, loops := range []int{1, -1} {
		t.Run(fmt.Sprintf("loops=%d", loops), func(t *testing.T) {
			e := newEndpoint(t, Config{Token: churnToken, MaxValue: churnMaxValue, Loops: loops})
			rng := rand.New(rand.NewPCG(1, uint64(loops+2)))
			first := make([]byte, 100<<10)
			rand.NewChaCha8([32]byte{1, byte(loops)}).Read(first)
			c := churnDial(t, e, true)
			require.Equal(t, "+OK\r\n", churnDo(t, c, "SET", "{keep}first", string(first)))
			c.Close()

			const warm = 16
			for i := range warm {
				churnRound(t, e, rng, i)
			}
			at := e.settled(t)
			for i := warm; i < warm+rounds; i++ {
				churnRound(t, e, rng, i)
			}
			end := e.settled(t)
			t.Logf("after warm-up: %+v", at)
			t.Logf("after %d rounds: %+v", rounds, end)

			require.LessOrEqual(t, end.goroutines, at.goroutines+4, "goroutines after %d rounds", rounds)
			require.LessOrEqual(t, end.fds, at.fds+4, "open descriptors after %d rounds", rounds)
			require.LessOrEqual(t, end.used, at.used, "units' used bytes after %d rounds", rounds)
			require.Equal(t, at.parts, end.parts, "partitions after %d rounds", rounds)
			require.Equal(t, at.keys, end.keys, "keys after %d rounds", rounds)
			require.Zero(t, end.conns, "connections listed")
			require.Zero(t, end.unauthed, "unauthenticated connections listed")
			require.Zero(t, end.evicted, "evicted connections counted")
			require.Zero(t, end.loopConns, "connections on loops")
			require.Zero(t, end.loopUnauthed, "unauthenticated connections counted on loops")
			require.False(t, end.largeHeld, "budget for large values held")

			c = churnDial(t, e, true)
			defer c.Close()
			require.Equal(t, fmt.Sprintf("$%d\r\n%s\r\n", len(first), first), churnDo(t, c, "GET", "{keep}first"), "the value written first")
		})
	}
}
