package resp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// unauthModes are where an idle unauthenticated connection may be served:
// on a loop, on a goroutine of its own (no loops), and on a goroutine it
// moved to from a loop (it sent half a command, which the loop does not
// take: its goroutine reads the rest, within AuthTimeout).
var unauthModes = []struct {
	name  string
	loops int
	begin string // what the idle connection sends
}{
	{"loop", 1, ""},
	{"goroutine", -1, ""},
	{"left the loop", 1, "*2\r\n$4\r\nAUTH\r\n"},
}

// unauthServer serves with a token, a connection cap well above the cap
// on unauthenticated ones, and an AuthTimeout far longer than the tests
// run, so that only the cap on unauthenticated connections can free a
// slot.
func unauthServer(t *testing.T, loops, maxClients, maxUnauth int) *endpoint {
	t.Helper()
	return newEndpoint(t, Config{Token: "secret", Loops: loops, MaxClients: maxClients, MaxUnauthenticated: maxUnauth, AuthTimeout: time.Minute})
}

// conns returns how many connections the server holds.
func conns(s *Server) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// onGoroutine reports whether every connection the server holds is
// served by a goroutine of its own (none is on a loop).
func onGoroutine(s *Server) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		if c.nc == nil {
			return false
		}
	}
	return true
}

// idleConn dials a connection that sends begin and then nothing, never
// authenticates and never closes, and waits until the server holds it
// (in the place its mode puts it), so that connections are held in the
// order they were dialed.
func idleConn(t *testing.T, e *endpoint, begin string, want int) net.Conn {
	t.Helper()
	nc, err := net.Dial("tcp", e.addr)
	require.NoError(t, err)
	t.Cleanup(func() { nc.Close() })
	if begin != "" {
		_, err = io.WriteString(nc, begin)
		require.NoError(t, err)
	}
	require.Eventually(t, func() bool { return conns(e.srv) == want }, 5*time.Second, time.Millisecond)
	if begin != "" {
		require.Eventually(t, func() bool { return onGoroutine(e.srv) }, 5*time.Second, time.Millisecond)
	}
	return nc
}

// authClient connects with the token and runs SET and GET, each within
// a short deadline (liveness only).
func authClient(t *testing.T, e *endpoint, key string) *redis.Client {
	t.Helper()
	rc := e.client(t, &redis.Options{Password: "secret", Protocol: 2, DialTimeout: 5 * time.Second, ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second, MaxRetries: -1, PoolSize: 1})
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	require.NoError(t, rc.Set(ctx, key, "v-"+key, 0).Err(), "an authenticating client is locked out")
	got, err := rc.Get(ctx, key).Result()
	require.NoError(t, err)
	require.Equal(t, "v-"+key, got)
	return rc
}

// TestUnauthCapAdmitsAuthenticatingClient: a peer opens as many
// connections as MaxClients allows and holds them open, never
// authenticating; only MaxUnauthenticated of them stay (the oldest are
// closed), so a client that authenticates still connects and is served,
// again and again, while they are held.
func TestUnauthCapAdmitsAuthenticatingClient(t *testing.T) {
	const limit = 4
	for _, m := range unauthModes {
		t.Run(m.name, func(t *testing.T) {
			e := unauthServer(t, m.loops, 2*limit, limit)
			for range 2 * limit {
				nc, err := net.Dial("tcp", e.addr)
				require.NoError(t, err)
				t.Cleanup(func() { nc.Close() })
				if m.begin != "" {
					_, err = io.WriteString(nc, m.begin)
					require.NoError(t, err)
				}
			}
			require.Eventually(t, func() bool { return e.srv.ids.Load() == 2*limit }, 5*time.Second, time.Millisecond, "the idle connections were not all accepted")
			var clients []*redis.Client
			for i := range limit / 2 {
				clients = append(clients, authClient(t, e, fmt.Sprint("k", i)))
			}
			for i, rc := range clients {
				ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
				assert.Equal(t, fmt.Sprint("v-k", i), rc.Get(ctx, fmt.Sprint("k", i)).Val())
				cancel()
			}
			// The first client's connection made room by closing an idle
			// one; the others found it free again once that client
			// authenticated: limit-1 idle connections are left.
			require.Eventually(t, func() bool { return conns(e.srv) == limit-1+limit/2 }, 5*time.Second, time.Millisecond)
		})
	}
}

// TestUnauthCapClosesOldestWithNamedError: past MaxUnauthenticated the
// oldest connection that has not authenticated is answered an -ERR line
// naming the limit and closed, wherever it is served, so that the
// newest, which has just sent its AUTH if it is a client, can have its
// slot; the others are left alone.
func TestUnauthCapClosesOldestWithNamedError(t *testing.T) {
	const limit = 3
	for _, m := range unauthModes {
		t.Run(m.name, func(t *testing.T) {
			e := unauthServer(t, m.loops, 100, limit)
			var idle []net.Conn
			for i := range limit {
				idle = append(idle, idleConn(t, e, m.begin, i+1))
			}
			past, err := net.Dial("tcp", e.addr) // one past the limit: the oldest goes
			require.NoError(t, err)
			t.Cleanup(func() { past.Close() })
			var l []byte
			rr := &replyReader{r: newReader(idle[0], 1<<20)}
			idle[0].SetReadDeadline(time.Now().Add(5 * time.Second))
			l, err = rr.r.line(1 << 10)
			require.NoError(t, err, "the oldest connection got no error")
			assert.Equal(t, fmt.Sprintf("-ERR max number of unauthenticated clients reached (%d, MaxUnauthenticated); this one, the oldest, is closed", limit), string(l))
			_, err = rr.r.line(1 << 10)
			require.Error(t, err)
			var ne net.Error
			assert.False(t, errors.As(err, &ne) && ne.Timeout(), "the oldest connection was not closed")
			require.Eventually(t, func() bool { return conns(e.srv) == limit }, 5*time.Second, time.Millisecond)
			// The others were left alone: none got anything.
			for _, nc := range idle[1:] {
				nc.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
				_, rerr := nc.Read(make([]byte, 1))
				require.ErrorAs(t, rerr, &ne)
				assert.True(t, ne.Timeout(), "a younger connection was closed: %v", rerr)
			}
		})
	}
}

// TestUnauthCapSparesAuthenticated: connections that authenticated leave
// the count: many more of them than MaxUnauthenticated stay open and
// served, and idle unauthenticated ones up to the limit are still held
// beside them. Without a token no connection is counted.
func TestUnauthCapSparesAuthenticated(t *testing.T) {
	const limit = 2
	for _, loops := range []int{1, -1} {
		t.Run(fmt.Sprintf("loops=%d", loops), func(t *testing.T) {
			e := unauthServer(t, loops, 100, limit)
			var clients []*redis.Client
			for i := range 5 * limit {
				clients = append(clients, authClient(t, e, fmt.Sprint("k", i)))
			}
			var idle []net.Conn
			for i := range limit {
				idle = append(idle, idleConn(t, e, "", 5*limit+i+1))
			}
			for i, rc := range clients {
				ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
				require.NoError(t, rc.Ping(ctx).Err(), "an authenticated connection was closed")
				assert.Equal(t, fmt.Sprint("v-k", i), rc.Get(ctx, fmt.Sprint("k", i)).Val())
				cancel()
			}
			assert.Equal(t, 5*limit+limit, conns(e.srv))
			for _, nc := range idle {
				nc.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
				_, rerr := nc.Read(make([]byte, 1))
				var ne net.Error
				require.ErrorAs(t, rerr, &ne)
				assert.True(t, ne.Timeout(), "an idle connection under the limit was closed: %v", rerr)
			}
		})
	}
	t.Run("no token", func(t *testing.T) {
		e := newEndpoint(t, Config{MaxUnauthenticated: 1})
		var idle []net.Conn
		for i := range 3 {
			idle = append(idle, idleConn(t, e, "", i+1))
		}
		time.Sleep(50 * time.Millisecond)
		assert.Equal(t, 3, conns(e.srv))
		for _, nc := range idle {
			_, err := io.WriteString(nc, "*1\r\n$4\r\nPING\r\n")
			require.NoError(t, err)
			rr := &replyReader{r: newReader(nc, 1<<20)}
			nc.SetReadDeadline(time.Now().Add(5 * time.Second))
			assert.Equal(t, "+PONG", rr.line(t))
		}
	})
}

// TestUnauthCapDefault: the default is DefaultMaxUnauthenticated, or a
// quarter of MaxClients where that is smaller; negative means no limit.
func TestUnauthCapDefault(t *testing.T) {
	assert.Equal(t, DefaultMaxUnauthenticated, Config{}.withDefaults().MaxUnauthenticated)
	assert.Equal(t, 4, Config{MaxClients: 16}.withDefaults().MaxUnauthenticated)
	assert.Equal(t, 1, Config{MaxClients: 2}.withDefaults().MaxUnauthenticated)
	assert.Equal(t, DefaultMaxUnauthenticated, Config{MaxClients: 100000}.withDefaults().MaxUnauthenticated)
	assert.Equal(t, -1, Config{MaxUnauthenticated: -1}.withDefaults().MaxUnauthenticated)
	assert.Equal(t, 7, Config{MaxUnauthenticated: 7}.withDefaults().MaxUnauthenticated)
}

// TestUnauthCapEvictedRunsNothingBuffered: a connection evicted past
// MaxUnauthenticated runs none of the commands it sent before, which its
// server had already read but not served: its loop found them in the
// poll before the eviction (the loop serves what a poll found before it
// expires the evicted), or its goroutine holds them in its reader's
// buffer (it looks for an eviction only when it reads). It is answered
// the eviction's error first, and closed. The eviction is made by hand,
// between the read and the serving, which are otherwise microseconds
// apart.
func TestUnauthCapEvictedRunsNothingBuffered(t *testing.T) {
	for _, onLoop := range []bool{true, false} {
		t.Run(fmt.Sprintf("loop=%v", onLoop), func(t *testing.T) {
			e := unauthServer(t, -1, 100, 1) // no loop runs: the test serves by hand
			s := e.srv
			l, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			defer l.Close()
			client, err := net.Dial("tcp", l.Addr().String())
			require.NoError(t, err)
			defer client.Close()
			nc, err := l.Accept()
			require.NoError(t, err)
			c := s.newConn(nc)
			var lp *loop
			s.mu.Lock()
			s.conns[c] = struct{}{}
			s.listUnauthed(c)
			if onLoop {
				lp, err = newLoop(s)
				require.NoError(t, err)
				require.True(t, lp.adopt(c))
			}
			s.mu.Unlock()
			if lp != nil {
				defer lp.closeAll()
			}
			_, err = io.WriteString(client, strings.Repeat("*1\r\n$4\r\nPING\r\n", 3)+"*2\r\n$5\r\nHELLO\r\n$1\r\n2\r\n")
			require.NoError(t, err)
			if !onLoop {
				_, err = c.rd.br.Peek(1) // the reader holds the pipeline
				require.NoError(t, err)
			}

			// A newer connection past the limit evicts c.
			newer := &conn{s: s}
			s.mu.Lock()
			s.listUnauthed(newer)
			s.unauthed.Remove(newer.unauthedAt)
			s.mu.Unlock()
			require.True(t, c.isEvicted())

			if onLoop {
				// One pass of the loop: serve what the poll found, write
				// the replies, expire.
				require.Eventually(t, func() bool {
					lp.serve(c)
					return len(lp.answered) > 0 || c.fd < 0
				}, 5*time.Second, time.Millisecond)
				for _, a := range lp.answered {
					if lp.flush(a, nil) && a.quit {
						lp.drop(a)
					}
				}
				lp.answered = nil
				lp.expire()
			} else {
				c.serve()
				s.forget(c)
			}

			client.SetReadDeadline(time.Now().Add(5 * time.Second))
			got, err := io.ReadAll(client)
			require.NoError(t, err, "the evicted connection was not closed")
			assert.Equal(t, "-"+s.evictedMsg()+"\r\n", string(got), "an evicted connection ran commands it had sent")
			assert.Equal(t, 0, conns(s))
		})
	}
}
