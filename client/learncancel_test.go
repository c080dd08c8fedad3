package client_test

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/kvapi"
)

// stallProxy forwards the connections it accepts on addr to target, or,
// while stalled, holds them unanswered until it forwards again.
type stallProxy struct {
	target string
	addr   string // where it listens

	mu      sync.Mutex
	stalled bool
	held    []net.Conn
	conns   []net.Conn
}

func newStallProxy(t *testing.T, addr, target string) *stallProxy {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	require.NoError(t, err)
	p := &stallProxy{target: target, addr: l.Addr().String()}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			p.conns = append(p.conns, c)
			if p.stalled {
				p.held = append(p.held, c)
				p.mu.Unlock()
				continue
			}
			p.mu.Unlock()
			wg.Go(func() { p.forward(c) })
		}
	})
	t.Cleanup(func() {
		l.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		wg.Wait()
	})
	return p
}

func (p *stallProxy) forward(c net.Conn) {
	u, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	p.conns = append(p.conns, u)
	p.mu.Unlock()
	go func() { io.Copy(u, c); u.Close() }()
	io.Copy(c, u)
	c.Close()
}

func (p *stallProxy) stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stalled = true
}

// resume forwards again, the connections held meanwhile first.
func (p *stallProxy) resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stalled = false
	for _, c := range p.held {
		go p.forward(c)
	}
	p.held = nil
}

// TestReadThatGivesUpWhileALearnDialsIsNotTheUnitsFailure: a read that
// meets cells on a unit the client does not know lists the units and
// dials the new one under the read's context. A read that gave up during
// that dial used to leave the unit in the table as unreachable with the
// read's own error until the next try, so the next read, whose context
// was fine, failed with context.DeadlineExceeded (and as lost) naming a
// unit that answered.
func TestReadThatGivesUpWhileALearnDialsIsNotTheUnitsFailure(t *testing.T) {
	ctx := t.Context()
	ctrl, err := controller.New(controller.Config{UnitTimeout: time.Minute})
	require.NoError(t, err)
	t.Cleanup(func() { ctrl.Close() })
	_, addr := serveController(t, ctrl, controller.ServerConfig{}, "unix")
	joinUnit(t, addr, true)
	hash := client.ConnectConfig{Client: client.Config{Placement: client.Hash}}
	early, err := client.Connect(ctx, addr, hash)
	require.NoError(t, err)
	defer early.Close()

	// A unit that joins later, its data plane reached through a proxy
	// that can stop answering for a while.
	u2 := joinUnit(t, addr, false)
	direct, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go u2.srv.Serve(direct)
	t.Cleanup(func() { u2.srv.Close() })
	proxy := newStallProxy(t, u2.addr, direct.Addr().String())

	late, err := client.Connect(ctx, addr, hash)
	require.NoError(t, err)
	keys := keyRange("k", 16)
	_, err = kvapi.New(late).BatchPut(ctx, "p", keys, xBatch(t, 16), nil)
	require.NoError(t, err)
	require.Contains(t, unitsOf(t, late, "p", keys), u2.u.ID())
	meta, err := late.MetaByKeys(ctx, "p", keys, []string{"x"}, false)
	require.NoError(t, err)
	late.Close()

	// The early client's read gives up while its learn dials the unit.
	proxy.stall()
	impatient, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	_, err = early.Get(impatient, meta)
	require.Error(t, err, "a read that gave up")
	proxy.resume()

	got, err := early.Get(ctx, meta)
	require.NotErrorIs(t, err, context.DeadlineExceeded, "another read's deadline")
	require.NoError(t, err, "a read of the unit once it answers")
	require.True(t, got.Col("x").Equal(xBatch(t, 16).Col("x")))
	got.Release()
}

// cut closes every connection the proxy forwards, both sides: each end
// sees the other close it.
func (p *stallProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}
