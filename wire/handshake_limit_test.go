package wire

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire/wirepb"
)

// handshakeServer serves with a token, a connection cap well above the
// handshake cap, and a handshake timeout far longer than the tests run,
// so that only the handshake cap can free a slot.
func handshakeServer(t *testing.T, maxConns, maxHandshakes int) (*Server, string) {
	t.Helper()
	return startServer(t, ServerConfig{Token: "secret", MaxConns: maxConns, MaxHandshakes: maxHandshakes, HandshakeTimeout: time.Minute}, "tcp")
}

// handshaking returns how many connections the server counts in their
// handshake.
func handshaking(s *Server) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.handshaking.Len()
}

// dialToken dials with the token and pings, each within a short deadline
// (liveness only).
func dialToken(t *testing.T, addr string) *Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	c, _, err := Dial(ctx, addr, &wirepb.Hello{Role: "client", Token: "secret"}, ConnConfig{})
	require.NoError(t, err, "an authenticating client is locked out")
	t.Cleanup(func() { c.Close() })
	require.NoError(t, c.Ping(ctx))
	return c
}

// TestHandshakeCapAdmitsAuthenticatingClient: a peer opens as many
// connections as MaxConns allows and holds them open, never saying HELLO;
// only MaxHandshakes of them stay (the oldest are closed), so a client
// that authenticates still connects and is served, again and again,
// while they are held.
func TestHandshakeCapAdmitsAuthenticatingClient(t *testing.T) {
	const limit = 8
	s, addr := handshakeServer(t, 2*limit, limit)
	for range 2 * limit {
		rawDial(t, addr, nil) // never says HELLO, never reads, never closes
	}
	require.Eventually(t, func() bool { return s.Conns() == 2*limit }, 5*time.Second, 5*time.Millisecond)
	require.Eventually(t, func() bool { return handshaking(s) == limit }, 5*time.Second, 5*time.Millisecond)
	var clients []*Conn
	for range limit / 2 {
		clients = append(clients, dialToken(t, addr))
	}
	for _, c := range clients {
		require.NoError(t, c.Ping(t.Context()))
	}
	// The first client's connection made room by evicting an idle one;
	// the others found it free again once that client authenticated.
	assert.Equal(t, limit-1, handshaking(s))
}

// TestHandshakeCapRefusesWithNamedError: past MaxHandshakes the oldest
// connection still in its handshake is closed, with a connection error
// that names the limit (CODE_CAPACITY), so that the newest, which has
// just sent its HELLO if it is a client, can have its slot.
func TestHandshakeCapRefusesWithNamedError(t *testing.T) {
	const limit = 4
	s, addr := handshakeServer(t, 100, limit)
	var idle []net.Conn
	for range limit {
		idle = append(idle, rawDial(t, addr, nil))
		require.Eventually(t, func() bool { return handshaking(s) == len(idle) }, 5*time.Second, 5*time.Millisecond)
	}
	rawDial(t, addr, nil) // one past the limit
	h, body := readFrame(t, idle[0])
	require.NotZero(t, h.Flags&FlagError, "the oldest connection got no error frame")
	var e wirepb.Error
	require.NoError(t, proto.Unmarshal(body, &e))
	err := FromReply(&e)
	require.ErrorIs(t, err, engine.ErrCapacity)
	assert.Contains(t, err.Error(), fmt.Sprintf("the limit is %d (MaxHandshakes)", limit))
	waitClosed(t, idle[0], 5*time.Second)
	// The others are still in their handshake: none got anything.
	assert.Equal(t, limit, handshaking(s))
	for _, nc := range idle[1:] {
		nc.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		_, rerr := nc.Read(make([]byte, 1))
		var ne net.Error
		require.ErrorAs(t, rerr, &ne)
		assert.True(t, ne.Timeout(), "a younger connection was closed: %v", rerr)
	}
}

// TestHandshakeCapSparesAuthenticated: connections that authenticated
// leave the handshake count: many more of them than MaxHandshakes stay
// open and served, and idle unauthenticated ones up to the limit are
// still held beside them.
func TestHandshakeCapSparesAuthenticated(t *testing.T) {
	const limit = 2
	s, addr := handshakeServer(t, 100, limit)
	var clients []*Conn
	for range 5 * limit {
		clients = append(clients, dialToken(t, addr))
	}
	assert.Equal(t, 0, handshaking(s))
	var idle []net.Conn
	for range limit {
		idle = append(idle, rawDial(t, addr, nil))
	}
	require.Eventually(t, func() bool { return handshaking(s) == limit }, 5*time.Second, 5*time.Millisecond)
	for _, c := range clients {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		require.NoError(t, c.Ping(ctx), "an authenticated connection was closed")
		cancel()
	}
	assert.Equal(t, 5*limit+limit, s.Conns())
	for _, nc := range idle {
		nc.Close()
	}
	require.Eventually(t, func() bool { return handshaking(s) == 0 }, 5*time.Second, 5*time.Millisecond)
	// A refused handshake (wrong token) leaves the count as well.
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	_, _, err := Dial(ctx, addr, &wirepb.Hello{Role: "client", Token: "wrong"}, ConnConfig{})
	require.ErrorIs(t, err, ErrUnauthenticated)
	require.Eventually(t, func() bool { return handshaking(s) == 0 }, 5*time.Second, 5*time.Millisecond)
}

// TestHandshakeCapDefault: the default is DefaultMaxHandshakes, or a
// quarter of MaxConns where that is smaller; negative means no limit.
func TestHandshakeCapDefault(t *testing.T) {
	assert.Equal(t, DefaultMaxHandshakes, NewServer(ServerConfig{}).cfg.MaxHandshakes)
	assert.Equal(t, 4, NewServer(ServerConfig{MaxConns: 16}).cfg.MaxHandshakes)
	assert.Equal(t, 1, NewServer(ServerConfig{MaxConns: 2}).cfg.MaxHandshakes)
	assert.Equal(t, DefaultMaxHandshakes, NewServer(ServerConfig{MaxConns: -1}).cfg.MaxHandshakes)
	assert.Equal(t, -1, NewServer(ServerConfig{MaxHandshakes: -1}).cfg.MaxHandshakes)
	assert.Equal(t, 7, NewServer(ServerConfig{MaxHandshakes: 7}).cfg.MaxHandshakes)
}

// TestHandshakeEvictionsBounded: a peer that opens connections faster
// than they linger, saying nothing on any, makes the server evict one
// per connection past MaxHandshakes. An evicted connection lingers
// (linger.Time) so that its answer survives, but at most maxRefusing
// linger at once, as with refusals past MaxConns (the others are closed
// at once): the server holds at most MaxConns + maxRefusing sockets, not
// one per connection opened within the linger time.
func TestHandshakeEvictionsBounded(t *testing.T) {
	const maxConns, limit, opened = 16, 4, 600
	s, addr := handshakeServer(t, maxConns, limit)
	peak := make(chan int)
	stop := make(chan struct{})
	go func() {
		most := 0
		for {
			most = max(most, s.Conns())
			select {
			case <-stop:
				peak <- most
				return
			default:
				time.Sleep(100 * time.Microsecond)
			}
		}
	}()
	for range opened {
		rawDial(t, addr, nil) // never says HELLO, never reads, never closes
	}
	// Every connection was accepted (each evicted the oldest), and the
	// evicted ones left or linger.
	require.Eventually(t, func() bool { return handshaking(s) == limit }, 10*time.Second, time.Millisecond)
	time.Sleep(100 * time.Millisecond)
	close(stop)
	most := <-peak
	bound := maxConns + maxRefusing
	assert.LessOrEqual(t, most, bound, "the server held %d connections at once for %d opened (MaxConns %d, MaxHandshakes %d)", most, opened, maxConns, limit)
	// A client still gets in.
	dialToken(t, addr)
}
